"""K iterations of RLAIF-V in one call (method.md stage 8): each iteration regenerates candidates with the newest
policy, labels them, builds pairs, scores them with the frozen reference (= the policy at the start of the
iteration) and trains with DPO; the trained model is the next iteration's policy.

Resumable at stage granularity: `loop_state.json` in the work folder records every finished (iteration, stage), and
the stages themselves resume inside (generate and feedback skip finished records, training restarts from its last
checkpoint), so a crash in iteration 3 restarts in iteration 3 at the stage it was in.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import Prompt
from .pairs import PairConfig
from .stages import FeedbackConfig, GenerateConfig, load_stage_records, run_feedback, run_generate, run_pairs
from .store import write_json

STAGES = ("generate", "feedback", "pairs", "reflogps", "train")
DIVIDERS = ("rule", "llm", "holistic")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """iterations: K (the paper: 4). labeler: a separate labeler model (the paper's 7B setting), or None for
    self-feedback (the policy labels its own claims). divider: "rule", "llm" (the labeler prompted to split) or
    "holistic" (no divide-and-conquer: one "is this description accurate?" question per answer, an ablation)."""

    work_dir: str
    iterations: int = 4
    labeler: str | None = None
    divider: str = "rule"
    engine_options: dict = dataclasses.field(default_factory=dict)
    generate: GenerateConfig = GenerateConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    pairs: PairConfig = PairConfig()
    train: Any = None  # a train.TrainConfig; its output_dir is set per iteration
    score_batch_size: int = 8
    progress: bool = True

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.divider not in DIVIDERS:
            raise ValueError(f"divider must be one of {DIVIDERS}, got {self.divider!r}")


@dataclasses.dataclass
class LoopResult:
    policy: str  # the final policy folder
    iterations: list[dict]  # per iteration: policy used, stage reports (summaries)


class _State:
    """Finished (iteration, stage) pairs and the policy of each iteration, saved atomically after every stage."""

    def __init__(self, path: Path, initial_policy: str):
        self.path = path
        if path.exists():
            self.data = json.loads(path.read_text())
            if self.data.get("initial_policy") != initial_policy:
                raise ValueError(
                    f"{path} belongs to a loop started from {self.data.get('initial_policy')!r}, not {initial_policy!r}"
                    "; use another work folder"
                )
        else:
            self.data = {"initial_policy": initial_policy, "done": {}, "policies": {}, "reports": {}}

    def done(self, it: int, stage: str) -> bool:
        return stage in self.data["done"].get(str(it), [])

    def mark(self, it: int, stage: str, report: Any = None) -> None:
        self.data["done"].setdefault(str(it), []).append(stage)
        if report is not None:
            self.data["reports"].setdefault(str(it), {})[stage] = report
        write_json(self.path, self.data)

    def policy(self, it: int) -> str:
        if it == 0:
            return self.data["initial_policy"]
        return self.data["policies"][str(it - 1)]

    def set_trained(self, it: int, folder: str) -> None:
        self.data["policies"][str(it)] = folder


def _summary(report: Any) -> Any:
    if dataclasses.is_dataclass(report):
        return json.loads(json.dumps(dataclasses.asdict(report), default=str))
    return report


def run_loop(prompts: Sequence[Prompt], policy: str, config: LoopConfig) -> LoopResult:
    from .divide import HolisticDivider, LLMDivider, RuleDivider
    from .engines import make_engine
    from .ref_logps import run_ref_logps
    from .train import TrainConfig, train_dpo

    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state = _State(work / "loop_state.json", str(policy))
    train_config = config.train if config.train is not None else TrainConfig(output_dir=str(work))
    for it in range(config.iterations):
        if all(state.done(it, s) for s in STAGES):
            continue
        d = work / f"iter{it}"
        d.mkdir(exist_ok=True)
        current = state.policy(it)
        candidates, feedback, pairs_dir = d / "candidates.jsonl", d / "feedback.jsonl", d / "pairs"
        ref_pairs = d / "pairs.ref.parquet"

        engine = None
        if not (state.done(it, "generate") and state.done(it, "feedback") and state.done(it, "reflogps")):
            engine = make_engine("hf", current, options=dict(config.engine_options))
        if not state.done(it, "generate"):
            gen = dataclasses.replace(config.generate, run_seed=config.generate.run_seed + it)
            state.mark(it, "generate", _summary(run_generate(prompts, engine, candidates, gen,
                                                            progress=config.progress)))
        if not state.done(it, "feedback"):
            labeler = engine if config.labeler is None else make_engine("hf", config.labeler,
                                                                        options=dict(config.engine_options))
            if config.divider == "llm":
                divider = LLMDivider(labeler)
            elif config.divider == "holistic":
                divider = HolisticDivider()
            else:
                divider = RuleDivider()
            report = run_feedback(load_stage_records(candidates), prompts, divider, labeler, feedback,
                                  config.feedback, progress=config.progress)
            state.mark(it, "feedback", _summary(report))
            if labeler is not engine:
                del labeler
        if not state.done(it, "pairs"):
            _, report = run_pairs(load_stage_records(feedback), prompts, pairs_dir, config.pairs)
            state.mark(it, "pairs", _summary(report))
        if not state.done(it, "reflogps"):
            # the frozen reference is the policy at the start of this iteration
            report = run_ref_logps(pairs_dir / "pairs.rlaifv.parquet", engine, ref_pairs,
                                   batch_size=config.score_batch_size, progress=config.progress)
            state.mark(it, "reflogps", _summary(report))
        del engine
        gc.collect()
        if not state.done(it, "train"):
            import pyarrow.parquet as pq

            if pq.read_metadata(ref_pairs).num_rows == 0:
                # nothing to learn from: the policy carries over unchanged (reported, not hidden)
                state.set_trained(it, current)
                state.mark(it, "train", {"steps": 0, "final_dir": current, "note": "no preference pairs"})
                continue
            tc = dataclasses.replace(train_config, output_dir=str(d / "train"), resume=True)
            result = train_dpo(ref_pairs, current, tc)
            state.set_trained(it, str(result.final_dir))
            state.mark(it, "train", {"steps": result.steps, "final_dir": str(result.final_dir)})
    reports = [
        {"iteration": it, "policy": state.policy(it), **state.data["reports"].get(str(it), {})}
        for it in range(config.iterations)
    ]
    return LoopResult(state.policy(config.iterations), reports)
