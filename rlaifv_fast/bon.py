"""Self-feedback Best-of-N (method.md stage 9): at inference, the DPO-aligned policy samples N candidates per prompt
and answers with the one of highest implicit reward

    r(y) = beta / T * sum_t [log pi_theta(y_t) - log pi_ref(y_t)]        T = response tokens (+EOS)

where pi_ref is the model before DPO. Dividing by T removes DPO's bias towards short answers; the report compares
the picks with those of the unnormalised reward beta * sum (mean words of the picked answers vs all answers).

Candidates come from HFEngine.sample (each seeded by (run seed, prompt id, index), so a run is reproducible and a
candidate is the same alone or in any batch). Each candidate is scored as scoring.py describes, under the policy and
under the reference, and the fused op bon_rewards takes the policy logits and the reference's per-token log-probs.
Ties (e.g. policy == reference, every reward 0) go to the first candidate; NaN never wins.

Output: one JSONL record per prompt (RecordStore: appended batch by batch, finished prompts skipped on re-run) and a
JSON report over every record of the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from .data import Prompt
from .engines.base import DecodingConfig, SampleRequest
from .engines.hf import HFEngine
from .ops import bon_rewards, sequence_logps
from .ops.bon_rewards import best_per_group
from .scoring import Triple, batch_logits, collate, encode_triples
from .stages import StageReport, _run_batches
from .store import RecordStore, write_json


@dataclasses.dataclass(frozen=True)
class BoNConfig:
    """n candidates per prompt sampled with one decoding setting; reward with beta, length-normalised by default."""

    n: int = 16
    beta: float = 0.1
    length_normalize: bool = True
    decoding: DecodingConfig = DecodingConfig()
    run_seed: int = 0
    batch_size: int = 4  # prompts per sampling call
    score_batch_size: int = 8  # candidate sequences per scoring forward
    skip_bad: bool = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"BoNConfig.n must be >= 1, got {self.n}")
        if not self.beta > 0:
            raise ValueError(f"BoNConfig.beta must be > 0, got {self.beta}")
        if self.batch_size < 1 or self.score_batch_size < 1:
            raise ValueError("BoNConfig.batch_size and score_batch_size must be >= 1")


class CandidateScores(NamedTuple):
    """Per candidate (input order), float64 on the CPU: rewards (the configured rule, from bon_rewards),
    rewards_normalized and rewards_unnormalized (beta * mean and beta * sum of the log-ratio), policy_logps and
    ref_logps (sums), counts (response tokens + EOS, int64)."""

    rewards: torch.Tensor
    rewards_normalized: torch.Tensor
    rewards_unnormalized: torch.Tensor
    policy_logps: torch.Tensor
    ref_logps: torch.Tensor
    counts: torch.Tensor


def score_candidates(
    policy: HFEngine,
    reference: HFEngine,
    triples: Sequence[Triple],
    *,
    beta: float,
    length_normalize: bool = True,
    batch_size: int = 8,
    append_eos: bool | Sequence[bool] = True,
) -> CandidateScores:
    """Best-of-N rewards of (image, question, candidate) triples. `reference` may be the policy engine itself."""
    triples = list(triples)
    N = len(triples)
    out = {k: torch.zeros(N, dtype=torch.float64) for k in CandidateScores._fields}
    out["counts"] = torch.zeros(N, dtype=torch.int64)
    enc_p = encode_triples(policy, triples, append_eos=append_eos)
    enc_r = enc_p if reference is policy else encode_triples(reference, triples, append_eos=append_eos)
    for i, (a, b) in enumerate(zip(enc_p, enc_r)):
        if a.input_ids != b.input_ids or a.labels != b.labels:
            raise ValueError(
                f"policy {policy.model_name!r} and reference {reference.model_name!r} tokenize candidate {i} "
                "differently; Best-of-N needs the reference to share the policy's tokenizer and chat template"
            )
    order = sorted(range(N), key=lambda i: len(enc_p[i].input_ids))
    for start in range(0, N, int(batch_size)):
        chunk = order[start : start + int(batch_size)]
        logits, labels = batch_logits(policy, collate(policy, [enc_p[i] for i in chunk]))
        if reference is policy:
            ref_logits, ref_labels = logits, labels
        else:
            ref_logits, ref_labels = batch_logits(reference, collate(reference, [enc_r[i] for i in chunk]))
        ref = sequence_logps(ref_logits, ref_labels, shift=True, return_per_token=True)
        pol = sequence_logps(logits, labels, shift=True)
        reward = bon_rewards(logits, ref.per_token.to(logits.device), labels, beta=beta,
                             length_normalize=length_normalize, shift=True)
        index = torch.tensor(chunk, dtype=torch.long)
        counts = reward.counts.cpu()
        log_ratio = pol.logps.cpu().double() - ref.logps.cpu().double()
        out["rewards"][index] = reward.rewards.cpu().double()
        out["rewards_normalized"][index] = beta * log_ratio / counts.clamp(min=1)
        out["rewards_unnormalized"][index] = beta * log_ratio
        out["policy_logps"][index] = pol.logps.cpu().double()
        out["ref_logps"][index] = ref.logps.cpu().double()
        out["counts"][index] = counts
    return CandidateScores(**out)


def _words(text: str) -> int:
    return len(text.split())


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def bon_report(records: Sequence[dict]) -> dict:
    """Mean length (words) of the picked answers, under both rules, vs all answers."""
    all_words = [c["words"] for r in records for c in r["candidates"]]
    picked_norm = [r["candidates"][r["picked_index_normalized"]]["words"] for r in records]
    picked_sum = [r["candidates"][r["picked_index_unnormalized"]]["words"] for r in records]
    agree = [r["picked_index_normalized"] == r["picked_index_unnormalized"] for r in records]
    return {
        "prompts": len(records),
        "candidates": len(all_words),
        "mean_words_all": _mean(all_words),
        "mean_words_picked": _mean([r["candidates"][r["picked_index"]]["words"] for r in records]),
        "mean_words_picked_length_normalized": _mean(picked_norm),
        "mean_words_picked_unnormalized": _mean(picked_sum),
        "picks_agree_fraction": _mean([float(a) for a in agree]),
        "first_candidate_picked_fraction": _mean([float(r["picked_index"] == 0) for r in records]),
    }


def report_path_for(out_path: str | Path) -> Path:
    """Where run_bon writes its report by default: bon.jsonl -> bon.report.json."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".report.json")


def run_bon(
    prompts: Sequence[Prompt],
    policy: HFEngine,
    reference: HFEngine,
    out_path: str | Path,
    config: BoNConfig = BoNConfig(),
    *,
    report_path: str | Path | None = None,
    progress: bool = True,
) -> StageReport:
    """Best-of-N for every prompt not yet in `out_path`; writes the records, then the report (over all records)."""
    store = RecordStore(out_path)
    report = StageReport("bon", total=len(prompts), already_done=len(store))
    todo = [p for p in prompts if p.id not in store]
    decoding = dataclasses.asdict(config.decoding)

    def process(batch: Sequence[Prompt]) -> list[dict]:
        requests = [SampleRequest(p.id, p.question, p.image) for p in batch]
        samples = policy.sample(requests, config.n, config.decoding, run_seed=config.run_seed)
        triples = [Triple(p.image, p.question, s.text) for p, cands in zip(batch, samples) for s in cands]
        # a candidate cut at max_new_tokens never produced an EOS: score only the tokens it produced
        stopped = [s.finish_reason == "stop" for cands in samples for s in cands]
        scores = score_candidates(policy, reference, triples, beta=config.beta,
                                  length_normalize=config.length_normalize, batch_size=config.score_batch_size,
                                  append_eos=stopped)
        sizes = [config.n] * len(batch)
        picks = {
            "picked_index": best_per_group(scores.rewards, sizes),
            "picked_index_normalized": best_per_group(scores.rewards_normalized, sizes),
            "picked_index_unnormalized": best_per_group(scores.rewards_unnormalized, sizes),
        }
        records = []
        for g, (prompt, cands) in enumerate(zip(batch, samples)):
            base = g * config.n
            candidates = []
            for s in cands:
                k = base + s.index
                candidates.append(
                    {
                        "index": s.index,
                        "seed": s.seed,
                        "text": s.text,
                        "words": _words(s.text),
                        "num_tokens": int(scores.counts[k]),
                        "finish_reason": s.finish_reason,
                        "reward": float(scores.rewards[k]),
                        "reward_normalized": float(scores.rewards_normalized[k]),
                        "reward_unnormalized": float(scores.rewards_unnormalized[k]),
                        "policy_logp": float(scores.policy_logps[k]),
                        "ref_logp": float(scores.ref_logps[k]),
                    }
                )
            chosen = {name: int(p[g]) - base for name, p in picks.items()}
            records.append(
                {
                    "id": prompt.id,
                    "prompt_id": prompt.id,
                    "question": prompt.question,
                    "image": prompt.image_ref,
                    **chosen,
                    "text": candidates[chosen["picked_index"]]["text"],
                    "reward": candidates[chosen["picked_index"]]["reward"],
                    "candidates": candidates,
                    "policy": policy.model_name,
                    "reference": reference.model_name,
                    "beta": config.beta,
                    "length_normalize": config.length_normalize,
                    "run_seed": config.run_seed,
                    "decoding": decoding,
                }
            )
        return records

    _run_batches(todo, config.batch_size, process, store, report, item_id=lambda p: p.id,
                 skip_bad=config.skip_bad, desc="bon", progress=progress)
    wanted = {p.id for p in prompts}
    summary = bon_report([r for r in store.records() if r["id"] in wanted])
    summary.update(policy=policy.model_name, reference=reference.model_name, n=config.n, beta=config.beta,
                   length_normalize=config.length_normalize, run_seed=config.run_seed)
    report.notes.update(summary)
    write_json(report_path or report_path_for(out_path), summary)
    return report
