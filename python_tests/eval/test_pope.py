"""POPE: the published question-file formats, the official answer parsing, and the metrics, with expected values
counted by hand."""

import json

import pytest

from rlaifv_fast.eval.base import BenchmarkFileError
from rlaifv_fast.eval.pope import PopeBenchmark, binary_metrics, parse_yes_no


def test_official_answer_parsing():
    assert parse_yes_no("Yes, there is a dog in the image.") == "yes"
    assert parse_yes_no("No, there is no dog.") == "no"
    assert parse_yes_no("There is not a dog") == "no"
    assert parse_yes_no("yes. No, wait") == "yes"       # only the text before the first "." counts
    assert parse_yes_no("NO") == "yes"                  # case-sensitive whole tokens, as the official script
    assert parse_yes_no("no!") == "yes"
    assert parse_yes_no("") == "yes"                     # an empty answer counts as yes
    assert parse_yes_no("there is no, dog") == "no"      # "there is no dog": the token "no"


def test_the_comma_rule_exactly():
    # the official script removes commas without adding spaces: "No,there" becomes one token "Nothere"
    assert parse_yes_no("No,there is") == "yes"


def test_binary_metrics_by_hand():
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    pred = ["yes", "yes", "no", "yes", "no", "no"]
    # TP 2, FN 1, FP 1, TN 2: accuracy 4/6, precision 2/3, recall 2/3, F1 2/3, yes ratio 3/6
    m = binary_metrics(pred, labels)
    assert m == {"accuracy": pytest.approx(4 / 6), "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                 "f1": pytest.approx(2 / 3), "yes_ratio": pytest.approx(0.5), "n": 6}
    # never predicting yes: precision undefined (None), recall 0, F1 undefined
    m = binary_metrics(["no"] * 4, ["yes", "no", "yes", "no"])
    assert m["precision"] is None and m["recall"] == 0 and m["f1"] is None and m["accuracy"] == 0.5


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_files_items_and_scores(tmp_path):
    rows = [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a car in the image?", "label": "no"},
        {"question_id": 3, "image": "COCO_val2014_000000000002.jpg", "text": "Is there an apple in the image?", "label": "yes"},
        {"question_id": 4, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a bus in the image?", "label": "no"},
    ]
    _write_jsonl(tmp_path / "coco_pope_random.json", rows)
    # the A-OKVQA / GQA variants are pretty-printed JSON arrays
    (tmp_path / "coco_pope_adversarial.json").write_text(json.dumps(rows[:2], indent=4))
    bench = PopeBenchmark(tmp_path, images_dir="/data/val2014")
    items = bench.items()
    assert [i.id for i in items] == ["pope-adversarial-1", "pope-adversarial-2", "pope-random-1", "pope-random-2",
                                     "pope-random-3", "pope-random-4"]
    assert items[2].image == "/data/val2014/COCO_val2014_000000000001.jpg" and items[2].kind == "yes_no"
    assert items[2].prompt == "Is there a dog in the image?" and items[2].meta["label"] == "yes"

    def rec(item, answer, ly, ln):
        return {"id": item.id, "split": item.split, "meta": item.meta, "answer": answer, "logp_yes": ly, "logp_no": ln}

    by = {i.id: i for i in items}
    records = [
        rec(by["pope-random-1"], "Yes, there is.", -0.1, -2.0),   # label yes: generated yes, logprob yes
        rec(by["pope-random-2"], "Yes.", -0.5, -0.5),             # label no: generated yes (FP); tie -> no (TN)
        rec(by["pope-random-3"], "No, there is not", -3.0, -0.2),  # label yes: generated no (FN), logprob no (FN)
        rec(by["pope-random-4"], "There is no bus", -2.0, -0.1),  # label no: generated no (TN), logprob no (TN)
        rec(by["pope-adversarial-1"], "yes", -0.2, -1.0),
        rec(by["pope-adversarial-2"], "no", -0.2, -1.0),
    ]
    s = bench.score(records)
    # random, logprob: pred yes,no,no,no vs yes,no,yes,no: TP1 TN2 FN1 FP0 -> acc 3/4, P 1, R 1/2, F1 2/3, yes 1/4
    assert s.rows["random"] == {"accuracy": 0.75, "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                "yes_ratio": 0.25, "n": 4}
    # random, generated: yes,yes,no,no -> TP1 FP1 FN1 TN1: acc 1/2, P 1/2, R 1/2, F1 1/2, yes 1/2
    assert s.rows["random (generated)"] == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                            "yes_ratio": 0.5, "n": 4}
    # adversarial, logprob: yes, yes vs yes, no -> TP1 FP1: acc 1/2, P 1/2, R 1, F1 2/3
    assert s.rows["adversarial"]["precision"] == 0.5 and s.rows["adversarial"]["recall"] == 1.0
    assert s.metric("random.f1") == pytest.approx(2 / 3)
    with pytest.raises(KeyError, match="known"):
        s.metric("random.nope")
    with pytest.raises(ValueError, match="not a question"):
        bench.score([{**records[0], "id": "pope-random-99"}])


def test_malformed_files_name_the_file_line_and_field(tmp_path):
    bad = tmp_path / "coco_pope_popular.json"
    bad.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}) + "\n"
                   + json.dumps({"question_id": 2, "image": "a.jpg", "label": "no"}) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"coco_pope_popular.json:2: field 'text' missing"):
        PopeBenchmark(bad)
    bad.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}))
    with pytest.raises(BenchmarkFileError, match=r":1: field 'label' must be yes or no"):
        PopeBenchmark(bad)
    bad.write_text("{not json\n")
    with pytest.raises(BenchmarkFileError, match=r":1: not a JSON object"):
        PopeBenchmark(bad)
    with pytest.raises(BenchmarkFileError, match="not found"):
        PopeBenchmark(tmp_path / "missing_random.json")
