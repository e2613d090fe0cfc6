"""CocoChair, the standard CHAIR pipeline, on a tiny COCO instances + captions pair; expected values counted by hand."""

import hashlib
import json

import pytest

from rlaifv_fast.eval.base import BenchmarkFileError
from rlaifv_fast.eval.chair import DEFAULT_SYNONYMS, CocoChair, load_synonyms

CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 7, "name": "train"},
    {"id": 18, "name": "dog"},
    {"id": 22, "name": "elephant"},
    {"id": 32, "name": "tie"},
    {"id": 54, "name": "hot dog"},
    {"id": 62, "name": "chair"},
    {"id": 67, "name": "dining table"},
    {"id": 70, "name": "toilet"},
]


def write_coco(folder, split="val"):
    """Six images. Instance truth: 1 {person, dog}; 2 {hot dog, dining table}; 3 {toilet}; 4 {elephant};
    5 {train, person}; 6 {} (listed in images, no annotations)."""
    folder.mkdir(parents=True, exist_ok=True)
    anns = [(1, 1), (1, 1), (1, 18), (2, 54), (2, 67), (3, 70), (4, 22), (5, 7), (5, 1)]
    instances = {
        "images": [{"id": i} for i in range(1, 7)],
        "categories": CATEGORIES,
        "annotations": [{"id": 100 + k, "image_id": im, "category_id": c} for k, (im, c) in enumerate(anns)],
    }
    captions = {
        "images": [{"id": i} for i in range(1, 7)],
        "annotations": [
            # person (man), dog, frisbee: the frisbee is in no instance annotation, only in this caption
            {"id": 1, "image_id": 1, "caption": "A man and a dog play with a frisbee in the park."},
            # hot dog ("hot dogs" merged), dining table ("table")
            {"id": 2, "image_id": 2, "caption": "Two hot dogs on a plate on a table."},
            # toilet, sink (caption only); "seat" is dropped because "toilet" is named, so no chair
            {"id": 3, "image_id": 3, "caption": "A white toilet with the seat up next to a sink."},
            # elephant twice ("baby elephant", "adult elephant"): no person although "baby"/"adult" are person words
            {"id": 4, "image_id": 4, "caption": "A baby elephant standing next to an adult elephant."},
            # "passenger train" -> train; "train tracks" -> "train track", consumed and dropped
            {"id": 5, "image_id": 5, "caption": "A passenger train on the train tracks."},
        ],
    }
    (folder / f"instances_{split}2014.json").write_text(json.dumps(instances))
    (folder / f"captions_{split}2014.json").write_text(json.dumps(captions))
    return folder


@pytest.fixture(scope="module")
def chair(tmp_path_factory):
    return CocoChair(write_coco(tmp_path_factory.mktemp("coco")))


def test_shipped_synonym_list():
    syn = load_synonyms()
    assert len(syn) == 80 and list(syn)[0] == "person" and list(syn)[-1] == "toothbrush"
    # the RLAIF-V refinements (bench_formats.md 2.2)
    assert "brother" in syn["person"] and "pedestrian" in syn["person"]
    assert syn["bicycle"] == ["bike", "unicycle", "minibike", "trike"]
    assert "motor bike" in syn["motorcycle"] and "cheesecake" in syn["cake"]
    assert "coffee table" in syn["dining table"] and "remote control" in syn["remote"]
    # the data lines are byte-identical to RLAIF-V's synonyms_refine.txt (after the '#' header)
    raw = DEFAULT_SYNONYMS.read_bytes()
    body = b"".join(line for line in raw.splitlines(keepends=True) if not line.startswith(b"#"))
    assert len(body) == 3594 and hashlib.md5(body).hexdigest() == "19fd1efa5010a20227f212885b7b6e5d"


def test_truth_is_instances_union_caption_objects(tmp_path, chair):
    assert chair.truth(1) == {"person", "dog", "frisbee"}
    assert chair.truth("2") == {"hot dog", "dining table"}
    assert chair.truth(3) == {"toilet", "sink"}
    assert chair.truth(4) == {"elephant"}
    assert chair.truth(5) == {"train", "person"}
    assert chair.truth(6) == set()
    with pytest.raises(KeyError):
        chair.truth(99)
    # instances alone: no caption objects
    only = CocoChair([write_coco(tmp_path / "c") / "instances_val2014.json"])
    assert only.truth(1) == {"person", "dog"} and only.truth(3) == {"toilet"}
    # image_ids restricts what is kept
    some = CocoChair(tmp_path / "c", image_ids=[1, "3"])
    assert some.truth(3) == {"toilet", "sink"} and not some.has_image(2)


def test_mentions_rules(chair):
    m = chair.mentions
    assert m("Two dogs and a puppy") == ["dog", "dog"]  # plural; synonym puppy
    assert m("a hot dog next to hot dogs") == ["hot dog", "hot dog"]  # not a dog
    assert m("a dining table and a desk") == ["dining table", "dining table"]
    assert m("a baby elephant and two adult elephants") == ["elephant", "elephant"]  # not a person
    assert m("a baby and an adult") == ["person", "person"]
    assert m("a baby animal") == []  # "baby animal" is consumed; "animal" is not a COCO word
    assert m("the toilet seat is up") == ["toilet"]  # not a chair
    assert m("the seat of the toilet") == ["toilet"]  # any seat, once a toilet is named
    assert m("an empty seat") == ["chair"]
    assert m("a man in a bow tie") == ["person", "tie"]
    assert m("train tracks") == [] and m("a train on the tracks") == ["train"]
    assert m("a passenger train and a passenger jet") == ["train", "airplane"]
    assert m("two passengers") == ["person"]
    assert m("home plate") == []
    assert m("a stove top oven") == ["oven"]  # three-word synonym: one mention (the bigram-only reference gives two)
    assert m("people and children") == ["person", "person"]  # kept as synonyms, not singularised
    assert m("men, women and kids") == ["person", "person", "person"]  # irregular plurals
    assert m("skis and ski") == ["skis", "skis"]
    assert m("wine glasses and a wine glass") == ["wine glass", "wine glass"]  # no "wine glas"
    assert m("sports balls") == ["sports ball"]  # "sports" is a synonym word: not singularised to "sport"
    assert m("a remote control and a coffee table") == ["remote", "dining table"]  # RLAIF-V additions
    assert m("a motor bike") == ["motorcycle"]  # the double space of the original list, fixed in RLAIF-V's
    assert m("an iPhone") == ["cell phone"]  # lowercased list (the reference cannot match "iPhone")
    assert m("a hot-dog") == ["hot dog"]
    assert m("knives, mice and buses") == ["knife", "mouse", "bus"]
    assert m("busses, taxies and mouses") == ["bus", "car", "mouse"]  # inflect's wrong singulars, repaired
    assert m("a dogma, carpet and manners") == []  # whole words only
    assert chair.class_of("puppy") == "dog" and chair.class_of("unicorn") is None


def test_every_shipped_synonym_maps_to_its_class(chair):
    # including "baby", "adult", "passenger" alone (person) and "bow tie" (the rule's "tie" is its class anyway)
    for cls, others in load_synonyms().items():
        for phrase in [cls, *others]:
            assert chair.mentions(phrase) == [cls], phrase


def test_plurals_of_shipped_synonyms_map_to_their_class(chair):
    import inflect

    eng = inflect.engine()
    wrong = {}
    for cls, others in load_synonyms().items():
        for phrase in [cls, *others]:
            words = phrase.split()
            if words[-1] == "skis":  # already a plural: inflect's "skiss" is no word
                continue
            plural = " ".join(words[:-1] + [eng.plural_noun(words[-1])])
            got = chair.mentions(plural)
            if got != [cls]:
                wrong[plural] = got
    assert wrong == {}


def test_scores_hand_computed(chair):
    answers = {
        # dog, dog (puppy), frisbee, person (man), hot dog (h), chair (h): 6 mentions, 2 hallucinated; dog repeated
        # once; true classes named {dog, frisbee, person} = 3 of 3; 18 words
        1: "Two dogs and a puppy catch a frisbee near a man. A hot dog stand and a chair.",
        # hot dog, dining table: 2 mentions, 0 hallucinated; 2 of 2 true; 6 words
        2: "Hot dogs on a dining table.",
        # toilet ("toilet seat"), tie ("bow tie", h): 2 mentions, 1 hallucinated; {toilet} 1 of 2 true; 10 words
        3: "A toilet seat and a bow tie on the floor.",
        # elephant, elephant: 2 mentions, 0 hallucinated, 1 repeated; 1 of 1 true; 7 words
        4: "A baby elephant and two adult elephants.",
        # "train track" dropped: no mention; 0 of 2 true; 5 words
        5: "Train tracks in a field.",
        # dog (h): 1 mention, 1 hallucinated; truth empty; 2 words
        6: "A dog.",
    }
    s = chair.score(answers)
    assert s.n_answers == 6
    assert s.n_mentioning == 5  # all but 5
    assert s.n_hallucinating == 3  # 1, 3, 6
    assert s.response_level == pytest.approx(3 / 5)  # CHAIRs_refine (RLAIF-V's Response Hall)
    assert s.response_level_all == pytest.approx(3 / 6)  # original CHAIRs
    assert s.n_mentions == 13 and s.n_hallucinated_mentions == 4  # 6+2+2+2+1; 2+0+1+0+1
    assert s.object_level == pytest.approx(4 / 13)
    assert s.n_true == 10 and s.n_recalled == 7  # 3+2+2+1+2+0; 3+2+1+1+0+0
    assert s.recall == pytest.approx(7 / 10)
    assert s.mean_length_words == pytest.approx((18 + 6 + 10 + 7 + 5 + 2) / 6)
    assert s.n_repeated_mentions == 2 and s.repetition == pytest.approx(2 / 13)


def test_train_and_val_files_are_combined(tmp_path):
    write_coco(tmp_path / "a", "val")
    train = {
        "images": [{"id": 7}],
        "categories": CATEGORIES,
        "annotations": [{"id": 1, "image_id": 7, "category_id": 32}],
    }
    (tmp_path / "a" / "instances_train2014.json").write_text(json.dumps(train))
    (tmp_path / "a" / "captions_train2014.json").write_text(json.dumps(
        {"annotations": [{"id": 9, "image_id": 7, "caption": "A man wearing a necktie."}]}))
    c = CocoChair(tmp_path / "a")
    assert c.truth(7) == {"tie", "person"}  # "necktie" is no synonym of tie
    assert c.truth(1) == {"person", "dog", "frisbee"}


def test_category_missing_from_synonyms_is_its_own_class(tmp_path):
    inst = tmp_path / "instances_val2014.json"
    inst.write_text(json.dumps({"categories": [{"id": 1, "name": "Unicorn Horse"}, {"id": 2, "name": "dog"}],
                                "annotations": [{"image_id": 5, "category_id": 1}]}))
    c = CocoChair(inst, {"dog": ["puppy"]})
    assert c.truth(5) == {"unicorn horse"}
    assert c.mentions("two unicorn horses and a puppy") == ["unicorn horse", "dog"]


def test_malformed_coco_files(tmp_path):
    def bad(name, content):
        p = tmp_path / name
        p.write_text(content if isinstance(content, str) else json.dumps(content))
        return p

    with pytest.raises(FileNotFoundError, match="instances"):
        CocoChair(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="instances_"):
        CocoChair(tmp_path / "empty")
    cases = [
        ("instances_a2014.json", "{oops", r"instances_a2014\.json is not valid JSON"),
        ("instances_b2014.json", {"annotations": []}, r"instances_b2014\.json: missing field 'categories'"),
        ("instances_c2014.json", {"categories": [{"id": 1}], "annotations": []},
         r"instances_c2014\.json: categories\[0\] is malformed: missing field 'name'"),
        ("instances_d2014.json", {"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1}]},
         r"instances_d2014\.json: annotations\[0\] is malformed: missing field 'category_id'"),
        ("instances_e2014.json", {"categories": [{"id": 1, "name": "dog"}],
                                  "annotations": [{"image_id": "x", "category_id": 1}]},
         r"instances_e2014\.json: annotations\[0\] is malformed: field 'image_id' must be an integer id"),
        ("instances_f2014.json", {"categories": [{"id": 1, "name": "dog"}],
                                  "annotations": [{"image_id": 1, "category_id": 2}]},
         r"instances_f2014\.json: annotations\[0\] uses unknown category_id 2"),
        ("instances_g2014.json", {"categories": {"id": 1}, "annotations": []}, "field 'categories' must be a list"),
    ]
    for name, content, match in cases:
        with pytest.raises(BenchmarkFileError, match=match):
            CocoChair([bad(name, content)])
    good = bad("instances_ok2014.json", {"categories": [{"id": 1, "name": "dog"}], "annotations": []})
    for content, match in [
        ({"images": []}, r"captions_x2014\.json: missing field 'annotations'"),
        ({"annotations": [{"image_id": 1}]}, r"captions_x2014\.json: annotations\[0\] is malformed: missing field "
                                             r"'caption'"),
        ({"annotations": [{"image_id": 1, "caption": 3}]}, "field 'caption' must be a string"),
    ]:
        with pytest.raises(BenchmarkFileError, match=match):
            CocoChair([good, bad("captions_x2014.json", content)])
    with pytest.raises(BenchmarkFileError, match="at least one instances file"):
        CocoChair([bad("captions_y2014.json", {"annotations": []})])
    other = bad("instances_h2014.json", {"categories": [{"id": 1, "name": "cat"}], "annotations": []})
    with pytest.raises(BenchmarkFileError, match="category id 1 is 'cat' here but 'dog'"):
        CocoChair([good, other])
