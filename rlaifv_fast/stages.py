"""The pipeline stages with their I/O: generate -> feedback -> pairs. Data flows one way, records in, records out.

Each stage appends to a RecordStore batch by batch and skips the ids it already holds, so a stage killed at any
point and re-run ends with exactly the records of an uninterrupted run. The pure logic lives elsewhere: sampling and
yes/no scoring in the engines, claims and questions in divide.py, the pair rules in pairs.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from .data import Prompt, PromptError, write_rlaifv_parquet, write_trl_parquet
from .divide import Divider
from .engines.base import NO_WORDS, YES_WORDS, DecodingConfig, Engine, SampleRequest, YesNoRequest
from .images import ImageError, image_bytes
from .ops import response_scores
from .pairs import PairConfig, ScoredCandidate, make_pairs
from .store import RecordStore, read_records, write_json

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def candidate_id(prompt_id: str, index: int) -> str:
    return f"{prompt_id}#{index}"


@dataclasses.dataclass
class StageReport:
    stage: str
    total: int = 0
    already_done: int = 0
    written: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)  # "id: reason" for inputs skipped with skip_bad
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _run_batches(
    items: Sequence[T],
    batch_size: int,
    process: Callable[[Sequence[T]], list[dict]],
    store: RecordStore,
    report: StageReport,
    *,
    item_id: Callable[[T], str],
    skip_bad: bool,
    desc: str,
    progress: bool,
) -> None:
    """Process items in batches and append each batch's records. A bad input (ImageError/PromptError) fails the
    stage after the finished batches are stored, or with skip_bad is isolated item by item, skipped and reported."""
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress) as bar:
        for batch in _chunks(items, batch_size):
            try:
                report.written += store.append(process(batch))
            except (ImageError, PromptError) as e:
                if not skip_bad:
                    ids = ", ".join(item_id(i) for i in batch[:3]) + (" ..." if len(batch) > 3 else "")
                    raise PromptError(f"{desc}: bad input in the batch holding {ids}: {e}") from e
                for item in batch:
                    try:
                        report.written += store.append(process([item]))
                    except (ImageError, PromptError) as e_item:
                        report.skipped.append(f"{item_id(item)}: {e_item}")
            bar.update(len(batch))


# ---- generate ----


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """n candidates per prompt with ONE decoding setting (deconfounded sampling); seeds derive from run_seed."""

    n: int = 10
    decoding: DecodingConfig = DecodingConfig()
    run_seed: int = 0
    batch_size: int = 8  # prompts per engine call
    skip_bad: bool = False
    # The confounded baseline (an ablation, not the method): candidates split evenly over these decoding settings,
    # candidate i sampled with mixed_decodings[i % len]; empty (the default) means one setting for all.
    mixed_decodings: tuple[DecodingConfig, ...] = ()

    def settings(self) -> list[tuple[DecodingConfig, list[int]]]:
        """(decoding, candidate indices) groups: one group of all n, or one per mixed setting."""
        if not self.mixed_decodings:
            return [(self.decoding, list(range(self.n)))]
        m = len(self.mixed_decodings)
        return [(d, list(range(k, self.n, m))) for k, d in enumerate(self.mixed_decodings) if k < self.n]


def run_generate(
    prompts: Sequence[Prompt], engine: Engine, out_path: str | Path, config: GenerateConfig, *, progress: bool = True
) -> StageReport:
    store = RecordStore(out_path)
    report = StageReport("generate", total=len(prompts) * config.n)
    todo = [p for p in prompts if any(candidate_id(p.id, i) not in store for i in range(config.n))]
    report.already_done = len(store)
    groups = config.settings()

    def process(batch: Sequence[Prompt]) -> list[dict]:
        requests = [SampleRequest(p.id, p.question, p.image) for p in batch]
        records: list[list[dict]] = [[] for _ in batch]
        for k, (decoding, indices) in enumerate(groups):
            # each mixed setting draws from its own seed stream; candidate indices stay 0..n-1 across settings
            samples = engine.sample(requests, len(indices), decoding, run_seed=config.run_seed + 7919 * k)
            for out, prompt, candidates in zip(records, batch, samples):
                for s in candidates:
                    index = indices[s.index]
                    out.append(
                        {
                            "id": candidate_id(prompt.id, index),
                            "prompt_id": prompt.id,
                            "question": prompt.question,
                            "image": prompt.image_ref,
                            "index": index,
                            "seed": s.seed,
                            "run_seed": config.run_seed,
                            "text": s.text,
                            "num_tokens": s.num_tokens,
                            "finish_reason": s.finish_reason,
                            "model": engine.model_name,
                            "decoding": dataclasses.asdict(decoding),
                        }
                    )
        return [r for out in records for r in sorted(out, key=lambda r: r["index"])]

    _run_batches(todo, config.batch_size, process, store, report, item_id=lambda p: p.id,
                 skip_bad=config.skip_bad, desc="generate", progress=progress)
    return report


# ---- feedback: divide, conquer, combine ----


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
    batch_size: int = 16  # candidates per batch (their claims are scored together)
    yes_words: tuple[str, ...] = YES_WORDS
    no_words: tuple[str, ...] = NO_WORDS
    skip_bad: bool = False


def run_feedback(
    candidates: Sequence[dict],
    prompts: Sequence[Prompt],
    divider: Divider,
    labeler: Engine,
    out_path: str | Path,
    config: FeedbackConfig = FeedbackConfig(),
    *,
    progress: bool = True,
) -> StageReport:
    """Score every candidate: claims -> polar questions -> labeler yes/no -> score = -(rejected claims)."""
    by_id = {p.id: p for p in prompts}
    missing = sorted({c["prompt_id"] for c in candidates} - by_id.keys())
    if missing:
        raise PromptError(f"feedback: candidates refer to prompts not in the prompt set: {missing[:5]}")
    store = RecordStore(out_path)
    report = StageReport("feedback", total=len(candidates), already_done=len(store))
    todo = [c for c in candidates if c["id"] not in store]
    flagged = 0

    def process(batch: Sequence[dict]) -> list[dict]:
        nonlocal flagged
        divisions = divider.divide([c["text"] for c in batch])
        requests, owner = [], []
        for k, (cand, div) in enumerate(zip(batch, divisions)):
            image = by_id[cand["prompt_id"]].image
            for j, question in enumerate(div.questions):
                requests.append(YesNoRequest(f"{cand['id']}/q{j}", question, image))
                owner.append(k)
        results = labeler.yes_no(requests, yes_words=config.yes_words, no_words=config.no_words) if requests else []
        logp_yes = torch.tensor([r.logp_yes for r in results], dtype=torch.float64)
        logp_no = torch.tensor([r.logp_no for r in results], dtype=torch.float64)
        scores = response_scores(logp_yes > logp_no, torch.tensor(owner, dtype=torch.int64),
                                 num_responses=len(batch))
        records = []
        for k, (cand, div) in enumerate(zip(batch, divisions)):
            rows = [i for i, o in enumerate(owner) if o == k]
            n_claims = int(scores.n_claims[k])
            flagged += n_claims == 0
            records.append(
                {
                    "id": cand["id"],
                    "prompt_id": cand["prompt_id"],
                    "question": cand["question"],
                    "image": cand.get("image"),
                    "text": cand["text"],
                    "seed": cand.get("seed"),
                    "model": cand.get("model"),
                    "claims": list(div.claims),
                    "questions": list(div.questions),
                    "logp_yes": [float(logp_yes[i]) for i in rows],
                    "logp_no": [float(logp_no[i]) for i in rows],
                    "p_yes": [float(logp_yes[i].exp()) for i in rows],
                    "p_no": [float(logp_no[i].exp()) for i in rows],
                    "verdicts": [bool(logp_yes[i] > logp_no[i]) for i in rows],
                    "n_claims": n_claims,
                    "n_rejected": int(scores.n_rejected[k]),
                    "score": float(scores.scores[k]),
                    "no_claims": n_claims == 0,
                    "divider": div.method,
                    "divide_notes": list(div.notes),
                    "labeler": labeler.model_name,
                }
            )
        return records

    _run_batches(todo, config.batch_size, process, store, report, item_id=lambda c: c["id"],
                 skip_bad=config.skip_bad, desc="feedback", progress=progress)
    report.notes["no_claims_flagged_this_run"] = flagged
    return report


# ---- pairs ----


@dataclasses.dataclass(frozen=True)
class PairsOutput:
    rlaifv_parquet: Path
    trl_parquet: Path
    report_json: Path


def run_pairs(
    feedback: Sequence[dict],
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    config: PairConfig = PairConfig(),
    *,
    ds_name: str = "rlaifv_fast",
    origin_dataset: str = "",
) -> tuple[PairsOutput, Any]:
    """Preference pairs (method.md stage 5) written as parquet in the RLAIF-V schema and in TRL's, plus a report."""
    by_id = {p.id: p for p in prompts}
    scored = [
        ScoredCandidate(r["id"], r["prompt_id"], r["text"], float(r["score"]), int(r["n_claims"])) for r in feedback
    ]
    pairs, report = make_pairs(scored, config)
    meta = {r["id"]: r for r in feedback}
    rlaifv_rows, trl_rows = [], []
    images: dict[str, dict] = {}
    for pair in pairs:
        prompt = by_id.get(pair.prompt_id)
        if prompt is None:
            raise PromptError(f"pairs: prompt {pair.prompt_id!r} of the feedback records is not in the prompt set")
        if prompt.id not in images:
            images[prompt.id] = image_bytes(prompt.image) if prompt.image is not None else {"bytes": None, "path": None}
        img = images[prompt.id]
        chosen_meta = meta[pair.chosen_id]
        origin_split = json.dumps(
            {
                "policy_model": chosen_meta.get("model"),
                "labeler_model": chosen_meta.get("labeler"),
                "divider": chosen_meta.get("divider"),
                "chosen_id": pair.chosen_id,
                "rejected_id": pair.rejected_id,
                "chosen_score": pair.chosen_score,
                "rejected_score": pair.rejected_score,
            },
            sort_keys=True,
        )
        rlaifv_rows.append(
            {
                "ds_name": ds_name,
                "image": img,
                "question": prompt.question,
                "chosen": pair.chosen,
                "rejected": pair.rejected,
                "origin_dataset": origin_dataset,
                "origin_split": origin_split,
                "idx": f"{pair.chosen_id}>{pair.rejected_id}",
                "image_path": img.get("path"),
            }
        )
        trl_rows.append({"prompt": prompt.question, "chosen": pair.chosen, "rejected": pair.rejected,
                         "images": [img] if prompt.image is not None else []})
    out_dir = Path(out_dir)
    out = PairsOutput(out_dir / "pairs.rlaifv.parquet", out_dir / "pairs.trl.parquet", out_dir / "pairs.report.json")
    write_rlaifv_parquet(out.rlaifv_parquet, rlaifv_rows)
    write_trl_parquet(out.trl_parquet, trl_rows)
    write_json(out.report_json, dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report)
    return out, report


def load_stage_records(path: str | Path) -> list[dict]:
    return list(read_records(path))
