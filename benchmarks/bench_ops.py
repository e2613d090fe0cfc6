#!/usr/bin/env python
"""Benchmark the fused ops of rlaifv_fast against plain-PyTorch baselines: time and extra peak memory.

Ops and variants:
  sequence_logps  label log-probs summed per sequence, shift=True, ~10% of labels = ignore_index (-100).
                  ours          rlaifv_fast.sequence_logps (fused forward, backward recomputed from a saved lse)
                  ours-inplace  the same with inplace_backward=True (the gradient overwrites the logits)
                  reference     rlaifv_fast.ops.reference.sequence_logps_reference (fp32 log_softmax + gather)
                  trl-row-loop  TRL's selective_log_softmax style: a Python loop over sequences, each doing
                                log_softmax(logits[b].float()).gather(...) and a masked sum
                  phases fwd, bwd, fwd+bwd.
  bon_rewards     Best-of-N reward from policy and reference logits (groups = all N): ours vs reference, fwd.
  yes_no          yes/no log-probs from (B, V) logits, 2 yes and 2 no token ids: ours vs reference, fwd.

What the numbers mean:
  median ms       median wall time of --repeats calls after one warm-up call (CUDA: CUDA events around the call).
                  fwd      the forward with grad enabled for sequence_logps (logits.requires_grad, so the graph state needed by
                           the backward is built, as in training); ops 2 and 3 are forward-only and run without grad.
                  bwd      only the backward: the forward runs untimed first, then the timed part is
                           torch.autograd.grad((out.logps * g).sum(), logits) with a random per-sequence upstream
                           gradient g (B,). autograd.grad is .backward() without the final accumulation into a leaf's
                           .grad: that accumulation clones a gradient that aliases the leaf (the in-place variant),
                           which would not happen in a model where the logits come out of lm_head.
                  fwd+bwd  forward and backward together.
                  Outputs (and the graph) stay alive until the timer stops; freeing them is not timed.
  speedup         reference median / this median, same op, shape and phase (>1 is faster than the reference).
  extra peak MiB  memory the call needs on top of what existed right before it (inputs, and for bwd the forward's
                  outputs and saved graph state), measured once per (variant, phase), not per repeat:
                  CUDA  torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated()
                        just before the call.
                  CPU   torch has no CPU allocator statistics and tracemalloc does not see torch's allocations, so
                        each (variant, phase) runs in a fresh process (a forkserver child, never a fork of this
                        process, which has OpenMP threads running) with MALLOC_MMAP_THRESHOLD_=131072 so that freed
                        blocks go back to the OS. The child builds the inputs, runs one warm-up call, rebuilds the
                        inputs, resets the kernel's peak-RSS counter (echo 5 > /proc/self/clear_refs), and reports
                        VmHWM after the call minus VmRSS before it: the pages the call newly made resident at its peak.
                        Falls back to ru_maxrss deltas where clear_refs is not writable (noted in the metadata).
  beyond grad MiB extra peak minus the gradient the backward must return (phases with a backward): the size of one
                  logits-sized tensor, or 0 when the returned gradient aliases the logits (in-place backward).
                  0 means "no memory beyond the required output".
  floor ms        (CUDA only) bytes that must cross device memory / 3.02e12 B/s (H100 copy rate):
                  sequence_logps reads the logits in the forward and reads them + writes the gradient in the backward;
                  bon_rewards reads both logits tensors once; yes_no reads the logits once.

Outputs: a markdown table on stdout, JSON rows + metadata (default benchmarks/results/ops_<device>.json) and a bar plot
(default benchmarks/results/ops_<device>.png).

Examples:
  python benchmarks/bench_ops.py --quick                 # smoke run, seconds
  python benchmarks/bench_ops.py                         # full CPU run
  python benchmarks/bench_ops.py --device cuda --ops sequence_logps
Run it from anywhere but the repository root with `python -c` (the source tree would shadow the installed package);
`python benchmarks/bench_ops.py` from the root is fine.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import rlaifv_fast
from rlaifv_fast.ops import reference as ref_ops

IGNORE_INDEX = -100
BETA = 0.1
FLOOR_BYTES_PER_S = 3.02e12
MIB = 2**20
OPS = ("sequence_logps", "bon_rewards", "yes_no")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MMAP_THRESHOLD = "131072"

# (op, shape) per device and mode. CUDA full shapes: the sizes of the GPU targets (B4 T2048 V152064 and the like).
CASES = {
    ("cpu", False): [
        ("sequence_logps", {"B": 4, "T": 512, "V": 32000}),
        ("bon_rewards", {"N": 16, "T": 128, "V": 32000}),
        ("yes_no", {"B": 1024, "V": 32000}),
    ],
    ("cuda", False): [
        ("sequence_logps", {"B": 4, "T": 2048, "V": 152064}),
        ("sequence_logps", {"B": 8, "T": 2048, "V": 32000}),
        ("bon_rewards", {"N": 16, "T": 512, "V": 152064}),
        ("yes_no", {"B": 4096, "V": 152064}),
    ],
}
QUICK_CASES = [
    ("sequence_logps", {"B": 2, "T": 128, "V": 4096}),
    ("bon_rewards", {"N": 4, "T": 64, "V": 4096}),
    ("yes_no", {"B": 128, "V": 4096}),
]
VARIANTS = {
    "sequence_logps": (("ours", "ours-inplace", "reference", "trl-row-loop"), ("fwd", "bwd", "fwd+bwd")),
    "bon_rewards": (("ours", "reference"), ("fwd",)),
    "yes_no": (("ours", "reference"), ("fwd",)),
}


def shape_text(op: str, shape: dict) -> str:
    text = " ".join(f"{k}{v}" for k, v in shape.items())
    return text + " +ref logits" if op == "bon_rewards" else text


# ----------------------------------------------------------------------------------------------------------------------
# inputs and the measured calls


def random_labels(n: int, t: int, v: int, device: str, gen: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, v, (n, t), generator=gen)
    labels[torch.rand((n, t), generator=gen) < 0.1] = IGNORE_INDEX
    return labels.to(device)


def random_logits(shape: tuple, dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    if device == "cpu":
        return torch.randn(shape, generator=gen, dtype=torch.float32).mul_(2.0).to(dtype)
    x = torch.empty(shape, dtype=dtype, device=device)
    return x.normal_(0.0, 2.0, generator=torch.Generator(device).manual_seed(int(gen.initial_seed()) + 1))


def make_inputs(op: str, shape: dict, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    if op == "sequence_logps":
        B, T, V = shape["B"], shape["T"], shape["V"]
        return {
            "logits": random_logits((B, T, V), dtype, device, gen),
            "labels": random_labels(B, T, V, device, gen),
            "g": torch.randn(B, generator=gen).to(device),
        }
    if op == "bon_rewards":
        N, T, V = shape["N"], shape["T"], shape["V"]
        return {
            "policy": random_logits((N, T, V), dtype, device, gen),
            "ref": random_logits((N, T, V), dtype, device, gen),
            "labels": random_labels(N, T, V, device, gen),
        }
    if op == "yes_no":
        B, V = shape["B"], shape["V"]
        return {
            "logits": random_logits((B, V), dtype, device, gen),
            "yes": [V // 3, V // 3 + 7],
            "no": [V // 2, V // 2 + 11],
        }
    raise ValueError(op)


def trl_row_loop(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """TRL-style per-sequence loop (selective_log_softmax): log_softmax of one row at a time, gather, masked sum."""
    x, y = logits[:, :-1], labels[:, 1:]
    sums = []
    for b in range(x.shape[0]):
        mask = y[b] != ignore_index
        safe = torch.where(mask, y[b], torch.zeros_like(y[b]))
        logp = torch.log_softmax(x[b].float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        sums.append((logp * mask).sum())
    return torch.stack(sums)


def sequence_forward(variant: str):
    if variant == "ours":
        return lambda x, y: rlaifv_fast.sequence_logps(x, y, ignore_index=IGNORE_INDEX, shift=True).logps
    if variant == "ours-inplace":
        return lambda x, y: rlaifv_fast.sequence_logps(
            x, y, ignore_index=IGNORE_INDEX, shift=True, inplace_backward=True
        ).logps
    if variant == "reference":
        return lambda x, y: ref_ops.sequence_logps_reference(x, y, ignore_index=IGNORE_INDEX, shift=True)[0]
    if variant == "trl-row-loop":
        return trl_row_loop
    raise ValueError(variant)


def make_call(op: str, variant: str, phase: str, inputs: dict, backup: torch.Tensor | None = None):
    """(setup, call): setup() runs untimed before each call (fresh graph, restored logits); call() is measured and
    returns what it produced (kept alive until the measurement ends)."""
    if op == "sequence_logps":
        forward = sequence_forward(variant)
        x, labels, g = inputs["logits"], inputs["labels"], inputs["g"]
        x.requires_grad_(True)
        state: dict = {}

        def setup():
            state.clear()
            if backup is not None:  # the in-place backward overwrote the logits: restore them
                with torch.no_grad():
                    x.copy_(backup)
            if phase == "bwd":
                state["y"] = forward(x, labels)

        def call():
            if phase == "fwd":
                return forward(x, labels)
            y = state.pop("y") if phase == "bwd" else forward(x, labels)
            (grad,) = torch.autograd.grad((y * g).sum(), x)
            return grad

        return setup, call

    def no_setup():
        pass

    if op == "bon_rewards":
        p, r, labels = inputs["policy"], inputs["ref"], inputs["labels"]
        N = p.shape[0]
        if variant == "ours":
            return no_setup, lambda: rlaifv_fast.bon_rewards(
                p, r, labels, beta=BETA, groups=N, ignore_index=IGNORE_INDEX, shift=True
            )

        def reference_bon():
            with torch.no_grad():
                rewards, counts = ref_ops.bon_rewards_reference(
                    p, r, labels, beta=BETA, ignore_index=IGNORE_INDEX, shift=True
                )
                return rewards, counts, rewards.view(-1, N).argmax(dim=1)

        return no_setup, reference_bon

    if op == "yes_no":
        z, yes, no = inputs["logits"], inputs["yes"], inputs["no"]
        if variant == "ours":
            return no_setup, lambda: rlaifv_fast.yes_no_logprobs(z, yes, no)
        yes_t = torch.tensor(yes, device=z.device)
        no_t = torch.tensor(no, device=z.device)

        def reference_yes_no():
            with torch.no_grad():
                ly, ln = ref_ops.yes_no_logprobs_reference(z, yes_t, no_t)
                return ly, ln, ly > ln

        return no_setup, reference_yes_no
    raise ValueError(op)


def gradient_bytes(result, inputs: dict) -> int:
    """Bytes of the gradient the backward had to produce: 0 when it aliases the logits (in-place)."""
    if not isinstance(result, torch.Tensor):
        return 0
    x = inputs["logits"]
    if result.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        return 0
    return result.numel() * result.element_size()


def floor_ms(op: str, phase: str, inputs: dict) -> float:
    if op == "sequence_logps":
        x = inputs["logits"]
        passes = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[phase]
        nbytes = passes * x.numel() * x.element_size()
    elif op == "bon_rewards":
        nbytes = sum(inputs[k].numel() * inputs[k].element_size() for k in ("policy", "ref"))
    else:
        nbytes = inputs["logits"].numel() * inputs["logits"].element_size()
    return nbytes / FLOOR_BYTES_PER_S * 1e3


# ----------------------------------------------------------------------------------------------------------------------
# timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(setup, call, device: str) -> float:
    """Milliseconds of one call() after setup() (CUDA events on the GPU, wall clock on the CPU)."""
    setup()
    sync(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = call()
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        result = call()
        elapsed = (time.perf_counter() - t0) * 1e3
    del result
    return elapsed


def time_call(setup, call, device: str, repeats: int) -> list[float]:
    times = [time_once(setup, call, device) for _ in range(repeats + 1)]
    return times[1:]  # the first run is the warm-up


# ----------------------------------------------------------------------------------------------------------------------
# extra peak memory


def cuda_extra_peak(setup, call, inputs: dict) -> tuple[int, int]:
    setup()
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    grad = gradient_bytes(result, inputs)
    del result
    return peak, grad


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_memory_child(op: str, shape: dict, dtype_name: str, variant: str, phase: str, threads: int) -> dict:
    """Runs in a fresh process: extra peak resident memory of one call (see the module docstring)."""
    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    inputs = make_inputs(op, shape, dtype, "cpu")
    setup, call = make_call(op, variant, phase, inputs)
    setup()
    call()  # warm-up: lazy initialisation, thread pools, allocator arenas
    del setup, call, inputs
    gc.collect()
    inputs = make_inputs(op, shape, dtype, "cpu")  # fresh inputs (the in-place backward clobbered the old ones)
    setup, call = make_call(op, variant, phase, inputs)
    setup()
    gc.collect()
    if _reset_peak_rss():
        method = "clear_refs+VmHWM"
        before = _proc_status_kib("VmRSS")
        result = call()
        peak = _proc_status_kib("VmHWM")
    else:
        method = "ru_maxrss"
        before = max(_proc_status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        result = call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra": (peak - before) * 1024, "grad": gradient_bytes(result, inputs), "method": method}


def _child_entry(conn, args) -> None:
    try:
        conn.send(("ok", cpu_memory_child(*args)))
    except BaseException as error:  # report, never hang the parent
        conn.send(("error", repr(error)))
    finally:
        conn.close()


def _noop() -> None:
    pass


def start_forkserver():
    """A forkserver context with torch and rlaifv_fast preloaded, its server started now (not during a measurement),
    with the benchmark's malloc threshold in its environment."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "rlaifv_fast"])  # custom ops import dynamo lazily (~1.5 s)
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD  # read by the forkserver's libc at start-up
    cwd = os.getcwd()
    # The forkserver runs `python -c ...`, which puts its working folder first on sys.path: start it from this
    # script's folder so that a run from the repository root does not import the source tree's rlaifv_fast.
    os.chdir(Path(__file__).resolve().parent)
    try:
        warm = ctx.Process(target=_noop)
        warm.start()
        warm.join()
    finally:
        os.chdir(cwd)
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return ctx


class CpuMemoryMeter:
    """One fresh forkserver child per measurement, joined before the parent goes on (so that no process starting
    up or exiting competes with the timed calls for the cores)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.ctx = start_forkserver()
        self.method = None

    def measure(self, op, shape, dtype_name, variant, phase) -> tuple[int, int]:
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_entry,
                                args=(send, (op, shape, dtype_name, variant, phase, self.threads)))
        proc.start()
        send.close()
        try:
            status, out = recv.recv()
        except EOFError:
            status, out = "error", "the child died without reporting (out of memory?)"
        proc.join()
        recv.close()
        if status != "ok":
            raise RuntimeError(f"memory measurement of {op} {variant} {phase} failed: {out}")
        self.method = out["method"]
        return out["extra"], out["grad"]

    def close(self):
        pass


# ----------------------------------------------------------------------------------------------------------------------
# reporting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def markdown_table(rows: list[dict], device: str) -> str:
    head = ["op", "shape", "dtype", "variant", "phase", "median ms", "speedup vs reference", "extra peak MiB",
            "beyond grad MiB"]
    if device == "cuda":
        head.append("floor ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["op"], r["shape"], r["dtype"], r["variant"], r["phase"], fmt(r["median_ms"], ".2f"),
            fmt(r["speedup_vs_reference"], ".2f", "—") + ("x" if r["speedup_vs_reference"] is not None else ""),
            fmt(r["extra_peak_mib"], ".1f"), fmt(r["beyond_grad_mib"], ".1f"),
        ]
        if device == "cuda":
            cells.append(fmt(r["floor_ms"], ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["op"], r["shape"]) for r in rows))
    with_mem = any(r["extra_peak_mib"] is not None for r in rows)
    nrows = 2 if with_mem else 1
    widths = [max(1, len({r["phase"] for r in rows if (r["op"], r["shape"]) == c})) + 1 for c in cases]
    fig, axes = plt.subplots(nrows, len(cases), figsize=(sum(widths) * 2.0 + 1, 4.2 * nrows), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    colours = {"ours": "tab:green", "ours-inplace": "tab:olive", "reference": "tab:blue", "trl-row-loop": "tab:orange"}
    for col, case in enumerate(cases):
        case_rows = [r for r in rows if (r["op"], r["shape"]) == case]
        phases = list(dict.fromkeys(r["phase"] for r in case_rows))
        variants = list(dict.fromkeys(r["variant"] for r in case_rows))
        width = 0.8 / len(variants)
        metrics = [("median_ms", "median ms")] + ([("extra_peak_mib", "extra peak MiB")] if with_mem else [])
        for row_i, (key, label) in enumerate(metrics):
            ax = axes[row_i][col]
            top = max((r[key] for r in case_rows if r[key] is not None), default=0.0)
            label_fmt = "%.0f" if top >= 100 else "%.1f" if top >= 1 else "%.2f"
            for vi, variant in enumerate(variants):
                xs, ys = [], []
                for pi, phase in enumerate(phases):
                    match = [r for r in case_rows if r["variant"] == variant and r["phase"] == phase]
                    if match and match[0][key] is not None:
                        xs.append(pi + (vi - (len(variants) - 1) / 2) * width)
                        ys.append(match[0][key])
                bars = ax.bar(xs, ys, width, label=variant, color=colours.get(variant))
                ax.bar_label(bars, fmt=label_fmt, fontsize=7, rotation=90, padding=2)
            ax.set_xticks(range(len(phases)), phases)
            ax.set_ylabel(label)
            ax.margins(y=0.25)
            if row_i == 0:
                ax.set_title(f"{case[0]}\n{case[1]}", fontsize=10)
            if col == 0 and row_i == 0:
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per (variant, phase) after one warm-up (default 5 on CPU, 20 on CUDA, "
                             "3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run of a few seconds")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="which ops to run (default all)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="logits dtype (default fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the extra-peak-memory measurement")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else (20 if args.device == "cuda" else 5)
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    cases = [c for c in (QUICK_CASES if args.quick else CASES[(device, False)]) if c[0] in args.ops]
    meter = CpuMemoryMeter(torch.get_num_threads()) if device == "cpu" and not args.no_memory else None
    t_start = time.perf_counter()
    rows: list[dict] = []
    try:
        for op, shape in cases:
            variants, phases = VARIANTS[op]
            inputs = make_inputs(op, shape, dtype, device)
            case_rows = []
            for variant in variants:
                backup = inputs["logits"].detach().clone() if variant == "ours-inplace" else None
                for phase in phases:
                    setup, call = make_call(op, variant, phase, inputs, backup)
                    times = time_call(setup, call, device, args.repeats)
                    extra = grad = None
                    if device == "cuda" and not args.no_memory:
                        extra, grad = cuda_extra_peak(setup, call, inputs)
                    elif meter is not None:
                        extra, grad = meter.measure(op, shape, args.dtype, variant, phase)
                    del setup, call
                    has_bwd = phase != "fwd"
                    row = {
                        "op": op, "shape": shape_text(op, shape), "dims": shape, "dtype": args.dtype,
                        "variant": variant, "phase": phase,
                        "median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times,
                        "speedup_vs_reference": None,
                        "extra_peak_mib": None if extra is None else extra / MIB,
                        "gradient_mib": (grad / MIB) if (has_bwd and grad is not None) else None,
                        "beyond_grad_mib": (extra - grad) / MIB if (has_bwd and extra is not None) else None,
                        "floor_ms": floor_ms(op, phase, inputs) if device == "cuda" else None,
                    }
                    case_rows.append(row)
                    print(f"  {op} {row['shape']} {variant:>13} {phase:>7}: {row['median_ms']:9.2f} ms"
                          + ("" if extra is None else f"  +{row['extra_peak_mib']:.1f} MiB"), file=sys.stderr,
                          flush=True)
                if backup is not None:  # leave the logits as they were for the next variant
                    with torch.no_grad():
                        inputs["logits"].copy_(backup)
                del backup
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            for row in case_rows:
                ref = [r for r in case_rows if r["variant"] == "reference" and r["phase"] == row["phase"]]
                if ref:
                    row["speedup_vs_reference"] = ref[0]["median_ms"] / row["median_ms"]
            rows.extend(case_rows)
            del inputs
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    finally:
        if meter is not None:
            meter.close()
    elapsed = time.perf_counter() - t_start

    device_name = torch.cuda.get_device_name() if device == "cuda" else cpu_model()
    metadata = {
        "device": device,
        "device_name": device_name,
        "dtype": args.dtype,
        "quick": args.quick,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "rlaifv_fast": rlaifv_fast.__version__,
        "build_info": rlaifv_fast.build_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "memory_method": ("cuda max_memory_allocated" if device == "cuda" else (meter.method if meter else None))
        if not args.no_memory else None,
        "floor_bytes_per_s": FLOOR_BYTES_PER_S if device == "cuda" else None,
        "elapsed_s": round(elapsed, 1),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    table = markdown_table(rows, device)
    print(f"\n{device_name} | torch {torch.__version__} | {metadata['threads']} threads | {args.dtype} | "
          f"median of {args.repeats} | {elapsed:.0f} s\n")
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"ops_{device}.json"
    json_path.write_text(json.dumps({"metadata": metadata, "rows": rows}, indent=1) + "\n")
    png_path = args.out_dir / f"ops_{device}.png"
    try:
        plot(rows, png_path, f"rlaifv_fast ops on {device_name} ({args.dtype}, torch {torch.__version__})")
    except ImportError as error:
        print(f"\nno plot ({error}); pip install matplotlib", file=sys.stderr)
        png_path = None
    print(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
