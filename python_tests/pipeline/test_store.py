"""RecordStore: append, resume, torn-tail repair; atomic writes."""

import json
import os

import pytest

from rlaifv_fast.pipeline.store import RecordFileError, RecordStore, atomic_path, read_records, write_json


def test_append_skips_known_ids(tmp_path):
    store = RecordStore(tmp_path / "a.jsonl")
    assert store.append([{"id": "x", "v": 1}, {"id": "y", "v": 2}, {"id": "x", "v": 3}]) == 2
    assert store.append([{"id": "y", "v": 9}, {"id": "z", "v": 4}]) == 1
    again = RecordStore(tmp_path / "a.jsonl")
    assert again.ids == {"x", "y", "z"}
    assert [r["v"] for r in again.records()] == [1, 2, 4]


def test_torn_last_line_is_cut_on_open(tmp_path):
    path = tmp_path / "a.jsonl"
    RecordStore(path).append([{"id": "a"}, {"id": "b"}])
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "text": "half a rec')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]  # readers ignore the torn tail
    store = RecordStore(path)
    assert store.repaired_bytes > 0 and store.ids == {"a", "b"}
    store.append([{"id": "c"}])
    assert [r["id"] for r in read_records(path)] == ["a", "b", "c"]
    assert path.read_bytes().endswith(b"\n")


def test_file_of_only_a_torn_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"')
    assert len(RecordStore(path)) == 0 and path.read_bytes() == b""


def test_corrupt_and_duplicate_records_are_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(RecordFileError, match=r"a.jsonl:2: not a JSON record"):
        RecordStore(path)
    path.write_text('{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(RecordFileError, match="record id 'a' appears twice"):
        RecordStore(path)
    path.write_text('{"no_id": 1}\n')
    with pytest.raises(RecordFileError, match="must be a JSON object with an 'id'"):
        RecordStore(path)


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_batch_cut_by_a_full_disk_is_removed_whole(tmp_path, monkeypatch):
    import errno

    from rlaifv_fast.pipeline import store as store_module

    path = tmp_path / "r.jsonl"
    s = RecordStore(path)
    s.append([{"id": "a"}, {"id": "b"}])
    before = path.read_bytes()
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))  # half the batch reaches the disk, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        s.append([{"id": "c", "text": "x" * 100}, {"id": "d"}])
    monkeypatch.undo()
    assert path.read_bytes() == before and "c" not in s  # nothing of the failed batch is left
    assert s.append([{"id": "c", "text": "x" * 100}, {"id": "d"}]) == 2
    assert [r["id"] for r in RecordStore(path).records()] == ["a", "b", "c", "d"]
