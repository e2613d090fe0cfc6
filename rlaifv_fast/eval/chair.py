"""CHAIR hallucination metrics, always reported side by side with recall and answer length.

* ``chair_scores``: exact CHAIR when the ground-truth objects of every answer are known (the shapes world).
* ``CocoChair``: the offline CHAIR scorer for real model outputs on COCO images, from COCO instance annotations and a
  user-supplied synonym list.

Definitions (over a set of answers):
  response_level (CHAIRs) = answers with >= 1 hallucinated mention / answers mentioning >= 1 object
  object_level  (CHAIRi)  = hallucinated mentions / all mentions (every mention counts, duplicates included)
  recall                  = distinct true objects mentioned / true objects (summed over answers)
  mean_length_words       = mean whitespace-separated word count of the answers
  repetition              = repeated mentions (an object named again in the same answer) / all mentions: a
                            degenerate way to stay long without hallucinating, shown so it cannot hide
A rate whose denominator is zero is reported as 0.0; ``n_mentioning``, ``n_mentions`` and ``n_true`` show when.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Iterable, Mapping, Sequence

from ..shapes.world import mentioned_objects


@dataclass(frozen=True)
class ChairScores:
    response_level: float
    object_level: float
    recall: float
    mean_length_words: float
    n_answers: int
    n_mentioning: int
    n_mentions: int = 0
    n_hallucinated_mentions: int = 0
    n_true: int = 0
    repetition: float = 0.0
    n_repeated_mentions: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"CHAIRs {self.response_level:.4f} | CHAIRi {self.object_level:.4f} | recall {self.recall:.4f} | "
            f"len {self.mean_length_words:.2f} words | answers {self.n_answers} (mentioning {self.n_mentioning})"
        )


def chair_scores(
    answers: Sequence[str],
    truths: Sequence[Iterable[Hashable]],
    parser: Callable[[str], Sequence[Hashable]] | None = None,
) -> ChairScores:
    """CHAIR of ``answers[i]`` against the exact true object set ``truths[i]``.

    ``parser`` maps an answer to its object mentions (in order, duplicates kept); the shapes-world parser by default."""
    if len(answers) != len(truths):
        raise ValueError(f"{len(answers)} answers but {len(truths)} ground-truth sets")
    parse = parser if parser is not None else mentioned_objects
    n_mentioning = n_hallucinating = n_mentions = n_hall = n_true = n_recalled = n_repeated = 0
    total_words = 0
    for text, truth in zip(answers, truths):
        if not isinstance(text, str):
            raise TypeError(f"answers must be strings, got {type(text).__name__}")
        truth = set(truth)
        mentions = list(parse(text))
        hall = sum(1 for m in mentions if m not in truth)
        total_words += len(text.split())
        n_mentions += len(mentions)
        n_repeated += len(mentions) - len(set(mentions))
        n_hall += hall
        if mentions:
            n_mentioning += 1
            if hall:
                n_hallucinating += 1
        n_true += len(truth)
        n_recalled += len(truth & set(mentions))
    n = len(answers)
    return ChairScores(
        response_level=n_hallucinating / n_mentioning if n_mentioning else 0.0,
        object_level=n_hall / n_mentions if n_mentions else 0.0,
        recall=n_recalled / n_true if n_true else 0.0,
        mean_length_words=total_words / n if n else 0.0,
        n_answers=n,
        n_mentioning=n_mentioning,
        n_mentions=n_mentions,
        n_hallucinated_mentions=n_hall,
        n_true=n_true,
        repetition=n_repeated / n_mentions if n_mentions else 0.0,
        n_repeated_mentions=n_repeated,
    )


_TOKEN = re.compile(r"[a-z0-9]+")

# irregular plurals of words that occur in the usual COCO synonym lists
_IRREGULAR = {
    "person": ["people", "persons"],
    "man": ["men"],
    "woman": ["women"],
    "child": ["children"],
    "mouse": ["mice"],
    "knife": ["knives"],
    "sheep": ["sheep"],
    "bus": ["buses", "busses"],
    "glass": ["glasses"],
    "skis": ["skis"],
    "foot": ["feet"],
    "goose": ["geese"],
    "leaf": ["leaves"],
    "shelf": ["shelves"],
    "wolf": ["wolves"],
}


def _plurals(word: str) -> list[str]:
    forms = list(_IRREGULAR.get(word, []))
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.append(word + "es")
    elif word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        forms.append(word[:-1] + "ies")
    else:
        forms.append(word + "s")
        if word.endswith("o"):
            forms.append(word + "es")
    return forms


def _load_synonyms(synonyms: Mapping[str, Iterable[str]] | str | os.PathLike) -> dict[str, list[str]]:
    if isinstance(synonyms, Mapping):
        return {str(k).strip().lower(): [str(s).strip().lower() for s in v] for k, v in synonyms.items()}
    path = os.fspath(synonyms)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CHAIR synonym file not found: {path}")
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip().lower() for p in line.split(",")]
            if not parts[0] or any(not p for p in parts):
                raise ValueError(f"{path}:{lineno}: malformed synonym line {line!r} (empty entry)")
            out.setdefault(parts[0], []).extend(parts[1:])
    return out


class CocoChair:
    """CHAIR for free-form answers about COCO images.

    ``instances_json_path``: a COCO instances file (``categories`` with id/name, ``annotations`` with
    image_id/category_id, optional ``images`` so that images without annotations have an empty ground truth).
    ``synonyms``: a mapping ``class -> [synonym, ...]`` or a text file whose lines read
    ``coco class, synonym1, synonym2, ...``. Each class name is itself a synonym; categories without synonyms are
    matched by their name alone.

    Mentions are found in the lowercased answer by matching synonym phrases on word boundaries, longest phrase first
    (so "hot dog" is not also a "dog"), with simple plural handling of a phrase's last word."""

    def __init__(self, instances_json_path: str | os.PathLike, synonyms: Mapping[str, Iterable[str]] | str | os.PathLike):
        path = os.fspath(instances_json_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO instances file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"COCO instances file {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not isinstance(
            data.get("annotations"), list
        ):
            raise ValueError(f"COCO instances file {path} needs a JSON object with 'categories' and 'annotations' lists")
        try:
            id_to_name = {int(c["id"]): str(c["name"]).strip().lower() for c in data["categories"]}
            truths: dict[int, set[str]] = {int(im["id"]): set() for im in data.get("images", [])}
            for a in data["annotations"]:
                cid = int(a["category_id"])
                if cid not in id_to_name:
                    raise ValueError(f"COCO instances file {path}: annotation uses unknown category_id {cid}")
                truths.setdefault(int(a["image_id"]), set()).add(id_to_name[cid])
        except (KeyError, TypeError) as e:
            raise ValueError(f"COCO instances file {path} is malformed: missing or bad field {e}") from e
        self.truths = truths
        self.classes = sorted(set(id_to_name.values()))

        syn = _load_synonyms(synonyms)
        unknown = sorted(set(syn) - set(self.classes))
        if unknown:
            raise ValueError(f"synonyms name classes that are not COCO categories in {path}: {unknown}")
        explicit: dict[tuple[str, ...], str] = {}
        for cls in self.classes:
            for phrase in [cls, *syn.get(cls, [])]:
                words = tuple(_TOKEN.findall(phrase))
                if not words:
                    raise ValueError(f"synonym {phrase!r} of class {cls!r} has no words")
                prev = explicit.get(words)
                if prev is not None and prev != cls:
                    raise ValueError(f"synonym {phrase!r} is listed for both {prev!r} and {cls!r}")
                explicit[words] = cls
        phrases = dict(explicit)
        for words, cls in explicit.items():
            for p in _plurals(words[-1]):
                # a generated plural never overrides an explicit phrase; the first class to claim it keeps it
                phrases.setdefault(words[:-1] + (p,), cls)
        self._phrases = phrases
        self._max_len = max(len(p) for p in phrases)

    def mentions(self, text: str) -> list[str]:
        """COCO classes mentioned in ``text``, in order, duplicates kept."""
        words = _TOKEN.findall(text.lower())
        out: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._max_len, len(words) - i), 0, -1):
                cls = self._phrases.get(tuple(words[i : i + n]))
                if cls is not None:
                    out.append(cls)
                    i += n
                    break
            else:
                i += 1
        return out

    def truth(self, image_id: int | str) -> set[str]:
        key = image_id
        if key not in self.truths and isinstance(key, str) and key.strip().isdigit():
            key = int(key)
        if key not in self.truths:
            raise KeyError(f"image id {image_id!r} has no entry in the COCO instances file")
        return self.truths[key]

    def score(self, answers: Mapping[int | str, str]) -> ChairScores:
        ids = list(answers)
        return chair_scores([answers[i] for i in ids], [self.truth(i) for i in ids], parser=self.mentions)
