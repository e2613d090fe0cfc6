"""The pipeline end to end on the tiny LLaVA (transformers engine): generate -> feedback -> pairs through the CLI,
resumption after SIGKILL, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from fixtures_tiny import make_images
from rlaifv_fast.cli import main
from rlaifv_fast.pipeline.store import read_records

QUESTIONS = ["Describe the image.", "What is in the image?"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    (root / "img").mkdir()
    rows = []
    for i, image in enumerate(make_images(3)):
        image.save(root / "img" / f"{i}.png")
        for j, q in enumerate(QUESTIONS):
            rows.append({"id": f"img{i}-q{j}", "image": f"img/{i}.png", "question": q})
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_feedback_pairs(tiny_llava, prompts_file, tmp_path, capsys):
    cands, fb, out = tmp_path / "candidates.jsonl", tmp_path / "feedback.jsonl", tmp_path / "pairs"
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts: {prompts_file}\nprogress: false\ngenerate:\n  n: 4\n  max_new_tokens: 12\n")
    assert main(["--config", str(config), "generate", "--model", str(tiny_llava), "--out", str(cands),
                 "--temperature", "1.0", "--run-seed", "3", "--batch-size", "2"]) == 0
    records = list(read_records(cands))
    assert len(records) == 6 * 4 and len({r["id"] for r in records}) == 24
    r0 = records[0]
    assert {"prompt_id", "seed", "text", "model", "decoding", "num_tokens", "finish_reason"} <= r0.keys()
    assert r0["decoding"]["temperature"] == 1.0 and r0["decoding"]["max_new_tokens"] == 12

    assert main(["--config", str(config), "feedback", "--candidates", str(cands), "--labeler", str(tiny_llava),
                 "--out", str(fb)]) == 0
    feedback = list(read_records(fb))
    assert [r["id"] for r in feedback] == [r["id"] for r in records]
    for r in feedback:
        assert len(r["claims"]) == len(r["questions"]) == len(r["p_yes"]) == len(r["verdicts"]) == r["n_claims"]
        assert r["score"] == -r["n_rejected"] and r["no_claims"] == (r["n_claims"] == 0)
        assert all((py > pn) == v for py, pn, v in zip(r["logp_yes"], r["logp_no"], r["verdicts"]))

    assert main(["--config", str(config), "pairs", "--feedback", str(fb), "--out", str(out)]) == 0
    table = pq.read_table(out / "pairs.rlaifv.parquet")
    assert table.column_names == ["ds_name", "image", "question", "chosen", "rejected", "origin_dataset",
                                  "origin_split", "idx", "image_path"]
    trl = pq.read_table(out / "pairs.trl.parquet")
    assert trl.num_rows == table.num_rows
    report = json.loads((out / "pairs.report.json").read_text())
    assert report  # counts of every rule
    for row in table.to_pylist():
        meta = json.loads(row["origin_split"])
        assert meta["chosen_score"] - meta["rejected_score"] >= 1 and row["chosen"] != row["rejected"]
        assert row["image"]["bytes"]


def _generate_cmd(model, prompts, out):
    return [sys.executable, "-m", "rlaifv_fast.cli", "generate", "--prompts", str(prompts), "--model", str(model),
            "--out", str(out), "--n", "3", "--max-new-tokens", "24", "--batch-size", "1", "--no-progress"]


def test_resume_after_sigkill_gives_exactly_the_uninterrupted_records(tiny_llava, prompts_file, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = tmp_path / "full.jsonl"
    subprocess.run(_generate_cmd(tiny_llava, prompts_file, full), check=True, cwd=tmp_path, env=env,
                   capture_output=True)

    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(_generate_cmd(tiny_llava, prompts_file, killed), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if killed.exists() and killed.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = killed.read_bytes().count(b"\n")
    assert 3 <= partial < 18, "the kill should land mid-run"
    with open(killed, "ab") as f:
        f.write(b'{"id": "img2-q1#0", "text": "torn')  # what a kill during a write leaves behind
    subprocess.run(_generate_cmd(tiny_llava, prompts_file, killed), check=True, cwd=tmp_path, env=env,
                   capture_output=True)
    assert list(read_records(killed)) == list(read_records(full))
    assert killed.read_bytes() == full.read_bytes()


def test_bad_prompt_rows(tiny_llava, tmp_path, capsys):
    make_images(1)[0].save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"id": "a", "image": "ok.png", "question": "Describe the image."}) + "\n"
        + json.dumps({"id": "b", "image": "bad.png", "question": "Describe the image."}) + "\n"
        + json.dumps({"id": "c", "image": "missing.png", "question": "Describe the image."}) + "\n"
    )
    from rlaifv_fast.pipeline.data import PromptError

    with pytest.raises(PromptError, match=r"row 1: image file .*bad.png cannot be decoded"):
        main(["--debug", "generate", "--prompts", str(prompts), "--model", str(tiny_llava), "--out",
              str(tmp_path / "c.jsonl"), "--no-progress"])
    # without --debug: one line naming the row, and a non-zero exit status
    assert main(["generate", "--prompts", str(prompts), "--model", str(tiny_llava), "--out",
                 str(tmp_path / "c.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "rlaifv-fast generate: error:" in err and "row 1: image file" in err and "Traceback" not in err
    assert main(["generate", "--prompts", str(prompts), "--model", str(tiny_llava), "--out",
                 str(tmp_path / "c.jsonl"), "--n", "2", "--max-new-tokens", "4", "--skip-bad", "--no-progress"]) == 0
    assert {r["prompt_id"] for r in read_records(tmp_path / "c.jsonl")} == {"a"}
    assert "skipped: row 1" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    for command in ("generate", "feedback", "pairs"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--prompts" in text and "--skip-bad" in text


def test_shards_merge_into_the_records_of_one_run(tiny_llava, prompts_file, tmp_path):
    common = ["--prompts", str(prompts_file), "--model", str(tiny_llava), "--n", "2", "--max-new-tokens", "8",
              "--no-progress"]
    main(["generate", *common, "--out", str(tmp_path / "all.jsonl")])
    for i in range(2):
        main(["generate", *common, "--shard", f"{i}/2", "--out", str(tmp_path / f"shard{i}.jsonl")])
    assert all(list(read_records(tmp_path / f"shard{i}.jsonl")) for i in range(2))
    assert main(["merge", "--out", str(tmp_path / "merged.jsonl"),
                 *(str(tmp_path / f"shard{i}.jsonl") for i in range(2))]) == 0
    single = list(read_records(tmp_path / "all.jsonl"))
    assert list(read_records(tmp_path / "merged.jsonl")) == sorted(single, key=lambda r: r["id"])


def test_a_second_process_on_one_output_fails_at_once(tiny_llava, prompts_file, tmp_path, capsys):
    from rlaifv_fast.pipeline.store import exclusive

    out = tmp_path / "c.jsonl"
    with exclusive(out):  # as a running `generate` holds it
        assert main(["generate", "--prompts", str(prompts_file), "--model", str(tiny_llava), "--out", str(out),
                     "--n", "2", "--max-new-tokens", "4", "--no-progress"]) == 2
    assert "another process is writing the output" in capsys.readouterr().err
    assert not out.exists()


def test_resuming_with_other_settings_is_refused_unless_overwrite(tiny_llava, prompts_file, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    common = ["generate", "--prompts", str(prompts_file), "--model", str(tiny_llava), "--out", str(out), "--n", "2",
              "--max-new-tokens", "4", "--no-progress"]
    assert main([*common, "--run-seed", "0"]) == 0
    first = out.read_bytes()
    assert main([*common, "--run-seed", "0", "--batch-size", "3"]) == 0  # a batch size is not part of the identity
    assert main([*common, "--run-seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds the output of a run with other settings" in err and "run_seed: 0 -> 1" in err
    assert out.read_bytes() == first  # untouched
    assert main(["--overwrite", *common, "--run-seed", "1"]) == 0
    seeds = {r["run_seed"] for r in read_records(out)}
    assert seeds == {1} and len(list(read_records(out))) == 12
