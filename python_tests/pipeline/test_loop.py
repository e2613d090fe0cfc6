"""`rlaifv-fast loop`: K iterations over the one stage table, in this process or with every stage as its own process
(vLLM for generate/feedback, torchrun for reflogps and train); resumption after SIGKILL at every stage; both modes
write the same records and weights; every option of every stage reachable from the command line."""

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from fixtures_tiny import make_images
from rlaifv_fast.cli import build_parser, main
from rlaifv_fast.pipeline.store import read_records

STAGE_FILES = ["candidates.jsonl", "feedback.jsonl", "pairs/pairs.rlaifv.parquet", "pairs/pairs.trl.parquet",
               "pairs.ref.parquet"]
ALL_STAGES = ["generate", "feedback", "pairs", "reflogps", "train"]
TRAIN = ["--train.max-steps", "3", "--train.lr", "1e-3", "--train.warmup-ratio", "0", "--train.save-every", "1",
         "--train.sft-weight", "0.1"]


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


def _loop_cmd(model, prompts, work, *extra):
    return [sys.executable, "-m", "rlaifv_fast.cli", "loop", "--prompts", str(prompts), "--model", str(model),
            "--work-dir", str(work), "--iterations", "2", "--generate.n", "6", "--generate.temperature", "1.0",
            "--generate.max-new-tokens", "16", "--no-progress", *TRAIN, *extra]


def _weights(folder):
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, name)))
    return out


def _outputs(work):
    """Everything the stages wrote, in comparable form."""
    out = {}
    for it in (0, 1):
        d = work / f"iter{it}"
        for name in ("candidates.jsonl", "feedback.jsonl"):
            out[f"{it}/{name}"] = (d / name).read_bytes()
        for name in ("pairs/pairs.rlaifv.parquet", "pairs/pairs.trl.parquet", "pairs.ref.parquet"):
            out[f"{it}/{name}"] = pq.read_table(d / name).to_pylist()
        out[f"{it}/metrics"] = [json.loads(line) for line in (d / "train" / "metrics.jsonl").read_text().splitlines()]
    return out


def _assert_same_outputs(a, b, work_a, work_b):
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("metrics"):
            assert [m["step"] for m in a[key]] == [m["step"] for m in b[key]] == [1, 2, 3], key
            for x, y in zip(a[key], b[key]):
                for k in ("loss", "rewards/chosen", "rewards/rejected", "lr"):
                    assert x[k] == pytest.approx(y[k], abs=1e-6), (key, k)
        elif key.endswith("ref.parquet"):
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key]):
                for k in x:
                    if isinstance(x[k], float):
                        assert x[k] == pytest.approx(y[k], abs=1e-6), (key, k)
                    elif k != "ref_model":
                        assert x[k] == y[k] or k.endswith("token_logps") and x[k] == pytest.approx(y[k], abs=1e-6)
        else:
            assert a[key] == b[key], key
    wa, wb = _weights(work_a / "iter1" / "train" / "final"), _weights(work_b / "iter1" / "train" / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_every_config_field_has_a_flag_with_help_and_every_stage_is_in_both():
    from rlaifv_fast.cli import _commands
    from rlaifv_fast.options import _hints, _is_options, _strip_optional
    from rlaifv_fast.pipeline.loop import LoopConfig
    from rlaifv_fast.pipeline.stages import LOOP_STAGES, STAGES

    def dests(cls, prefix="", skip_io=False):
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if skip_io and f.metadata.get("io"):
                continue
            tp, optional = _strip_optional(hints[f.name])
            path = prefix + f.name
            if _is_options(tp):
                if optional:
                    yield path
                yield from dests(tp, path + ".", skip_io)
            else:
                yield path

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = _commands()
    assert set(STAGES) | {"loop", "demo", "merge"} == set(sub.choices)
    for name, (_, cls) in commands.items():
        actions = {a.dest: a for a in sub.choices[name]._actions}
        for dest in dests(cls, skip_io=name == "loop"):
            assert dest in actions, f"{name}: no flag for {dest}"
            assert actions[dest].help and len(actions[dest].help) > 8, f"{name}: {dest} has no help"
    # the loop runs exactly its stages, each a command of the same table, each with a section of the loop's config
    assert set(LOOP_STAGES) <= set(STAGES)
    fields = {f.name for f in dataclasses.fields(LoopConfig)}
    assert all(stage in fields for stage in LOOP_STAGES)
    for stage in LOOP_STAGES:
        assert isinstance(getattr(LoopConfig(), stage), STAGES[stage].config)


def test_bad_option_values_are_refused_naming_the_option(capsys):
    assert main(["generate", "--n", "0", "--prompts", "p.jsonl", "--model", "m", "--out", "o.jsonl"]) == 2
    assert "Config.n (--n) must be >= 1, got 0" in capsys.readouterr().err
    assert main(["loop", "--iterations", "0"]) == 2
    assert "--iterations) must be >= 1" in capsys.readouterr().err
    assert main(["bon", "--temperature", "inf", "--out", "x"]) == 2
    assert "temperature (--temperature) must be finite" in capsys.readouterr().err
    assert main(["loop", "--launch", "trian=torchrun", "--prompts", "p", "--model", "m", "--work-dir", "w"]) == 2
    assert "unknown stage(s) ['trian']" in capsys.readouterr().err


def test_one_loop_per_work_folder(tiny_llava, prompts_file, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    with open(work / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["loop", "--prompts", str(prompts_file), "--model", str(tiny_llava), "--work-dir", str(work),
                     "--iterations", "1", "--no-progress"]) == 2
    assert "another loop is running in" in capsys.readouterr().err
    assert not (work / "loop_state.json").exists()


def test_isolated_and_in_process_write_the_same_records_and_weights(tiny_llava, prompts_file, tmp_path):
    """In-process from a config file with a section per stage; isolated (every stage its own process) from flags."""
    config = tmp_path / "loop.yaml"
    config.write_text(
        "generate:\n  n: 6\n  temperature: 1.0\n  max_new_tokens: 16\n"
        "train:\n  max_steps: 3\n  lr: 0.001\n  warmup_ratio: 0\n  save_every: 1\n  sft_weight: 0.1\n"
        "feedback:\n  batch_size: 4\n"
    )
    inproc, isolated = tmp_path / "inproc", tmp_path / "isolated"
    assert main(["--config", str(config), "loop", "--prompts", str(prompts_file), "--model", str(tiny_llava),
                 "--work-dir", str(inproc), "--iterations", "2", "--no-progress"]) == 0
    run = subprocess.run(_loop_cmd(tiny_llava, prompts_file, isolated, "--isolate", "--feedback.batch-size", "4"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for it in (0, 1):
        for stage in ALL_STAGES:
            assert (isolated / f"iter{it}" / f"{stage}.config.json").exists()  # each ran as its own process
    _assert_same_outputs(_outputs(inproc), _outputs(isolated), inproc, isolated)
    state = json.loads((isolated / "loop_state.json").read_text())
    assert state["policies"] == {"0": "iter0/train/final", "1": "iter1/train/final"}  # relative to the work folder


def _descendants(pid):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_when(cmd, ready, cwd, env, timeout=300):
    """Start the loop, SIGKILL it when ready() holds; wait until its stage processes are gone too. Returns whether
    the kill landed before the loop finished."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    children = _descendants(proc.pid)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, still = psutil.wait_procs(children, timeout=30)
    assert not still, f"stage processes outlived the killed loop: {still}"
    if not alive:
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    return alive


def _lines(path, n):
    return lambda: path.exists() and path.read_bytes().count(b"\n") >= n


@pytest.mark.vllm
def test_isolated_loop_on_vllm_and_torchrun_resumes_exactly_after_a_kill_in_every_stage(
        tiny_llama, tmp_path):
    pytest.importorskip("vllm")
    pytest.importorskip("psutil")
    prompts = tmp_path / "prompts.jsonl"
    questions = ["Describe the dog.", "What is on the table?", "Describe the cat.", "What is the man doing?"]
    prompts.write_text("".join(json.dumps({"id": f"t{i}", "question": q}) + "\n" for i, q in enumerate(questions)))
    vllm = ["kv_cache_memory_bytes=67108864", "max_model_len=512"]
    torchrun = "{python} -m torch.distributed.run --standalone --nproc_per_node 2"
    extra = ["--isolate", "--generate.engine", "vllm", "--feedback.engine", "vllm", "--generate.batch-size", "1",
             "--feedback.batch-size", "2", "--launch", f"train={torchrun}", "--launch", f"reflogps={torchrun}"]
    for option in vllm:
        extra += ["--generate.engine-options", option, "--feedback.engine-options", option]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    full = tmp_path / "full"
    run = subprocess.run(_loop_cmd(tiny_llama, prompts, full, *extra), cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert pq.read_metadata(full / "iter0" / "pairs.ref.parquet").num_rows > 0  # there was something to train on

    work = tmp_path / "killed"
    it0 = work / "iter0"
    kills = [
        _lines(it0 / "candidates.jsonl", 2),                       # mid-generate (vLLM)
        _lines(it0 / "feedback.jsonl", 2),                         # mid-feedback (vLLM)
        lambda: (it0 / "pairs.config.json").exists(),              # as pairs starts
        lambda: (it0 / "reflogps.config.json").exists(),           # as the torchrun scoring starts
        _lines(it0 / "train" / "metrics.jsonl", 1),                # mid-training, 2 processes
        _lines(work / "iter1" / "candidates.jsonl", 1),            # the next iteration
    ]
    cmd = _loop_cmd(tiny_llama, prompts, work, *extra)
    landed = [_kill_when(cmd, ready, tmp_path, env) for ready in kills]
    assert all(landed[:2]) and landed[4], landed
    state = json.loads((work / "loop_state.json").read_text())
    assert state["done"]["0"] == ALL_STAGES  # each stage noted once, in order, across the kills
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((work / "loop_state.json").read_text())
    assert state["done"] == {"0": ALL_STAGES, "1": ALL_STAGES}
    assert not list(work.rglob("*.part*-of-*"))  # data-parallel parts merged and removed
    _assert_same_outputs(_outputs(full), _outputs(work), full, work)
    ids = [r["id"] for r in read_records(work / "iter1" / "candidates.jsonl")]
    assert len(ids) == len(set(ids)) == 4 * 6


def test_in_process_loop_resumes_after_kill_mid_training(tiny_llava, prompts_file, tmp_path):
    work = tmp_path / "work"
    cmd = _loop_cmd(tiny_llava, prompts_file, work)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    metrics = work / "iter0" / "train" / "metrics.jsonl"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not _lines(metrics, 1)():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)  # mid-training of iteration 0
    proc.wait()
    state = json.loads((work / "loop_state.json").read_text())
    assert state["done"]["0"] == ["generate", "feedback", "pairs", "reflogps"]
    candidates_before = (work / "iter0" / "candidates.jsonl").read_bytes()

    # resumed from another working directory: the state's paths do not depend on it
    other = tmp_path / "elsewhere"
    other.mkdir()
    done = subprocess.run(cmd, cwd=other, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    state = json.loads((work / "loop_state.json").read_text())
    assert state["done"] == {"0": ALL_STAGES, "1": ALL_STAGES}
    for it in ("0", "1"):
        for name in STAGE_FILES:
            assert (work / f"iter{it}" / name).exists(), name
    assert (work / "iter0" / "candidates.jsonl").read_bytes() == candidates_before  # not redone
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3]  # resumed, each step exactly once
    p0, p1 = (str(work / state["policies"][k]) for k in ("0", "1"))
    w_init, w0, w1 = _weights(tiny_llava), _weights(p0), _weights(p1)
    key = next(k for k in w0 if "language_model" in k and "layers.0" in k and k.endswith("weight"))
    assert not torch.equal(w_init[key], w0[key]) and not torch.equal(w0[key], w1[key])
    cand1 = next(read_records(work / "iter1" / "candidates.jsonl"))
    assert cand1["model"] == "final"  # iteration 1 sampled with iteration 0's trained policy
