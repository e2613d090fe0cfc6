#!/usr/bin/env python
"""Benchmark the conquer step: yes/no labelling of N claims (about K per image), ours vs one claim at a time.

  ours      engine.yes_no over all claims: batched, full-vocabulary yes/no from the last position only (the fused op),
            and for transformers the image prefix computed once per image and shared by its claims (KV cache).
  plain     (transformers only) engine.yes_no with share_prefix=False: batched full prompts, no prefix sharing.
  baseline  the RLAIF-V reference code's way: one claim at a time, `model.generate(max_new_tokens=1,
            output_scores=True)`, softmax of the first generated position over the full vocabulary (transformers,
            batch 1). Speedups of every engine are against it. For vLLM, one request per engine call is shown too
            (its prefix cache still helps there).

All variants must agree on the log-probs; the script checks the largest difference. Prints a markdown table, writes
JSON and a PNG plot (benchmarks/results/labelling_<device>.{json,png}).

  python benchmarks/bench_labelling.py                          # tiny LLaVA, 576 image tokens, CPU, 1000 claims
  python benchmarks/bench_labelling.py --engines hf,vllm        # with vLLM when it is installed
  python benchmarks/bench_labelling.py --device cuda --hidden-size 4096 --layers 32 --head-dim 128 \\
      --baseline-claims 100                                     # a LLaVA-1.5-7B-shaped random model on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import rlaifv_fast
from rlaifv_fast.engines import YES_NO_SUFFIX, YesNoRequest, make_engine
from rlaifv_fast.testing import build_tiny_llava

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]


def make_claims(n_claims: int, per_image: int, seed: int = 0) -> list[YesNoRequest]:
    rng = np.random.default_rng(seed)
    n_images = (n_claims + per_image - 1) // per_image
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n_images)]
    requests = []
    for i in range(n_claims):
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        question = f"Is there a {colour} {shape} in the image ?"
        requests.append(YesNoRequest(f"c{i}", question, images[i // per_image]))
    return requests


def baseline_generate_one_token(engine, requests) -> list[tuple[float, float]]:
    """One claim at a time through model.generate, as the reference code does (batch 1)."""
    model, proc = engine.model, engine.processor
    yes, no = engine.token_sets()
    out = []
    for r in requests:
        text = engine.render(r.question + YES_NO_SUFFIX, image=True)
        inputs = proc(text=[text], images=[r.image], return_tensors="pt").to(engine.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(engine.dtype)
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=engine.tokenizer.pad_token_id)
        logp = torch.log_softmax(gen.scores[0][0].double(), -1)
        out.append((float(torch.logsumexp(logp[yes], 0)), float(torch.logsumexp(logp[no], 0))))
    return out


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--claims", type=int, default=1000)
    p.add_argument("--per-image", type=int, default=30)
    p.add_argument("--baseline-claims", type=int, default=200,
                   help="claims timed for the one-at-a-time baseline (its rate is per claim; default 200)")
    p.add_argument("--engines", default="hf", help="comma-separated: hf, vllm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=336, help="336 with patch 14 gives LLaVA-1.5's 576 image tokens")
    p.add_argument("--patch-size", type=int, default=14)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    requests = make_claims(args.claims, args.per_image)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llava(
            Path(tmp) / "model", seed=0, for_vllm="vllm" in engines, image_size=args.image_size,
            patch_size=args.patch_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
            head_dim=args.head_dim,
        )
        image_tokens = (args.image_size // args.patch_size) ** 2
        hf_options = {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size}
        # The reference code's way, the baseline of every engine: transformers, one claim per generate call.
        hf = make_engine("hf", str(model_dir), options=hf_options)
        sub = requests[: args.baseline_claims]
        baseline_generate_one_token(hf, sub[:2])  # warm-up
        base, t_base = timed(lambda: baseline_generate_one_token(hf, sub))
        base_rate = len(sub) / t_base
        from rlaifv_fast.engines import YesNoResult

        measured = [("hf", "one claim at a time (reference code: generate, batch 1)", t_base, len(sub),
                     [YesNoResult(r.request_id, y, n) for r, (y, n) in zip(sub, base)])]
        for kind in engines:
            engine = hf if kind == "hf" else make_engine("vllm", str(model_dir), options={})
            engine.yes_no(requests[: min(8, len(requests))])  # warm-up
            ours, t_ours = timed(lambda: engine.yes_no(requests))
            measured.append((kind, "ours", t_ours, len(requests), ours))
            if kind == "hf":
                plain, t_plain = timed(lambda: engine.yes_no(requests, share_prefix=False))
                measured.append((kind, "batched, no prefix sharing", t_plain, len(requests), plain))
            else:
                one, t_one = timed(lambda: [engine.yes_no([r])[0] for r in sub])
                measured.append((kind, "one request per call (prefix cache on)", t_one, len(sub), one))
                engine.close()
        ref = {r.request_id: (r.logp_yes, r.logp_no) for r in measured[1][4]}
        for kind, name, seconds, n, results in measured:
            diff = max(max(abs(r.logp_yes - ref[r.request_id][0]), abs(r.logp_no - ref[r.request_id][1]))
                       for r in results)
            rate = n / seconds
            rows.append({"engine": kind, "variant": name, "claims": n, "seconds": seconds, "claims_per_s": rate,
                         "speedup_vs_reference_code": rate / base_rate, "max_abs_logp_diff_vs_hf_ours": diff})
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "build": rlaifv_fast.build_info(),
        "claims": args.claims, "per_image": args.per_image, "image_tokens": image_tokens,
        "hidden_size": args.hidden_size, "layers": args.layers,
    }
    header = ("| engine | variant | claims timed | seconds | claims/s | speedup vs reference code "
              "| max abs dlogp vs hf ours |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['variant']} | {r['claims']} | {r['seconds']:.2f} | {r['claims_per_s']:.1f} "
                     f"| {r['speedup_vs_reference_code']:.1f}x | {r['max_abs_logp_diff_vs_hf_ours']:.1e} |")
    print(f"{meta['device']} | {args.device} | {image_tokens} image tokens | {args.claims} claims, "
          f"{args.per_image} per image\n")
    print("\n".join(lines))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.device.startswith("cuda") else "cpu"
    (out / f"labelling_{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        labels = [f"{r['engine']}: {r['variant']}" for r in rows]
        ax.barh(labels, [r["claims_per_s"] for r in rows], color="#4878d0")
        ax.set_xlabel("claims / s (higher is better)")
        ax.set_title(f"yes/no labelling, {image_tokens} image tokens, {args.per_image} claims per image")
        fig.tight_layout()
        fig.savefig(out / f"labelling_{tag}.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(f"\nwrote {out / f'labelling_{tag}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
