"""Self-feedback Best-of-N: at inference, the DPO-aligned policy samples N candidates per prompt
and answers with the one of highest implicit reward

    r(y) = beta / T * sum_t [log pi_theta(y_t) - log pi_ref(y_t)]        T = response tokens (+EOS)

where pi_ref is the model before DPO. Dividing by T removes DPO's bias towards short answers; the report compares
the picks with those of the unnormalised reward beta * sum (mean words of the picked answers vs all answers).

Candidates come from the sampling engine (transformers or vLLM; each seeded by (run seed, prompt id, index), so a
run is reproducible and a candidate is the same alone or in any batch). Each candidate is scored as scoring.py describes, under the policy and
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

from ..engines import EngineKind, EngineSpec
from ..engines.base import DecodingConfig, SampleRequest
from ..engines.hf import HFEngine
from ..ops import bon_rewards, sequence_logps
from ..ops.bon_rewards import best_per_group
from ..options import option
from .contract import EngineOptions, PromptOptions, StageReport, load_prompt_set, require, run_batches
from .data import Prompt
from .records import BoNRecord, encode
from .scoring import Triple, batch_logits, collate, encode_triples
from .sharding import Part
from .store import RecordStore, read_records, write_json

NAME = "bon"
HELP = ("self-feedback Best-of-N: sample n candidates with the policy and answer with the highest reward "
        "beta/T * sum(log pi_policy - log pi_reference)")
DATA_PARALLEL = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(PromptOptions, EngineOptions):
    """Sampling runs on --engine (hf or vllm); the rewards are scored on transformers, the trainer's forward."""

    policy: str | None = option(None, help="the DPO-aligned policy model folder (samples and scores the candidates)")
    reference: str | None = option(None, help="the reference model folder (the policy before DPO)")
    out: str | None = option(None, io=True, help="Best-of-N JSONL, one record per prompt (appended; finished "
                             "prompts are skipped on re-run)")
    report: str | None = option(None, io=True, help="report JSON path (default: <out stem>.report.json beside it)")
    n: int = option(16, ge=1, help="candidates per prompt")
    beta: float = option(0.1, gt=0, finite=True, help="the policy's DPO beta")
    length_normalize: bool = option(True, help="reward beta / T * sum (RLAIF-V) instead of beta * sum")
    decoding: DecodingConfig = option(factory=DecodingConfig, flatten=True, help="the one decoding setting")
    run_seed: int = option(0, help="run seed; candidate seeds derive from (seed, prompt id, index)")
    batch_size: int = option(4, ge=1, identity=False, help="prompts per sampling call")
    score_batch_size: int = option(8, ge=1, identity=False, help="candidate sequences per scoring forward")
    score_engine_options: dict = option(factory=dict, help="a transformers option of the scoring engines (device, "
                                        "dtype, ...); with --engine hf and none given, the sampling engine scores")


BoNConfig = Config


def engines(config: Config) -> dict[str, EngineSpec]:
    require(config, "policy", "reference")
    score_options = config.score_engine_options or (config.engine_options if config.engine is EngineKind.HF else {})
    template = config.chat_template  # the policy and its reference are one family: one template
    return {
        "sampler": EngineSpec.of(config.engine, config.policy, config.engine_options, chat_template=template),
        "policy": EngineSpec.of(EngineKind.HF, config.policy, score_options, chat_template=template),
        "reference": EngineSpec.of(EngineKind.HF, config.reference, score_options, chat_template=template),
    }


def load(config: Config, part: Part) -> list[Prompt]:
    require(config, "out")
    return load_prompt_set(config, part)



def expected_ids(prompts: Sequence[Prompt], config: Config) -> list[str]:
    return [p.id for p in prompts]


def bind(config: Config, ctx) -> Config:
    raise ValueError("bon is not a loop stage: run `rlaifv-fast bon` on the loop's final policy")


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


def finish(out: str | Path, config: Config, report: StageReport, prompts: Sequence[Prompt]) -> None:
    """The report over the output's records of `prompts` (all processes' after a data-parallel merge)."""
    wanted = {p.id for p in prompts}
    records = [r for r in read_records(out) if r["id"] in wanted] if Path(out).exists() else []
    summary = bon_report(records)
    summary.update(policy=Path(str(config.policy)).name, reference=Path(str(config.reference)).name, n=config.n,
                   beta=config.beta, length_normalize=config.length_normalize, run_seed=config.run_seed)
    report.notes.update(summary)
    write_json(config.report or report_path_for(out), summary)


def run(prompts: Sequence[Prompt], out: str | Path, config: Config, *, engines, progress: bool = True) -> StageReport:
    """Best-of-N for every prompt not yet in `out`; writes the records, then (unless `out` is one process's part of
    a data-parallel run) the report over all records."""
    sampler, policy, reference = engines["sampler"], engines["policy"], engines["reference"]
    store = RecordStore(out)
    report = StageReport(NAME, total=len(prompts), already_done=len(store))
    todo = [p for p in prompts if p.id not in store]
    decoding = dataclasses.asdict(config.decoding)

    def process(batch: Sequence[Prompt]) -> list[dict]:
        requests = [SampleRequest(p.id, p.question, p.image) for p in batch]
        samples = sampler.sample(requests, config.n, config.decoding, run_seed=config.run_seed)
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
            records.append(encode(BoNRecord(
                id=prompt.id, prompt_id=prompt.id, question=prompt.question, image=prompt.image_ref, **chosen,
                text=candidates[chosen["picked_index"]]["text"], reward=candidates[chosen["picked_index"]]["reward"],
                candidates=candidates, policy=policy.model_name, reference=reference.model_name, beta=config.beta,
                length_normalize=config.length_normalize, run_seed=config.run_seed, decoding=decoding,
            )))
        return records

    run_batches(todo, config.batch_size, process, store, report, item_id=lambda p: p.id,
                skip_bad=config.skip_bad, desc=NAME, progress=progress)
    if config.out is not None and Path(out) == Path(config.out):
        finish(out, config, report, prompts)
    return report


def run_bon(prompts: Sequence[Prompt], policy: HFEngine, reference: HFEngine, out_path: str | Path,
            config: Config = Config(), *, report_path: str | Path | None = None, progress: bool = True) -> StageReport:
    """Best-of-N with engines already loaded (Python API; the policy engine samples and scores)."""
    config = dataclasses.replace(config, out=str(out_path), report=None if report_path is None else str(report_path),
                                 policy=policy.model_path, reference=reference.model_path, progress=progress)
    return run(prompts, out_path, config, engines={"sampler": policy, "policy": policy, "reference": reference},
               progress=progress)
