"""CHAIR: exact scores on hand-computed examples, and the offline COCO scorer on a tiny annotation file."""

import json

import pytest

from rlaifv_fast.eval.chair import ChairScores, CocoChair, chair_scores
from rlaifv_fast.shapes import ShapesWorldConfig, describe, make_split


def test_chair_hand_computed():
    truths = [
        {("red", "circle"), ("blue", "square")},
        {("green", "triangle")},
        {("yellow", "circle")},
        {("red", "square"), ("green", "circle")},
    ]
    answers = [
        "there is a red circle . there is a blue square .",  # 2 mentions, 0 hallucinated
        "A green triangle and a yellow circle. Another yellow circle!",  # 3 mentions, 2 hallucinated (duplicate)
        "I see nothing here",  # no mentions
        "red squares",  # 1 mention, correct
    ]
    s = chair_scores(answers, truths)
    assert isinstance(s, ChairScores)
    assert s.n_answers == 4 and s.n_mentioning == 3
    assert s.response_level == pytest.approx(1 / 3)
    assert s.n_mentions == 6 and s.n_hallucinated_mentions == 2
    assert s.object_level == pytest.approx(2 / 6)
    assert s.n_true == 6 and s.recall == pytest.approx(4 / 6)  # red circle, blue square, green triangle, red square
    assert s.mean_length_words == pytest.approx((12 + 10 + 4 + 2) / 4)
    assert "CHAIRs 0.3333" in str(s) and s.as_dict()["recall"] == pytest.approx(4 / 6)


def test_chair_edge_cases_and_custom_parser():
    empty = chair_scores([], [])
    assert (empty.response_level, empty.object_level, empty.recall, empty.mean_length_words) == (0.0, 0.0, 0.0, 0.0)
    none = chair_scores(["nothing", "nothing at all"], [{("red", "circle")}, set()])
    assert none.n_mentioning == 0 and none.response_level == 0.0 and none.recall == 0.0
    assert none.mean_length_words == 2.0
    words = chair_scores(["cat dog dog", "bird"], [{"cat"}, {"bird", "cow"}], parser=str.split)
    assert words.response_level == pytest.approx(1 / 2) and words.object_level == pytest.approx(2 / 4)
    assert words.recall == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        chair_scores(["a"], [])


def test_reference_descriptions_score_perfectly():
    scenes = make_split(ShapesWorldConfig(seed=2, n_heldout=200), "heldout")
    s = chair_scores([describe(x) for x in scenes], [x.truth() for x in scenes])
    assert s.response_level == 0.0 and s.object_level == 0.0 and s.recall == 1.0 and s.n_mentioning == 200


def _write_coco(tmp_path):
    data = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
            {"id": 58, "name": "hot dog"},
            {"id": 62, "name": "dining table"},
            {"id": 3, "name": "car"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1},
            {"id": 11, "image_id": 1, "category_id": 1},
            {"id": 12, "image_id": 1, "category_id": 18},
            {"id": 13, "image_id": 2, "category_id": 58},
            {"id": 14, "image_id": 2, "category_id": 62},
        ],
    }
    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps(data))
    syn = tmp_path / "synonyms.txt"
    syn.write_text(
        "# class, synonyms\n"
        "person, man, woman, boy, child, people\n"
        "dog, puppy\n"
        "hot dog, hotdog\n"
        "dining table, table, desk\n"
        "\n"
        "car, automobile, sports car\n"
    )
    return inst, syn


def test_coco_chair_on_small_annotation_file(tmp_path):
    inst, syn = _write_coco(tmp_path)
    chair = CocoChair(inst, syn)
    assert chair.truth(1) == {"person", "dog"} and chair.truth("3") == set()
    assert chair.mentions("Two MEN walk a puppy; a hot-dog? No, hot dogs on a table.") == [
        "person",
        "dog",
        "hot dog",
        "hot dog",
        "dining table",
    ]
    assert chair.mentions("The children and people near sports cars, dogs and a woman") == [
        "person",
        "person",
        "car",
        "dog",
        "person",
    ]
    assert chair.mentions("a dogma, carpet and manners") == []  # word boundaries
    answers = {
        1: "A man and his dog next to a car.",  # person, dog, car(h): 3 mentions, 1 hallucinated
        2: "Hotdogs and hot dogs on a dining table.",  # "hotdogs": plural of the synonym hotdog
        3: "An empty street.",  # no mentions
    }
    s = chair.score(answers)
    assert s.n_answers == 3 and s.n_mentioning == 2
    assert s.response_level == pytest.approx(1 / 2)
    assert s.n_mentions == 6 and s.object_level == pytest.approx(1 / 6)
    assert s.recall == pytest.approx(4 / 4)
    assert s.mean_length_words == pytest.approx((9 + 8 + 3) / 3)
    # a mapping works as well as a file
    same = CocoChair(inst, {"person": ["man", "woman", "boy", "child", "people"], "dog": ["puppy"],
                            "hot dog": ["hotdog"], "dining table": ["table", "desk"], "car": ["automobile"]})
    assert same.score(answers) == s
    with pytest.raises(KeyError):
        chair.score({99: "a dog"})


def test_coco_chair_errors(tmp_path):
    inst, syn = _write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="instances"):
        CocoChair(tmp_path / "missing.json", syn)
    with pytest.raises(FileNotFoundError, match="synonym"):
        CocoChair(inst, tmp_path / "missing.txt")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoChair(bad, syn)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="categories"):
        CocoChair(bad, syn)
    bad.write_text(json.dumps({"categories": [{"id": 1}], "annotations": []}))
    with pytest.raises(ValueError, match="malformed"):
        CocoChair(bad, syn)
    bad.write_text(json.dumps({"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1, "category_id": 7}]}))
    with pytest.raises(ValueError, match="unknown category_id"):
        CocoChair(bad, syn)
    # the synonym list is the object vocabulary (as in CHAIR): a class with no COCO category is fine, and mentions of
    # it are hallucinations everywhere
    unicorn = CocoChair(inst, {"unicorn": ["horse with a horn"]})
    assert unicorn.mentions("a horse with a horn and a dog") == ["unicorn", "dog"]
    assert unicorn.score({1: "a unicorn"}).object_level == 1.0
    with pytest.raises(ValueError, match="both"):
        CocoChair(inst, {"dog": ["pet"], "car": ["pet"]})
    badsyn = tmp_path / "bad_syn.txt"
    badsyn.write_text("dog, , puppy\n")
    with pytest.raises(ValueError, match="malformed synonym line"):
        CocoChair(inst, badsyn)


def test_repetition_counts_objects_named_again_in_the_same_answer():
    truth = [{("red", "circle"), ("blue", "square")}]
    s = chair_scores(["a red circle. a red circle. a blue square. a red circle."], truth)
    assert (s.n_mentions, s.n_repeated_mentions) == (4, 2)
    assert s.repetition == 0.5 and s.object_level == 0.0 and s.recall == 1.0
    assert chair_scores(["a red circle. a blue square."], truth).repetition == 0.0
