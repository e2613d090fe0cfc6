"""The reference log-probs stage: columns, agreement with scoring.py, the CLI end to end."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from fixtures_tiny import make_images, png_bytes

from rlaifv_fast.cli import main
from rlaifv_fast.pipeline.data import RLAIFV_COLUMNS, write_rlaifv_parquet
from rlaifv_fast.engines.hf import HFEngine
from rlaifv_fast.pipeline.ref_logps import REF_COLUMNS, run_ref_logps
from rlaifv_fast.pipeline.scoring import Triple, response_logps

PAIRS = [
    ("Describe the image.", "There is a red circle.", "There is a blue square and two dogs."),
    ("What is in the image?", "A small green triangle.", "A cat."),
    ("Describe the image.", "The background is black.", "The background is white with many red dots."),
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    imgs = make_images(2)
    (root / "img.png").write_bytes(png_bytes(imgs[1]))
    images = [{"bytes": png_bytes(imgs[0]), "path": "a.png"}, {"bytes": None, "path": "img.png"},
              {"bytes": png_bytes(imgs[0]), "path": "a.png"}]
    rows = [
        {"ds_name": "test", "image": img, "question": q, "chosen": c, "rejected": r, "origin_dataset": "t",
         "origin_split": "{}", "idx": f"pair{i}", "image_path": img["path"]}
        for i, (img, (q, c, r)) in enumerate(zip(images, PAIRS))
    ]
    path = root / "pairs.rlaifv.parquet"
    write_rlaifv_parquet(path, rows)
    return path, [imgs[0], imgs[1], imgs[0]]


@pytest.fixture(scope="module")
def engine(tiny_llava):
    return HFEngine(tiny_llava)


def test_writes_the_columns_and_matches_scoring(engine, pairs_file, tmp_path):
    path, imgs = pairs_file
    out = tmp_path / "ref.parquet"
    report = run_ref_logps(path, engine, out, batch_size=4, progress=False)
    assert report.total == report.written == 3 and report.notes["sequences"] == 6
    table = pq.read_table(out)
    assert table.column_names == [*RLAIFV_COLUMNS, *REF_COLUMNS]
    rows = table.to_pylist()
    assert [r["idx"] for r in rows] == ["pair0", "pair1", "pair2"]
    for side in ("chosen", "rejected"):
        triples = [Triple(img, q, {"chosen": c, "rejected": r}[side]) for img, (q, c, r) in zip(imgs, PAIRS)]
        expected = response_logps(engine, triples, batch_size=1, return_per_token=True)
        for i, row in enumerate(rows):
            assert row[f"ref_{side}_logp"] == pytest.approx(expected.logps[i].item(), abs=1e-5)
            assert row[f"ref_{side}_logp_mean"] == pytest.approx(expected.means[i].item(), abs=1e-5)
            assert row[f"ref_{side}_ntokens"] == expected.counts[i].item()
            tokens = row[f"ref_{side}_token_logps"]
            assert len(tokens) == row[f"ref_{side}_ntokens"]
            assert sum(tokens) == pytest.approx(row[f"ref_{side}_logp"], abs=1e-5)
            tokens = torch.tensor(tokens, dtype=torch.float64)
            assert torch.allclose(tokens, expected.token_logps[i].double(), atol=1e-5)
            assert row["ref_model"] == engine.model_name
    with pytest.raises(ValueError, match="already has reference columns"):
        run_ref_logps(out, engine, tmp_path / "again.parquet", progress=False)


def test_cli_reflogps(tiny_llava, pairs_file, tmp_path, capsys):
    path, _ = pairs_file
    out = tmp_path / "pairs.ref.parquet"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"reflogps": {"batch_size": 2}}))
    assert main(["--config", str(config), "reflogps", "--pairs", str(path), "--model", str(tiny_llava),
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and summary["stage"] == "reflogps"
    table = pq.read_table(out)
    assert set(REF_COLUMNS) <= set(table.column_names) and table.num_rows == 3
    with pytest.raises(SystemExit):
        main(["reflogps", "--help"])
    text = capsys.readouterr().out
    assert "--pairs" in text and "--engine-options" in text and "--batch-size" in text and "--shard" in text
