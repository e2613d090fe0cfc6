"""`rlaifv-fast loop`: two RLAIF-V iterations on the tiny LLaVA, every stage's outputs, the policy changing between
iterations, and resumption after the process is killed mid-training."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fixtures_tiny import make_images, tiny_llava  # noqa: F401
from rlaifv_fast.store import read_records

STAGE_FILES = ["candidates.jsonl", "feedback.jsonl", "pairs/pairs.rlaifv.parquet", "pairs/pairs.trl.parquet",
               "pairs.ref.parquet"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop-prompts")
    rows = []
    for i, image in enumerate(make_images(4, seed=5)):
        image.save(root / f"{i}.png")
        rows.append({"id": f"img{i}", "image": f"{i}.png", "question": "Describe the image."})
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cmd(model, prompts, work, max_steps):
    train = {"max_steps": max_steps, "lr": 1e-3, "warmup_ratio": 0.0, "save_every": 1, "sft_weight": 0.1}
    cmd = [sys.executable, "-m", "rlaifv_fast.cli", "loop", "--prompts", str(prompts), "--model", str(model),
           "--work-dir", str(work), "--iterations", "2", "--n", "6", "--temperature", "1.0", "--max-new-tokens", "16",
           "--no-progress"]
    for k, v in train.items():
        cmd += ["--train-option", f"{k}={json.dumps(v)}"]
    return cmd


def _weights(folder):
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, name)))
    return out


def test_two_iterations_resume_after_kill_mid_training(tiny_llava, prompts_file, tmp_path):  # noqa: F811
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_cmd(tiny_llava, prompts_file, work, max_steps=4), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = work / "iter0" / "train" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)  # mid-training of iteration 0
    proc.wait()
    state = json.loads((work / "loop_state.json").read_text())
    assert "train" not in state["done"].get("0", []) and "reflogps" in state["done"]["0"]
    candidates_before = (work / "iter0" / "candidates.jsonl").read_bytes()

    done = subprocess.run(_cmd(tiny_llava, prompts_file, work, max_steps=4), cwd=tmp_path, env=env,
                          capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    state = json.loads((work / "loop_state.json").read_text())
    for it in ("0", "1"):
        assert state["done"][it] == ["generate", "feedback", "pairs", "reflogps", "train"] or \
            set(state["done"][it]) == {"generate", "feedback", "pairs", "reflogps", "train"}
        for name in STAGE_FILES:
            assert (work / f"iter{it}" / name).exists(), name
    # finished stages were not redone: the candidates of iteration 0 are byte-identical, no duplicate records
    assert (work / "iter0" / "candidates.jsonl").read_bytes() == candidates_before
    ids = [r["id"] for r in read_records(work / "iter1" / "candidates.jsonl")]
    assert len(ids) == len(set(ids)) == 4 * 6
    # training resumed in iteration 0 and finished its 4 steps exactly once
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # iteration 1 sampled with the policy trained in iteration 0, and trained it further
    p0, p1 = state["policies"]["0"], state["policies"]["1"]
    assert p0.endswith("final") and "iter1" in p1
    w_init, w0, w1 = _weights(tiny_llava), _weights(p0), _weights(p1)
    key = next(k for k in w0 if "language_model" in k and "layers.0" in k and k.endswith("weight"))
    assert not torch.equal(w_init[key], w0[key]) and not torch.equal(w0[key], w1[key])
    cand1 = next(read_records(work / "iter1" / "candidates.jsonl"))
    assert cand1["model"] == os.path.basename(p0.rstrip("/"))
