"""Prompt inputs (jsonl, parquet, datasets) and the preference parquet schemas."""

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from rlaifv_fast.pipeline.data import PromptError, load_prompts, write_rlaifv_parquet, write_trl_parquet


def png(color="red"):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_dir(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png("red"))
    (tmp_path / "img" / "b.png").write_bytes(png("blue"))
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_jsonl_with_relative_paths_and_stable_ids(image_dir):
    path = image_dir / "p.jsonl"
    write_jsonl(path, [{"image": "img/a.png", "question": "Describe."}, {"id": 7, "image": "img/b.png",
                                                                        "question": " What? "}])
    prompts, report = load_prompts(path)
    assert report.loaded == 2 and prompts[1].id == "7" and prompts[1].question == "What?"
    assert prompts[0].image == str(image_dir / "img" / "a.png")
    again, _ = load_prompts(path)
    assert again[0].id == prompts[0].id  # content id: stable across reads


@pytest.mark.parametrize(
    "row, message",
    [
        ({"image": "img/a.png"}, r"row 1: 'question' is missing or empty"),
        ({"image": "img/a.png", "question": "  "}, r"row 1: 'question' is missing or empty"),
        ({"image": "img/nope.png", "question": "q"}, r"row 1: image file not found: .*nope.png"),
        ("[1, 2]", r"row 1: expected an object"),
        ("{not json", r"p.jsonl: row 1 \(line 2: not valid JSON"),
    ],
)
def test_bad_rows_name_the_row(image_dir, row, message):
    path = image_dir / "p.jsonl"
    write_jsonl(path, [{"image": "img/a.png", "question": "ok"}, row])
    with pytest.raises(PromptError, match=message):
        load_prompts(path)


def test_unreadable_image_and_skip_bad(image_dir):
    (image_dir / "img" / "broken.png").write_bytes(b"not an image")
    path = image_dir / "p.jsonl"
    write_jsonl(path, [{"image": "img/a.png", "question": "q1"}, {"image": "img/broken.png", "question": "q2"},
                       {"image": "img/b.png", "question": ""}])
    with pytest.raises(PromptError, match=r"row 1: image file .*broken.png cannot be decoded"):
        load_prompts(path)
    prompts, report = load_prompts(path, skip_bad=True)
    assert [p.question for p in prompts] == ["q1"] and report.rows == 3 and len(report.skipped) == 2


def test_duplicate_ids_are_an_error(image_dir):
    path = image_dir / "p.jsonl"
    write_jsonl(path, [{"id": "a", "image": "img/a.png", "question": "q"}, {"id": "a", "image": "img/b.png",
                                                                            "question": "r"}])
    with pytest.raises(PromptError, match="row 1 repeats the id 'a' of row 0"):
        load_prompts(path)


def test_parquet_in_rlaifv_schema_and_dataset(image_dir):
    rows = [{"ds_name": "x", "image": {"bytes": png(), "path": None}, "question": "q", "chosen": "a", "rejected": "b",
             "origin_dataset": "", "origin_split": "{}", "idx": "3", "image_path": None}]
    path = image_dir / "pairs.parquet"
    write_rlaifv_parquet(path, rows)
    prompts, _ = load_prompts(path)  # the released schema reads back as prompts
    assert prompts[0].id == "3" and prompts[0].image["bytes"] == png()

    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q1", "q2"], "image": [str(image_dir / "img" / "a.png")] * 2})
    prompts, _ = load_prompts(ds)
    assert [p.question for p in prompts] == ["q1", "q2"]
    ds.save_to_disk(str(image_dir / "ds"))
    assert len(load_prompts(image_dir / "ds")[0]) == 2


def test_trl_schema(tmp_path):
    write_trl_parquet(tmp_path / "t.parquet", [{"prompt": "p", "chosen": "c", "rejected": "r",
                                               "images": [{"bytes": png(), "path": None}]}])
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == ["prompt", "chosen", "rejected", "images"]


def test_undecodable_rows_are_row_errors_and_skippable(image_dir):
    path = image_dir / "bad.jsonl"
    good = json.dumps({"id": "ok", "image": "img/a.png", "question": "Describe it."}).encode()
    surrogate = b'{"id": "s", "image": "img/a.png", "question": "What is \\ud800 this?"}'
    path.write_bytes(good + b"\n" + b'{"id": "x", "question": "caf\xe9"}\n' + surrogate + b"\n{broken\n")
    with pytest.raises(PromptError, match=r"row 1 \(line 2: not UTF-8 text"):
        load_prompts(path)
    prompts, report = load_prompts(path, skip_bad=True)
    assert [p.id for p in prompts] == ["ok"]
    assert len(report.skipped) == 3
    assert "not UTF-8" in report.skipped[0] and "lone surrogate" in report.skipped[1]
    assert "not valid JSON" in report.skipped[2]
