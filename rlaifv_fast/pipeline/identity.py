"""A stage run's identity: what decides the records it writes. It is stored beside the output (`<out>.run.json`)
when the output is first written; a later run into the same output with another identity would mix two runs'
records, so it is refused with the differing settings named, unless the user asks to start over (`--overwrite`).

The identity is the stage's options (those marked identity=False, e.g. batch sizes and progress bars, left out;
engine options that only place or size the engine, e.g. device, left out), its output paths left out, and a digest
of every input file or model folder it names, so a re-run after the inputs changed is caught too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..options import to_dict
from .store import write_json

# engine options that place or size an engine but do not change what it computes
PLACEMENT_OPTIONS = frozenset({
    "device", "batch_size", "gpu_memory_utilization", "kv_cache_memory_bytes", "tensor_parallel_size",
    "data_parallel_size", "pipeline_parallel_size", "enforce_eager", "max_num_seqs", "max_num_batched_tokens",
    "enable_prefix_caching", "swap_space", "share_prefix", "local_files_only",
})
OUTPUT_FIELDS = frozenset({"out", "output_dir", "report"})
# options naming an input that is not an io field (io fields are all digested)
DIGESTED = frozenset({"labeler", "policy", "reference", "divider_model", "data", "annotations", "model", "prompts"})
_HEAD = 1 << 20


class RunMismatch(ValueError):
    """The output belongs to a run with other settings or inputs."""


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 64 * _HEAD:
            for block in iter(lambda: f.read(_HEAD), b""):
                h.update(block)
        else:  # a large file (weights, an image parquet): its size, head and tail
            h.update(f.read(_HEAD))
            f.seek(-_HEAD, os.SEEK_END)
            h.update(f.read(_HEAD))
    return h.hexdigest()[:16]


def digest(path: str | os.PathLike) -> str | None:
    """A digest of a file, or of a folder's files (names and contents), or None for a path that is not there
    (e.g. a hub name)."""
    p = Path(path)
    if p.is_file():
        return _file_digest(p)
    if p.is_dir():
        h = hashlib.sha1()
        files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        for f in files:
            h.update(str(f.relative_to(p)).encode())
            # a model folder's files by content (head and tail of the large ones); a data folder of thousands of
            # images by names and sizes only
            h.update(_file_digest(f).encode() if len(files) <= 256 else str(f.stat().st_size).encode())
        return h.hexdigest()[:16]
    return None


def _identity(config: Any, inputs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    options: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not f.metadata.get("identity", True) or f.name in OUTPUT_FIELDS:
            continue
        raw = getattr(config, f.name)
        if dataclasses.is_dataclass(raw):
            options[f.name] = _identity(raw, inputs, f"{prefix}{f.name}.")
            continue
        value = to_dict(raw)
        if f.name.endswith("engine_options") and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in PLACEMENT_OPTIONS}
        if isinstance(value, str) and (f.metadata.get("io") or f.name in DIGESTED):
            inputs[prefix + f.name] = digest(value)
        options[f.name] = value
    return options


def run_identity(stage: str, config: Any) -> dict[str, Any]:
    """{"stage", "options", "inputs"}: the options that decide the output, and digests of the files they name."""
    inputs: dict[str, Any] = {}
    options = _identity(config, inputs)
    return {"stage": stage, "options": options, "inputs": inputs}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return out


def identity_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def check_identity(out: Path, identity: dict, *, overwrite: bool = False) -> None:
    """Refuse to resume `out` with another identity; with overwrite, remove the old output and start over."""
    path = identity_path(out)
    if path.exists() and out.exists():
        old = json.loads(path.read_text())
        diff = _differences(old, identity)
        if diff:
            if not overwrite:
                raise RunMismatch(
                    f"{out} holds the output of a run with other settings or inputs ({'; '.join(diff[:6])}"
                    f"{'; ...' if len(diff) > 6 else ''}); resuming would mix two runs: write elsewhere, or pass "
                    "--overwrite to start over"
                )
            _remove(out)
    elif overwrite and out.exists():
        _remove(out)
    write_json(path, identity)


def _remove(out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
