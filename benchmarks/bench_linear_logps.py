#!/usr/bin/env python
"""Benchmark the lm_head-fused log-probs: per-sequence label log-probs from hidden states and the lm_head weight,
forward + backward (gradients of the hidden states and the weight), time and extra peak memory.

Variants:
  ours            rlaifv_fast.linear_sequence_logps (CPU: the chunked path; CUDA: the Triton kernels)
  ours-chunked    (CUDA) the same op with RLAIFV_FAST_LINEAR_BACKEND=chunked set around forward and backward:
                  cuBLAS matmuls into a bounded buffer (linear_chunked.CUDA_CHUNK_BYTES) and the op-1 CUDA kernels
  matmul+op1      logits = h @ W.T, then rlaifv_fast.sequence_logps(..., inplace_backward=True) (the fused op on the logits)
  plain           logits = h @ W.T, then fp32 log_softmax + gather + masked sum (the pure-PyTorch reference)
  liger-dpo       (CUDA, if liger_kernel imports) LigerFusedLinearDPOLoss without a reference model: chunked
                  matmul + loss, gradients computed in its forward
  cce             (CUDA, if cut_cross_entropy imports) Apple's linear_cross_entropy(reduction="none"), summed per
                  sequence
All variants use shift=True and ~10% of labels = -100; the upstream gradient is random per sequence (g . logps),
except liger-dpo, whose loss is its own DPO loss over (chosen, rejected) halves.

Phases: fwd (forward with grad enabled) and fwd+bwd (forward, then torch.autograd.grad(loss, [hidden, weight])).
Columns:
  median ms          median of --repeats timed calls after one warm-up (CUDA: events around the call), the
                     variants of a case taken round-robin so that a shared machine's load hits them alike.
  vs plain           this median / plain's median, same case and phase (the CPU target: ours <= 1.2x).
  extra peak MiB     memory the call needs on top of what exists before it. CUDA: max_memory_allocated() minus
                     memory_allocated() before. CPU: in a fresh forkserver child with MALLOC_MMAP_THRESHOLD_ fixed,
                     VmHWM after the call (peak reset through /proc/self/clear_refs) minus VmRSS before it (as in
                     bench_ops.py).
  beyond grads MiB   extra peak minus the gradients the call must return (d hidden and d weight): what a variant
                     costs beyond its required outputs. The CPU target: ours <= 5% of plain's.
Outputs: a markdown table, benchmarks/results/linear_logps_<device>.json and .png.

  python benchmarks/bench_linear_logps.py                 # CPU: B2 T256 H512 V32000 fp32 (the issue's target)
  python benchmarks/bench_linear_logps.py --quick         # tiny shapes, seconds
  python benchmarks/bench_linear_logps.py --device cuda   # bf16, the GPU target shapes
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

import rlaifv_fast
from rlaifv_fast.ops import _dispatch
from rlaifv_fast.ops import reference as ref_ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ops  # noqa: E402  (timing and memory helpers shared with the op benchmarks)

IGNORE_INDEX = -100
MIB = 2**20
H100_MATMUL_FLOPS = 710e12
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CASES = {
    "cpu": [{"B": 2, "T": 256, "H": 512, "V": 32000}],
    "cuda": [{"B": 4, "T": 1024, "H": 3584, "V": 152064}, {"B": 8, "T": 1024, "H": 4096, "V": 32000}],
}
QUICK = [{"B": 2, "T": 64, "H": 128, "V": 4096}]
PHASES = ("fwd", "fwd+bwd")


def variants(device: str) -> list[str]:
    out = ["ours", "matmul+op1", "plain"]
    if device == "cuda":
        out.insert(1, "ours-chunked")
        try:
            import liger_kernel.chunked_loss  # noqa: F401

            out.append("liger-dpo")
        except Exception:
            pass
        try:
            import cut_cross_entropy  # noqa: F401

            out.append("cce")
        except Exception:
            pass
    return out


def make_inputs(shape: dict, dtype: torch.dtype, device: str, seed: int = 0, frozen: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    B, T, H, V = shape["B"], shape["T"], shape["H"], shape["V"]
    hidden = torch.randn((B, T, H), generator=gen).to(dtype).to(device)
    weight = (torch.randn((V, H), generator=gen) * (2.0 / H**0.5)).to(dtype).to(device)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[torch.rand((B, T), generator=gen) < 0.1] = IGNORE_INDEX
    return {"hidden": hidden.requires_grad_(True), "weight": weight.requires_grad_(not frozen),
            "labels": labels.to(device), "g": torch.randn(B, generator=gen).to(device)}


def forward_fn(variant: str, inputs: dict):
    """A function () -> scalar loss whose gradient w.r.t. hidden and weight is the benchmarked backward."""
    h, w, y, g = inputs["hidden"], inputs["weight"], inputs["labels"], inputs["g"]
    if variant == "ours":
        return lambda: (rlaifv_fast.linear_sequence_logps(h, w, y, shift=True).logps * g).sum()
    if variant == "ours-chunked":  # make_call sets RLAIFV_FAST_LINEAR_BACKEND=chunked around forward and backward
        return lambda: (rlaifv_fast.linear_sequence_logps(h, w, y, shift=True).logps * g).sum()
    if variant == "matmul+op1":
        return lambda: (rlaifv_fast.sequence_logps(h @ w.T, y, shift=True, inplace_backward=True).logps * g).sum()
    if variant == "plain":
        return lambda: (ref_ops.sequence_logps_reference(h @ w.T, y, shift=True)[0] * g).sum()
    if variant == "liger-dpo":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        try:
            loss_fn = LigerFusedLinearDPOLoss(ignore_index=IGNORE_INDEX, beta=0.1, use_ref_model=False)
        except TypeError:
            loss_fn = LigerFusedLinearDPOLoss(ignore_index=IGNORE_INDEX, beta=0.1)
        def liger():
            x, t = h[:, :-1].contiguous(), y[:, 1:].contiguous()
            out = loss_fn(w, x, t)
            return out[0] if isinstance(out, tuple) else out

        return liger
    if variant == "cce":
        from cut_cross_entropy import linear_cross_entropy

        def cce():
            x, t = h[:, :-1].contiguous(), y[:, 1:].contiguous()
            nll = linear_cross_entropy(x, w, t, reduction="none", ignore_index=IGNORE_INDEX)
            return (-nll.reshape(t.shape).sum(-1) * g).sum()

        return cce
    raise ValueError(variant)


def make_call(variant: str, phase: str, inputs: dict):
    fn = forward_fn(variant, inputs)

    def setup():
        pass

    def run():
        loss = fn()
        if phase == "fwd":
            return loss
        wrt = [t for t in (inputs["hidden"], inputs["weight"]) if t.requires_grad]
        return torch.autograd.grad(loss, wrt)

    if variant != "ours-chunked":
        return setup, run

    def forced():
        saved = os.environ.get(_dispatch.LINEAR_BACKEND_ENV)
        os.environ[_dispatch.LINEAR_BACKEND_ENV] = "chunked"
        try:
            return run()
        finally:
            if saved is None:
                os.environ.pop(_dispatch.LINEAR_BACKEND_ENV, None)
            else:
                os.environ[_dispatch.LINEAR_BACKEND_ENV] = saved

    return setup, forced


def grad_bytes(inputs: dict, phase: str) -> int:
    if phase == "fwd":
        return 0
    return sum(inputs[k].numel() * inputs[k].element_size() for k in ("hidden", "weight") if inputs[k].requires_grad)


def memory_child(shape: dict, dtype_name: str, variant: str, phase: str, threads: int, frozen: bool,
                 chunk_bytes: int | None) -> dict:
    torch.set_num_threads(threads)
    set_chunk_bytes(chunk_bytes)
    inputs = make_inputs(shape, DTYPES[dtype_name], "cpu", frozen=frozen)
    setup, call = make_call(variant, phase, inputs)
    call()  # warm-up
    del setup, call, inputs
    gc.collect()
    inputs = make_inputs(shape, DTYPES[dtype_name], "cpu", frozen=frozen)
    _, call = make_call(variant, phase, inputs)
    gc.collect()
    if not bench_ops._reset_peak_rss():
        raise RuntimeError("/proc/self/clear_refs is not writable: no CPU peak measurement")
    before = bench_ops._proc_status_kib("VmRSS")
    result = call()
    peak = bench_ops._proc_status_kib("VmHWM")
    del result
    return {"extra": (peak - before) * 1024}


def _child_entry(conn, args) -> None:
    try:
        conn.send(("ok", memory_child(*args)))
    except BaseException as error:
        conn.send(("error", repr(error)))
    finally:
        conn.close()


def set_chunk_bytes(chunk_bytes: int | None) -> None:
    if chunk_bytes is not None:
        from rlaifv_fast.ops import linear_chunked

        linear_chunked.CHUNK_BYTES = chunk_bytes


def cpu_extra_peak(ctx, shape, dtype_name, variant, phase, threads, frozen, chunk_bytes) -> int:
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry,
                       args=(send, (shape, dtype_name, variant, phase, threads, frozen, chunk_bytes)))
    proc.start()
    send.close()
    try:
        status, out = recv.recv()
    except EOFError:
        status, out = "error", "the child died without reporting"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"memory of {variant} {phase}: {out}")
    return out["extra"]


def interleaved_times(calls: dict, device: str, repeats: int) -> tuple[dict, dict]:
    """Per variant, `repeats` timed calls after one warm-up each, taken round-robin (variant A, B, C, A, B, C, ...)
    so that load from other processes on a shared machine hits every variant alike. A variant that raises (a
    peer's API drifted) is dropped with its error."""
    times: dict = {v: [] for v in calls}
    errors: dict = {}
    for i in range(repeats + 1):
        for variant, (setup, call) in calls.items():
            if variant in errors:
                continue
            try:
                elapsed = bench_ops.time_once(setup, call, device)
            except Exception as e:
                errors[variant] = f"{type(e).__name__}: {e}"
                continue
            if i > 0:  # the first round is the warm-up
                times[variant].append(elapsed)
    return {v: t for v, t in times.items() if v not in errors}, errors


def cuda_extra_peak(call) -> int:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def markdown(rows: list[dict]) -> str:
    head = ["shape", "dtype", "variant", "phase", "median ms", "vs plain", "extra peak MiB", "beyond grads MiB",
            "floor ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["shape"], r["dtype"], r["variant"], r["phase"], bench_ops.fmt(r["median_ms"], ".2f"),
            bench_ops.fmt(r["vs_plain"], ".2f") + ("x" if r["vs_plain"] is not None else ""),
            bench_ops.fmt(r["extra_peak_mib"], ".1f"), bench_ops.fmt(r["beyond_grads_mib"], ".1f"),
            bench_ops.fmt(r.get("floor_ms"), ".2f"),
        ]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["shape"] for r in rows))
    metrics = [("median_ms", "median ms (fwd+bwd)"), ("beyond_grads_mib", "extra peak beyond grads, MiB (fwd+bwd)")]
    fig, axes = plt.subplots(len(metrics), len(cases), figsize=(5.5 * len(cases), 3.8 * len(metrics)),
                             squeeze=False)
    colours = {"ours": "tab:green", "matmul+op1": "tab:olive", "plain": "tab:blue", "liger-dpo": "tab:orange",
               "cce": "tab:purple"}
    for col, case in enumerate(cases):
        case_rows = [r for r in rows if r["shape"] == case and r["phase"] == "fwd+bwd"]
        for row_i, (key, label) in enumerate(metrics):
            ax = axes[row_i][col]
            names = [r["variant"] for r in case_rows if r[key] is not None]
            values = [r[key] for r in case_rows if r[key] is not None]
            bars = ax.bar(names, values, color=[colours.get(n, "grey") for n in names])
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
            ax.set_ylabel(label)
            ax.margins(y=0.2)
            if row_i == 0:
                ax.set_title(case, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="default 7 on CPU, 20 on CUDA, 3 with --quick")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--heads", nargs="+", choices=("trainable", "frozen"), default=["trainable", "frozen"],
                        help="lm_head weight requiring grad (full fine-tuning) and/or not (LoRA elsewhere)")
    parser.add_argument("--chunk-mib", type=float, default=None,
                        help="the CPU chunked path's logits buffer bound (default: linear_chunked.CHUNK_BYTES)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    dtype_name = args.dtype or ("fp32" if device == "cpu" else "bf16")
    repeats = args.repeats or (3 if args.quick else 7 if device == "cpu" else 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cases = QUICK if args.quick else CASES[device]
    chunk_bytes = int(args.chunk_mib * MIB) if args.chunk_mib else None
    set_chunk_bytes(chunk_bytes)
    ctx = bench_ops.start_forkserver() if device == "cpu" and not args.no_memory else None

    rows = []
    for shape, head in [(s, hd) for s in cases for hd in args.heads]:
        frozen = head == "frozen"
        text = " ".join(f"{k}{v}" for k, v in shape.items()) + f" {head} head"
        inputs = make_inputs(shape, DTYPES[dtype_name], device, frozen=frozen)
        names = [v for v in variants(device) if not (frozen and v == "liger-dpo")]  # Liger always returns dW
        for phase in PHASES:
            calls = {v: make_call(v, phase, inputs) for v in names}
            times, errors = interleaved_times(calls, device, repeats)
            for variant in names:
                error = errors.get(variant)
                extra = None
                if error is None and not args.no_memory:
                    try:
                        if device == "cuda":
                            extra = cuda_extra_peak(calls[variant][1])
                        else:
                            extra = cpu_extra_peak(ctx, shape, dtype_name, variant, phase, threads, frozen,
                                                   chunk_bytes)
                    except Exception as e:
                        error = f"{type(e).__name__}: {e}"
                grads = grad_bytes(inputs, phase)
                t = times.get(variant)
                row = {
                    "shape": text, "dtype": dtype_name, "variant": variant, "phase": phase,
                    "median_ms": statistics.median(t) if t else None,
                    "times_ms": t, "extra_peak_mib": extra / MIB if extra is not None else None,
                    "beyond_grads_mib": (extra - grads) / MIB if extra is not None else None,
                    "grads_mib": grads / MIB, "error": error,
                }
                if device == "cuda":
                    B, T, H, V = shape["B"], shape["T"], shape["H"], shape["V"]
                    flops = (2 if phase == "fwd" else 6) * B * (T - 1) * H * V
                    row["floor_ms"] = flops / H100_MATMUL_FLOPS * 1e3
                rows.append(row)
                print(f"{text} {variant:10s} {phase:8s} {bench_ops.fmt(row['median_ms'], '.2f')} ms "
                      f"extra {bench_ops.fmt(row['extra_peak_mib'], '.1f')} MiB" + (f"  [{error}]" if error else ""),
                      flush=True)
        del inputs
    for r in rows:
        base = next((p for p in rows if p["shape"] == r["shape"] and p["phase"] == r["phase"]
                     and p["variant"] == "plain"), None)
        r["vs_plain"] = (r["median_ms"] / base["median_ms"]
                         if base and base["median_ms"] and r["median_ms"] is not None else None)
        r["extra_vs_plain"] = (r["extra_peak_mib"] / base["extra_peak_mib"]
                               if base and base["extra_peak_mib"] and r["extra_peak_mib"] is not None else None)
        r["beyond_grads_vs_plain"] = (r["beyond_grads_mib"] / base["beyond_grads_mib"]
                                      if base and base["beyond_grads_mib"] and r["beyond_grads_mib"] is not None
                                      else None)

    table = markdown(rows)
    print()
    print(table)
    ours = [r for r in rows if r["variant"] == "ours" and r["phase"] == "fwd+bwd"]
    targets = []
    for r in ours:
        if device == "cpu":
            targets.append(f"{r['shape']}: time {bench_ops.fmt(r['vs_plain'], '.2f')}x plain (target <= 1.2x); "
                           f"extra peak {bench_ops.fmt(r['extra_vs_plain'], '.1%')} of plain's, beyond the "
                           f"returned grads {bench_ops.fmt(r['beyond_grads_vs_plain'], '.1%')} (target <= 5%)")
        else:
            targets.append(f"{r['shape']}: {bench_ops.fmt(r['median_ms'], '.2f')} ms, extra "
                           f"{bench_ops.fmt(r['extra_peak_mib'], '.1f')} MiB (targets: B4 T1024 H3584 V152064 <= 19 ms "
                           "and <= 0.05 GiB extra; B8 T1024 H4096 V32000 <= 11 ms)")
    print()
    print("\n".join(targets))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "build_info": rlaifv_fast.build_info(), "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else bench_ops.cpu_model(),
        "threads": threads, "repeats": repeats, "python": platform.python_version(),
        "memory_method": None if args.no_memory else ("cuda allocator" if device == "cuda" else "clear_refs+VmHWM"),
        "targets": targets,
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:
        meta["triton"] = None
    json_path = args.out_dir / f"linear_logps_{device}.json"
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    png_path = args.out_dir / f"linear_logps_{device}.png"
    try:
        plot(rows, png_path, f"lm_head-fused log-probs, {meta['device_name']} ({dtype_name})")
    except ImportError:
        print("matplotlib missing: no plot")
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
