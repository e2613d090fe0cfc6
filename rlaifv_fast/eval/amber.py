"""AMBER (junyangwang0410/AMBER, Wang et al. 2023): generative and discriminative hallucination of a VLM on 1004
images, scored as the official `inference.py` does, with exact ratios (fractions in [0, 1], nothing rounded; the
official scorer adds 0.001 to every denominator and reports rounded percent).

Discriminative (positive class "No", a detected hallucination; counts pooled over the row's records):
  accuracy  = #(answer == truth) / n
  precision = #(answer No and truth no) / #(answer No)
  recall    = #(answer No and truth no) / #(truth no)
  f1        = 2PR / (P + R) = 2tp / (2tp + fp + fn) (0 when P = R = 0; None when P or R is None)
Generative (micro over all responses):
  chair = hallucinated response objects / response objects
  cover = covered truth objects / truth objects
  hal   = responses with >= 1 hallucinated object / responses
  cog   = hit hallu objects / hallu objects
A ratio with a zero denominator is None.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .base import BenchmarkFileError, BenchmarkScores, EvalItem, safe_div

TYPE_SPLIT = {  # annotation type -> item split
    "generative": "generative", "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "attribute-state", "discriminative-attribute-number": "attribute-number",
    "discriminative-attribute-action": "attribute-action", "discriminative-relation": "relation",
    "relation": "relation",
}
_ATTRIBUTE = ("attribute-state", "attribute-number", "attribute-action")
# report row -> the splits it pools (micro: the official scorer sums the counters)
DISCRIMINATIVE_ROWS = {"existence": ("existence",), "attribute": _ATTRIBUTE, **{s: (s,) for s in _ATTRIBUTE},
                       "relation": ("relation",), "discriminative": ("existence", *_ATTRIBUTE, "relation")}
SPACY_MODELS = ("en_core_web_lg", "en_core_web_md")
_WORD = re.compile(r"[a-z]+")


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"AMBER {what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkFileError(f"{path}: not valid JSON: {e}") from e


def _field(path: Path, i: int, rec: Any, name: str, check: Callable[[Any], bool], want: str) -> Any:
    rid = rec.get("id") if isinstance(rec, dict) else None
    where = f"{path}: record {i}" + (f" (id {rid})" if rid is not None else "")
    if not isinstance(rec, dict):
        raise BenchmarkFileError(f"{where}: is a {type(rec).__name__}, not an object")
    if name not in rec:
        raise BenchmarkFileError(f"{where}: field {name!r} missing")
    if not check(rec[name]):
        raise BenchmarkFileError(f"{where}: field {name!r} must be {want}, got {rec[name]!r}")
    return rec[name]


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_words(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(w, str) and w for w in v)


class AmberBenchmark:
    """AMBER from its published data folder: `annotations.json`, `relation.json` (word association),
    `safe_words.txt`, `query/query_all.json` (or `query_file`, any published query file), images
    `images_dir/AMBER_<n>.jpg` (default `data_dir/image`).

    `similarity`: None (a spaCy model with vectors, en_core_web_lg then en_core_web_md, if installed, else the
    vocabulary-exact fallback), a spaCy model name (that model, or an error), or a callable (word, word) -> float
    used with the vocabulary tokeniser. Words count as similar when similarity > `similarity_threshold` strictly.
    All annotation and response words are compared lowercased (the official scorer is case-sensitive, so it drops
    e.g. a sentence-initial "Dog" or a response's "tv" against the vocabulary's "TV")."""

    name = "amber"

    def __init__(self, data_dir, *, query_file=None, images_dir=None, similarity=None, similarity_threshold=0.8):
        data_dir = Path(data_dir)
        self.images_dir = Path(images_dir) if images_dir is not None else data_dir / "image"
        self.similarity = similarity
        self.similarity_threshold = float(similarity_threshold)
        self._matcher: tuple[str, Callable, Callable | None] | None = None

        path = data_dir / "relation.json"
        rel = _load_json(path, "word association file")
        if not isinstance(rel, dict):
            raise BenchmarkFileError(f"{path}: must be an object word -> [associated words]")
        for k, v in rel.items():
            if not _is_words(v):
                raise BenchmarkFileError(f"{path}: key {k!r}: value must be a list of words, got {v!r}")
        self.association = {k.lower(): [w.lower() for w in v] for k, v in rel.items()}
        self.vocabulary = set(self.association) | {w for v in self.association.values() for w in v}
        # multi-word entries ("e-book", "air-conditioning") as token tuples, matched longest first
        self._phrases = {tuple(_WORD.findall(w)): w for w in self.vocabulary if len(_WORD.findall(w)) > 1}
        self._max_phrase = max((len(p) for p in self._phrases), default=1)

        path = data_dir / "safe_words.txt"
        if not path.is_file():
            raise FileNotFoundError(f"AMBER safe word list not found: {path}")
        # the published file has no trailing newline: every non-empty line is a word
        self.safe_words = {ln.strip().lower() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}

        path = data_dir / "annotations.json"
        ann = _load_json(path, "annotation file")
        if not isinstance(ann, list):
            raise BenchmarkFileError(f"{path}: must be a JSON array of records")
        self.annotations: dict[int, dict] = {}
        for i, rec in enumerate(ann):
            rid = _field(path, i, rec, "id", _is_id, "an integer")
            typ = _field(path, i, rec, "type", lambda v: v in TYPE_SPLIT, f"one of {sorted(TYPE_SPLIT)}")
            if rid in self.annotations:
                raise BenchmarkFileError(f"{path}: record {i} (id {rid}): field 'id' repeats an earlier record")
            out = {"type": typ}
            if typ == "generative":
                for name in ("truth", "hallu"):
                    words = _field(path, i, rec, name, _is_words, "a list of words")
                    for w in words:
                        # the official scorer indexes the association with every truth/hallu word
                        if w.lower() not in self.association:
                            raise BenchmarkFileError(
                                f"{path}: record {i} (id {rid}): field {name!r}: {w!r} is not a key of relation.json"
                            )
                    out[name] = words
            else:
                out["truth"] = _field(path, i, rec, "truth", lambda v: v in ("yes", "no"), "'yes' or 'no'")
            self.annotations[rid] = out

        path = Path(query_file) if query_file is not None else data_dir / "query" / "query_all.json"
        queries = _load_json(path, "query file")
        if not isinstance(queries, list):
            raise BenchmarkFileError(f"{path}: must be a JSON array of records")
        self._items: dict[str, EvalItem] = {}
        for i, q in enumerate(queries):
            qid = _field(path, i, q, "id", _is_id, "an integer")
            image = _field(path, i, q, "image", lambda v: isinstance(v, str) and v, "an image file name")
            prompt = _field(path, i, q, "query", lambda v: isinstance(v, str) and v, "a non-empty string")
            if qid not in self.annotations:
                raise BenchmarkFileError(f"{path}: record {i} (id {qid}): field 'id' is not in annotations.json")
            if f"amber-{qid}" in self._items:
                raise BenchmarkFileError(f"{path}: record {i} (id {qid}): field 'id' repeats an earlier record")
            a = self.annotations[qid]
            meta = {"amber_id": qid, "type": a["type"], "truth": a["truth"]}
            if a["type"] == "generative":
                meta["hallu"] = a["hallu"]
            self._items[f"amber-{qid}"] = EvalItem(
                id=f"amber-{qid}",
                split=TYPE_SPLIT[a["type"]],
                kind="generate" if a["type"] == "generative" else "yes_no",
                prompt=prompt,
                image=os.fspath(self.images_dir / image),
                meta=meta,
            )

    def items(self) -> list[EvalItem]:
        """One item per query, in the query file's order; the images must exist (downloaded separately)."""
        missing = [it.image for it in self._items.values() if not os.path.isfile(it.image)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} AMBER images missing under {self.images_dir}, e.g. {missing[:3]}")
        return list(self._items.values())

    # ---------------------------------------------------------------- object matching

    def _resolve_matcher(self) -> tuple[str, Callable, Callable | None]:
        """(note, extract nouns, similarity or None), chosen once per benchmark."""
        if self._matcher is not None:
            return self._matcher
        if callable(self.similarity):
            name = getattr(self.similarity, "__name__", repr(self.similarity))
            self._matcher = (f"vocabulary + {name} (similarity > {self.similarity_threshold})",
                             self._vocabulary_nouns, self.similarity)
            return self._matcher
        candidates = (self.similarity,) if isinstance(self.similarity, str) else SPACY_MODELS
        for model in candidates:
            nlp = _load_spacy(model)
            if nlp is not None:
                self._matcher = (f"spacy:{model} (similarity > {self.similarity_threshold})",
                                 lambda text: self._spacy_nouns(nlp, text), _spacy_similarity(nlp))
                return self._matcher
            if isinstance(self.similarity, str):
                raise ValueError(f"spaCy model {model!r} (similarity=) is not installed or has no word vectors")
        self._matcher = ("vocabulary-exact (no spaCy model with vectors installed: no similarity matching and no POS "
                         "tagging; CHAIR may be higher, Cover and Cog lower than the official scorer's)",
                         self._vocabulary_nouns, None)
        return self._matcher

    def _as_vocabulary(self, word: str) -> str | None:
        # a word already in the vocabulary stays as is ("sunglasses", "people"), else its singular form
        if word in self.vocabulary:
            return word
        single = _singular(word)
        return single if single in self.vocabulary else None

    def _vocabulary_nouns(self, text: str) -> list[str]:
        """Vocabulary words of `text` in order, duplicates kept: lowercase alphabetic tokens, multi-word entries
        first (longest first, last token singularised), then single tokens (as is if in the vocabulary, else
        singularised with inflect)."""
        toks = _WORD.findall(text.lower())
        out, i = [], 0
        while i < len(toks):
            for n in range(min(self._max_phrase, len(toks) - i), 1, -1):
                span = tuple(toks[i : i + n])
                hit = self._phrases.get(span) or self._phrases.get(span[:-1] + (_singular(span[-1]),))
                if hit:
                    out.append(hit)
                    i += n
                    break
            else:
                word = self._as_vocabulary(toks[i])
                if word is not None:
                    out.append(word)
                i += 1
        return out

    def _spacy_nouns(self, nlp, text: str) -> list[str]:
        """Nouns (POS NOUN/PROPN) of `text` that are in the vocabulary, as the word itself or its lemma."""
        out = []
        for tok in nlp(text):
            if tok.pos_ in ("NOUN", "PROPN"):
                word = tok.lower_ if tok.lower_ in self.vocabulary else tok.lemma_.lower()
                if word in self.vocabulary:
                    out.append(word)
        return out

    def _candidates(self, objects: Sequence[str]) -> list[tuple[str, int]]:
        # the official safe_words/safe_list (ha_words/ha_list): association words first, then the objects
        assoc = [(w, i) for i, o in enumerate(objects) for w in self.association[o]]
        return assoc + [(o, i) for i, o in enumerate(objects)]

    def match_response(self, text: str, truth: Sequence[str], hallu: Sequence[str]) -> dict[str, Any]:
        """The official per-noun algorithm on one response. Candidates are (word, owner) pairs: the association
        words of every truth object (owner: that object) then the truth objects themselves; likewise for hallu.
        For each response object n: (a) a safe word is skipped (not hallucinated, still counted); (b) the first
        exact truth candidate covers its owner, next noun; (c) the first exact hallu candidate marks its owner hit
        (no next); (d) the first hallu candidate with sim > threshold marks its owner hit; (e) the first truth
        candidate with sim > threshold covers its owner, next noun; (f) else n is hallucinated. (d) and (e) only
        run with a similarity. A repeated truth object is only ever covered at its first position, as officially.
        Returns {"objects": response objects, "hallucinated": those of (f), "covered": per truth object,
        "hit": per hallu object}."""
        _, extract, sim = self._resolve_matcher()
        nouns = extract(text)
        truth, hallu = [t.lower() for t in truth], [h.lower() for h in hallu]
        safe, ha = self._candidates(truth), self._candidates(hallu)
        covered, hit, hallucinated = [False] * len(truth), [False] * len(hallu), []
        thr = self.similarity_threshold
        for n in nouns:
            if n in self.safe_words:
                continue
            owner = next((i for w, i in safe if w == n), None)
            if owner is not None:
                covered[owner] = True
                continue
            owner = next((i for w, i in ha if w == n), None)
            if owner is not None:
                hit[owner] = True
            if sim is not None:
                owner = next((i for w, i in ha if sim(n, w) > thr), None)
                if owner is not None:
                    hit[owner] = True
                owner = next((i for w, i in safe if sim(n, w) > thr), None)
                if owner is not None:
                    covered[owner] = True
                    continue
            hallucinated.append(n)
        return {"objects": nouns, "hallucinated": hallucinated, "covered": covered, "hit": hit}

    # ---------------------------------------------------------------- scoring

    def score(self, records: Sequence[dict]) -> BenchmarkScores:
        """Rows: "generative" (chair, cover, hal, cog, n) when generative records are given; per dimension present
        in the records, "<row>" (answer from log-probs: No iff logp_no >= logp_yes, ties -> No) and
        "<row> (generated)" (AMBER's exact rule on the generated text: "Yes"/"No" after strip(), anything else is
        neither: wrong, and not an answered No), each with accuracy, precision, recall, f1, n. Every ratio is exact
        and a fraction; the official scorer adds 0.001 to every denominator, reports percent rounded to 0.1, and
        takes F1 from the rounded P and R with +0.0001 (existence: +0.001) in its denominator."""
        by_split: dict[str, list[tuple[str, str, str]]] = {}  # split -> (truth, logprob answer, generated answer)
        gen: Counter = Counter()
        seen: set[str] = set()
        for rec in records:
            rid = rec.get("id")
            item = self._items.get(rid)
            if item is None:
                raise ValueError(f"record id {rid!r} is not an item of benchmark {self.name!r}")
            if rid in seen:
                raise ValueError(f"record id {rid!r} appears twice")
            seen.add(rid)
            answer = rec.get("answer")
            if not isinstance(answer, str):
                raise ValueError(f"record {rid}: 'answer' must be a string, got {answer!r}")
            meta = item.meta
            if item.kind == "generate":
                m = self.match_response(answer, meta["truth"], meta["hallu"])
                gen.update(n=1, objects=len(m["objects"]), hallucinated=len(m["hallucinated"]),
                           n_hal=bool(m["hallucinated"]), truth=len(m["covered"]), covered=sum(m["covered"]),
                           hallu=len(m["hit"]), hit=sum(m["hit"]))
                continue
            lp_yes, lp_no = rec.get("logp_yes"), rec.get("logp_no")
            for v in (lp_yes, lp_no):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
                    raise ValueError(f"record {rid}: yes_no record needs numeric logp_yes and logp_no, got {v!r}")
            text = answer.strip()
            generated = "yes" if text == "Yes" else "no" if text == "No" else "neither"
            by_split.setdefault(item.split, []).append((meta["truth"], "no" if lp_no >= lp_yes else "yes", generated))

        rows: dict[str, dict[str, Any]] = {}
        if gen["n"]:
            rows["generative"] = {"chair": safe_div(gen["hallucinated"], gen["objects"]),
                                  "cover": safe_div(gen["covered"], gen["truth"]),
                                  "hal": safe_div(gen["n_hal"], gen["n"]),
                                  "cog": safe_div(gen["hit"], gen["hallu"]), "n": gen["n"]}
        for col, suffix in ((1, ""), (2, " (generated)")):
            for row, splits in DISCRIMINATIVE_ROWS.items():
                pooled = [(r[0], r[col]) for s in splits for r in by_split.get(s, [])]
                if pooled:
                    rows[row + suffix] = _discriminative_metrics(pooled)
        return BenchmarkScores(
            benchmark=self.name,
            rows=rows,
            notes={
                "object_matcher": self._resolve_matcher()[0],
                "ratios": "ratios exact (the official scorer adds 0.001 to every denominator and reports percent)",
                "answer_mode": {
                    "logprob": "rows '<dim>': No iff logp_no >= logp_yes (ties count as No)",
                    "generated": "rows '<dim> (generated)': AMBER's exact rule, 'Yes'/'No' after strip(); any other "
                    "text ('yes', 'No.', 'No, there is ...') is neither correct nor an answered No",
                },
                "positive_class": "No (a detected hallucination)",
                "case": "words compared lowercased (the official scorer is case-sensitive)",
                "missing": len(self._items) - len(seen),  # items of the query file without a record
            },
        )


def _discriminative_metrics(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """accuracy, precision, recall, f1, n over (truth, answer) pairs; answer in yes/no/neither, positive class no."""
    correct = sum(1 for t, a in pairs if t == a)
    tp = sum(1 for t, a in pairs if t == "no" and a == "no")
    answered_no = sum(1 for _, a in pairs if a == "no")
    truth_no = sum(1 for t, _ in pairs if t == "no")
    precision, recall = safe_div(tp, answered_no), safe_div(tp, truth_no)
    fp, fn = answered_no - tp, truth_no - tp
    # 2PR/(P+R) written in counts, so P = R = 0 gives 0 instead of 0/0
    f1 = None if precision is None or recall is None else 2 * tp / (2 * tp + fp + fn)
    return {"accuracy": safe_div(correct, len(pairs)), "precision": precision, "recall": recall, "f1": f1,
            "n": len(pairs)}


@functools.lru_cache(maxsize=1)
def _inflect_engine():
    import inflect  # a dependency, imported on first use: importing the eval package stays light

    return inflect.engine()


@functools.lru_cache(maxsize=1 << 16)
def _singular(word: str) -> str:
    """inflect's singular of a (plural) noun; the word itself when inflect finds it already singular."""
    return _inflect_engine().singular_noun(word) or word


def _load_spacy(model: str):
    """A spaCy pipeline with word vectors, or None (spaCy missing, model missing, or a model without vectors)."""
    try:
        import spacy  # optional: only the official-like matcher needs it
    except ImportError:
        return None
    try:
        nlp = spacy.load(model)
    except OSError:
        return None
    shape = nlp.vocab.vectors.shape
    return nlp if shape[0] > 0 and shape[1] > 0 else None


def _spacy_similarity(nlp) -> Callable[[str, str], float]:
    """nlp(w1).similarity(nlp(w2)) as the official `check_synonyms_word` (Doc vector cosine), cached."""
    doc = functools.lru_cache(maxsize=None)(nlp)

    @functools.lru_cache(maxsize=None)
    def sim(w1: str, w2: str) -> float:
        return float(doc(w1).similarity(doc(w2)))

    return sim
