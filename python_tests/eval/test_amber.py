"""AMBER benchmark: items from the published file formats, the official scorer's metrics on hand-made records
(every expected value worked out by hand below), and clear errors for malformed files."""

import importlib.util
import json

import pytest
from PIL import Image

from rlaifv_fast.eval.amber import AmberBenchmark
from rlaifv_fast.eval.base import Benchmark, BenchmarkFileError

# A tiny AMBER in the published formats: relation.json (word association), 9 safe words without a trailing
# newline, annotations.json as a 4-space pretty-printed array, query/query_all.json.
RELATION = {
    "sky": [],
    "grass": ["ground"],
    "person": ["people", "man", "woman", "individual"],
    "tree": ["forest", "bush"],
    "dog": [],
    "cloud": [],
    "car": ["vehicle", "light"],
    "bird": [],
    "sunglasses": [],
    "book": ["e-book"],
    "television": ["TV"],
}
SAFE_WORDS = "orange\nsnack\nline\ncamera\nlight\nshoe\nsign\nrange\nindividual"
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["sky", "person", "tree", "grass"], "hallu": ["dog", "cloud", "car"]},
    {"id": 2, "type": "generative", "truth": ["car", "car", "television"], "hallu": ["bird", "sunglasses", "book"]},
    {"id": 3, "type": "discriminative-attribute-state", "truth": "yes"},
    {"id": 4, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 5, "type": "discriminative-attribute-number", "truth": "yes"},
    {"id": 6, "type": "discriminative-attribute-number", "truth": "no"},
    {"id": 7, "type": "discriminative-attribute-action", "truth": "no"},
    {"id": 8, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 9, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 10, "type": "discriminative-relation", "truth": "yes"},
    {"id": 11, "type": "relation", "truth": "no"},
]
QUERIES = [
    {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
    {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
    {"id": 3, "image": "AMBER_1.jpg", "query": "Is the sky sunny in this image?"},
    {"id": 4, "image": "AMBER_1.jpg", "query": "Is the grass dry in this image?"},
    {"id": 5, "image": "AMBER_2.jpg", "query": "Are there two cars in this image?"},
    {"id": 6, "image": "AMBER_2.jpg", "query": "Is there one car in this image?"},
    {"id": 7, "image": "AMBER_2.jpg", "query": "Does the man run in this image?"},
    {"id": 8, "image": "AMBER_1.jpg", "query": "Is there a cloud in this image?"},
    {"id": 9, "image": "AMBER_2.jpg", "query": "Is there a bird in this image?"},
    {"id": 10, "image": "AMBER_1.jpg", "query": "Is there direct contact between the person and grass?"},
    {"id": 11, "image": "AMBER_2.jpg", "query": "Is there direct contact between the car and book?"},
]
SPLITS = ["generative", "generative", "attribute-state", "attribute-state", "attribute-number", "attribute-number",
          "attribute-action", "existence", "existence", "relation", "relation"]


def write_amber(root, annotations=ANNOTATIONS, queries=QUERIES, relation=RELATION):
    (root / "query").mkdir(parents=True)
    (root / "image").mkdir()
    (root / "annotations.json").write_text(json.dumps(annotations, indent=4))
    (root / "relation.json").write_text(json.dumps(relation, indent=4))
    (root / "safe_words.txt").write_text(SAFE_WORDS)
    (root / "query" / "query_all.json").write_text(json.dumps(queries, indent=4))
    (root / "query" / "query_generative.json").write_text(json.dumps(queries[:2], indent=4))
    for name in ("AMBER_1.jpg", "AMBER_2.jpg"):
        Image.new("RGB", (4, 4), (10, 200, 30)).save(root / "image" / name)
    return root


def spacy_vectors_installed():
    if importlib.util.find_spec("spacy") is None:
        return False
    import spacy.util

    return any(spacy.util.is_package(m) for m in ("en_core_web_lg", "en_core_web_md"))


def needs_fallback():
    if spacy_vectors_installed():
        pytest.skip("a spaCy model with vectors is installed, so the official-like matcher runs, not the "
                    "vocabulary-exact fallback these values are worked out for")


@pytest.fixture
def data(tmp_path):
    return write_amber(tmp_path / "amber")


def rec(n, answer, lp_yes=None, lp_no=None):
    return {"id": f"amber-{n}", "answer": answer, "num_tokens": 3, "finish_reason": "stop",
            "logp_yes": lp_yes, "logp_no": lp_no}


def test_items(data):
    bench = AmberBenchmark(data)
    assert isinstance(bench, Benchmark) and bench.name == "amber"
    items = bench.items()
    assert [it.id for it in items] == [f"amber-{n}" for n in range(1, 12)]
    assert [it.split for it in items] == SPLITS
    assert [it.kind for it in items] == ["generate"] * 2 + ["yes_no"] * 9
    assert [it.prompt for it in items] == [q["query"] for q in QUERIES]
    assert [it.image for it in items] == [str(data / "image" / q["image"]) for q in QUERIES]
    assert items[0].meta == {"amber_id": 1, "type": "generative", "truth": ["sky", "person", "tree", "grass"],
                             "hallu": ["dog", "cloud", "car"]}
    assert items[10].meta == {"amber_id": 11, "type": "relation", "truth": "no"}
    assert items[7].meta == {"amber_id": 8, "type": "discriminative-hallucination", "truth": "no"}
    gen_only = AmberBenchmark(data, query_file=data / "query" / "query_generative.json").items()
    assert [it.id for it in gen_only] == ["amber-1", "amber-2"]


def test_items_other_image_dir_and_missing_images(data, tmp_path):
    bench = AmberBenchmark(data, images_dir=tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="AMBER images missing"):
        bench.items()


# Discriminative records: (id, truth, logp answer [No iff logp_no >= logp_yes], generated text -> official answer)
#   3 state  yes  -0.1 vs -2.0 -> yes ok    "Yes"                     -> yes ok
#   4 state  no   -1.0 == -1.0 -> no ok     "yes"                     -> neither (wrong)
#   5 number yes  -3.0 vs -0.2 -> no wrong  " Yes\n" (stripped)       -> yes ok
#   6 number no   -2.0 vs -0.5 -> no ok     "No."                     -> neither (wrong)
#   7 action no   -0.3 vs -1.5 -> yes wrong "Yes"                     -> yes wrong
#   8 exist  no   -2.0 vs -0.1 -> no ok     "No"                      -> no ok
#   9 exist  no   -0.5 vs -0.6 -> yes wrong "No"                      -> no ok
#  10 rel    yes  -0.1 vs -3.0 -> yes ok    "Yes"                     -> yes ok
#  11 rel    no   -0.2 vs -0.9 -> yes wrong "No, they do not touch."  -> neither (wrong)
DISC = [rec(3, "Yes", -0.1, -2.0), rec(4, "yes", -1.0, -1.0), rec(5, " Yes\n", -3.0, -0.2), rec(6, "No.", -2.0, -0.5),
        rec(7, "Yes", -0.3, -1.5), rec(8, "No", -2.0, -0.1), rec(9, "No", -0.5, -0.6), rec(10, "Yes", -0.1, -3.0),
        rec(11, "No, they do not touch.", -0.2, -0.9)]


def row(accuracy, precision, recall, f1, n):
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1, "n": n}


def test_discriminative_both_modes(data):
    s = AmberBenchmark(data).score(DISC)
    assert "generative" not in s.rows
    approx = pytest.approx
    # logprob mode (tp = answered no and truth no; F1 = 2tp / (2tp + fp + fn))
    # state 3,4: correct 2/2; tp 1 (4); answered no 1; truth no 1 -> P 1, R 1, F1 2/2
    assert s.rows["attribute-state"] == row(1.0, 1.0, 1.0, 1.0, 2)
    # number 5,6: correct 1/2 (6); tp 1; answered no 2 (5,6) -> P 1/2; truth no 1 -> R 1; F1 2/(2+1+0)
    assert s.rows["attribute-number"] == row(0.5, 0.5, 1.0, approx(2 / 3), 2)
    # action 7: correct 0/1; answered no 0 -> P undefined; R 0/1; F1 undefined
    assert s.rows["attribute-action"] == row(0.0, None, 0.0, None, 1)
    # attribute 3-7 pooled: correct 3 (3,4,6)/5; tp 2 (4,6); answered no 3 (4,5,6); truth no 3 (4,6,7)
    # -> P 2/3, R 2/3, F1 4/(4+1+1)
    assert s.rows["attribute"] == row(approx(3 / 5), approx(2 / 3), approx(2 / 3), approx(2 / 3), 5)
    # existence 8,9: correct 1/2 (8); tp 1; answered no 1; truth no 2 -> P 1, R 1/2, F1 2/(2+0+1)
    assert s.rows["existence"] == row(0.5, 1.0, 0.5, approx(2 / 3), 2)
    # relation 10,11: correct 1/2 (10); answered no 0 -> P undefined; R 0/1; F1 undefined
    assert s.rows["relation"] == row(0.5, None, 0.0, None, 2)
    # all 9: correct 5 (3,4,6,8,10); tp 3 (4,6,8); answered no 4 (4,5,6,8); truth no 6 (4,6,7,8,9,11)
    # -> acc 5/9, P 3/4, R 1/2, F1 6/(6+1+3) = 0.6 (= 2 * 0.75 * 0.5 / 1.25)
    assert s.rows["discriminative"] == row(approx(5 / 9), 0.75, 0.5, approx(0.6), 9)
    # generated mode (official exact rule)
    # state: correct 1/2 (3); answered no 0 -> P undefined; R 0/1 (4 said "yes")
    assert s.rows["attribute-state (generated)"] == row(0.5, None, 0.0, None, 2)
    # number: correct 1/2 (5 after strip); "No." is not an answered No -> P undefined; R 0/1
    assert s.rows["attribute-number (generated)"] == row(0.5, None, 0.0, None, 2)
    assert s.rows["attribute-action (generated)"] == row(0.0, None, 0.0, None, 1)
    # attribute: correct 2 (3,5)/5; answered no 0; truth no 3, tp 0
    assert s.rows["attribute (generated)"] == row(approx(2 / 5), None, 0.0, None, 5)
    # existence: both "No", truth no -> acc 1, P 2/2, R 2/2, F1 4/4
    assert s.rows["existence (generated)"] == row(1.0, 1.0, 1.0, 1.0, 2)
    # relation: correct 1/2 (10); 11 is neither -> P undefined; R 0/1
    assert s.rows["relation (generated)"] == row(0.5, None, 0.0, None, 2)
    # all: correct 5 (3,5,8,9,10)/9; tp 2 (8,9); answered no 2; truth no 6 -> P 1, R 1/3, F1 4/(4+0+4)
    assert s.rows["discriminative (generated)"] == row(approx(5 / 9), 1.0, approx(1 / 3), 0.5, 9)
    assert "ratios exact (the official scorer adds 0.001 to every denominator and reports percent)" in s.notes.values()
    assert "ties count as No" in s.notes["answer_mode"]["logprob"]
    assert s.notes["missing"] == 2  # the two generative items have no record
    with pytest.raises(KeyError, match="undefined"):
        s.metric("relation.precision")
    assert s.metric("discriminative.f1") == pytest.approx(0.6)


def test_precision_and_recall_zero_give_f1_zero(data):
    # 10 (truth yes) generated "No": answered No, wrong; 11 (truth no) generated "Yes": wrong
    # -> tp 0, answered no 1 -> P 0/1 = 0; truth no 1 -> R 0/1 = 0; F1 = 2*0/(0+1+1) = 0 (defined: P, R defined)
    s = AmberBenchmark(data).score([rec(10, "No", -1.0, -2.0), rec(11, "Yes", -1.0, -2.0)])
    assert s.rows["relation (generated)"] == row(0.0, 0.0, 0.0, 0.0, 2)
    # only the dimensions that have records make rows
    assert set(s.rows) == {"relation", "discriminative", "relation (generated)", "discriminative (generated)"}


# Generative responses, fallback matcher (lowercase words, inflect singulars, vocabulary words only):
# R1 (truth sky person tree grass; hallu dog cloud car), objects: men->man, sky, bushes->bush, light, ground
#   ("zebra" is not in the vocabulary, ignored). man: association of person -> covers person; sky: truth;
#   bush: association of tree; light: a safe word -> skipped (counted, not hallucinated; it is also an
#   association of the hallu object car, but the skip comes first, so no hit); ground: association of grass.
#   5 objects, 0 hallucinated, covered 4/4, hit 0/3.
# R2 (truth car car television; hallu bird sunglasses book), objects: cars->car, vehicle, man, e-book (two
#   tokens joined), tv (from "TV"), sunglasses (a vocabulary word kept as is), birds->bird.
#   car: first exact candidate is truth 0 -> covers car #0; vehicle: association of car #0 (first) -> covers #0
#   again, so car #1 is never covered; man: no candidate -> hallucinated; e-book: association of hallu book
#   -> hit book, hallucinated; tv: association of television -> covered; sunglasses: hallu -> hit, hallucinated;
#   bird: hallu -> hit, hallucinated. 7 objects, 4 hallucinated, covered 2/3 (car #0, television), hit 3/3.
R1 = "Two men walk under the blue sky near some bushes and a zebra, by a light. The ground is wet."
R2 = "Cars and a vehicle are parked. A man reads an e-book next to a TV, wearing sunglasses. Birds fly."


def test_generative_fallback(data):
    needs_fallback()
    bench = AmberBenchmark(data)
    m = bench.match_response(R2, ["car", "car", "television"], ["bird", "sunglasses", "book"])
    assert m == {"objects": ["car", "vehicle", "man", "e-book", "tv", "sunglasses", "bird"],
                 "hallucinated": ["man", "e-book", "sunglasses", "bird"],
                 "covered": [True, False, True], "hit": [True, True, True]}
    s = bench.score([rec(1, R1), rec(2, R2)] + DISC)
    # chair = (0 + 4) / (5 + 7) = 1/3; cover = (4 + 2) / (4 + 3) = 6/7; hal = 1 (R2) / 2 responses;
    # cog = (0 + 3) / (3 + 3) = 1/2
    assert s.rows["generative"] == {"chair": pytest.approx(1 / 3), "cover": pytest.approx(6 / 7), "hal": 0.5,
                                    "cog": 0.5, "n": 2}
    assert s.notes["object_matcher"].startswith("vocabulary-exact (no spaCy model with vectors installed")
    assert s.rows["discriminative"]["n"] == 9


def test_generative_no_objects_gives_undefined_chair(data):
    needs_fallback()
    # no vocabulary word: chair 0/0 undefined; cover 0/4; hal 0/1; cog 0/3
    s = AmberBenchmark(data).score([rec(1, "A zebra.")])
    assert s.rows == {"generative": {"chair": None, "cover": 0.0, "hal": 0.0, "cog": 0.0, "n": 1}}


def test_similarity_steps(data):
    # a given similarity runs steps (d) and (e); threshold 0.8 is strict
    table = {("man", "tv"): 0.9, ("bird", "cloud"): 0.85, ("bird", "dog"): 0.8}

    def table_sim(a, b):
        return table.get((a, b), 0.0)

    bench = AmberBenchmark(data, similarity=table_sim)
    # truth car television -> candidates vehicle light (car) tv (television) car television
    # hallu dog cloud -> candidates dog cloud
    # man: no exact match; (d) sim with dog 0, cloud 0 -> no hit; (e) sim(man, tv) 0.9 > 0.8 -> covers television
    # bird: no exact match; (d) sim(bird, dog) 0.8 is not > 0.8, sim(bird, cloud) 0.85 -> hits cloud; (e) none
    #   -> hallucinated
    m = bench.match_response("A man and a bird.", ["car", "television"], ["dog", "cloud"])
    assert m == {"objects": ["man", "bird"], "hallucinated": ["bird"], "covered": [False, True],
                 "hit": [False, True]}
    s = bench.score([rec(1, "A man and a bird.")])
    # R1 truth sky person tree grass: man covers person (exact association), bird: (d) no hallu candidate of
    # dog cloud car (vehicle light) is similar except cloud 0.85 -> hit cloud; (e) none -> hallucinated
    # chair 1/2, cover 1/4, hal 1/1, cog 1/3
    assert s.rows["generative"] == {"chair": 0.5, "cover": 0.25, "hal": 1.0, "cog": pytest.approx(1 / 3), "n": 1}
    assert s.notes["object_matcher"] == "vocabulary + table_sim (similarity > 0.8)"


def test_bad_records(data):
    bench = AmberBenchmark(data, query_file=data / "query" / "query_generative.json")
    with pytest.raises(ValueError, match="amber-3"):
        bench.score([rec(3, "Yes", -0.1, -2.0)])
    with pytest.raises(ValueError, match="appears twice"):
        bench.score([rec(1, "A dog."), rec(1, "A dog.")])
    with pytest.raises(ValueError, match="logp_yes and logp_no"):
        AmberBenchmark(data).score([rec(3, "Yes")])


def test_missing_field(tmp_path):
    bad = [dict(a) for a in ANNOTATIONS]
    del bad[3]["truth"]
    root = write_amber(tmp_path / "a", annotations=bad)
    with pytest.raises(BenchmarkFileError, match=r"annotations\.json: record 3 \(id 4\): field 'truth' missing"):
        AmberBenchmark(root)


def test_bad_values(tmp_path):
    bad = [dict(a) for a in ANNOTATIONS]
    bad[5]["truth"] = "maybe"
    with pytest.raises(BenchmarkFileError, match=r"annotations\.json: record 5 \(id 6\): field 'truth' must be"):
        AmberBenchmark(write_amber(tmp_path / "a", annotations=bad))
    bad = [dict(a) for a in ANNOTATIONS]
    bad[1]["hallu"] = ["bird", "unicorn"]
    with pytest.raises(BenchmarkFileError, match=r"record 1 \(id 2\): field 'hallu': 'unicorn' is not a key"):
        AmberBenchmark(write_amber(tmp_path / "b", annotations=bad))
    queries = [dict(q) for q in QUERIES]
    del queries[4]["image"]
    with pytest.raises(BenchmarkFileError, match=r"query_all\.json: record 4 \(id 5\): field 'image' missing"):
        AmberBenchmark(write_amber(tmp_path / "c", queries=queries))


def test_bad_json(data):
    (data / "relation.json").write_text('{"sky": [], "grass": ["ground"')
    with pytest.raises(BenchmarkFileError, match=r"relation\.json: not valid JSON"):
        AmberBenchmark(data)


def test_query_id_not_in_annotations(tmp_path):
    root = write_amber(tmp_path / "a", queries=QUERIES + [{"id": 99, "image": "AMBER_1.jpg", "query": "Q?"}])
    with pytest.raises(BenchmarkFileError, match=r"query_all\.json: record 11 \(id 99\): field 'id' is not in"):
        AmberBenchmark(root)


def test_missing_file(tmp_path):
    root = write_amber(tmp_path / "a")
    (root / "safe_words.txt").unlink()
    with pytest.raises(FileNotFoundError, match="safe_words.txt"):
        AmberBenchmark(root)


class FakeSpacy:
    """Stands in for the spacy module (not installed here) to check the spaCy matcher's wiring: `load` knows one
    model; tokens carry the POS and lemma a tagger would give; Doc.similarity looks the word pair up."""

    POS = {"A": ("DET", "a"), "light": ("ADJ", "light"), "car": ("NOUN", "car"), "passes": ("VERB", "pass"),
           "a": ("DET", "a"), "men": ("NOUN", "man"), "sunglasses": ("NOUN", "sunglass")}
    SIM = {("man", "dog"): 0.9}

    def __init__(self, models):
        self.models = models

    def load(self, name):
        if name not in self.models:
            raise OSError(f"[E050] Can't find model '{name}'")
        return FakeNlp(self.models[name])


class FakeNlp:
    def __init__(self, vectors_shape):
        self.vocab = type("Vocab", (), {"vectors": type("Vectors", (), {"shape": vectors_shape})()})()

    def __call__(self, text):
        return FakeDoc(text)


class FakeDoc(list):
    def __init__(self, text):
        self.text = text
        super().__init__(
            type("Token", (), {"lower_": w.lower(), "pos_": FakeSpacy.POS.get(w, ("NOUN", w))[0],
                               "lemma_": FakeSpacy.POS.get(w, ("NOUN", w))[1]})()
            for w in text.replace(".", "").split()
        )

    def similarity(self, other):
        return FakeSpacy.SIM.get((self.text, other.text), 0.0)


def test_spacy_matcher_wiring(data, monkeypatch):
    import sys

    # en_core_web_lg absent, en_core_web_md with vectors -> md is used
    monkeypatch.setitem(sys.modules, "spacy", FakeSpacy({"en_core_web_md": (10, 3)}))
    bench = AmberBenchmark(data)
    # "A light car passes a men sunglasses.": nouns car, men (lemma man), sunglasses (kept: a vocabulary word,
    # though its lemma is "sunglass"); "light" is an adjective here, so not an object (the fallback would count it).
    # truth car: candidates vehicle light car; hallu dog: candidates dog
    # car: exact truth -> covered; man: (d) sim(man, dog) 0.9 > 0.8 -> hit dog; (e) none -> hallucinated;
    # sunglasses: no candidate, no similarity -> hallucinated
    m = bench.match_response("A light car passes a men sunglasses.", ["car"], ["dog"])
    assert m == {"objects": ["car", "man", "sunglasses"], "hallucinated": ["man", "sunglasses"], "covered": [True],
                 "hit": [True]}
    assert bench.score([rec(3, "Yes", -0.1, -2.0)]).notes["object_matcher"] == "spacy:en_core_web_md (similarity > 0.8)"
    # an explicitly named model that does not load is an error, not a silent fallback
    with pytest.raises(ValueError, match="en_core_web_lg"):
        AmberBenchmark(data, similarity="en_core_web_lg").score([rec(1, "A car.")])
    # a model without vectors (like en_core_web_sm) is passed over
    monkeypatch.setitem(sys.modules, "spacy", FakeSpacy({"en_core_web_md": (0, 0)}))
    notes = AmberBenchmark(data).score([rec(3, "Yes", -0.1, -2.0)]).notes
    assert notes["object_matcher"].startswith("vocabulary-exact")
