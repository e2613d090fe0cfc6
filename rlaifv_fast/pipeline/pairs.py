"""Pairs: preference pairs from scored candidates.

1. Candidates flagged with zero claims are excluded (counted): a score of 0 from no claims says nothing.
2. Group by prompt id (one image + instruction). Every 2-combination whose scores differ by >= min_score_gap is a
   pair, the higher score chosen; equal scores never pair.
3. Pairs whose chosen and rejected texts are identical (up to whitespace) are dropped: they teach nothing. This
   happens before the cap, so the cap never spends a slot on a pair that would be dropped.
4. At most max_pairs_per_prompt pairs per prompt, by seeded sampling (FIX: the reference samples unseeded). The
   sample depends only on (seed, prompt id) and the prompt's candidates (sorted by candidate id first), never on the
   input order or on the other prompts.
5. Length balancing over the whole pair set (reference): with word counts Lc, Lr, for r in 0, 0.02, ..., 0.98 keep a
   pair unless Lr > Lc and (Lr - Lc) / Lr > r (pairs whose chosen is as long or longer are always kept), and take the
   r minimising |mean Lc - mean Lr| / mean Lr = |sum Lc - sum Lr| / sum Lr over the kept pairs (computed exactly, in
   fractions). Ties between r values go to the smallest r (the one keeping fewest long-rejected pairs). An r that
   keeps no pair, or whose kept rejected answers have no words, has no objective; when no r has one, the most
   permissive r = 0.98 is used (every r would drop what it drops).

Output order is deterministic: by prompt id, then chosen id, then rejected id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

from ..options import option
from .contract import IterationContext, PromptOptions, StageReport, bind_prompts, load_prompt_set, require
from .data import Prompt, PromptError, write_rlaifv_parquet, write_trl_parquet
from .images import image_bytes
from .records import FeedbackRecord, read_typed
from .sharding import Part
from .store import write_json

NAME = "pairs"
HELP = "build preference pairs and write them as RLAIF-V and TRL parquet files"
DATA_PARALLEL = False

__all__ = ["LENGTH_BALANCE_RS", "PairConfig", "PairReport", "PreferencePair", "ScoredCandidate", "make_pairs", "run"]

LENGTH_BALANCE_RS = tuple(i / 50 for i in range(50))  # 0, 0.02, ..., 0.98 (exact multiples, no float drift)


@dataclasses.dataclass(frozen=True)
class ScoredCandidate:
    """One sampled answer with its score (-(number of rejected claims)) and its number of claims."""

    candidate_id: str
    prompt_id: str
    text: str
    score: float
    n_claims: int


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(PromptOptions):
    """The pair rules (the module docstring) and the stage's files."""

    feedback: str | None = option(None, io=True, help="feedback JSONL from `feedback`")
    out: str | None = option(None, io=True, help="folder for pairs.rlaifv.parquet, pairs.trl.parquet and "
                             "pairs.report.json")
    max_pairs_per_prompt: int | None = option(2, ge=1, help="keep at most k pairs per image (none: no cap)")
    min_score_gap: float = option(1.0, gt=0, check=_finite, help="least score difference that makes a pair (> 0, so "
                                  "ties never pair)")
    seed: int = option(0, help="seed of the per-image pair sampling")
    length_balance: bool = option(True, help="balance chosen and rejected lengths (the reference's r search)")
    ds_name: str = option("rlaifv_fast", help="ds_name column of the RLAIF-V parquet")


PairConfig = Config


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt_id: str
    chosen_id: str
    rejected_id: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float


@dataclasses.dataclass(frozen=True)
class PairReport:
    """Counts of what happened, in order. ties / below_gap / identical_dropped count 2-combinations; capped counts
    pairs removed by the per-prompt cap. length_balance_r is None when balancing is off or there were no pairs.
    Mean word counts are over the pairs before and after balancing (0.0 for no pairs)."""

    prompts: int
    candidates: int
    excluded_no_claims: int
    ties: int
    below_gap: int
    identical_dropped: int
    capped: int
    dropped_by_length_balance: int
    pairs: int
    length_balance_r: float | None
    mean_len_chosen_before: float
    mean_len_rejected_before: float
    mean_len_chosen_after: float
    mean_len_rejected_after: float


def _words(text: str) -> int:
    return len(text.split())


def _prompt_rng(seed: int, prompt_id: str) -> random.Random:
    digest = hashlib.blake2b(f"{int(seed)}\x1fpairs\x1f{prompt_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _check(candidates: Sequence[ScoredCandidate]) -> None:
    seen: set[str] = set()
    for c in candidates:
        if c.candidate_id in seen:
            raise ValueError(f"candidate id {c.candidate_id!r} appears twice")
        seen.add(c.candidate_id)
        if not math.isfinite(c.score):
            raise ValueError(f"candidate {c.candidate_id!r} has a non-finite score {c.score}")
        if c.n_claims < 0:
            raise ValueError(f"candidate {c.candidate_id!r} has n_claims {c.n_claims} < 0")


def _keep(pair: PreferencePair, r: float) -> bool:
    lc, lr = _words(pair.chosen), _words(pair.rejected)
    return lr <= lc or (lr - lc) / lr <= r


def _balance(pairs: list[PreferencePair]) -> tuple[list[PreferencePair], float]:
    """The kept pairs and the r of stage 5's search."""
    best: tuple[Fraction, float] | None = None
    for r in LENGTH_BALANCE_RS:
        kept = [p for p in pairs if _keep(p, r)]
        sum_c = sum(_words(p.chosen) for p in kept)
        sum_r = sum(_words(p.rejected) for p in kept)
        if not kept or sum_r == 0:
            continue
        gap = Fraction(abs(sum_c - sum_r), sum_r)
        if best is None or gap < best[0]:  # strict: ties keep the smallest r
            best = (gap, r)
    r = LENGTH_BALANCE_RS[-1] if best is None else best[1]
    return [p for p in pairs if _keep(p, r)], r


def _means(pairs: Sequence[PreferencePair]) -> tuple[float, float]:
    if not pairs:
        return 0.0, 0.0
    n = len(pairs)
    return sum(_words(p.chosen) for p in pairs) / n, sum(_words(p.rejected) for p in pairs) / n


def make_pairs(
    candidates: Sequence[ScoredCandidate], config: PairConfig = PairConfig()
) -> tuple[list[PreferencePair], PairReport]:
    """Preference pairs from scored candidates, by the rules of the module docstring."""
    _check(candidates)
    groups: dict[str, list[ScoredCandidate]] = defaultdict(list)
    excluded = 0
    for c in candidates:
        if c.n_claims == 0:
            excluded += 1
        else:
            groups[c.prompt_id].append(c)
    prompts = len({c.prompt_id for c in candidates})

    ties = below_gap = identical = capped = 0
    pairs: list[PreferencePair] = []
    for prompt_id in sorted(groups):
        members = sorted(groups[prompt_id], key=lambda c: c.candidate_id)
        found: list[PreferencePair] = []
        for a, b in itertools.combinations(members, 2):
            if a.score == b.score:
                ties += 1
                continue
            if abs(a.score - b.score) < config.min_score_gap:
                below_gap += 1
                continue
            chosen, rejected = (a, b) if a.score > b.score else (b, a)
            if chosen.text.split() == rejected.text.split():
                identical += 1
                continue
            found.append(
                PreferencePair(
                    prompt_id, chosen.candidate_id, rejected.candidate_id, chosen.text, rejected.text,
                    chosen.score, rejected.score,
                )
            )
        k = config.max_pairs_per_prompt
        if k is not None and len(found) > k:
            capped += len(found) - k
            found = _prompt_rng(config.seed, prompt_id).sample(found, k)
        pairs.extend(found)

    before = _means(pairs)
    r = None
    n_before = len(pairs)
    if config.length_balance and pairs:
        pairs, r = _balance(pairs)
    pairs.sort(key=lambda p: (p.prompt_id, p.chosen_id, p.rejected_id))
    after = _means(pairs)
    report = PairReport(
        prompts=prompts,
        candidates=len(candidates),
        excluded_no_claims=excluded,
        ties=ties,
        below_gap=below_gap,
        identical_dropped=identical,
        capped=capped,
        dropped_by_length_balance=n_before - len(pairs),
        pairs=len(pairs),
        length_balance_r=r,
        mean_len_chosen_before=before[0],
        mean_len_rejected_before=before[1],
        mean_len_chosen_after=after[0],
        mean_len_rejected_after=after[1],
    )
    return pairs, report


# ---------------------------------------------------------------------------------------------------- the stage


class Inputs(NamedTuple):
    feedback: list[FeedbackRecord]
    prompts: list[Prompt]


@dataclasses.dataclass(frozen=True)
class PairsOutput:
    rlaifv_parquet: Path
    trl_parquet: Path
    report_json: Path

    @classmethod
    def of(cls, out_dir: str | Path) -> PairsOutput:
        out_dir = Path(out_dir)
        return cls(out_dir / "pairs.rlaifv.parquet", out_dir / "pairs.trl.parquet", out_dir / "pairs.report.json")


def engines(config: Config) -> dict:
    return {}


def load(config: Config, part: Part) -> Inputs:
    require(config, "feedback", "out")
    return Inputs(list(read_typed(config.feedback, FeedbackRecord)), load_prompt_set(config, part))



def bind(config: Config, ctx: IterationContext) -> Config:
    return bind_prompts(config, ctx, feedback=str(ctx.folder / "feedback.jsonl"), out=str(ctx.folder / "pairs"))


def run(inputs: Inputs, out: str | Path, config: Config, *, engines=None, progress: bool = True) -> StageReport:
    """Preference pairs written as parquet in the RLAIF-V schema and in TRL's, plus a report (all atomically)."""
    feedback, prompts = inputs
    by_id = {p.id: p for p in prompts}
    scored = [ScoredCandidate(r.id, r.prompt_id, r.text, float(r.score), int(r.n_claims)) for r in feedback]
    pairs, pair_report = make_pairs(scored, config)
    meta = {r.id: r for r in feedback}
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
                "policy_model": chosen_meta.model,
                "labeler_model": chosen_meta.labeler,
                "divider": chosen_meta.divider,
                "chosen_id": pair.chosen_id,
                "rejected_id": pair.rejected_id,
                "chosen_score": pair.chosen_score,
                "rejected_score": pair.rejected_score,
            },
            sort_keys=True,
        )
        rlaifv_rows.append(
            {
                "ds_name": config.ds_name,
                "image": img,
                "question": prompt.question,
                "chosen": pair.chosen,
                "rejected": pair.rejected,
                "origin_dataset": str(config.prompts or ""),
                "origin_split": origin_split,
                "idx": f"{pair.chosen_id}>{pair.rejected_id}",
                "image_path": img.get("path"),
            }
        )
        trl_rows.append({"prompt": prompt.question, "chosen": pair.chosen, "rejected": pair.rejected,
                         "images": [img] if prompt.image is not None else []})
    files = PairsOutput.of(out)
    write_rlaifv_parquet(files.rlaifv_parquet, rlaifv_rows)
    write_trl_parquet(files.trl_parquet, trl_rows)
    write_json(files.report_json, dataclasses.asdict(pair_report))
    return StageReport(NAME, total=len(feedback), written=len(pairs),
                       notes={**dataclasses.asdict(pair_report), "rlaifv_parquet": str(files.rlaifv_parquet),
                              "trl_parquet": str(files.trl_parquet)})
