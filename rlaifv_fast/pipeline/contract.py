"""The one stage contract. Every stage module (generate, feedback, pairs, ref_logps, train, bon) defines

    NAME, HELP                      its command name and one line of help
    Config                          its options (an options.Options dataclass; io=True fields are its inputs/outputs)
    DATA_PARALLEL                   whether one launch may split it over processes (torchrun / accelerate)
    engines(config) -> {role: EngineSpec}       the model runtimes it needs (built lazily, shared when equal)
    load(config, part) -> inputs                 its inputs, as the shard and process `part` of this launch see them
    run(inputs, out, config, *, engines, progress) -> StageReport
    bind(config, ctx) -> config                  the loop's wiring: paths and models of iteration ctx.iteration
    out_path(config) -> Path                     (optional; default: its `out` option)

and optionally, for data parallelism, `merge_parts(parts, out, inputs, config)` (default: a record merge in
`expected_ids(inputs, config)` order) and `finish(out, config, report, inputs)` (work on the merged output). The CLI and the
loop both go through `execute` over the one table in stages.py, so a stage run by `rlaifv-fast generate`, by the
loop in this process, or by the loop as a child process writes the same records for the same settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from ..engines import EngineKind, EnginePool
from ..options import Options, option
from .data import PromptError
from .images import ImageError
from .sharding import Part, ProcessGroup, Shard, check_shard, merge_shard_records, part_path, part_paths, select
from .identity import check_identity, run_identity
from .store import RecordStore, exclusive, read_records, write_json

T = TypeVar("T")


@dataclasses.dataclass
class StageReport:
    """What a stage run did: inputs seen, records already there (resume), written now, inputs skipped (with
    skip_bad: "id: reason"), and stage-specific notes (e.g. train's final folder)."""

    stage: str
    total: int = 0
    already_done: int = 0
    written: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageReport:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class IterationContext:
    """What the loop tells a stage about iteration `iteration`: its folder, the prompts file and the policy that
    samples in it (also the frozen reference of its DPO)."""

    iteration: int
    folder: Path
    prompts: str
    limit: int | None
    policy: str
    progress: bool


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_batches(
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
        for batch in chunks(items, batch_size):
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


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage module seen through the contract."""

    module: types.ModuleType

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def help(self) -> str:
        return self.module.HELP

    @property
    def config(self) -> type:
        return self.module.Config

    @property
    def data_parallel(self) -> bool:
        return bool(getattr(self.module, "DATA_PARALLEL", False))

    def bind(self, config: Any, ctx: IterationContext) -> Any:
        return self.module.bind(config, ctx)

    def out_path(self, config: Any) -> Path:
        """The stage's `out_path(config)`, or its `out` option."""
        custom = getattr(self.module, "out_path", None)
        return Path(custom(config) if custom is not None else config.out)


def require(config: Any, *names: str) -> None:
    """A stage's io fields that must be set (the CLI's required flags), named as flags."""
    missing = ["--" + n.replace("_", "-") for n in names if getattr(config, n, None) in (None, "")]
    if missing:
        import sys

        module = type(config).__module__
        stage = getattr(sys.modules.get(module), "NAME", module.rsplit(".", 1)[-1])
        raise PromptError(f"{stage}: missing {', '.join(missing)}")


def execute(stage: Stage, config: Any, *, overwrite: bool = False) -> StageReport:
    """Run one stage from its config: inputs loaded, engines built, the run, engines closed. Under a
    multi-process launch a DATA_PARALLEL stage splits its inputs over the processes, each writes a part file beside
    the output, and the first process merges them into it (parts left by a crash are resumed, then removed)."""
    mod = stage.module
    part = Part.from_env()
    if part.world > 1 and not stage.data_parallel and stage.name != "train":
        raise PromptError(
            f"{stage.name} runs as one process (vLLM does its own tensor/data parallelism); launch it without "
            f"torchrun/accelerate (WORLD_SIZE={part.world})"
        )
    progress = bool(getattr(config, "progress", True))
    out = stage.out_path(config)
    if part.world == 1 or not stage.data_parallel:
        inputs = mod.load(config, Part())
        with _lock_unless_worker(out, part), EnginePool(mod.engines(config)) as engines:
            if part.main:
                check_identity(out, run_identity(stage.name, config), overwrite=overwrite)
            return mod.run(inputs, out, config, engines=engines, progress=progress)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_lock_unless_worker(out, part))
        if part.main:
            check_identity(out, run_identity(stage.name, config), overwrite=overwrite)
        group = ProcessGroup(part)
        stack.callback(group.close)
        inputs = mod.load(config, part)
        mine = part_path(out, part)
        if not hasattr(mod, "merge_parts"):
            _seed_part(out, mine, part)
        with EnginePool(mod.engines(config)) as engines:
            report = mod.run(inputs, mine, config, engines=engines, progress=progress and part.main)
        write_json(mine.with_name(mine.name + ".report.json"), report.to_dict())
        group.barrier()
        if part.main:
            parts = part_paths(out, part.world)
            reports = [StageReport.from_dict(_read_json(p.with_name(p.name + ".report.json"))) for p in parts]
            everything = mod.load(config, Part())  # the whole shard, for the merge's order and the final report
            merge = getattr(mod, "merge_parts", None)
            if merge is not None:
                merge(parts, out, everything, config)
            else:
                existing = [out] if out.exists() else []
                order = mod.expected_ids(everything, config) if hasattr(mod, "expected_ids") else None
                merge_shard_records(existing + [p for p in parts if p.exists()], out, order=order)
            for p in parts:
                for f in (p, p.with_name(p.name + ".report.json")):
                    if f.exists():
                        f.unlink()
            report = dataclasses.replace(
                reports[0],
                total=sum(r.total for r in reports),
                already_done=sum(r.already_done for r in reports),
                written=sum(r.written for r in reports),
                skipped=[s for r in reports for s in r.skipped],
                notes={**reports[0].notes, "processes": part.world},
            )
            finish = getattr(mod, "finish", None)
            if finish is not None:
                finish(out, config, report, everything)
        group.barrier()
        return report


def _lock_unless_worker(out: Path, part: Part):
    """The output's lock; a multi-process training takes it on its first process only."""
    return exclusive(out) if part.main else contextlib.nullcontext()


def _seed_part(out: Path, mine: Path, part: Part) -> None:
    """Resume a data-parallel record stage whose parts were already merged into `out` (a crash after the merge):
    this process's records of `out` go back into its part, so it skips them."""
    if not out.exists() or mine.exists():
        return
    owned = [r for r in read_records(out) if part.owns(str(r.get("prompt_id", r["id"])))]
    RecordStore(mine).append(owned)


def _read_json(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def resolve(path: str | os.PathLike | None, base: Path) -> str | None:
    """A path from a config as absolute, relative paths taken against `base`."""
    if path is None:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else (base / p))


# ------------------------------------------------------------------------------------ options shared by stages


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions(Options):
    progress: bool = option(True, io=True, identity=False, help="show progress bars")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptOptions(RunOptions):
    """Where a stage's prompts come from, and which of them this run handles."""

    prompts: str | None = option(None, io=True, help="prompt source: a .jsonl or .parquet file (rows with "
                                 "'question' and 'image' (a path relative to the file, or {bytes, path}), optional "
                                 "'id'), or a saved datasets folder")
    limit: int | None = option(None, io=True, ge=1, identity=False, help="use only the first N prompts")
    shard: str | None = option(None, io=True, check=check_shard, identity=False,
                               help="process shard I of N (I/N; split by a hash of the prompt id, so the shards' "
                               "outputs merge with `rlaifv-fast merge` into exactly the records of one run)")
    skip_bad: bool = option(False, identity=False, help="skip malformed rows and unreadable images (counted in the report) instead "
                            "of failing")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TemplateOptions(Options):
    """The chat template of a stage's model, for every engine of the stage that runs it (EngineOptions has it; the
    stages that always run transformers, reflogps and train, take it on its own)."""

    chat_template: str | None = option(None, help="a chat template (a Jinja file, or the template text) used instead "
                                       "of the model folder's, by every engine of the stage running that model "
                                       "(hf and vllm); needed for checkpoints that ship none, e.g. PaliGemma")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineOptions(TemplateOptions):
    engine: EngineKind = option(EngineKind.HF, help="model runtime: hf (transformers) or vllm")
    engine_options: dict = option(factory=dict, help="an engine option: hf: device, dtype, batch_size, "
                                  "trust_remote_code, local_files_only, attn_implementation; vllm: anything vllm.LLM "
                                  "takes (tensor_parallel_size, data_parallel_size, gpu_memory_utilization, "
                                  "max_model_len, dtype, ...)")


def load_prompt_set(config: PromptOptions, part: Part = Part()):
    """The prompts of `config` (limit applied first, then the shard, then this process's share)."""
    import sys

    from .data import load_prompts

    require(config, "prompts")
    prompts, report = load_prompts(config.prompts, skip_bad=config.skip_bad, limit=config.limit)
    for line in report.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return select(prompts, lambda p: p.id, Shard.parse(config.shard), part)


def bind_prompts(config: PromptOptions, ctx: IterationContext, **paths: Any) -> Any:
    """The loop's io for a prompt-driven stage: its prompts, limit and progress, plus the given paths/models."""
    return dataclasses.replace(config, prompts=ctx.prompts, limit=ctx.limit, shard=None, progress=ctx.progress,
                               **paths)
