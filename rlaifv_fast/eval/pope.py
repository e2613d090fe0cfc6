"""POPE (Li et al., EMNLP 2023): polar object-existence questions about COCO images, in three splits whose negatives
are random, popular or adversarial (co-occurring) objects.

Input: the published question files (`coco_pope_random.json`, `coco_pope_popular.json`, `coco_pope_adversarial.json`:
JSON lines despite the name; the A-OKVQA / GQA variants are JSON arrays, also read), each row
`{"question_id", "image", "text", "label"}` with label "yes" / "no", and the folder of the images they name
(COCO val2014). Each question is answered twice, and both are reported:

- generated: the model's greedy answer to the question, parsed by POPE's own rule (the official evaluate.py): keep
  the text before the first ".", drop commas, split on spaces; the answer is "no" iff a token is exactly "No",
  "not" or "no", else "yes" (an empty answer counts as "yes");
- logprob: full-vocabulary P(yes-set) vs P(no-set) at the first answer position (the labeler's token sets;
  "yes" iff strictly more likely).

Metrics per split and answer mode, positive class "yes": accuracy = (TP + TN) / n, precision = TP / (TP + FP),
recall = TP / (TP + FN), F1 = 2PR / (P + R), yes_ratio = predicted yes / n. A rate over an empty set is None.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import BenchmarkFileError, BenchmarkScores, EvalItem, json_rows, safe_div

SPLITS = ("random", "popular", "adversarial")
_NEGATIONS = ("No", "not", "no")


def parse_yes_no(text: str) -> str:
    """POPE's official answer parsing (see the module docstring); returns "yes" or "no"."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in _NEGATIONS for w in words) else "yes"


def binary_metrics(predicted: Sequence[str], labels: Sequence[str], *, positive: str = "yes") -> dict:
    """accuracy, precision, recall, f1, yes_ratio (the fraction predicted `positive`) and n; None where undefined."""
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    tp = sum(p == positive and y == positive for p, y in zip(predicted, labels))
    fp = sum(p == positive and y != positive for p, y in zip(predicted, labels))
    tn = sum(p != positive and y != positive for p, y in zip(predicted, labels))
    fn = sum(p != positive and y == positive for p, y in zip(predicted, labels))
    n = len(labels)
    precision, recall = safe_div(tp, tp + fp), safe_div(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None:  # P = R = 0 gives F1 0 (the limit; AMBER's scorer agrees)
        f1 = safe_div(2 * precision * recall, precision + recall) or 0.0
    return {"accuracy": safe_div(tp + tn, n), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": safe_div(tp + fp, n), "n": n}


def _split_of(path: Path) -> str:
    for split in SPLITS:
        if re.search(rf"(^|[_\-.]){split}([_\-.]|$)", path.stem):
            return split
    return path.stem


class PopeBenchmark:
    """POPE over one or more question files. `questions`: a file, a folder (every *pope*.json in it), a list of
    files, or a mapping split -> file; `images_dir`: the folder of the images the files name (default: the question
    file's folder)."""

    name = "pope"

    def __init__(self, questions: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, str],
                 *, images_dir: str | os.PathLike | None = None):
        if isinstance(questions, Mapping):
            files = {str(k): Path(v) for k, v in questions.items()}
        else:
            paths = [Path(questions)] if isinstance(questions, (str, os.PathLike)) else [Path(q) for q in questions]
            expanded = []
            for p in paths:
                expanded += sorted(p.glob("*pope*.json")) if p.is_dir() else [p]
            files = {_split_of(p): p for p in expanded}
        if not files:
            raise BenchmarkFileError(f"no POPE question files in {questions}")
        self._items: list[EvalItem] = []
        for split, path in files.items():
            if not path.is_file():
                raise BenchmarkFileError(f"POPE question file not found: {path}")
            base = Path(images_dir) if images_dir is not None else path.parent
            for where, _, row in json_rows(path):
                if not isinstance(row, dict):
                    raise BenchmarkFileError(f"{where}: expected an object with question_id, image, text, label")
                for field in ("question_id", "image", "text", "label"):
                    if field not in row:
                        raise BenchmarkFileError(f"{where}: field {field!r} missing")
                label = str(row["label"]).strip().lower()
                if label not in ("yes", "no"):
                    raise BenchmarkFileError(f"{where}: field 'label' must be yes or no, got {row['label']!r}")
                if not isinstance(row["text"], str) or not row["text"].strip():
                    raise BenchmarkFileError(f"{where}: field 'text' must be a non-empty question")
                image = Path(row["image"])
                self._items.append(EvalItem(
                    id=f"pope-{split}-{row['question_id']}", split=split, kind="yes_no", prompt=row["text"].strip(),
                    image=str(image if image.is_absolute() else base / image),
                    meta={"label": label, "question_id": row["question_id"]},
                ))
        ids = [i.id for i in self._items]
        if len(ids) != len(set(ids)):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise BenchmarkFileError(f"POPE: question id {dup!r} appears twice in one split")
        self.splits = list(files)

    def items(self) -> list[EvalItem]:
        return list(self._items)

    def score(self, records: Sequence[dict]) -> BenchmarkScores:
        known = {i.id: i for i in self._items}
        rows: dict[str, dict] = {}
        by_split: dict[str, list[dict]] = {s: [] for s in self.splits}
        for r in records:
            if r["id"] not in known:
                raise ValueError(f"POPE: record {r['id']!r} is not a question of these files")
            by_split[known[r["id"]].split].append(r)
        for split, recs in by_split.items():
            if not recs:
                continue
            labels = [r["meta"]["label"] for r in recs]
            generated = [parse_yes_no(r["answer"] or "") for r in recs]
            logprob = ["yes" if r["logp_yes"] > r["logp_no"] else "no" for r in recs]
            rows[split] = binary_metrics(logprob, labels)
            rows[f"{split} (generated)"] = binary_metrics(generated, labels)
        return BenchmarkScores(self.name, rows, notes={
            "answer modes": "'<split>': P(yes-set) > P(no-set) at the first answer position; '<split> (generated)': "
                            "the greedy answer parsed by POPE's rule",
            "positive class": "yes", "missing": len(known) - len(records)})
