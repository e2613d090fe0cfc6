"""K iterations of RLAIF-V in one command: each iteration regenerates candidates with the
newest policy, labels them, builds pairs, scores them with the frozen reference (= the policy at the start of the
iteration) and trains with DPO; the trained model is the next iteration's policy.

The loop is a plain walk over stages.LOOP_STAGES: each stage's config is the loop's section of that name, bound to
the iteration's files (contract `bind`), then run either here (`isolate=False`, the demo and quick tests) or as its
own process: the stage's CLI command with that config, behind the stage's launcher (`launch`, e.g. train under
`torchrun --nproc_per_node 8` or `accelerate launch --config_file ...`). An isolated stage's GPU memory (a vLLM
engine's) is gone before the next stage starts, and a crash in one stage cannot corrupt another's state. Both modes
run the same code on the same config, so they write the same records.

Resumable exactly: loop_state.json in the work folder records every finished (iteration, stage) and its report, and
the stages resume inside (generate, feedback and bon skip finished records; training continues from its last
checkpoint). Kill the loop at any moment (its stage processes die with it) and run the same command again. Paths
inside the work folder are stored relative to it, so a resume from another working directory finds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..options import Options, option, to_dict
from ..eval.stage import Config as EvalConfig
from .contract import IterationContext, StageReport, execute
from .identity import run_identity
from .feedback import Config as FeedbackConfig
from .generate import Config as GenerateConfig
from .pairs import Config as PairConfig
from .ref_logps import Config as RefLogpsConfig
from .stages import LOOP_STAGES, STAGES
from .store import write_json
from .train import TrainConfig

DIE_WITH_PARENT = "RLAIFV_FAST_DIE_WITH_PARENT"


class NoPairs(str, enum.Enum):
    """What an iteration with no preference pairs does: carry the policy over unchanged (said loudly), or fail."""

    CARRY = "carry"
    FAIL = "fail"


class LoopError(RuntimeError):
    """A stage of the loop failed, or the work folder belongs to another run."""


class Select(str, enum.Enum):
    LAST = "last"
    BEST = "best"


class Goal(str, enum.Enum):
    MIN = "min"
    MAX = "max"


def _evals(value: dict) -> None:
    from ..eval.stage import BenchmarkKind

    known = [b.value for b in BenchmarkKind]
    bad = sorted(set(value) - set(known))
    if bad:
        raise ValueError(f"unknown benchmark(s) {bad}; choose from {known}")


def _launch(value: dict) -> None:
    unknown = sorted(set(value) - set(LOOP_STAGES))
    if unknown:
        raise ValueError(f"launchers for unknown stage(s) {unknown}; stages: {list(LOOP_STAGES)}")
    for stage, command in value.items():
        if not isinstance(command, str) or not shlex.split(command):
            raise ValueError(f"the launcher of {stage} must be a command line, got {command!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig(Options):
    prompts: str | None = option(None, help="prompt source (as for `generate`), the same prompts every iteration")
    limit: int | None = option(None, ge=1, help="use only the first N prompts")
    model: str | None = option(None, help="the initial policy folder (also the first iteration's reference)")
    work_dir: str | None = option(None, help="folder for every iteration's outputs and loop_state.json")
    iterations: int = option(4, ge=1, help="K (the paper: 4)")
    isolate: bool = option(False, identity=False, help="run each stage of each iteration as its own process (its "
                           "CLI command behind its launcher); off: in this process")
    launch: dict = option(factory=dict, check=_launch, identity=False,
                          help="STAGE=COMMAND: the launcher of a stage in isolated mode, e.g. train='torchrun "
                          "--nproc_per_node 8' or reflogps='accelerate launch --num_processes 8'; {python} stands for "
                          "this interpreter (default: {python})")
    on_no_pairs: NoPairs = option(NoPairs.CARRY, help="an iteration without preference pairs: carry the policy "
                                  "over (with a warning) or fail")
    eval: dict = option(factory=dict, check=_evals, help="BENCH=PATH: evaluate the initial policy and every "
                        "iteration's trained policy on this benchmark (repeatable; PATH is its --data, empty for "
                        "shapes); the scores go into loop_state.json and the loop's report")
    select: Select = option(Select.LAST, help="the policy carried into the next iteration: last (the one just "
                            "trained) or best (by --select-metric, between it and the policy it started from)")
    select_metric: str | None = option(None, help="BENCH:METRIC deciding --select best, e.g. "
                                       "shapes:descriptions.response_level or pope:adversarial.f1")
    select_goal: Goal = option(Goal.MIN, help="min: lower is better (hallucination rates); max: higher is better "
                               "(F1, accuracy, recall)")
    progress: bool = option(True, identity=False, help="show progress bars")
    generate: GenerateConfig = option(factory=GenerateConfig, help="the generate stage")
    feedback: FeedbackConfig = option(factory=FeedbackConfig, help="the feedback stage (unset labeler: "
                                      "self-feedback)")
    pairs: PairConfig = option(factory=PairConfig, help="the pairs stage")
    reflogps: RefLogpsConfig = option(factory=RefLogpsConfig, help="the reference log-prob stage")
    train: TrainConfig = option(factory=TrainConfig, help="the DPO stage")
    evaluate: EvalConfig = option(factory=EvalConfig, help="the eval stage, for every --eval benchmark (its "
                                  "benchmark and data come from --eval)")

    def __post_init__(self):
        super().__post_init__()
        if self.select is Select.BEST:
            if not self.select_metric or ":" not in self.select_metric:
                raise ValueError("--select best needs --select-metric BENCH:METRIC")
            bench = self.select_metric.split(":", 1)[0]
            if bench not in self.eval:
                raise ValueError(f"--select-metric names {bench!r}, which is not an --eval benchmark "
                                 f"({sorted(self.eval)})")


@dataclasses.dataclass
class LoopResult:
    policy: str  # the final policy folder
    iterations: list[dict]  # per iteration: the policy it sampled with, and its stages' reports


class _State:
    """Finished (iteration, stage) pairs, their reports and each iteration's trained policy, saved atomically after
    every stage. Paths inside the work folder are relative to it."""

    def __init__(self, work: Path, initial_policy: str):
        self.work = work
        self.path = work / "loop_state.json"
        initial = str(Path(initial_policy).resolve())
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            if self.data.get("initial_policy") != initial:
                raise LoopError(
                    f"{self.path} belongs to a loop started from {self.data.get('initial_policy')!r}, not "
                    f"{initial!r}; use another work folder"
                )
        else:
            self.data = {"initial_policy": initial, "done": {}, "policies": {}, "reports": {}}

    def check(self, identity: dict) -> None:
        """The loop's settings must be those it started with: finished stages are not redone."""
        from .identity import _differences

        old = self.data.setdefault("identity", identity)
        diff = _differences({"options": old["options"]}, {"options": identity["options"]})
        if diff:
            raise LoopError(f"{self.path} belongs to a loop with other settings ({'; '.join(diff[:6])}); resume it "
                            "with the settings it started with, or use another work folder")

    def done(self, it: int, stage: str) -> bool:
        return stage in self.data["done"].get(str(it), [])

    def mark(self, it: int | str, stage: str, report: dict, *, carried: str | None = None,
             trained: str | None = None) -> None:
        """Note a finished stage; `carried`: the policy the next iteration starts from; `trained`: this iteration's
        trained policy (before selection)."""
        if carried is not None:
            self.data["policies"][str(it)] = self._store(carried)
        if trained is not None:
            self.data.setdefault("trained", {})[str(it)] = self._store(trained)
        self.data["reports"].setdefault(str(it), {})[stage] = report
        self.data["done"].setdefault(str(it), []).append(stage)
        write_json(self.path, self.data)

    def trained(self, it: int) -> str:
        return str(self.work / self.data["trained"][str(it)])

    def report(self, it: int | str, stage: str) -> dict:
        return self.data["reports"][str(it)][stage]

    def policy(self, it: int) -> str:
        """The policy that samples in iteration `it` (an absolute path)."""
        if it == 0:
            return self.data["initial_policy"]
        return str(self.work / self.data["policies"][str(it - 1)])  # an absolute stored path stays itself

    def _store(self, folder: str) -> str:
        path = Path(folder).resolve()
        with contextlib.suppress(ValueError):
            return str(path.relative_to(self.work))
        return str(path)


@contextlib.contextmanager
def _exclusive(work: Path):
    """One loop per work folder: a second process fails at once instead of interleaving records."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoopError(f"another loop is running in {work} (its lock is {work / '.lock'})") from None
        yield


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed loop takes its stage processes along)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    die_with_parent()


class StageMeter:
    """Wall time and peak memory of one stage: the resident set of this process and all its descendants (an
    isolated stage's launcher and workers), sampled every 50 ms."""

    def __init__(self, interval: float = 0.05):
        import threading

        import psutil

        self._psutil, self._interval = psutil, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.peak = 0

    def _tree_rss(self) -> int:
        me = self._psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(self._psutil.Error):
                total += p.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> StageMeter:
        import time

        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import time

        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._t0

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "peak_rss_mib": round(self.peak / 2**20, 1)}


def launcher(config: LoopConfig, stage: str) -> list[str]:
    command = config.launch.get(stage, "{python}")
    return [sys.executable if part == "{python}" else part for part in shlex.split(command)]


def _run_isolated(stage: str, stage_config: Any, folder: Path, config: LoopConfig) -> dict:
    cfg_path = folder / f"{stage}.config.json"
    report_path = folder / f"{stage}.stage-report.json"
    write_json(cfg_path, {stage: to_dict(stage_config)})
    if report_path.exists():
        report_path.unlink()
    cmd = launcher(config, stage) + ["-m", "rlaifv_fast.cli", "--config", str(cfg_path), stage,
                                     "--report-json", str(report_path)]
    env = dict(os.environ, **{DIE_WITH_PARENT: "1"})
    # the stage's report goes to its log (and report_path); progress and errors stay on this terminal
    with open(folder / f"{stage}.log", "ab") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, preexec_fn=_child_setup)
    if proc.returncode != 0 or not report_path.exists():
        raise LoopError(f"stage {stage} of {folder.name} failed (exit status {proc.returncode}): "
                        f"{shlex.join(cmd)}\nre-run the same loop command to resume")
    return json.loads(report_path.read_text())


def _run_stage(name: str, stage_config: Any, folder: Path, config: LoopConfig) -> dict:
    """One stage, in this process or as its own process; its report with the stage's wall time and peak memory."""
    with StageMeter() as meter:
        if config.isolate:
            report = _run_isolated(name, stage_config, folder, config)
        else:
            report = execute(STAGES[name], stage_config).to_dict()
    report["meter"] = meter.as_dict()
    return report


def _evaluate(state: _State, key: int | str, folder: Path, policy: str, config: LoopConfig, prompts: str) -> None:
    """Every --eval benchmark on `policy`, into <folder>/eval/<bench>, each noted as stage eval:<bench> of `key`."""
    ctx = IterationContext(-1, folder, prompts, config.limit, policy, config.progress)
    for bench, data in config.eval.items():
        step = f"eval:{bench}"
        if state.done(key, step):
            continue
        section = dataclasses.replace(config.evaluate, benchmark=bench, data=data or None)
        report = _run_stage("eval", STAGES["eval"].bind(section, ctx), folder, config)
        state.mark(key, step, report)


def _metric(state: _State, key: int | str, config: LoopConfig) -> float:
    from ..eval.base import BenchmarkScores

    bench, name = config.select_metric.split(":", 1)
    rows = state.report(key, f"eval:{bench}")["notes"]["rows"]
    return BenchmarkScores(bench, rows).metric(name)


def run_loop(config: LoopConfig) -> LoopResult:
    for name in ("prompts", "model", "work_dir"):
        if not getattr(config, name):
            raise LoopError(f"loop needs --{name.replace('_', '-')}")
    work = Path(config.work_dir).resolve()
    prompts = str(Path(config.prompts).resolve()) if "://" not in str(config.prompts) else str(config.prompts)
    # paths as absolute ones, so the loop's identity does not depend on the directory it is resumed from
    absolute = lambda p: str(Path(p).resolve()) if p and Path(p).exists() else p  # noqa: E731
    config = dataclasses.replace(
        config, prompts=prompts, model=absolute(config.model), work_dir=str(work),
        feedback=dataclasses.replace(config.feedback, labeler=absolute(config.feedback.labeler),
                                     divider_model=absolute(config.feedback.divider_model)))
    with _exclusive(work):
        state = _State(work, config.model)
        state.check(run_identity("loop", config))
        if config.eval:
            _evaluate(state, "initial", work / "initial", state.policy(0), config, prompts)
        for it in range(config.iterations):
            folder = work / f"iter{it}"
            folder.mkdir(exist_ok=True)
            ctx = IterationContext(it, folder, prompts, config.limit, state.policy(it), config.progress)
            for name in LOOP_STAGES:
                if state.done(it, name):
                    continue
                report = _run_stage(name, STAGES[name].bind(getattr(config, name), ctx), folder, config)
                if name != "train":
                    state.mark(it, name, report)
                    continue
                trained = report["notes"].get("final_dir")
                if trained is None:
                    message = (f"rlaifv-fast loop: iteration {it} found no preference pairs "
                               f"({folder / 'pairs' / 'pairs.report.json'}); ")
                    if config.on_no_pairs is NoPairs.FAIL:
                        raise LoopError(message + "stopping (on_no_pairs=fail)")
                    print("WARNING " + message + "the policy carries over unchanged", file=sys.stderr)
                    trained = ctx.policy
                state.mark(it, name, report, trained=trained, carried=None if config.eval else trained)
            if not config.eval:
                continue
            _evaluate(state, it, folder, state.trained(it), config, prompts)
            if not state.done(it, "select"):
                carried, choice = state.trained(it), {"select": config.select.value}
                if config.select is Select.BEST:
                    # the score of the policy this iteration started from: the initial one's, or the one carried
                    before = _metric(state, "initial", config) if it == 0 else state.report(it - 1, "select")["score"]
                    after = _metric(state, it, config)
                    keep = after > before if config.select_goal is Goal.MIN else after < before
                    if keep:  # the trained policy is worse: carry the one the iteration started from
                        carried = ctx.policy
                    choice.update(metric=config.select_metric, goal=config.select_goal.value, started_from=before,
                                  trained=after, carried="started_from" if keep else "trained",
                                  score=before if keep else after)
                state.mark(it, "select", choice, carried=carried)
    reports = [
        {"iteration": it, "policy": state.policy(it), **state.data["reports"].get(str(it), {})}
        for it in range(config.iterations)
    ]
    return LoopResult(state.policy(config.iterations), reports)


__all__ = ["LoopConfig", "LoopError", "LoopResult", "NoPairs", "StageReport", "run_loop"]
