"""CHAIR hallucination metrics, always reported side by side with recall and answer length.

* ``chair_scores``: exact CHAIR when the ground-truth objects of every answer are known (the shapes world), or with
  any mention parser (``CocoChair.mentions`` for COCO).
* ``CocoChair``: the standard offline CHAIR scorer for free-form answers about COCO images (Rohrbach et al. 2018, as
  RLAIF-V's Object HalBench runs it without GPT): the synonym list maps words to the 80 COCO classes, and the
  ground truth of an image is its COCO instance categories UNION the classes its reference captions mention.

Definitions (over a set of answers; a "mention" is one occurrence of an object in an answer):
  response_level     (CHAIRs_refine) = answers with >= 1 hallucinated mention / answers mentioning >= 1 object.
                                       This is RLAIF-V's reported "Response Hall" (its CHAIRs_refine).
  response_level_all (CHAIRs)        = answers with >= 1 hallucinated mention / all answers: the original CHAIR's
                                       CHAIRs (LisaAnne/Hallucination) and RLAIF-V's un-refined CHAIRs.
  object_level       (CHAIRi)        = hallucinated mentions / all mentions (micro-average; every mention counts,
                                       duplicates included)
  recall                             = sum over answers of |distinct true objects mentioned| / sum of |true objects|
                                       (RLAIF-V's obj_rec)
  mean_length_words                  = mean whitespace-separated word count of the answers (``len(text.split())``;
                                       RLAIF-V counts ``len(text.strip().split(" "))``, which differs only on runs of
                                       whitespace and on empty answers)
  repetition                         = repeated mentions (an object named again in the same answer) / all mentions: a
                                       degenerate way to stay long without hallucinating, shown so it cannot hide
A rate whose denominator is zero is reported as 0.0 here; the counts (``n_mentioning``, ``n_mentions``, ``n_true``,
``n_answers``) show when, and the benchmarks (objhal.py) report such a rate as None.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

from ..shapes.world import mentioned_objects
from .base import BenchmarkFileError

DEFAULT_SYNONYMS = Path(__file__).resolve().parent / "data" / "coco_synonyms.txt"


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
    response_level_all: float = 0.0
    n_hallucinating: int = 0
    n_recalled: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"CHAIRs {self.response_level:.4f} (over all answers {self.response_level_all:.4f}) | "
            f"CHAIRi {self.object_level:.4f} | recall {self.recall:.4f} | "
            f"len {self.mean_length_words:.2f} words | answers {self.n_answers} (mentioning {self.n_mentioning})"
        )


def chair_scores(
    answers: Sequence[str],
    truths: Sequence[Iterable[Hashable]],
    parser: Callable[[str], Sequence[Hashable]] | None = None,
) -> ChairScores:
    """CHAIR of ``answers[i]`` against the exact true object set ``truths[i]`` (formulas in the module docstring).

    ``parser`` maps an answer to its object mentions (in order, duplicates kept); the shapes-world parser by default.
    A mention ``m`` of answer i is hallucinated iff ``m not in set(truths[i])``."""
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
        response_level_all=n_hallucinating / n if n else 0.0,
        n_hallucinating=n_hallucinating,
        n_recalled=n_recalled,
    )


# ---------------------------------------------------------------------------------------------- COCO CHAIR pipeline

# Lowercase runs of letters/digits. NLTK's word_tokenize (the reference tokeniser) needs a data download; on the
# words that matter here it agrees, except that it keeps "hot-dog" as one token where this splits it (and so finds
# the hot dog).
_TOKEN = re.compile(r"[a-z0-9]+")

# The reference CHAIR's hard-coded rules (LisaAnne/Hallucination utils/chair.py, kept by RLAIF-V).
# "baby elephant" / "adult dog" are the animal, not a person ("baby" and "adult" are person synonyms); "animal" and
# "cub" are not COCO words, so "baby animal" fires nothing.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# "passenger jet" is an airplane and "passenger train" a train, not a person ("passenger" is a person synonym).
VEHICLE_WORDS = ("jet", "train")
# consumed and then dropped (not COCO words): "train track" must not fire train, "home plate" nothing
DROPPED_PHRASES = ("home plate", "train track")

# Plurals of synonym words whose inflect singular is wrong (inflect 7.6: "busses" -> "buss", "taxies" -> "taxy",
# "mouses" -> "mous"). The regular plurals of every shipped synonym come back right (python_tests/eval/
# test_coco_chair.py checks them); a word that is itself a synonym word is never singularised (see _normalise), which
# is what keeps "bus" (inflect: "bu"), "skis", "people", "children", "oxen", "sports", "tennis" and "glass" whole.
_SINGULAR_FIXES: dict[str, str] = {"busses": "bus", "minibusses": "minibus", "taxies": "taxi", "mouses": "mouse"}


@functools.lru_cache(maxsize=None)
def _inflect_singular(word: str) -> str:
    """inflect's singular of a noun, or the word itself when inflect finds it already singular."""
    return _inflect_engine().singular_noun(word) or word


@functools.lru_cache(maxsize=1)
def _inflect_engine():
    import inflect  # imported on first use: the shapes world never needs it

    return inflect.engine()


def _singular(word: str) -> str:
    if word in _SINGULAR_FIXES:
        return _SINGULAR_FIXES[word]
    if not word.isalpha():
        return word
    return _inflect_singular(word)


def load_synonyms(synonyms: Mapping[str, Iterable[str]] | str | os.PathLike | None = None) -> dict[str, list[str]]:
    """``class -> [synonym, ...]`` (the class name itself not repeated), lowercased and stripped.

    ``synonyms``: None for the shipped RLAIF-V list (data/coco_synonyms.txt), a mapping, or a text file whose lines
    read ``class, synonym1, synonym2, ...`` (blank lines and lines starting with '#' skipped). Entries are split on
    "," and stripped, which on the shipped file equals RLAIF-V's ``split(', ')`` + ``strip()``. Lowercasing is a
    deliberate difference: the reference never lowercases its list, so its "iPhone" can never match lowercased text;
    here it does."""
    if synonyms is None:
        synonyms = DEFAULT_SYNONYMS
    if isinstance(synonyms, Mapping):
        out: dict[str, list[str]] = {}
        for k, v in synonyms.items():
            if isinstance(v, str):
                raise TypeError(f"synonyms of class {k!r} must be a list of strings, got the string {v!r}")
            out.setdefault(str(k).strip().lower(), []).extend(str(s).strip().lower() for s in v)
        return out
    path = os.fspath(synonyms)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CHAIR synonym file not found: {path}")
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip().lower() for p in line.split(",")]
            if any(not p for p in parts):
                raise BenchmarkFileError(f"{path}:{lineno}: malformed synonym line {line!r} (empty entry)")
            out.setdefault(parts[0], []).extend(parts[1:])
    return out


def _as_id(value) -> int | None:
    """A COCO image/category id: an int, or a string of digits; None otherwise (bools are not ids)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkFileError(f"COCO {what} file {path} is not valid JSON: {e}") from e


def _records(path: Path, data: dict, what: str, key: str, required: bool):
    """The list ``data[key]`` of a COCO file, checked to be a list of objects."""
    if key not in data:
        if required:
            raise BenchmarkFileError(f"COCO {what} file {path}: missing field {key!r} (a list)")
        return []
    recs = data[key]
    if not isinstance(recs, list):
        raise BenchmarkFileError(f"COCO {what} file {path}: field {key!r} must be a list, got {type(recs).__name__}")
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise BenchmarkFileError(f"COCO {what} file {path}: {key}[{i}] is malformed: not an object")
    return recs


def _field(path: Path, what: str, key: str, i: int, rec: dict, name: str, check: Callable, expected: str):
    if name not in rec:
        raise BenchmarkFileError(f"COCO {what} file {path}: {key}[{i}] is malformed: missing field {name!r}")
    value = check(rec[name])
    if value is None:
        raise BenchmarkFileError(
            f"COCO {what} file {path}: {key}[{i}] is malformed: field {name!r} must be {expected}, got {rec[name]!r}"
        )
    return value


def _name(value) -> str | None:
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def _caption(value) -> str | None:
    return value if isinstance(value, str) else None


def _annotation_files(annotations) -> tuple[list[Path], list[Path]]:
    """(instances files, captions files) from a folder, one file, or a list of files."""
    if isinstance(annotations, (str, os.PathLike)):
        root = Path(annotations)
        if root.is_dir():
            instances = sorted(root.glob("instances_*2014.json"))
            captions = sorted(root.glob("captions_*2014.json"))
            if not instances:
                raise FileNotFoundError(f"no COCO instances_*2014.json file in the annotation folder {root}")
            return instances, captions
        paths = [root]
    else:
        paths = [Path(p) for p in annotations]
    instances, captions = [], []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"COCO annotation file not found: {p} (expected instances_*2014.json / captions_*2014.json)")
        # named by the COCO convention: captions_*.json are caption files, anything else is an instances file
        (captions if p.name.startswith("captions") else instances).append(p)
    if not instances:
        raise BenchmarkFileError(f"COCO annotations {[str(p) for p in paths]}: need at least one instances file")
    return instances, captions


class CocoChair:
    """CHAIR for free-form answers about COCO images, the standard way (no LLM, no NLTK data).

    ``annotations``: a folder holding COCO ``instances_{train,val}2014.json`` (at least one) and optionally
    ``captions_{train,val}2014.json``; or one file or a list of files (a file whose name starts with "captions" is a
    captions file, any other an instances file). Instances files: ``categories`` [{id, name}], ``annotations``
    [{image_id, category_id}], optional ``images`` [{id}] (images without annotations then have an empty instance
    truth). Captions files: ``annotations`` [{image_id, caption}], optional ``images``.
    ``synonyms``: see ``load_synonyms`` (default: the shipped RLAIF-V refined list). A COCO category that is not in the
    list becomes its own class, matched by its name alone.
    ``image_ids``: when given, only these images are kept (the COCO files are large).

    Mention extraction, ``mentions(text)`` (the reference ``caption_to_words`` with RLAIF-V's double words):
      1. tokens = lowercase runs of letters/digits;
      2. each token is singularised with inflect (``singular_noun(w) or w``), except a token that occurs in some
         synonym (so "skis", "glass" of "wine glass", "sports" of "sports ball", "people", "children" stay as they
         are; "people"/"children" are person synonyms);
      3. greedy left-to-right merge, longest phrase first, of: every multi-word synonym (to itself), "home plate" and
         "train track" (to themselves, then dropped), "baby X"/"adult X" -> X for X in ANIMAL_WORDS,
         "passenger jet"/"passenger train" -> jet/train, "bow tie" -> tie, "toilet seat" -> toilet. The reference
         only tries bigrams, so its "stove top oven" can never match (it gives stove + oven: two oven mentions);
         trying up to the longest synonym gives one;
      4. if the merged tokens contain "toilet" and "seat", every "seat" is removed ("the seat of the toilet" does not
         fire chair);
      5. the tokens that are synonyms, mapped to their classes, in order, duplicates kept.
    Ground truth of an image (``truth``): the classes of its instance categories UNION ``mentions(c)`` over its
    reference captions. ``score(answers)`` = ``chair_scores`` of the answers against these truths."""

    def __init__(self, annotations: str | os.PathLike | Sequence[str | os.PathLike],
                 synonyms: Mapping[str, Iterable[str]] | str | os.PathLike | None = None, *,
                 image_ids: Iterable[int | str] | None = None):
        keep = None
        if image_ids is not None:
            keep = set()
            for i in image_ids:
                iid = _as_id(i)
                if iid is None:
                    raise ValueError(f"image_ids: {i!r} is not a COCO image id")
                keep.add(iid)
        instances, captions = _annotation_files(annotations)
        syn = load_synonyms(synonyms)
        if synonyms is None:
            self.synonyms_source = f"RLAIF-V synonyms_refine.txt (shipped: {DEFAULT_SYNONYMS})"
        elif isinstance(synonyms, Mapping):
            self.synonyms_source = f"a mapping of {len(syn)} classes"
        else:
            self.synonyms_source = os.fspath(synonyms)

        categories: dict[int, tuple[str, Path]] = {}  # id -> (name, file that defined it)
        instance_truth: dict[int, set[str]] = {}  # image id -> category names
        for path in instances:
            data = _read_json(path, "instances")
            if not isinstance(data, dict):
                raise BenchmarkFileError(f"COCO instances file {path} must be a JSON object with 'categories' and "
                                         f"'annotations' lists")
            cats = _records(path, data, "instances", "categories", True)
            anns = _records(path, data, "instances", "annotations", True)
            ims = _records(path, data, "instances", "images", False)
            local: dict[int, str] = {}
            for i, c in enumerate(cats):
                cid = _field(path, "instances", "categories", i, c, "id", _as_id, "an integer id")
                name = _field(path, "instances", "categories", i, c, "name", _name, "a non-empty string")
                prev = categories.get(cid)
                if prev is not None and prev[0] != name:
                    raise BenchmarkFileError(f"COCO instances file {path}: categories[{i}]: category id {cid} is "
                                             f"{name!r} here but {prev[0]!r} in {prev[1]}")
                categories[cid] = (name, path)
                local[cid] = name
            for i, im in enumerate(ims):
                iid = _field(path, "instances", "images", i, im, "id", _as_id, "an integer id")
                if keep is None or iid in keep:
                    instance_truth.setdefault(iid, set())
            for i, a in enumerate(anns):
                iid = _field(path, "instances", "annotations", i, a, "image_id", _as_id, "an integer id")
                cid = _field(path, "instances", "annotations", i, a, "category_id", _as_id, "an integer id")
                if cid not in local:
                    raise BenchmarkFileError(f"COCO instances file {path}: annotations[{i}] uses unknown category_id "
                                             f"{cid} (not in this file's categories)")
                if keep is None or iid in keep:
                    instance_truth.setdefault(iid, set()).add(local[cid])

        image_captions: dict[int, list[str]] = {}
        for path in captions:
            data = _read_json(path, "captions")
            if not isinstance(data, dict):
                raise BenchmarkFileError(f"COCO captions file {path} must be a JSON object with an 'annotations' list")
            anns = _records(path, data, "captions", "annotations", True)
            for i, im in enumerate(_records(path, data, "captions", "images", False)):
                iid = _field(path, "captions", "images", i, im, "id", _as_id, "an integer id")
                if keep is None or iid in keep:
                    image_captions.setdefault(iid, [])
            for i, a in enumerate(anns):
                iid = _field(path, "captions", "annotations", i, a, "image_id", _as_id, "an integer id")
                text = _field(path, "captions", "annotations", i, a, "caption", _caption, "a string")
                if keep is None or iid in keep:
                    image_captions.setdefault(iid, []).append(text)

        self._build_vocabulary(syn, sorted({name for name, _ in categories.values()}))
        # category name -> class: the reference maps each category through the synonym list
        self._category_class = {name: self._inverse[" ".join(_TOKEN.findall(name))] for name, _ in categories.values()}
        self._instance_truth = {iid: {self._category_class[n] for n in names} for iid, names in instance_truth.items()}
        self._captions = image_captions
        self._truth_cache: dict[int, frozenset[str]] = {}

    def _build_vocabulary(self, syn: dict[str, list[str]], category_names: list[str]) -> None:
        inverse: dict[str, str] = {}  # synonym phrase (tokens joined by one space) -> class
        for cls, others in syn.items():
            for phrase in [cls, *others]:
                words = _TOKEN.findall(phrase)
                if not words:
                    raise ValueError(f"synonym {phrase!r} of class {cls!r} has no words")
                key = " ".join(words)
                prev = inverse.get(key)
                if prev is not None and prev != cls:
                    raise ValueError(f"synonym {phrase!r} is listed for both {prev!r} and {cls!r}")
                inverse[key] = cls
        for name in category_names:
            key = " ".join(_TOKEN.findall(name))
            if not key:
                raise ValueError(f"COCO category name {name!r} has no words")
            inverse.setdefault(key, name)  # a category missing from the synonym list is its own class
        self._inverse = inverse
        self.classes = sorted(set(inverse.values()))

        merge: dict[tuple[str, ...], str] = {}
        for key in inverse:
            if " " in key:
                merge[tuple(key.split())] = key
        for phrase in DROPPED_PHRASES:
            merge[tuple(phrase.split())] = phrase
        for animal in ANIMAL_WORDS:
            merge[("baby", animal)] = animal
            merge[("adult", animal)] = animal
        for vehicle in VEHICLE_WORDS:
            merge[("passenger", vehicle)] = vehicle
        merge[("bow", "tie")] = "tie"
        merge[("toilet", "seat")] = "toilet"
        # The reference's 'wine glas' -> 'wine glass' repairs pattern/WordNet's "glas"; "glass" is never singularised
        # here (it is a synonym word), so the rule has nothing to repair.
        self._merge = merge
        self._max_merge = max((len(k) for k in merge), default=1)
        # every word of every synonym or rule phrase: never singularised
        self._protected = {w for key in [*inverse, *(" ".join(k) for k in merge)] for w in key.split()}

    def _normalise(self, word: str) -> str:
        return word if word in self._protected else _singular(word)

    def tokens(self, text: str) -> list[str]:
        """Steps 1-4 of the pipeline (see the class docstring): the merged, singularised tokens of ``text``."""
        words = [self._normalise(w) for w in _TOKEN.findall(text.lower())]
        out: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._max_merge, len(words) - i), 1, -1):
                mapped = self._merge.get(tuple(words[i : i + n]))
                if mapped is not None:
                    out.append(mapped)
                    i += n
                    break
            else:
                out.append(words[i])
                i += 1
        if "toilet" in out and "seat" in out:
            out = [w for w in out if w != "seat"]
        return out

    def mentions(self, text: str) -> list[str]:
        """COCO classes mentioned in ``text``, in order, duplicates kept."""
        return [self._inverse[w] for w in self.tokens(text) if w in self._inverse]

    def class_of(self, phrase: str) -> str | None:
        """The class of a synonym phrase ("puppy" -> "dog"), or None."""
        return self._inverse.get(" ".join(_TOKEN.findall(phrase.lower())))

    def has_image(self, image_id: int | str) -> bool:
        iid = _as_id(image_id)
        return iid is not None and (iid in self._instance_truth or iid in self._captions)

    def truth(self, image_id: int | str) -> set[str]:
        """Instance-category classes of the image UNION the classes its reference captions mention."""
        iid = _as_id(image_id)
        if iid is None or not self.has_image(iid):
            raise KeyError(f"image id {image_id!r} has no entry in the COCO annotation files")
        if iid not in self._truth_cache:
            found = set(self._instance_truth.get(iid, ()))
            for caption in self._captions.get(iid, ()):
                found.update(self.mentions(caption))
            self._truth_cache[iid] = frozenset(found)
        return set(self._truth_cache[iid])

    def score(self, answers: Mapping[int | str, str]) -> ChairScores:
        """``chair_scores`` of ``answers[image_id]`` against ``truth(image_id)``, with ``mentions`` as the parser."""
        ids = list(answers)
        return chair_scores([answers[i] for i in ids], [self.truth(i) for i in ids], parser=self.mentions)
