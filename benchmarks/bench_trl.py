#!/usr/bin/env python
"""Benchmark TRL's DPO step with and without rlaifv_fast's integration, against rlaifv_fast's own trainer step; and
the LM-head log-prob ops underneath (rlaifv_fast.linear_sequence_logps vs TRL's ChunkedLogProbFunction vs plain).

DPO step, one tiny Llama (hidden 64, 2 layers, 32k vocabulary: the LM head dominates; built offline), the same
preference pairs (a question, two answers of --answer-words words, through the model's chat template), fp32, AdamW,
gradient clipping at 1.0, no gradient checkpointing, the reference log-probs cached (TRL: precompute_ref_log_probs,
which TRL refuses for vision datasets, hence a text model), so a step is the policy's forward and backward over
[chosen; rejected] and the optimiser step:
  trl-stock            trl.DPOTrainer (its head: ChunkedLogProbFunction, the torch tile fallback on a CPU)
  trl+rlaifv_fast      rlaifv_fast.integrations.trl.FusedLogpsDPOTrainer (the head: linear_sequence_logps)
  ours-logits          rlaifv_fast's trainer step (pipeline.train): the model's logits from the first response
                       position, sequence_logps (backward in place), dpo_loss
  ours-lm-head-chunked the same through its lm_head_chunked path (linear_sequence_logps on the hidden states)
TRL's step is timed from its on_step_begin to its on_step_end callback (forward, backward, clipping, optimiser; the
batch is collated before), ours around the same work on a collated batch. Each variant runs in a fresh process;
time = median of --repeats steps after one warm-up step; memory = peak RSS growth during the timed steps over the
resident size after the warm-up (VmHWM after /proc/self/clear_refs minus VmRSS), glibc's mmap threshold fixed at
128 KiB so that freed tensors leave the resident set.

Op level, forward + backward (gradients of the hidden states and the weight) of the per-token label log-probs of N
tokens from hidden states (N, H) and a head (V, H), fp32, a random upstream gradient per token:
  ours                 rlaifv_fast.linear_sequence_logps
  ours+dpo-fields      what the integration's head runs: the op, then the no-grad pass for entropy, mean logit and
                       top-1 (the fields DPOTrainer asks for)
  trl-chunked          trl.kernels.ChunkedLogProbFunction, log-probs only (CPU: its torch tile fallback)
  trl-chunked+dpo-fields  the same asked for DPOTrainer's fields (entropy, mean logit, top-1)
  plain                logits = h @ W.T, fp32 log_softmax + gather, autograd
Each (shape, variant) in a fresh process: one warm-up call, one call measured for memory (as above), then --repeats
timed calls (median).

Outputs: markdown tables, benchmarks/results/trl_<device>.json and .png.

  python benchmarks/bench_trl.py              # CPU: both parts
  python benchmarks/bench_trl.py --quick      # small shapes, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_VARIANTS = ("trl-stock", "trl+rlaifv_fast", "ours-logits", "ours-lm-head-chunked")
OP_VARIANTS = ("ours", "ours+dpo-fields", "trl-chunked", "trl-chunked+dpo-fields", "plain")
OP_SHAPES = [{"N": 1024, "H": 512, "V": 32000}, {"N": 1024, "H": 512, "V": 128256}]
QUICK_OP_SHAPES = [{"N": 256, "H": 128, "V": 8192}]
DPO_FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")
MMAP_THRESHOLD = "131072"
MIB = 2**20


def _kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def _reset_peak() -> int:
    """Reset the peak-RSS counter; return the resident size now (KiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _kib("VmRSS:")


# ---- DPO step (child)


def vocabulary_words(n: int) -> list[str]:
    """n distinct lower-case words ("qaaaa", "qaaab", ...): the tiny tokenizer keeps each as one token."""
    out = []
    for i in range(n):
        word = ""
        for _ in range(4):
            word = "abcdefghijklmnopqrstuvwxyz"[i % 26] + word
            i //= 26
        out.append("q" + word)
    return out


def _answers(args):
    """(question, chosen, rejected) for every step: one batch of --pairs pairs per step, warm-up included."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = vocabulary_words(args.vocab_words)

    def text(n):
        return " ".join(words[j] for j in rng.integers(0, len(words), n))

    return [(text(8), text(args.answer_words), text(args.answer_words))
            for _ in range(args.pairs * (args.repeats + 1))]


def step_child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    if args.variant == "trl+rlaifv_fast":
        from rlaifv_fast.integrations.trl import FusedLogpsDPOTrainer as trainer_cls
    else:
        trainer_cls = DPOTrainer
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in _answers(args)]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = DPOConfig(
        output_dir=str(Path(args.work_dir) / args.variant), per_device_train_batch_size=args.pairs,
        max_steps=args.repeats + 1, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, bf16=False, gradient_checkpointing=False,
        precompute_ref_log_probs=True, loss_type=["sigmoid"], beta=0.1,
    )
    trainer = trainer_cls(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    scored = int(batch["completion_mask"][:, 1:].sum())
    times, marks = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            marks["t0"] = time.perf_counter()

        def on_step_end(self, cb_args, state, control, **k):
            if state.global_step == 1:  # the warm-up step is done
                marks["base"] = _reset_peak()
            else:
                times.append(time.perf_counter() - marks["t0"])

    trainer.add_callback(Timer())
    trainer.train()
    peak = _kib("VmHWM:")
    return {"times_ms": [t * 1e3 for t in times], "extra_peak_mib": (peak - marks["base"]) / 1024,
            "scored_tokens": scored, "sequences": 2 * args.pairs, "positions": int(batch["input_ids"].shape[1]),
            "vocab": model.get_output_embeddings().weight.shape[0]}


def step_child_ours(args) -> dict:
    import numpy as np
    import torch

    import rlaifv_fast
    from rlaifv_fast.engines.hf import HFEngine
    from rlaifv_fast.pipeline.scoring import Triple, collate, encode_triples
    from rlaifv_fast.pipeline.train.config import LogpsPath
    from rlaifv_fast.pipeline.train.trainer import _policy_logps

    torch.manual_seed(0)
    engine = HFEngine(args.model_dir, dtype="float32")
    model = engine.model
    model.train()
    path = LogpsPath.LOGITS if args.variant == "ours-logits" else LogpsPath.LM_HEAD_CHUNKED
    P = args.pairs
    rows = _answers(args)
    batches = []
    for s in range(0, len(rows), P):
        chunk = rows[s : s + P]
        triples = [Triple(None, q, c) for q, c, _ in chunk] + [Triple(None, q, r) for q, _, r in chunk]
        batches.append(collate(engine, encode_triples(engine, triples)))
    ref = torch.from_numpy(np.random.default_rng(2).normal(size=2 * P)).float() * 5 - 500
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)

    def step(batch):
        logps = _policy_logps(model, batch, ipo=False, path=path.value)
        pi_c, pi_r = logps.float().chunk(2)
        loss = rlaifv_fast.dpo_loss(pi_c, pi_r, ref[:P], ref[P:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up (optimizer state allocated)
    base = _reset_peak()
    times = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    peak = _kib("VmHWM:")
    first = batches[0]
    return {"times_ms": [t * 1e3 for t in times], "extra_peak_mib": (peak - base) / 1024,
            "scored_tokens": int((first.labels[:, 1:] != -100).sum()), "sequences": 2 * P,
            "positions": int(first.labels.shape[1]), "vocab": model.get_output_embeddings().weight.shape[0]}


# ---- op level (child)


def op_child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    shape = json.loads(args.shape)
    N, H, V = shape["N"], shape["H"], shape["V"]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn((N, H), generator=gen).requires_grad_(True)
    weight = (torch.randn((V, H), generator=gen) * (2.0 / H**0.5)).requires_grad_(True)
    labels = torch.randint(0, V, (N,), generator=gen)
    g = torch.randn(N, generator=gen)
    variant = args.variant

    if variant.startswith("ours"):
        from rlaifv_fast.ops.linear_logps import linear_sequence_logps

        if variant == "ours+dpo-fields":
            from rlaifv_fast.engines.lm_head import LMHead
            from rlaifv_fast.integrations.trl import _metric_fields

            plain_head = LMHead(weight, None)

        def forward():
            tok = linear_sequence_logps(hidden, weight, labels, return_per_token=True).per_token
            if variant == "ours+dpo-fields":
                _metric_fields(hidden, weight, None, labels, plain_head, 1.0, DPO_FIELDS)
            return tok
    elif variant.startswith("trl-chunked"):
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        outputs = DPO_FIELDS if variant.endswith("+dpo-fields") else ("log_probs",)

        def forward():
            return ChunkedLogProbFunction.apply(hidden, weight, None, labels, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None,
                                                1.0, outputs)[0]
    elif variant == "plain":
        def forward():
            logits = hidden @ weight.T
            return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None])[:, 0]
    else:
        raise ValueError(variant)

    def call():
        tok = forward()
        return torch.autograd.grad((tok * g).sum(), [hidden, weight])

    call()  # warm-up
    base = _reset_peak()
    result = call()
    peak = _kib("VmHWM:")
    del result
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
        del result
    grads = (N * H + V * H) * 4
    return {"times_ms": [t * 1e3 for t in times], "extra_peak_mib": (peak - base) / 1024,
            "beyond_grads_mib": ((peak - base) * 1024 - grads) / MIB}


# ---- parent


def _run_child(argv: list[str], work_dir: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True,
                         env=env, cwd=work_dir)
    if out.returncode != 0:
        raise RuntimeError(f"child {argv[:4]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def step_table(rows: list[dict]) -> str:
    lines = ["| variant | median step ms | vs trl-stock | extra peak MiB | scored tokens / step |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['median_ms']:.0f} | {fmt(r.get('vs_stock'), '.2f')}x | "
                     f"{r['extra_peak_mib']:.0f} | {r['scored_tokens']} |")
    return "\n".join(lines)


def op_table(rows: list[dict]) -> str:
    lines = ["| shape | variant | median ms (fwd+bwd) | vs plain | extra peak MiB | beyond grads MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['variant']} | {r['median_ms']:.0f} | {fmt(r.get('vs_plain'), '.2f')}x | "
                     f"{r['extra_peak_mib']:.0f} | {r['beyond_grads_mib']:.0f} |")
    return "\n".join(lines)


def plot(step_rows: list[dict], op_rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
    cols = 1 + len(shapes)
    fig, axes = plt.subplots(2, cols, figsize=(5.2 * cols, 7.0), squeeze=False)
    colours = {"trl-stock": "tab:blue", "trl+rlaifv_fast": "tab:green", "ours-logits": "tab:olive",
               "ours-lm-head-chunked": "tab:cyan", "ours": "tab:green", "ours+dpo-fields": "tab:olive",
               "trl-chunked": "tab:blue", "trl-chunked+dpo-fields": "tab:purple", "plain": "tab:grey"}
    panels = [("DPO step", step_rows)] + [(s, [r for r in op_rows if r["shape"] == s]) for s in shapes]
    for col, (name, rows) in enumerate(panels):
        for row_i, (key, label) in enumerate([("median_ms", "median ms"), ("extra_peak_mib", "extra peak MiB")]):
            ax = axes[row_i][col]
            names = [r["variant"] for r in rows]
            bars = ax.bar(names, [r[key] for r in rows], color=[colours.get(n, "grey") for n in names])
            ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
            ax.set_ylabel(label)
            ax.margins(y=0.2)
            ax.tick_params(axis="x", labelrotation=25, labelsize=8)
            if row_i == 0:
                ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--answer-words", type=int, default=128)
    p.add_argument("--vocab-words", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads in the op children (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny model and op shapes")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-ops", action="store_true")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--child", choices=("step", "op"), help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "step":
        child = step_child_trl if args.variant.startswith("trl") else step_child_ours
        print(json.dumps(child(args)))
        return 0
    if args.child == "op":
        print(json.dumps(op_child(args)))
        return 0

    import torch

    import rlaifv_fast
    from rlaifv_fast.testing import build_tiny_llama

    if args.quick:
        args.vocab_words, args.answer_words, args.repeats = 2000, 16, 2
    threads = args.threads or torch.get_num_threads()
    load_before = os.getloadavg()
    started = time.time()
    step_rows, op_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_steps:
            model_dir = build_tiny_llama(Path(tmp) / "m", seed=0, words=vocabulary_words(args.vocab_words))
            for variant in STEP_VARIANTS:
                res = _run_child(["--child", "step", "--variant", variant, "--model-dir", str(model_dir),
                                  "--work-dir", tmp, "--pairs", str(args.pairs), "--answer-words",
                                  str(args.answer_words), "--vocab-words", str(args.vocab_words),
                                  "--repeats", str(args.repeats)], tmp)
                res.update(variant=variant, median_ms=statistics.median(res["times_ms"]))
                step_rows.append(res)
                print(f"step {variant:22s} {res['median_ms']:8.1f} ms  extra {res['extra_peak_mib']:7.1f} MiB  "
                      f"{res['scored_tokens']} scored tokens", flush=True)
            stock = next(r for r in step_rows if r["variant"] == "trl-stock")
            for r in step_rows:
                r["vs_stock"] = r["median_ms"] / stock["median_ms"]
        if not args.skip_ops:
            for shape in QUICK_OP_SHAPES if args.quick else OP_SHAPES:
                text = " ".join(f"{k}{v}" for k, v in shape.items())
                for variant in OP_VARIANTS:
                    res = _run_child(["--child", "op", "--variant", variant, "--shape", json.dumps(shape),
                                      "--repeats", str(args.repeats), "--threads", str(threads)], tmp)
                    res.update(shape=text, variant=variant, median_ms=statistics.median(res["times_ms"]))
                    op_rows.append(res)
                    print(f"op {text} {variant:24s} {res['median_ms']:8.1f} ms  extra "
                          f"{res['extra_peak_mib']:7.1f} MiB", flush=True)
            for r in op_rows:
                plain = next(q for q in op_rows if q["shape"] == r["shape"] and q["variant"] == "plain")
                r["vs_plain"] = r["median_ms"] / plain["median_ms"]
    load_after = os.getloadavg()

    import trl

    header = (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads; "
              f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
              f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; TRL {trl.__version__}")
    print("\n" + header)
    if step_rows:
        r0 = step_rows[0]
        print(f"\nDPO step, tiny Llama (hidden 64, 2 layers, V={r0['vocab']}), {r0['sequences']} "
              f"sequences x {r0['positions']} positions, fp32\n")
        print(step_table(step_rows))
    if op_rows:
        print("\nLM-head log-probs, forward + backward (d hidden, d weight), fp32\n")
        print(op_table(op_rows))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "header": header,
        "torch": torch.__version__, "trl": trl.__version__, "build_info": rlaifv_fast.build_info(),
        "threads": threads, "load_before": load_before, "load_after": load_after,
        "seconds": time.time() - started, "python": platform.python_version(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "memory_method": "clear_refs+VmHWM, MALLOC_MMAP_THRESHOLD_=" + MMAP_THRESHOLD,
    }
    json_path = args.out_dir / "trl_cpu.json"
    json_path.write_text(json.dumps({"meta": meta, "steps": step_rows, "ops": op_rows}, indent=1))
    png_path = args.out_dir / "trl_cpu.png"
    try:
        plot(step_rows, op_rows, png_path, "TRL DPO with rlaifv_fast's head vs stock, and the ops under it (CPU)")
    except ImportError:
        print("matplotlib missing: no plot")
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
