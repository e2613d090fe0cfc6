"""Prompt inputs (jsonl, parquet, a saved or in-memory Hugging Face dataset) and the preference outputs (parquet in
the released RLAIF-V schema and in TRL's preference schema).

Every prompt gets a stable id: the row's own "id" (or RLAIF-V's "idx") when it has one, else a hash of its content,
so sharded runs and re-runs name the same prompt the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .images import ImageError, image_bytes
from .store import atomic_path


class PromptError(ValueError):
    """A malformed input row; the message names the source and the row."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    """An (image, instruction) pair. `image` is a path (resolved) or the RLAIF-V {"bytes", "path"} dict or None."""

    id: str
    question: str
    image: Any = None
    meta: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def image_ref(self) -> str | None:
        """A short, JSON-friendly reference to the image for intermediate records (never the bytes)."""
        if isinstance(self.image, dict):
            return self.image.get("path") or f"<bytes:{_digest(self.image.get('bytes') or b'')}>"
        return None if self.image is None else str(self.image)


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def _content_id(question: str, image: Any) -> str:
    if isinstance(image, dict):
        key = image.get("bytes") or (image.get("path") or "").encode()
    elif image is None:
        key = b""
    else:
        key = str(image).encode()
    return "p" + hashlib.sha1(question.encode() + b"\x1f" + key).hexdigest()[:15]


@dataclasses.dataclass
class LoadReport:
    rows: int = 0
    loaded: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)  # "row N: reason"


def _rows(source: Any) -> tuple[Iterable[dict], str, str | None]:
    """(rows, source name, base dir for relative image paths)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover
        datasets = None
    if datasets is not None and isinstance(source, (datasets.Dataset,)):
        return source, "dataset", None
    path = Path(source)
    if path.is_dir():
        if datasets is None:
            raise PromptError(f"{path} is a directory: reading a saved dataset needs the `datasets` package")
        return datasets.load_from_disk(str(path)), str(path), str(path)
    if not path.exists():
        raise PromptError(f"prompt file not found: {path}")
    base = str(path.parent)
    if path.suffix == ".jsonl":
        return _jsonl_rows(path), str(path), base
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), str(path), base
    raise PromptError(f"{path}: unsupported prompt file type (use .jsonl, .parquet, or a saved dataset folder)")


class _BadRow(str):
    """A line that is not a JSON object (bad bytes or bad JSON): a row error, skippable with skip_bad."""


def _jsonl_rows(path: Path) -> Iterable[dict | _BadRow]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _BadRow(f"line {lineno}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})")
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield _BadRow(f"line {lineno}: not valid JSON ({e})")


def _parse_row(row: Any, index: int, base_dir: str | None, check_images: bool) -> Prompt:
    if isinstance(row, _BadRow):
        raise PromptError(f"row {index} ({row})")
    if not isinstance(row, dict):
        raise PromptError(f"row {index}: expected an object with 'question' and 'image', got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise PromptError(f"row {index}: 'question' is missing or empty")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON) is no text a tokenizer can take
        raise PromptError(f"row {index}: 'question' is not valid Unicode text (a lone surrogate)") from None
    image = row.get("image", row.get("image_path"))
    if isinstance(image, str):
        if base_dir and not os.path.isabs(image):
            image = os.path.join(base_dir, image)
        if check_images and not os.path.exists(image):
            raise PromptError(f"row {index}: image file not found: {image}")
    elif isinstance(image, dict):
        if not image.get("bytes") and not image.get("path"):
            raise PromptError(f"row {index}: image has neither bytes nor path")
        if not image.get("bytes") and base_dir and not os.path.isabs(image["path"]):
            image = {"bytes": None, "path": os.path.join(base_dir, image["path"])}
    elif image is not None and not hasattr(image, "convert"):  # PIL images pass
        raise PromptError(f"row {index}: unsupported image value of type {type(image).__name__}")
    if check_images and image is not None:
        try:
            from .images import load_image

            load_image(image)
        except ImageError as e:
            raise PromptError(f"row {index}: {e}") from e
    if hasattr(image, "convert"):  # a PIL image from a datasets Image feature: keep it as PNG bytes
        image = image_bytes(image)
    rid = row.get("id", row.get("idx"))
    rid = str(rid) if rid is not None and str(rid) != "" else _content_id(question, image)
    meta = {k: v for k, v in row.items() if k not in ("id", "idx", "question", "image", "image_path")}
    meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return Prompt(rid, question.strip(), image, meta)


def load_prompts(
    source: Any, *, skip_bad: bool = False, check_images: bool = True, limit: int | None = None
) -> tuple[list[Prompt], LoadReport]:
    """Read prompts from a .jsonl or .parquet file, a dataset folder (save_to_disk), or a `datasets.Dataset`.

    A bad row (missing or empty question, missing or unreadable image, malformed JSON) raises PromptError naming the
    row, or with skip_bad=True is skipped and listed in the report. Duplicate ids are always an error.
    """
    rows, name, base = _rows(source)
    prompts: list[Prompt] = []
    report = LoadReport()
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if limit is not None and len(prompts) >= limit:
            break
        report.rows += 1
        try:
            prompt = _parse_row(row, index, base, check_images)
        except PromptError as e:
            if not skip_bad:
                raise PromptError(f"{name}: {e}") from e
            report.skipped.append(str(e))
            continue
        if prompt.id in seen:
            raise PromptError(f"{name}: row {index} repeats the id {prompt.id!r} of row {seen[prompt.id]}")
        seen[prompt.id] = index
        prompts.append(prompt)
    report.loaded = len(prompts)
    return prompts, report


# ---- preference outputs ----

RLAIFV_COLUMNS = ("ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx",
                  "image_path")


def write_rlaifv_parquet(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Parquet in the released RLAIF-V-Dataset schema: image {bytes, path}, question, chosen, rejected, ..."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("ds_name", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("question", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("origin_dataset", pa.string()),
            ("origin_split", pa.string()),
            ("idx", pa.string()),
            ("image_path", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([{k: r.get(k) for k in RLAIFV_COLUMNS} for r in rows], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_trl_parquet(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Parquet in TRL's preference format: prompt, chosen, rejected, images (a list of {bytes, path})."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()), ("images", pa.list_(image_type))]
    )
    table = pa.Table.from_pylist(
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "images": r["images"]} for r in rows],
        schema=schema,
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
