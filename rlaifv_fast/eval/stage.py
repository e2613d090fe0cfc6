"""The `eval` stage: a benchmark's items through an engine, one record per item, then the benchmark's metrics.

    rlaifv-fast eval --benchmark pope --model ./policy --data pope/ --images coco/val2014 --out eval/pope [--engine vllm]

Every item gets the model's greedy answer (`max_new_tokens`); polar items (kind yes_no) also get full-vocabulary
P(yes-set) vs P(no-set) at the first answer position of "<question> Please answer yes or no." (the labeler's token
sets). Records go to <out>/samples.jsonl (crash-safe, resumable like every stage; `--shard I/N` splits the items,
`rlaifv-fast merge` joins the shards' samples, and a re-run on the merged file only scores); the metrics to
<out>/report.json, <out>/report.md (the table, also printed) and <out>/report.png.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..engines import EngineSpec
from ..engines.base import NO_WORDS, YES_WORDS, SampleRequest, YesNoRequest
from ..options import option
from ..pipeline.contract import EngineOptions, IterationContext, RunOptions, StageReport, require, run_batches
from ..pipeline.records import EvalRecord, encode
from ..pipeline.sharding import Part, Shard, check_shard, select
from ..pipeline.store import RecordStore, atomic_path, read_records, write_json
from .base import Benchmark, BenchmarkScores, EvalItem

NAME = "eval"
HELP = ("evaluate a model on a hallucination benchmark (pope, objhal, amber, chair, shapes) without an LLM judge: "
        "per-sample JSONL, report JSON, markdown table, PNG")
DATA_PARALLEL = True


class BenchmarkKind(str, enum.Enum):
    POPE = "pope"
    OBJHAL = "objhal"
    AMBER = "amber"
    CHAIR = "chair"
    SHAPES = "shapes"


def _words(value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(w, str) and w.strip() for w in value):
        raise ValueError("a word list needs at least one non-empty word")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(RunOptions, EngineOptions):
    benchmark: BenchmarkKind = option(BenchmarkKind.SHAPES, help="the benchmark")
    model: str | None = option(None, io=True, help="the model folder to evaluate")
    data: str | None = option(None, help="the benchmark's files: pope: question file(s) or their folder; objhal: "
                              "the prompt JSONL; amber: the AMBER data folder; chair: the image list (JSONL) or "
                              "image folder; shapes: none (the demo world) or a model folder whose sft_report.json "
                              "names the world")
    images: str | None = option(None, help="folder of the images the benchmark files name (pope, objhal, amber)")
    annotations: str | None = option(None, help="COCO annotations folder with instances_*2014.json and "
                                     "captions_*2014.json (objhal, chair)")
    similarity_model: str | None = option(None, help="amber: the spaCy model for near-synonym matching (default: "
                                          "en_core_web_lg when installed; without one, exact vocabulary matching, "
                                          "recorded in the report)")
    out: str | None = option(None, io=True, help="output folder: samples.jsonl, report.json, report.md, report.png")
    shard: str | None = option(None, io=True, check=check_shard, identity=False,
                               help="evaluate shard I of N of the items (I/N)")
    limit: int | None = option(None, ge=1, identity=False,
                               help="only the first N items (a quick look; shapes: N images)")
    batch_size: int = option(16, ge=1, identity=False, help="items per engine call")
    max_new_tokens: int = option(256, ge=1, help="longest greedy answer")
    yes_words: tuple[str, ...] = option(YES_WORDS, check=_words, help="words whose tokens make the yes-set")
    no_words: tuple[str, ...] = option(NO_WORDS, check=_words, help="words whose tokens make the no-set")


class Inputs(NamedTuple):
    benchmark: Benchmark
    items: list[EvalItem]


def make_benchmark(config: Config) -> Benchmark:
    kind = config.benchmark
    if kind is BenchmarkKind.SHAPES:
        from .shapes import ShapesBenchmark

        return ShapesBenchmark(config.data, **({"n_images": config.limit} if config.limit else {}))
    require(config, "data")
    if kind is BenchmarkKind.POPE:
        from .pope import PopeBenchmark

        return PopeBenchmark(config.data, images_dir=config.images)
    if kind is BenchmarkKind.AMBER:
        from .amber import AmberBenchmark

        return AmberBenchmark(config.data, images_dir=config.images, similarity=config.similarity_model)
    require(config, "annotations")
    if kind is BenchmarkKind.OBJHAL:
        from .objhal import ObjHalBenchmark

        return ObjHalBenchmark(config.data, config.annotations, images_dir=config.images)
    from .objhal import CocoCaptionBenchmark

    return CocoCaptionBenchmark(config.data, config.annotations)


def engines(config: Config) -> dict[str, EngineSpec]:
    require(config, "model")
    return {"model": EngineSpec.of(config.engine, config.model, config.engine_options,
                                   chat_template=config.chat_template)}


def load(config: Config, part: Part) -> Inputs:
    require(config, "out")
    benchmark = make_benchmark(config)
    items = benchmark.items()
    if config.limit and config.benchmark is not BenchmarkKind.SHAPES:
        items = items[: config.limit]
    return Inputs(benchmark, select(items, lambda i: i.id, Shard.parse(config.shard), part))


def out_path(config: Config) -> Path:
    return Path(config.out) / "samples.jsonl"


def expected_ids(inputs: Inputs, config: Config) -> list[str]:
    return [i.id for i in inputs.items]


def bind(config: Config, ctx: IterationContext) -> Config:
    """The loop evaluates ctx.policy (the iteration's trained policy) into <iteration>/eval/<benchmark>."""
    return dataclasses.replace(config, model=ctx.policy, out=str(ctx.folder / "eval" / config.benchmark.value),
                               shard=None, progress=ctx.progress)


def run(inputs: Inputs, out: str | Path, config: Config, *, engines, progress: bool = True) -> StageReport:
    benchmark, items = inputs
    store = RecordStore(out)
    report = StageReport(NAME, total=len(items), already_done=len(store))
    todo = [i for i in items if i.id not in store]

    def process(batch: Sequence[EvalItem]) -> list[dict]:
        engine = engines["model"]
        answers = engine.greedy([SampleRequest(i.id, i.prompt, i.image) for i in batch],
                                max_new_tokens=config.max_new_tokens)
        polar = [i for i in batch if i.kind == "yes_no"]
        yn = {}
        if polar:
            results = engine.yes_no([YesNoRequest(i.id, i.prompt, i.image) for i in polar],
                                    yes_words=config.yes_words, no_words=config.no_words)
            yn = {r.request_id: r for r in results}
        records = []
        for item, a in zip(batch, answers):
            r = yn.get(item.id)
            records.append(encode(EvalRecord(
                id=item.id, benchmark=benchmark.name, split=item.split, kind=item.kind, prompt=item.prompt,
                image=item.image_ref, meta=item.meta, answer=a.text, num_tokens=a.num_tokens,
                finish_reason=a.finish_reason, logp_yes=None if r is None else float(r.logp_yes),
                logp_no=None if r is None else float(r.logp_no), model=engine.model_name,
            )))
        return records

    if todo:
        run_batches(todo, config.batch_size, process, store, report, item_id=lambda i: i.id, skip_bad=False,
                    desc=f"eval {benchmark.name}", progress=progress)
    if Path(out) == out_path(config):
        finish(out, config, report, inputs)
    return report


def finish(out: str | Path, config: Config, report: StageReport, inputs: Inputs) -> None:
    """Score the records of `inputs`' items and write report.json, report.md and report.png beside them."""
    benchmark, items = inputs
    wanted = {i.id for i in items}
    records = [r for r in read_records(out) if r["id"] in wanted] if Path(out).exists() else []
    scores = benchmark.score(records)
    folder = Path(out).parent
    summary = {"benchmark": benchmark.name, "model": Path(str(config.model)).name, "engine": config.engine.value,
               "items": len(items), "scored": len(records), **scores.to_dict()}
    write_json(folder / "report.json", summary)
    table = markdown_table(scores)
    with atomic_path(folder / "report.md") as tmp:
        Path(tmp).write_text(f"# {benchmark.name}: {summary['model']}\n\n{table}\n", encoding="utf-8")
    _plot(scores, folder / "report.png")
    report.notes.update({"rows": scores.rows, "notes": scores.notes, "report": str(folder / "report.json"),
                         "table": table})


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(scores: BenchmarkScores) -> str:
    metrics = list(dict.fromkeys(m for row in scores.rows.values() for m in row))
    lines = ["| row | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in scores.rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(m)) for m in metrics) + " |")
    return "\n".join(lines)


def _plot(scores: BenchmarkScores, path: Path) -> None:
    """Bars of every rate (a metric in [0, 1]) per row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the `bench` extra brings matplotlib; without it there is no picture
        return
    rows = list(scores.rows)
    metrics = [m for m in dict.fromkeys(m for r in scores.rows.values() for m in r)
               if all(isinstance(r.get(m), float) and 0 <= r[m] <= 1 for r in scores.rows.values() if m in r)]
    if not rows or not metrics:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) * len(metrics) / 3), 4))
    width = 0.8 / len(metrics)
    for k, m in enumerate(metrics):
        ax.bar([i + k * width for i in range(len(rows))], [scores.rows[r].get(m) or 0 for r in rows], width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(scores.benchmark)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def read_report(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "report.json").read_text())
