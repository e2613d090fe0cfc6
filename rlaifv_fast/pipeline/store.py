"""Crash-safe record files.

A stage appends JSON lines to its output, one batch at a time, flushed and fsynced, and skips the record ids already
there when it is re-run. A process killed mid-write (even SIGKILL) leaves at most one torn last line, which the next
open cuts off; so an interrupted and restarted stage ends with exactly the records of an uninterrupted run: none lost,
none duplicated, no torn lines. Final outputs (parquet, JSON reports) are written to a temporary file and renamed
into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class RecordFileError(ValueError):
    """A record file that cannot be read as this stage's output (names the file and line)."""


def _repair_torn_tail(path: Path) -> int:
    """Cut an incomplete last line (no trailing newline) left by a crash; returns the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # walk back to the last newline
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The complete records of a JSONL file (a torn last line, if any, is ignored)."""
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return  # torn tail of an interrupted write
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise RecordFileError(f"{path}:{lineno}: not a JSON record ({e})") from e
            if not isinstance(record, dict) or "id" not in record:
                raise RecordFileError(f"{path}:{lineno}: a record must be a JSON object with an 'id'")
            yield record


class RecordStore:
    """An append-only JSONL file of records with unique ids, safe to resume after a crash.

    >>> store = RecordStore("candidates.jsonl")
    >>> todo = [r for r in requests if r.id not in store]
    >>> store.append([...])   # one batch: written, flushed and fsynced together
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = _repair_torn_tail(self.path) if self.path.exists() else 0
        self._ids: set[str] = set()
        if self.path.exists():
            for record in read_records(self.path):
                if record["id"] in self._ids:
                    raise RecordFileError(f"{self.path}: record id {record['id']!r} appears twice")
                self._ids.add(record["id"])

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._ids)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append new records as one batch; records whose id is already stored are skipped. Returns the count
        written."""
        lines = []
        batch_ids: set[str] = set()
        for record in records:
            rid = record["id"]
            if rid in self._ids or rid in batch_ids:
                continue
            batch_ids.add(rid)
            lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        if not lines:
            return 0
        data = memoryview("".join(lines).encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException:
                # all or nothing: a batch cut short (a full disk, an interrupt) is removed whole, so the resumed run
                # redoes that batch with the same composition as an uninterrupted run, and writes the same records
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        self._ids |= batch_ids
        return len(lines)

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(self.path)) if self.path.exists() else []


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished folder into place in one rename (an older folder of that name is removed after)."""
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole (never a half-written folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


class OutputLocked(RuntimeError):
    """Another process holds the output (or work folder) this one was asked to write."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock beside `path` (`<path>.lock`) while writing it: a second process asked to write the same
    output fails at once, instead of interleaving records. The lock dies with its process (even on SIGKILL)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLocked(f"another process is writing the {what} {path} (it holds {lock}); wait for it to "
                               "finish, or write elsewhere") from None
        yield
