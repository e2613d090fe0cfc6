"""`rlaifv-fast eval` end to end on the tiny LLaVA: per-sample records, resume, shards merged into one run's
samples, the report's numbers recomputed by hand from the samples, and the shapes benchmark through the loop with
checkpoint selection."""

import json
import subprocess
import sys

import pytest

from fixtures_tiny import make_images
from rlaifv_fast.cli import main
from rlaifv_fast.pipeline.store import read_records


@pytest.fixture(scope="module")
def pope_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pope")
    rows = []
    for i, image in enumerate(make_images(3, seed=2)):
        name = f"COCO_val2014_{i:012d}.jpg"
        image.save(root / name)
        rows += [{"question_id": 2 * i + 1, "image": name, "text": "Is there a dog in the image?", "label": "yes"},
                 {"question_id": 2 * i + 2, "image": name, "text": "Is there a cat in the image?", "label": "no"}]
    (root / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_pope_end_to_end_resume_and_shards(tiny_llava, pope_dir, tmp_path, capsys):
    common = ["eval", "--benchmark", "pope", "--model", str(tiny_llava), "--data", str(pope_dir),
              "--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "| random |" in out and "| random (generated) |" in out  # the markdown table on stdout
    samples = list(read_records(tmp_path / "all" / "samples.jsonl"))
    assert [s["id"] for s in samples] == [f"pope-random-{q}" for q in range(1, 7)]
    assert all(s["kind"] == "yes_no" and s["logp_yes"] < 0 and s["logp_no"] < 0 for s in samples)
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    # recompute the logprob row by hand from the samples
    pred = ["yes" if s["logp_yes"] > s["logp_no"] else "no" for s in samples]
    labels = [s["meta"]["label"] for s in samples]
    tp = sum(p == "yes" and y == "yes" for p, y in zip(pred, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(pred, labels))
    assert report["rows"]["random"]["accuracy"] == pytest.approx((tp + tn) / 6)
    assert report["rows"]["random"]["yes_ratio"] == pytest.approx(pred.count("yes") / 6)
    assert report["scored"] == report["items"] == 6 and report["benchmark"] == "pope"
    assert (tmp_path / "all" / "report.png").stat().st_size > 1000 and (tmp_path / "all" / "report.md").exists()

    # a re-run redoes nothing; shards merge into the records of one run, and scoring the merge gives the report
    before = (tmp_path / "all" / "samples.jsonl").read_bytes()
    assert main([*common, "--out", str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / "samples.jsonl").read_bytes() == before
    for i in range(2):
        assert main([*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    (tmp_path / "merged").mkdir()
    assert main(["merge", "--out", str(tmp_path / "merged" / "samples.jsonl"),
                 str(tmp_path / "s0" / "samples.jsonl"), str(tmp_path / "s1" / "samples.jsonl")]) == 0
    merged = sorted(read_records(tmp_path / "merged" / "samples.jsonl"), key=lambda r: r["id"])
    assert [m["id"] for m in merged] == [s["id"] for s in samples]
    for m, s in zip(merged, samples):  # equal up to the float rounding of another batch composition
        assert m["answer"] == s["answer"] and m["meta"] == s["meta"]
        assert m["logp_yes"] == pytest.approx(s["logp_yes"], abs=1e-5)
        assert m["logp_no"] == pytest.approx(s["logp_no"], abs=1e-5)
    assert main([*common, "--out", str(tmp_path / "merged")]) == 0
    again = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert again["scored"] == 6 and again["rows"].keys() == report["rows"].keys()


def test_missing_benchmark_files_are_one_clear_line(tiny_llava, tmp_path, capsys):
    assert main(["eval", "--benchmark", "pope", "--model", str(tiny_llava), "--data", str(tmp_path / "nope.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "POPE question file not found" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "objhal", "--model", str(tiny_llava), "--out", str(tmp_path / "o")]) == 2
    assert "eval: missing --data" in capsys.readouterr().err


def test_loop_evaluates_every_iteration_and_selects_the_best(tiny_llava, pope_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    for i, image in enumerate(make_images(4, seed=5)):
        image.save(tmp_path / f"{i}.png")
    prompts.write_text("".join(json.dumps({"id": f"img{i}", "image": f"{i}.png", "question": "Describe the image."})
                               + "\n" for i in range(4)))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "rlaifv_fast.cli", "loop", "--prompts", str(prompts), "--model", str(tiny_llava),
           "--work-dir", str(work), "--iterations", "2", "--generate.n", "6", "--generate.temperature", "1.0",
           "--generate.max-new-tokens", "16", "--no-progress", "--train.max-steps", "2", "--train.lr", "1e-2",
           "--train.warmup-ratio", "0", "--eval", "shapes=", "--eval", f"pope={pope_dir}",
           "--evaluate.limit", "3", "--evaluate.max-new-tokens", "6",
           "--select", "best", "--select-metric", "pope:random.accuracy", "--select-goal", "max"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((work / "loop_state.json").read_text())
    assert state["done"]["initial"] == ["eval:shapes", "eval:pope"]
    for it in ("0", "1"):
        assert state["done"][it][-3:] == ["eval:shapes", "eval:pope", "select"]
        for bench in ("shapes", "pope"):
            assert (work / f"iter{it}" / "eval" / bench / "report.json").exists()
    # the selection follows the recorded scores: carry the trained policy unless it scored lower
    initial = state["reports"]["initial"]["eval:pope"]["notes"]["rows"]["random"]["accuracy"]
    started = initial
    for it in ("0", "1"):
        choice = state["reports"][it]["select"]
        trained = state["reports"][it]["eval:pope"]["notes"]["rows"]["random"]["accuracy"]
        assert choice["started_from"] == pytest.approx(started) and choice["trained"] == pytest.approx(trained)
        keep_trained = not trained < started
        assert choice["carried"] == ("trained" if keep_trained else "started_from")
        expected = state["trained"][it] if keep_trained else (state["policies"][str(int(it) - 1)] if it != "0"
                                                               else state["initial_policy"])
        assert state["policies"][it] == expected
        started = trained if keep_trained else started
