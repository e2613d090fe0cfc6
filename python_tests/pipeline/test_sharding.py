"""Shards (--shard I/N) and data-parallel parts: partitions of the inputs by a hash of their key, and the merges
back (JSONL records and parquet), with hand-made expected results."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaifv_fast.pipeline.sharding import (
    Part,
    Shard,
    ShardMergeError,
    merge_files,
    merge_parquet,
    merge_shard_records,
    part_path,
    select,
    shard_counts,
)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_shards_and_parts_partition_the_keys():
    keys = [f"p{i}" for i in range(60)]
    shards = [select(keys, str, Shard(i, 3)) for i in range(3)]
    assert sorted(k for s in shards for k in s) == sorted(keys) and all(shards)
    assert [len(s) for s in shards] == shard_counts(keys, 3)
    # the processes of one launch split a shard again, disjointly and completely, whatever the input order
    parts = [select(keys[::-1], str, Shard(1, 3), Part(r, 2)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(shards[1]) and not set(parts[0]) & set(parts[1])


def test_shard_parse_errors():
    assert Shard.parse("2/4") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="I/N|\\[0, N\\)"):
            Shard.parse(bad)


def test_merge_shard_records(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "p2#0", "x": 1}, {"id": "p0#0", "x": 2}])
    b = _write(tmp_path / "b.jsonl", [{"id": "p1#0", "x": 3}, {"id": "p2#0", "x": 1}])  # a rerun's duplicate
    merged = merge_shard_records([a, b], tmp_path / "all.jsonl")
    assert [r["id"] for r in merged] == ["p0#0", "p1#0", "p2#0"]
    assert [json.loads(l)["id"] for l in (tmp_path / "all.jsonl").read_text().splitlines()] == ["p0#0", "p1#0", "p2#0"]
    # in a given order (a single run's), unknown ids last
    assert [r["id"] for r in merge_shard_records([a, b], order=["p2#0", "p0#0"])] == ["p2#0", "p0#0", "p1#0"]
    c = _write(tmp_path / "c.jsonl", [{"id": "p0#0", "x": 99}])
    with pytest.raises(ShardMergeError, match="p0#0"):
        merge_shard_records([a, c])


def test_merge_parquet_and_the_merge_command(tmp_path):
    schema = pa.schema([("idx", pa.string()), ("v", pa.float64())])
    pq.write_table(pa.Table.from_pylist([{"idx": "b", "v": 2.0}, {"idx": "a", "v": 1.0}], schema=schema),
                   tmp_path / "s0.parquet")
    pq.write_table(pa.Table.from_pylist([{"idx": "c", "v": 3.0}], schema=schema), tmp_path / "s1.parquet")
    assert merge_files([tmp_path / "s0.parquet", tmp_path / "s1.parquet"], tmp_path / "m.parquet") == 3
    assert pq.read_table(tmp_path / "m.parquet").to_pylist() == [
        {"idx": "a", "v": 1.0}, {"idx": "b", "v": 2.0}, {"idx": "c", "v": 3.0}]
    pq.write_table(pa.Table.from_pylist([{"idx": "a", "v": 9.0}], schema=schema), tmp_path / "bad.parquet")
    with pytest.raises(ShardMergeError, match="idx='a'"):
        merge_parquet([tmp_path / "s0.parquet", tmp_path / "bad.parquet"], tmp_path / "x.parquet")
    with pytest.raises(ShardMergeError, match="not found"):
        merge_files([tmp_path / "nope.jsonl"], tmp_path / "x.jsonl")
    with pytest.raises(ShardMergeError, match="one kind"):
        merge_files([tmp_path / "s0.parquet", _write(tmp_path / "r.jsonl", [{"id": "a"}])], tmp_path / "x")


def test_part_paths_are_beside_the_output(tmp_path):
    assert part_path(tmp_path / "c.jsonl", Part(1, 4)) == tmp_path / "c.jsonl.part1-of-4"
