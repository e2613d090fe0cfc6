"""Feedback: divide each candidate into claims and polar questions, ask the labeler each
question about the image (full-vocabulary P(yes-set) vs P(no-set) at the first generated position; accepted iff
strictly more likely), and score the answer -(number of rejected claims). An answer with no claims is flagged.

Output: feedback JSONL (records.FeedbackRecord), appended batch by batch; a re-run skips finished candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ..engines import EngineKind, EngineSpec
from ..engines.base import NO_WORDS, YES_WORDS, YesNoRequest
from ..ops import response_scores
from ..options import option
from .contract import EngineOptions, IterationContext, PromptOptions, StageReport, bind_prompts, load_prompt_set, require, run_batches
from .data import Prompt, PromptError
from .divide import DividerKind, make_divider
from .records import CandidateRecord, FeedbackRecord, encode, read_typed
from .sharding import Part
from .store import RecordStore

NAME = "feedback"
HELP = "divide answers into claims, ask the labeler yes/no about each, score -(rejected claims)"
DATA_PARALLEL = True


def _words(value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(w, str) and w.strip() for w in value):
        raise ValueError("a word list needs at least one non-empty word")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(PromptOptions, EngineOptions):
    candidates: str | None = option(None, io=True, help="candidates JSONL from `generate`")
    out: str | None = option(None, io=True, help="feedback JSONL (appended; finished candidates are skipped on "
                             "re-run)")
    labeler: str | None = option(None, help="labeler model folder; in the loop, unset means self-feedback (the "
                                 "current policy labels its own claims)")
    divider: DividerKind = option(DividerKind.RULE, help="claim splitter: rule (deterministic, offline), llm (a "
                                  "prompted model) or holistic (one whole-answer question, the ablation)")
    divider_model: str | None = option(None, help="model of the llm divider (default: the labeler)")
    divider_engine: EngineKind | None = option(None, help="runtime of the divider model (default: the labeler's)")
    divider_engine_options: dict = option(factory=dict, help="an option of the divider's engine (default: the "
                                          "labeler's options when the divider model is the labeler)")
    batch_size: int = option(16, ge=1, identity=False, help="candidates per batch (their claims are scored together)")
    yes_words: tuple[str, ...] = option(YES_WORDS, check=_words, help="words whose tokens make the yes-set")
    no_words: tuple[str, ...] = option(NO_WORDS, check=_words, help="words whose tokens make the no-set")


FeedbackConfig = Config


class Inputs(NamedTuple):
    candidates: list[CandidateRecord]
    prompts: list[Prompt]


def engines(config: Config) -> dict[str, EngineSpec | None]:
    require(config, "labeler")
    labeler = EngineSpec.of(config.engine, config.labeler, config.engine_options, chat_template=config.chat_template)
    divider = None
    if config.divider is DividerKind.LLM:
        model = config.divider_model or config.labeler
        kind = config.divider_engine or config.engine
        options = config.divider_engine_options or (config.engine_options if model == config.labeler else {})
        # the stage's chat template belongs to the labeler's model: the divider has it when it is that model
        template = config.chat_template if model == config.labeler else None
        divider = EngineSpec.of(kind, model, options, chat_template=template)
    return {"labeler": labeler, "divider": divider}


def load(config: Config, part: Part) -> Inputs:
    require(config, "candidates", "out")
    prompts = load_prompt_set(config, part)
    wanted = {p.id for p in prompts}
    candidates = [c for c in read_typed(config.candidates, CandidateRecord) if c.prompt_id in wanted]
    return Inputs(candidates, prompts)



def expected_ids(inputs: Inputs, config: Config) -> list[str]:
    return [c.id for c in inputs.candidates]


def bind(config: Config, ctx: IterationContext) -> Config:
    return bind_prompts(config, ctx, candidates=str(ctx.folder / "candidates.jsonl"),
                        out=str(ctx.folder / "feedback.jsonl"), labeler=config.labeler or ctx.policy)


def run(inputs: Inputs, out: str | Path, config: Config, *, engines, progress: bool = True) -> StageReport:
    """Score every candidate: claims -> polar questions -> labeler yes/no -> score = -(rejected claims)."""
    candidates, prompts = inputs
    by_id = {p.id: p for p in prompts}
    missing = sorted({c.prompt_id for c in candidates} - by_id.keys())
    if missing:
        raise PromptError(f"feedback: candidates refer to prompts not in the prompt set: {missing[:5]}")
    labeler = engines["labeler"]
    divider = make_divider(config.divider, engines["divider"] if "divider" in engines else None)
    store = RecordStore(out)
    report = StageReport(NAME, total=len(candidates), already_done=len(store))
    todo = [c for c in candidates if c.id not in store]
    flagged = 0

    def process(batch: Sequence[CandidateRecord]) -> list[dict]:
        nonlocal flagged
        divisions = divider.divide([c.text for c in batch])
        requests, owner = [], []
        for k, (cand, div) in enumerate(zip(batch, divisions)):
            image = by_id[cand.prompt_id].image
            for j, question in enumerate(div.questions):
                requests.append(YesNoRequest(f"{cand.id}/q{j}", question, image))
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
            records.append(encode(FeedbackRecord(
                id=cand.id, prompt_id=cand.prompt_id, question=cand.question, image=cand.image, text=cand.text,
                seed=cand.seed, model=cand.model, claims=list(div.claims), questions=list(div.questions),
                logp_yes=[float(logp_yes[i]) for i in rows], logp_no=[float(logp_no[i]) for i in rows],
                p_yes=[float(logp_yes[i].exp()) for i in rows], p_no=[float(logp_no[i].exp()) for i in rows],
                verdicts=[bool(logp_yes[i] > logp_no[i]) for i in rows], n_claims=n_claims,
                n_rejected=int(scores.n_rejected[k]), score=float(scores.scores[k]), no_claims=n_claims == 0,
                divider=div.method, divide_notes=list(div.notes), labeler=labeler.model_name,
            )))
        return records

    run_batches(todo, config.batch_size, process, store, report, item_id=lambda c: c.id,
                skip_bad=config.skip_bad, desc=NAME, progress=progress)
    report.notes["no_claims_flagged_this_run"] = flagged
    return report
