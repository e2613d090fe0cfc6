"""Object HalBench (RLHF-V / RLAIF-V) and the classic COCO-caption CHAIR setting, scored with ``CocoChair``.

* ``ObjHalBenchmark`` ("objhal"): the Object HalBench prompt file (``obj_halbench_300_with_image.jsonl``: JSON lines
  ``{"image_id", "question", "image" (base64) | "image_path", optional "org_idx", "question_id"}``; 300 COCO images
  with detailed-description instructions); the model answers each question.
* ``CocoCaptionBenchmark`` ("chair"): the original CHAIR setting: one fixed captioning prompt per COCO image.

Both score the answers with CHAIR against COCO 2014 ground truth (instance categories UNION the classes named by the
image's reference captions) and report one row:
  response_level     = answers with >= 1 hallucinated mention / answers mentioning >= 1 COCO object
                       (RLAIF-V's reported "Response Hall", CHAIRs_refine)
  response_level_all = answers with >= 1 hallucinated mention / all answers (the original CHAIR's CHAIRs)
  object_level       = hallucinated mentions / all mentions (CHAIRi, RLAIF-V's "Object Hall")
  recall             = sum |distinct true classes mentioned| / sum |true classes| (RLAIF-V's obj_rec)
  mean_length_words  = mean ``len(answer.split())``
  repetition         = mentions of a class already named in the same answer / all mentions
  n, n_mentioning, n_mentions, n_hallucinated_mentions: the counts behind them
A rate over an empty set is None.

The objects are extracted from the answer with the synonym list (``CocoChair.mentions``). RLAIF-V's official Object
HalBench numbers extract them with gpt-3.5-turbo-0613 + spaCy and count each distinct object string once per answer,
so these numbers are not directly comparable with GPT-extracted ones; they are the reference's non-GPT
(``--use_gpt`` off) path with every mention counted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .base import BenchmarkFileError, BenchmarkScores, EvalItem, json_rows, safe_div
from .chair import DEFAULT_SYNONYMS, ChairScores, CocoChair, _as_id, chair_scores

_COCO_IMAGE_NAME = re.compile(r"^COCO_[a-z]+\d{4}_0*(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_DATA_URI = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def _image_of(where: str, row: dict) -> dict | str:
    """{"bytes", "path": None} from a base64 "image", else the "image_path" string (resolved later)."""
    if "image" in row and row["image"] is not None:
        value = row["image"]
        if not isinstance(value, str) or not value.strip():
            raise BenchmarkFileError(f"{where}: field 'image' must be a base64-encoded image string")
        # the published file holds bare base64; tolerate a data URI prefix and line breaks inside the string
        encoded = re.sub(r"\s+", "", _DATA_URI.sub("", value.strip()))
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise BenchmarkFileError(f"{where}: field 'image' is not valid base64 ({e})") from e
        if not data:
            raise BenchmarkFileError(f"{where}: field 'image' decodes to no bytes")
        return {"bytes": data, "path": None}
    if "image_path" in row:
        value = row["image_path"]
        if not isinstance(value, str) or not value.strip():
            raise BenchmarkFileError(f"{where}: field 'image_path' must be a non-empty path string")
        return value.strip()
    raise BenchmarkFileError(f"{where}: needs field 'image' (base64) or 'image_path'")


def _image_id(where: str, row: dict) -> int:
    if "image_id" not in row:
        raise BenchmarkFileError(f"{where}: field 'image_id' missing (the COCO image id)")
    iid = _as_id(row["image_id"])
    if iid is None:
        raise BenchmarkFileError(f"{where}: field 'image_id' must be a COCO image id (an integer or a string of "
                                 f"digits), got {row['image_id']!r}")
    return iid


class _CocoChairBenchmark:
    """Shared by both benchmarks: lazy ground truth, path resolution, and CHAIR scoring of generate records."""

    name = ""
    split = ""

    def _init_truth(self, annotations, synonyms) -> None:
        if isinstance(annotations, CocoChair):
            self._chair: CocoChair | None = annotations
        else:
            # loading COCO (hundreds of MB of JSON) waits until score(): items() does not need it. A missing path
            # still fails here, at once.
            paths = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
            for p in paths:
                if not os.path.exists(p):
                    raise FileNotFoundError(f"{self.name}: COCO annotations not found: {p}")
            self._chair = None
        self._annotations = annotations
        self._synonyms = synonyms

    @property
    def chair(self) -> CocoChair:
        """The CHAIR scorer (COCO loaded on first use, restricted to this benchmark's images)."""
        if self._chair is None:
            self._chair = CocoChair(self._annotations, self._synonyms,
                                    image_ids={it.meta["image_id"] for it in self._items})
        return self._chair

    def _resolve(self, image, bases: Sequence[Path], where: str):
        if not isinstance(image, str):
            return image
        p = Path(image)
        for candidate in ([p] if p.is_absolute() else [base / p for base in bases]):
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(f"{where}: image_path {image!r} not found under {[str(b) for b in bases]}")

    def score(self, records: Sequence[dict]) -> BenchmarkScores:
        """One row, ``self.split``: the metrics of the module docstring over the records given (one per item at
        most; records of other benchmarks are an error)."""
        known = {it.id: it for it in self._items}
        seen: set[str] = set()
        answers, truths = [], []
        chair = self.chair
        for r in records:
            rid = r.get("id") if isinstance(r, dict) else None
            if rid not in known:
                raise ValueError(f"{self.name}: record {rid!r} is not an item of this benchmark")
            if rid in seen:
                raise ValueError(f"{self.name}: record {rid!r} appears twice")
            seen.add(rid)
            answer = r.get("answer")
            if answer is not None and not isinstance(answer, str):
                raise ValueError(f"{self.name}: record {rid!r}: field 'answer' must be a string")
            image_id = known[rid].meta["image_id"]
            answers.append(answer or "")
            truths.append(chair.truth(image_id))
        s = chair_scores(answers, truths, parser=chair.mentions)
        return BenchmarkScores(self.name, {self.split: _row(s)}, notes={
            "object extraction": "COCO synonym list (CocoChair.mentions: inflect singulars, longest-first multi-word "
                                 "merge, the CHAIR rules); no GPT, unlike the reference Object HalBench scorer "
                                 "(gpt-3.5-turbo-0613 extraction, distinct strings per answer): numbers are not "
                                 "directly comparable with GPT-extracted ones",
            "ground truth": "COCO instance categories UNION classes named by the reference captions",
            "synonyms": chair.synonyms_source,
            "response_level": "hallucinating answers / answers mentioning >= 1 object (RLAIF-V Response Hall)",
            "response_level_all": "hallucinating answers / all answers (original CHAIRs)",
            "missing": len(known) - len(seen),
        })

    def items(self) -> list[EvalItem]:
        """Every item in the listed order, with relative image paths resolved (see the subclass); a missing image
        file is a FileNotFoundError naming its line."""
        out = []
        for it, where in zip(self._items, self._where):
            image = self._resolve(it.image, self._bases, where)
            out.append(it if image is it.image else dataclasses.replace(it, image=image))
        return out


def _row(s: ChairScores) -> dict:
    return {
        "response_level": safe_div(s.n_hallucinating, s.n_mentioning),
        "response_level_all": safe_div(s.n_hallucinating, s.n_answers),
        "object_level": safe_div(s.n_hallucinated_mentions, s.n_mentions),
        "recall": safe_div(s.n_recalled, s.n_true),
        "mean_length_words": s.mean_length_words if s.n_answers else None,
        "repetition": safe_div(s.n_repeated_mentions, s.n_mentions),
        "n": s.n_answers,
        "n_mentioning": s.n_mentioning,
        "n_mentions": s.n_mentions,
        "n_hallucinated_mentions": s.n_hallucinated_mentions,
    }


class ObjHalBenchmark(_CocoChairBenchmark):
    """Object HalBench. ``prompts_file``: the prompt JSONL (a JSON array is read too); ``annotations``: what
    ``CocoChair`` takes (the COCO 2014 annotation folder), or a ready ``CocoChair``; ``synonyms``: see
    ``load_synonyms`` (default: the shipped RLAIF-V list); ``images_dir``: where relative ``image_path``s are looked
    for after the prompt file's folder.

    Item i (the i-th record, from 0): id "objhal-{i}", split "objhal", kind "generate", prompt = "question",
    image = {"bytes": base64-decoded "image", "path": None} or the resolved "image_path",
    meta = {"image_id": int, plus "org_idx" / "question_id" when the record has them}."""

    name = "objhal"
    split = "objhal"

    def __init__(self, prompts_file: str | os.PathLike, annotations: str | os.PathLike | Sequence | CocoChair, *,
                 synonyms: Mapping[str, Iterable[str]] | str | os.PathLike | None = None,
                 images_dir: str | os.PathLike | None = None):
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"Object HalBench prompt file not found: {path}")
        self.prompts_file = path
        self._bases = [path.parent] + ([Path(images_dir)] if images_dir is not None else [])
        self._items: list[EvalItem] = []
        self._where: list[str] = []
        for where, i, row in json_rows(path):
            if not isinstance(row, dict):
                raise BenchmarkFileError(f"{where}: expected an object with image_id, question and image/image_path")
            image_id = _image_id(where, row)
            question = row.get("question")
            if not isinstance(question, str) or not question.strip():
                raise BenchmarkFileError(f"{where}: field 'question' must be a non-empty string (the instruction)")
            meta = {"image_id": image_id}
            for extra in ("org_idx", "question_id"):
                if extra in row:
                    meta[extra] = row[extra]
            self._items.append(EvalItem(id=f"objhal-{i}", split=self.split, kind="generate", prompt=question,
                                        image=_image_of(where, row), meta=meta))
            self._where.append(where)
        if not self._items:
            raise BenchmarkFileError(f"{path}: no prompts")
        self._init_truth(annotations, synonyms)



class CocoCaptionBenchmark(_CocoChairBenchmark):
    """The classic CHAIR setting: caption COCO images with one fixed prompt. ``images``: a JSON array or JSONL file
    of {"image_id", "image" (base64) | "image_path"} (relative paths resolved against the file's folder), or a folder
    of COCO image files named like ``COCO_val2014_000000391895.jpg`` (the id parsed from the name; items sorted by
    id; other files ignored). ``annotations``, ``synonyms``: as for ``ObjHalBenchmark``.

    Item i: id "chair-{i}", split "chair", kind "generate", prompt = ``prompt``, meta = {"image_id": int}."""

    name = "chair"
    split = "chair"

    def __init__(self, images: str | os.PathLike, annotations: str | os.PathLike | Sequence | CocoChair, *,
                 prompt: str = "Describe this image in detail.",
                 synonyms: Mapping[str, Iterable[str]] | str | os.PathLike | None = None):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("CocoCaptionBenchmark: prompt must be a non-empty string")
        root = Path(images)
        entries: list[tuple[str, int, object]] = []  # (where, image_id, image)
        if root.is_dir():
            for p in sorted(root.iterdir()):
                m = _COCO_IMAGE_NAME.match(p.name)
                if m and p.is_file():
                    entries.append((str(p), int(m.group(1)), str(p.resolve())))
            entries.sort(key=lambda e: e[1])
            if not entries:
                raise BenchmarkFileError(f"{root}: no COCO image files (COCO_<split><year>_<id>.jpg) in the folder")
            self._bases = [root]
        elif root.is_file():
            for where, _, row in json_rows(root):
                if not isinstance(row, dict):
                    raise BenchmarkFileError(f"{where}: expected an object with image_id and image/image_path")
                entries.append((where, _image_id(where, row), _image_of(where, row)))
            if not entries:
                raise BenchmarkFileError(f"{root}: no images")
            self._bases = [root.parent]
        else:
            raise FileNotFoundError(f"CHAIR images not found: {root} (a JSON/JSONL file or a folder)")
        seen: dict[int, str] = {}
        for where, iid, _ in entries:
            if iid in seen:
                raise BenchmarkFileError(f"{where}: field 'image_id': image {iid} already listed at {seen[iid]}")
            seen[iid] = where
        self._items = [EvalItem(id=f"chair-{i}", split=self.split, kind="generate", prompt=prompt, image=image,
                                meta={"image_id": iid}) for i, (_, iid, image) in enumerate(entries)]
        self._where = [where for where, _, _ in entries]
        self._init_truth(annotations, synonyms)



__all__ = ["ObjHalBenchmark", "CocoCaptionBenchmark", "DEFAULT_SYNONYMS"]
