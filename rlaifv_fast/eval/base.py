"""What every benchmark provides to the `eval` stage: its items (what to ask the model), and the scoring of the
per-sample records the stage wrote. The stage (stage.py) runs the items through an engine; a benchmark never sees
an engine, so its metrics are pure functions of records (tested on hand-made records with hand-computed values).

A record is the JSON object the stage writes per item:
    id, split, kind, prompt, image (a path or None), meta   the item, as the benchmark made it
    answer, num_tokens, finish_reason                         the model's greedy answer to `prompt`
    logp_yes, logp_no                                         for kind "yes_no": full-vocabulary log P(yes-set),
                                                              log P(no-set) at the first answer position of
                                                              "<prompt> Please answer yes or no." (the labeler's
                                                              token sets), else None
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

KINDS = ("generate", "yes_no")


class BenchmarkFileError(ValueError):
    """A benchmark file that does not have the benchmark's published format: names the file, line (or record) and
    field."""


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One question of a benchmark. `id` is unique within the benchmark (stable across runs and shards); `split`
    groups items into the rows of the report; `image` is a path, {bytes, path} or None; `meta` holds the item's
    ground truth (JSON-serialisable)."""

    id: str
    split: str
    kind: str
    prompt: str
    image: Any = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"EvalItem.kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def image_ref(self) -> str | None:
        if self.image is None:
            return None
        if isinstance(self.image, (str, os.PathLike)):
            return os.fspath(self.image)
        if isinstance(self.image, dict):
            return self.image.get("path") or "<bytes>"
        return "<image>"


@dataclasses.dataclass
class BenchmarkScores:
    """rows: row name (a split, or "overall") -> metric -> value, the report's table; notes: how it was scored
    (e.g. which object matcher was used), recorded in the report."""

    benchmark: str
    rows: dict[str, dict[str, Any]]
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def metric(self, name: str) -> float:
        """A metric by name: "<row>.<metric>" (e.g. "random.f1"), or "<metric>" for a benchmark with one row or an
        "overall" row."""
        if "." in name:
            row, metric = name.rsplit(".", 1)
        elif len(self.rows) == 1:
            row, metric = next(iter(self.rows)), name
        else:
            row, metric = "overall", name
        if row not in self.rows or metric not in self.rows[row]:
            known = [f"{r}.{m}" for r, ms in self.rows.items() for m in ms]
            raise KeyError(f"{self.benchmark} has no metric {name!r}; known: {known}")
        value = self.rows[row][metric]
        if value is None:
            raise KeyError(f"{self.benchmark}: metric {name!r} is undefined on this data")
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class Benchmark(Protocol):
    name: str

    def items(self) -> list[EvalItem]:
        """Every item of the benchmark, in the published order."""

    def score(self, records: Sequence[dict]) -> BenchmarkScores:
        """The benchmark's metrics over the records of its items (records of other benchmarks are an error)."""


def safe_div(num: float, den: float) -> float | None:
    """num / den, or None when the denominator is zero (a rate over nothing is undefined, not 0)."""
    return num / den if den else None


def json_rows(path: Path) -> list[tuple[str, int, object]]:
    """(where, index, row) for a JSON array file (where = "record i") or a JSON-lines file (where = "line n");
    index counts records from 0, skipping blank lines."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkFileError(f"{path}: not valid JSON ({e})") from e
        return [(f"{path}: record {i}", i, row) for i, row in enumerate(data)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkFileError(f"{path}:{lineno}: not a JSON object ({e})") from e
        rows.append((f"{path}:{lineno}", len(rows), row))
    return rows
