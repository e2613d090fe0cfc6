"""Splitting a stage's work over nodes (`--shard I/N`, one job per shard) and over the processes of one launch
(data parallelism under torchrun / accelerate), and merging the pieces back.

Both splits are by a hash of a stable key (the prompt id; the pair id for reference log-probs), so they do not depend
on the input order, and they compose: shard I of N is split again over the W processes of its launch. Shard outputs
merge (`rlaifv-fast merge`) into exactly the records of one run; the processes of one launch write their part files
beside the output and the first process merges them into it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .store import atomic_path, read_records

T = TypeVar("T")


class ShardMergeError(ValueError):
    """Shard outputs disagree: one record id with different contents, or a part is missing."""


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if text is None:
            return cls()
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ValueError(f"a shard is I/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard {text}: I must be in [0, N) and N >= 1")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def check_shard(text: str) -> None:
    Shard.parse(text)


def _hash(key: str, salt: str = "") -> int:
    return int(hashlib.sha1((salt + key).encode()).hexdigest(), 16)


def in_shard(key: str, shard: Shard) -> bool:
    return shard.count == 1 or _hash(key) % shard.count == shard.index


@dataclasses.dataclass(frozen=True)
class Part:
    """This process's share of a data-parallel launch (RANK of WORLD_SIZE, from torchrun / accelerate)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Part:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        return cls(rank, world) if world > 1 else cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def owns(self, key: str) -> bool:
        # a salted hash, independent of the shard split it refines
        return self.world == 1 or _hash(key, "part:") % self.world == self.rank


def select(items: Iterable[T], key: Callable[[T], str], shard: Shard = Shard(), part: Part = Part()) -> list[T]:
    """The items of shard `shard` that process `part` handles."""
    return [x for x in items if in_shard(key(x), shard) and part.owns(key(x))]


def shard_counts(keys: Iterable[str], count: int) -> list[int]:
    """How many of `keys` each of `count` shards gets."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    counts = [0] * count
    for key in keys:
        counts[_hash(key) % count] += 1
    return counts


def part_path(out: str | os.PathLike, part: Part) -> Path:
    """Where process `part` of a data-parallel launch writes its share of `out`."""
    out = Path(out)
    return out.with_name(f"{out.name}.part{part.rank}-of-{part.world}")


def part_paths(out: str | os.PathLike, world: int) -> list[Path]:
    return [part_path(out, Part(r, world)) for r in range(world)]


def merge_shard_records(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike | None = None, *,
                        order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Merge record files (JSONL) that shards or processes of one stage wrote: duplicates (same id, same contents,
    e.g. from an overlapping rerun) kept once, one id with different contents an error. Returned (and, with
    out_path, written atomically) in `order` (ids; unknown ids after them, sorted) or sorted by id."""
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for rec in read_records(path):
            rid = str(rec["id"])
            if rid in merged:
                if merged[rid] != rec:
                    raise ShardMergeError(
                        f"record {rid!r} differs between {origin[rid]} and {os.fspath(path)}: shards of one run must "
                        "agree (same run seed, model, decoding and engine options?)"
                    )
                continue
            merged[rid] = rec
            origin[rid] = os.fspath(path)
    if order is not None:
        rank = {rid: i for i, rid in enumerate(order)}
        keys = sorted(merged, key=lambda k: (rank.get(k, len(rank)), k))
    else:
        keys = sorted(merged)
    records = [merged[k] for k in keys]
    if out_path is not None:
        with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    return records


def merge_parquet(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, key: str = "idx",
                  order: Sequence[str] | None = None) -> int:
    """Merge parquet files of one stage's shards (same columns) into one, rows in `order` of their `key` column (or
    sorted by it); a key present twice with different rows is an error. Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in paths]
    if not tables:
        raise ShardMergeError("nothing to merge: no input files")
    names = tables[0].column_names
    for p, t in zip(paths, tables):
        if t.column_names != names:
            raise ShardMergeError(f"{os.fspath(p)}: columns {t.column_names} differ from {names}")
        if key not in names:
            raise ShardMergeError(f"{os.fspath(p)}: no {key!r} column to merge by")
    rows: dict[str, dict] = {}
    for p, t in zip(paths, tables):
        for row in t.to_pylist():
            k = str(row[key])
            if k in rows and rows[k] != row:
                raise ShardMergeError(f"row {key}={k!r} differs between the inputs (at {os.fspath(p)})")
            rows[k] = row
    if order is not None:
        rank = {k: i for i, k in enumerate(order)}
        keys = sorted(rows, key=lambda k: (rank.get(k, len(rank)), k))
    else:
        keys = sorted(rows)
    table = pa.Table.from_pylist([rows[k] for k in keys], schema=tables[0].schema)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def merge_files(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> int:
    """`rlaifv-fast merge`: JSONL record files or parquet files (by suffix) into one; returns the count."""
    if not paths:
        raise ShardMergeError("merge needs at least one input file")
    suffixes = {Path(p).suffix for p in paths}
    missing = [os.fspath(p) for p in paths if not Path(p).exists()]
    if missing:
        raise ShardMergeError(f"merge: input file(s) not found: {missing}")
    if suffixes == {".parquet"}:
        return merge_parquet(paths, out_path)
    if suffixes <= {".jsonl", ".json"}:
        return len(merge_shard_records(paths, out_path))
    raise ShardMergeError(f"merge takes .jsonl record files or .parquet files of one kind, got suffixes {suffixes}")


# ------------------------------------------------------------------------------------------- process groups


class ProcessGroup:
    """A CPU (gloo) process group over a torchrun / accelerate launch, only for barriers between the data-parallel
    processes of a stage; a no-op in a single process."""

    def __init__(self, part: Part):
        self.part = part
        self._owned = False
        if part.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
                self._owned = True

    def barrier(self) -> None:
        if self.part.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False
