#!/usr/bin/env python
"""Benchmark one DPO training step on a tiny LLaVA: the log-probs from our fused op vs the plain-PyTorch path.

Each step: [chosen; rejected] in one forward (backbone + LM head from the first response position on), per-sequence
log-probs, the DPO loss (sigmoid, beta 0.1) against cached reference log-probs, backward, AdamW step.
  ours         rlaifv_fast.sequence_logps (fused forward; backward writes the logit gradient once)
  ours-inplace the same with inplace_backward=True (the gradient overwrites the logits buffer)
  ours-lm-head-chunked  the trainer's lm_head_chunked path: hidden states, then the LM head and sequence_logps
               one sequence at a time under activation checkpointing (the full logits never exist)
  plain        rlaifv_fast.ops.reference.sequence_logps_reference (fp32 log_softmax + gather, autograd)
Each variant runs in a fresh process; time = median step after one warm-up step; memory = peak RSS growth during the
timed steps over the resident size after the warm-up (what the step itself needs beyond the model, optimiser state
and inputs). Prints a markdown table, writes benchmarks/results/dpo_step_<device>.json and a PNG.

  python benchmarks/bench_dpo_step.py                  # V ~32k, 4 pairs, ~128-token answers, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("plain", "ours", "ours-inplace", "ours-lm-head-chunked")


def _rss_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def child(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import rlaifv_fast
    from rlaifv_fast.engines.hf import HFEngine
    from rlaifv_fast.ops.reference import sequence_logps_reference
    from rlaifv_fast.pipeline.scoring import Triple, collate, encode_triples

    torch.manual_seed(0)
    engine = HFEngine(args.model_dir, dtype="float32")
    model = engine.model
    model.train()
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(args.vocab_words)]
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))

    def answer():
        return " ".join(words[j] for j in rng.integers(0, len(words), args.answer_words))

    chosen = [Triple(image, "Describe the image.", answer()) for _ in range(args.pairs)]
    rejected = [Triple(image, "Describe the image.", answer()) for _ in range(args.pairs)]
    batch = collate(engine, encode_triples(engine, chosen + rejected))
    ref = torch.randn(2 * args.pairs) * 5 - 500
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step():
        if args.variant == "ours-lm-head-chunked":
            from rlaifv_fast.pipeline.train.trainer import _policy_logps

            logps = _policy_logps(model, batch, ipo=False, path="lm_head_chunked")
            P = args.pairs
            loss = rlaifv_fast.dpo_loss(logps[:P], logps[P:], ref[:P], ref[P:]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)
        out = engine._backbone_call(**batch.inputs, use_cache=False)
        logits = engine._head(out.last_hidden_state[:, batch.offset :])
        labels = batch.labels[:, batch.offset :]
        if args.variant == "plain":
            logps = sequence_logps_reference(logits, labels, shift=True)[0]
        else:
            logps = rlaifv_fast.sequence_logps(logits, labels, shift=True,
                                               inplace_backward=args.variant == "ours-inplace").logps
        P = args.pairs
        loss = rlaifv_fast.dpo_loss(logps[:P], logps[P:], ref[:P], ref[P:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up (optimizer state allocated)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    base = _rss_kib("VmRSS:")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = _rss_kib("VmHWM:")
    T = batch.inputs["input_ids"].shape[1] - batch.offset
    V = logits_vocab(engine)
    return {"variant": args.variant, "median_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times],
            "extra_peak_mib": (peak - base) / 1024, "sequences": 2 * args.pairs, "logit_positions": T, "vocab": V,
            "logits_mib_fp32": 2 * args.pairs * T * V * 4 / 2**20}


def logits_vocab(engine) -> int:
    return engine.model.get_output_embeddings().weight.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--answer-words", type=int, default=128)
    p.add_argument("--vocab-words", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(child(args)))
        return 0
    from rlaifv_fast.testing import build_tiny_llava

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llava(Path(tmp) / "m", seed=0, words=[f"w{i}" for i in range(args.vocab_words)])
        for variant in VARIANTS:
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--model-dir", str(model_dir),
                   "--pairs", str(args.pairs), "--answer-words", str(args.answer_words), "--vocab-words",
                   str(args.vocab_words), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain = next(r for r in rows if r["variant"] == "plain")
    r0 = rows[0]
    print(f"DPO step, tiny LLaVA (hidden 64), {r0['sequences']} sequences x {r0['logit_positions']} logit positions, "
          f"V={r0['vocab']} (fp32 logits {r0['logits_mib_fp32']:.0f} MiB), CPU {os.cpu_count()} cores\n")
    print("| variant | median step ms | speedup vs plain | extra peak MiB |")
    print("|---|---|---|---|")
    for r in rows:
        r["speedup_vs_plain"] = plain["median_ms"] / r["median_ms"]
        print(f"| {r['variant']} | {r['median_ms']:.1f} | {r['speedup_vs_plain']:.2f}x | {r['extra_peak_mib']:.0f} |")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dpo_step_cpu.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        names = [r["variant"] for r in rows]
        axes[0].bar(names, [r["median_ms"] for r in rows], color="#4878d0")
        axes[0].set_ylabel("median step ms")
        axes[1].bar(names, [r["extra_peak_mib"] for r in rows], color="#ee854a")
        axes[1].set_ylabel("extra peak MiB")
        fig.suptitle("one DPO step: log-probs via our op vs plain PyTorch")
        fig.tight_layout()
        fig.savefig(out_dir / "dpo_step_cpu.png", dpi=120)
    except ImportError:
        pass
    print(f"\nwrote {out_dir / 'dpo_step_cpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
