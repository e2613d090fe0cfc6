"""Object HalBench and the COCO-caption CHAIR benchmark: items from the published prompt format, scores counted by
hand, malformed files named by file, line and field."""

import base64
import json

import pytest

from rlaifv_fast.eval.base import Benchmark, BenchmarkFileError
from rlaifv_fast.eval.chair import CocoChair
from rlaifv_fast.eval.objhal import CocoCaptionBenchmark, ObjHalBenchmark

PNG_A = b"\x89PNG\r\n\x1a\n fake image A"
PNG_B = b"\x89PNG\r\n\x1a\n fake image B"


def write_coco(folder):
    """Image 10: instances {person, dog}, caption adds couch -> truth {person, dog, couch}.
    Image 20: instances {cat}, caption adds bed -> truth {cat, bed}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances_val2014.json").write_text(json.dumps({
        "images": [{"id": 10}, {"id": 20}],
        "categories": [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
        "annotations": [{"image_id": 10, "category_id": 1}, {"image_id": 10, "category_id": 18},
                        {"image_id": 20, "category_id": 17}],
    }))
    (folder / "captions_val2014.json").write_text(json.dumps({
        "annotations": [{"image_id": 10, "caption": "A woman holding a puppy on a couch."},
                        {"image_id": 20, "caption": "A cat sleeping on a bed."}],
    }))
    return folder


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def objhal(tmp_path):
    coco = write_coco(tmp_path / "coco")
    prompts = tmp_path / "bench"
    (prompts / "imgs").mkdir(parents=True)
    (prompts / "imgs" / "b.jpg").write_bytes(PNG_B)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "c.jpg").write_bytes(PNG_A)
    b64 = base64.b64encode(PNG_A).decode()
    write_lines(prompts / "obj_halbench.jsonl", [
        {"image_id": 10, "question": "Describe the image in detail.", "image": b64, "org_idx": 0},
        {"image_id": "20", "question": "What is in this picture?", "image_path": "imgs/b.jpg", "question_id": 7},
        {"image_id": 10, "question": "Describe in detail.", "image_path": "c.jpg"},  # found in images_dir
        {"image_id": 20, "question": "Describe.", "image": "data:image/png;base64," + base64.b64encode(PNG_B).decode()},
    ])
    return ObjHalBenchmark(prompts / "obj_halbench.jsonl", coco, images_dir=extra), tmp_path


def test_objhal_items(objhal):
    bench, root = objhal
    assert isinstance(bench, Benchmark) and bench.name == "objhal"
    items = bench.items()
    assert [i.id for i in items] == ["objhal-0", "objhal-1", "objhal-2", "objhal-3"]
    assert all(i.split == "objhal" and i.kind == "generate" for i in items)
    assert [i.prompt for i in items] == ["Describe the image in detail.", "What is in this picture?",
                                         "Describe in detail.", "Describe."]
    assert items[0].image == {"bytes": PNG_A, "path": None}
    assert items[1].image == str(root / "bench" / "imgs" / "b.jpg")
    assert items[2].image == str(root / "extra" / "c.jpg")
    assert items[3].image == {"bytes": PNG_B, "path": None}
    assert items[0].meta == {"image_id": 10, "org_idx": 0}
    assert items[1].meta == {"image_id": 20, "question_id": 7}
    assert items[2].meta == {"image_id": 10}


def test_objhal_scores_hand_computed(objhal):
    bench, _ = objhal
    records = [
        # image 10, truth {person, dog, couch}: person (woman), dog (puppies), dog, couch (sofa), cat (h):
        # 5 mentions, 1 hallucinated, 1 repeated (dog); true named {person, dog, couch} 3 of 3; 15 words
        {"id": "objhal-0", "answer": "A woman holds two puppies and a dog on a sofa next to a cat."},
        # image 20, truth {cat, bed}: cat (kitten), bed, laptop (h), remote (h, "remote control"):
        # 4 mentions, 2 hallucinated; 2 of 2 true; 12 words
        {"id": "objhal-1", "answer": "A kitten on a bed with a laptop and a remote control."},
        # image 10: dog: 1 mention, 0 hallucinated; 1 of 3 true; 2 words
        {"id": "objhal-2", "answer": "A dog."},
        # image 20: no mention; 0 of 2 true; 3 words
        {"id": "objhal-3", "answer": "Nothing to see."},
    ]
    s = bench.score(records)
    row = s.rows["objhal"]
    assert row["n"] == 4 and row["n_mentioning"] == 3
    assert row["response_level"] == pytest.approx(2 / 3)  # answers 0 and 1 of the 3 mentioning ones
    assert row["response_level_all"] == pytest.approx(2 / 4)
    assert row["n_mentions"] == 10 and row["n_hallucinated_mentions"] == 3  # 5+4+1+0; 1+2+0+0
    assert row["object_level"] == pytest.approx(3 / 10)
    assert row["recall"] == pytest.approx(6 / 10)  # (3+2+1+0) / (3+2+3+2)
    assert row["mean_length_words"] == pytest.approx((15 + 12 + 2 + 3) / 4)
    assert row["repetition"] == pytest.approx(1 / 10)  # the second dog of answer 0
    assert s.metric("response_level") == pytest.approx(2 / 3)
    assert "no GPT" in s.notes["object extraction"] and s.notes["missing"] == 0

    part = bench.score(records[3:])  # no mention at all: the rates over mentions are undefined
    assert part.rows["objhal"]["response_level"] is None and part.rows["objhal"]["object_level"] is None
    assert part.rows["objhal"]["response_level_all"] == 0.0 and part.notes["missing"] == 3
    with pytest.raises(ValueError, match="not an item"):
        bench.score([{"id": "pope-random-1", "answer": "yes"}])
    with pytest.raises(ValueError, match="twice"):
        bench.score([records[0], records[0]])


def test_objhal_takes_a_ready_scorer(tmp_path):
    chair = CocoChair(write_coco(tmp_path / "coco"))
    write_lines(tmp_path / "p.jsonl", [{"image_id": 20, "question": "Describe.", "image_path": "x.jpg"}])
    bench = ObjHalBenchmark(tmp_path / "p.jsonl", chair)
    assert bench.chair is chair
    # cat (true), dog (h): 2 mentions, 1 hallucinated
    row = bench.score([{"id": "objhal-0", "answer": "A cat and a dog."}]).rows["objhal"]
    assert (row["response_level"], row["object_level"], row["recall"]) == (1.0, 0.5, 0.5)


def test_objhal_malformed_prompt_files(tmp_path):
    coco = write_coco(tmp_path / "coco")
    ok = {"image_id": 10, "question": "Describe.", "image_path": "x.jpg"}
    cases = [
        (["{not json"], r"p\.jsonl:1: not a JSON object"),
        ([ok, "5"], r"p\.jsonl:2: expected an object"),
        ([ok, {"question": "Describe.", "image_path": "x.jpg"}], r"p\.jsonl:2: field 'image_id' missing"),
        ([{**ok, "image_id": "COCO_10"}], r"p\.jsonl:1: field 'image_id' must be a COCO image id"),
        ([{**ok, "image_id": True}], r"p\.jsonl:1: field 'image_id' must be a COCO image id"),
        ([ok, ok, {**ok, "question": " "}], r"p\.jsonl:3: field 'question' must be a non-empty string"),
        ([{"image_id": 10, "question": "Describe."}], r"p\.jsonl:1: needs field 'image' \(base64\) or 'image_path'"),
        ([{"image_id": 10, "question": "Describe.", "image": "not base64!!"}], r"p\.jsonl:1: field 'image' is not "
                                                                               r"valid base64"),
        ([{"image_id": 10, "question": "Describe.", "image": 5}], r"p\.jsonl:1: field 'image' must be a base64"),
        ([{**ok, "image_path": ""}], r"p\.jsonl:1: field 'image_path' must be a non-empty path"),
        ([], r"p\.jsonl: no prompts"),
    ]
    for rows, match in cases:
        with pytest.raises(BenchmarkFileError, match=match):
            ObjHalBenchmark(write_lines(tmp_path / "p.jsonl", rows), coco)
    # a JSON array is read too, its errors named by record
    (tmp_path / "a.json").write_text(json.dumps([ok, {"image_id": 10, "image_path": "x.jpg"}]))
    with pytest.raises(BenchmarkFileError, match=r"a\.json: record 1: field 'question'"):
        ObjHalBenchmark(tmp_path / "a.json", coco)
    # an image file that is not there: named with its line when the items are made
    bench = ObjHalBenchmark(write_lines(tmp_path / "p.jsonl", [ok]), coco)
    with pytest.raises(FileNotFoundError, match=r"p\.jsonl:1: image_path 'x\.jpg' not found"):
        bench.items()
    with pytest.raises(FileNotFoundError, match="prompt file"):
        ObjHalBenchmark(tmp_path / "missing.jsonl", coco)
    with pytest.raises(FileNotFoundError, match="annotations"):
        ObjHalBenchmark(tmp_path / "p.jsonl", tmp_path / "no_coco")


def test_coco_caption_benchmark_from_a_folder(tmp_path):
    coco = write_coco(tmp_path / "coco")
    images = tmp_path / "val2014"
    images.mkdir()
    for name in ("COCO_val2014_000000000020.jpg", "COCO_val2014_000000000010.jpg", "notes.txt"):
        (images / name).write_bytes(PNG_A)
    bench = CocoCaptionBenchmark(images, coco)
    assert isinstance(bench, Benchmark) and bench.name == "chair"
    items = bench.items()
    assert [(i.id, i.meta["image_id"]) for i in items] == [("chair-0", 10), ("chair-1", 20)]  # by id; notes ignored
    assert all(i.prompt == "Describe this image in detail." and i.kind == "generate" and i.split == "chair"
               for i in items)
    assert items[0].image == str((images / "COCO_val2014_000000000010.jpg").resolve())
    s = bench.score([
        # image 10, truth {person, dog, couch}: person, dog, couch: 3 mentions, 0 hallucinated, 3 of 3; 8 words
        {"id": "chair-0", "answer": "A man with a dog on a couch."},
        # image 20, truth {cat, bed}: cat, dog (h), bed: 3 mentions, 1 hallucinated, 2 of 2; 8 words
        {"id": "chair-1", "answer": "A cat and a dog on a bed."},
    ])
    row = s.rows["chair"]
    assert row["response_level"] == pytest.approx(1 / 2) and row["response_level_all"] == pytest.approx(1 / 2)
    assert row["object_level"] == pytest.approx(1 / 6) and row["recall"] == pytest.approx(5 / 5)
    assert row["mean_length_words"] == pytest.approx(8.0) and row["n"] == 2


def test_coco_caption_benchmark_from_a_file(tmp_path):
    coco = write_coco(tmp_path / "coco")
    (tmp_path / "x.jpg").write_bytes(PNG_A)
    listing = write_lines(tmp_path / "images.jsonl", [
        {"image_id": 10, "image_path": "x.jpg"},
        {"image_id": "20", "image": base64.b64encode(PNG_B).decode()},
    ])
    items = CocoCaptionBenchmark(listing, coco, prompt="Caption this.").items()
    assert [(i.id, i.prompt, i.meta) for i in items] == [("chair-0", "Caption this.", {"image_id": 10}),
                                                         ("chair-1", "Caption this.", {"image_id": 20})]
    assert items[0].image == str(tmp_path / "x.jpg") and items[1].image == {"bytes": PNG_B, "path": None}
    dup = write_lines(tmp_path / "dup.jsonl", [{"image_id": 10, "image_path": "x.jpg"},
                                               {"image_id": 10, "image_path": "x.jpg"}])
    with pytest.raises(BenchmarkFileError, match=r"dup\.jsonl:2: field 'image_id': image 10 already listed"):
        CocoCaptionBenchmark(dup, coco)
    with pytest.raises(BenchmarkFileError, match=r"bad\.jsonl:1: field 'image_id' missing"):
        CocoCaptionBenchmark(write_lines(tmp_path / "bad.jsonl", [{"image_path": "x.jpg"}]), coco)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkFileError, match="no COCO image files"):
        CocoCaptionBenchmark(tmp_path / "empty", coco)
