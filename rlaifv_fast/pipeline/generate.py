"""Generate: deconfounded candidate sampling. n candidates per (image, instruction) with ONE
decoding setting; they differ only by their seed, derived from (run seed, prompt id, candidate index), so every
candidate is reproducible alone, in any batch, on either engine's own sampler.

Output: candidates JSONL (records.CandidateRecord), appended batch by batch; a re-run skips finished candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ..engines import EngineSpec
from ..engines.base import DecodingConfig, SampleRequest
from ..options import option
from .contract import EngineOptions, IterationContext, PromptOptions, StageReport, bind_prompts, load_prompt_set, require, run_batches
from .data import Prompt
from .records import CandidateRecord, encode
from .sharding import Part
from .store import RecordStore

NAME = "generate"
HELP = "sample n candidates per prompt with one decoding setting (deconfounded)"
DATA_PARALLEL = True


def candidate_id(prompt_id: str, index: int) -> str:
    return f"{prompt_id}#{index}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(PromptOptions, EngineOptions):
    model: str | None = option(None, io=True, help="policy model folder (a hub name only with --engine-options "
                               "local_files_only=false)")
    out: str | None = option(None, io=True, help="candidates JSONL (appended; finished candidates are skipped on "
                             "re-run)")
    n: int = option(10, ge=1, help="candidates per prompt")
    decoding: DecodingConfig = option(factory=DecodingConfig, flatten=True, help="the one decoding setting")
    run_seed: int = option(0, help="run seed; candidate seeds derive from (seed, prompt id, index); the loop adds "
                           "the iteration number")
    batch_size: int = option(8, ge=1, identity=False, help="prompts per engine call")
    mixed_decodings: tuple[DecodingConfig, ...] = option(
        (), help="the confounded baseline (an ablation, not the method): candidate i is sampled with setting "
        "i %% len of this JSON list of decoding settings; empty means one setting for all")

    def settings(self) -> list[tuple[DecodingConfig, list[int]]]:
        """(decoding, candidate indices) groups: one group of all n, or one per mixed setting."""
        if not self.mixed_decodings:
            return [(self.decoding, list(range(self.n)))]
        m = len(self.mixed_decodings)
        return [(d, list(range(k, self.n, m))) for k, d in enumerate(self.mixed_decodings) if k < self.n]


GenerateConfig = Config


def engines(config: Config) -> dict[str, EngineSpec]:
    require(config, "model")
    return {"policy": EngineSpec.of(config.engine, config.model, config.engine_options,
                                    chat_template=config.chat_template)}


def load(config: Config, part: Part) -> list[Prompt]:
    require(config, "out")
    return load_prompt_set(config, part)



def expected_ids(prompts: Sequence[Prompt], config: Config) -> list[str]:
    return [candidate_id(p.id, i) for p in prompts for i in range(config.n)]


def bind(config: Config, ctx: IterationContext) -> Config:
    return bind_prompts(config, ctx, model=ctx.policy, out=str(ctx.folder / "candidates.jsonl"),
                        run_seed=config.run_seed + ctx.iteration)


def run(prompts: Sequence[Prompt], out: str | Path, config: Config, *, engines, progress: bool = True) -> StageReport:
    engine = engines["policy"]
    store = RecordStore(out)
    report = StageReport(NAME, total=len(prompts) * config.n)
    todo = [p for p in prompts if any(candidate_id(p.id, i) not in store for i in range(config.n))]
    report.already_done = len(store)
    groups = config.settings()

    def process(batch: Sequence[Prompt]) -> list[dict]:
        requests = [SampleRequest(p.id, p.question, p.image) for p in batch]
        records: list[list[CandidateRecord]] = [[] for _ in batch]
        for k, (decoding, indices) in enumerate(groups):
            # each mixed setting draws from its own seed stream; candidate indices stay 0..n-1 across settings
            samples = engine.sample(requests, len(indices), decoding, run_seed=config.run_seed + 7919 * k)
            for rows, prompt, candidates in zip(records, batch, samples):
                for s in candidates:
                    index = indices[s.index]
                    rows.append(CandidateRecord(
                        id=candidate_id(prompt.id, index), prompt_id=prompt.id, question=prompt.question,
                        image=prompt.image_ref, index=index, seed=s.seed, run_seed=config.run_seed, text=s.text,
                        num_tokens=s.num_tokens, finish_reason=s.finish_reason, model=engine.model_name,
                        decoding=dataclasses.asdict(decoding),
                    ))
        return [encode(r) for rows in records for r in sorted(rows, key=lambda r: r.index)]

    run_batches(todo, config.batch_size, process, store, report, item_id=lambda p: p.id,
                skip_bad=config.skip_bad, desc=NAME, progress=progress)
    return report
