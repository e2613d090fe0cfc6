"""The one place that chooses a backend: native CPU kernels for CPU tensors, native CUDA kernels for CUDA tensors when
the build has them, the pure-PyTorch reference elsewhere (with a one-time warning). Every op's custom-op body calls
these functions; nothing else touches ``rlaifv_fast._C``.

The lm_head-fused log-probs (linear_logps.py) have their own two backends, chosen here too (see
``linear_backend_for``): the Triton kernels of ``rlaifv_fast.ops.triton.linear_logps`` for CUDA tensors, and the
chunked path of ``rlaifv_fast.ops.linear_chunked`` (bounded logits chunks through the sequence_logps kernels above)
everywhere else.

Outputs are of the accumulation dtype: float32, or float64 for float64 logits.
"""

from __future__ import annotations

import contextlib
import enum
import os
import warnings

import torch

from .. import _native
from . import reference


class Backend(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    REFERENCE = "reference"


_warned: set[str] = set()


_forced: list[Backend] = []


@contextlib.contextmanager
def force_backend(backend: Backend | str):
    """Within the block, every op of the logits-level family runs on `backend` (e.g. "reference", the pure-PyTorch
    oracle path), whatever the device: for tests and for comparing the paths."""
    _forced.append(Backend(backend))
    try:
        yield
    finally:
        _forced.pop()


def backend_for(device: torch.device) -> Backend:
    if _forced:
        return _forced[-1]
    if device.type == "cpu":
        _native.native()  # a clear error when the package was not built
        return Backend.CPU
    if device.type == "cuda" and _native.cuda_compiled():
        return Backend.CUDA
    if device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(
            f"rlaifv_fast has no native kernels for device type {device.type!r} in this build; "
            "using the pure-PyTorch reference (correct, but slower and memory-hungry)",
            stacklevel=3,
        )
    return Backend.REFERENCE


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _error_slot(device: torch.device) -> torch.Tensor:
    return torch.full((1,), _native.NO_ERROR, dtype=torch.int64, device=device)


def _read_error(err: torch.Tensor) -> int | None:
    bad = int(err.item())  # the one host sync: the kernel reports, Python raises after it
    return None if bad == _native.NO_ERROR else bad


def _launch(kernel: str, device: torch.device, backend: Backend, *args, reports_errors: bool = True) -> int | None:
    """The one launcher of the native kernels: `cpu_<kernel>(*args)` (which returns the first invalid flat position,
    or NO_ERROR), or `cuda_<kernel>(*args[, error slot], stream)` on the tensors' device and current stream (the
    kernel writes the position into the error slot; it is read back after the launch). Returns that position or
    None."""
    C = _native.native()
    if backend is Backend.CPU:
        bad = getattr(C, f"cpu_{kernel}")(*args)
        return None if not reports_errors or bad is None or bad == _native.NO_ERROR else bad
    with torch.cuda.device(device):  # kernels launch on the current device
        if not reports_errors:
            getattr(C, f"cuda_{kernel}")(*args, _native.cuda_stream(device))
            return None
        err = _error_slot(device)
        getattr(C, f"cuda_{kernel}")(*args, err.data_ptr(), _native.cuda_stream(device))
    return _read_error(err)


def _shifted(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # views, never copies: row t of the logits predicts label t + 1
    return (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)


def _check_reference_labels(labels: torch.Tensor, V: int, ignore_index: int) -> int | None:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        return int(bad.flatten().nonzero()[0])
    return None


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, shift: bool, temperature: float
) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
    """(per-token log-probs, per-token lse) on the label grid (B, T') and None, or (None, None, the first
    invalid flat position); the native kernels report the position after a full pass."""
    x, y = _shifted(logits, labels, shift)
    B, T, V = x.shape
    backend = backend_for(x.device)
    if backend is Backend.REFERENCE:
        bad = _check_reference_labels(y, V, ignore_index)
        if bad is not None:
            return None, None, bad
        tok, lse = reference.token_logps_reference(x, y, ignore_index=ignore_index, temperature=temperature)
        return tok, lse, None
    out_logp = torch.empty((B, T), dtype=acc_dtype(x.dtype), device=x.device)
    out_lse = torch.empty_like(out_logp)
    if out_logp.numel() == 0:
        return out_logp, out_lse, None
    bad = _launch("token_logps_forward", x.device, backend, _native.rows_view(x), _native.index_view(y), ignore_index,
                  1.0 / temperature, out_logp.data_ptr(), out_lse.data_ptr())
    return out_logp, out_lse, bad


_HUGE_PAGE_MIN_BYTES = 8 << 20


def new_gradient_buffer(logits: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor shaped and typed like the logits for their gradient. On the CPU a large fresh buffer
    is advised to use huge pages before the kernel first touches it: faulting in 4 KiB pages otherwise costs more
    than computing the gradient (2 cores, 250 MiB fp32 gradient: backward 73 ms with 4 KiB pages, 24 ms with the
    hint, 11 ms in place)."""
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    nbytes = out.numel() * out.element_size()
    if out.device.type == "cpu" and nbytes >= _HUGE_PAGE_MIN_BYTES and _native.available():
        _native.native().cpu_advise_huge_pages(out.data_ptr(), nbytes)
    return out


def token_logps_backward(
    grad: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
    out: torch.Tensor,
) -> None:
    """Write d(sum_t grad[b,t] * logp[b,t]) / d logits into `out` (same shape and dtype as logits; may be logits)."""
    x, y = _shifted(logits, labels, shift)
    dx, _ = _shifted(out, labels, shift)
    if shift and out.shape[1] > 0:
        out[:, -1].zero_()  # the last position predicts nothing
    if dx.numel() == 0:
        return
    coef = grad.to(acc_dtype(x.dtype)).contiguous()
    backend = backend_for(x.device)
    if backend is Backend.REFERENCE:
        dx.copy_(reference.token_logps_grad_reference(coef, x, y, ignore_index=ignore_index, temperature=temperature))
        return
    _launch("token_logps_backward", x.device, backend, _native.rows_view(x), _native.index_view(y), ignore_index,
            1.0 / temperature, coef.data_ptr(), lse.contiguous().data_ptr(), _native.mut_rows_view(dx),
            reports_errors=False)


def bon_token_rewards(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
) -> tuple[torch.Tensor | None, int | None]:
    """(per-token log pi_policy - log pi_ref on the label grid, first invalid flat position or None)."""
    x, y = _shifted(policy_logits, labels, shift)
    xr = _shifted(ref_logits, labels, shift)[0] if ref_logits is not None else None
    B, T, V = x.shape
    backend = backend_for(x.device)
    if backend is Backend.REFERENCE:
        bad = _check_reference_labels(y, V, ignore_index)
        if bad is not None:
            return None, bad
        pol, _ = reference.token_logps_reference(x, y, ignore_index=ignore_index, temperature=temperature)
        if xr is not None:
            ref_tok, _ = reference.token_logps_reference(xr, y, ignore_index=ignore_index, temperature=temperature)
        else:
            ref_tok = torch.where(y != ignore_index, ref_logps.to(pol.dtype), torch.zeros_like(pol))
        return pol - ref_tok, None
    out = torch.empty((B, T), dtype=acc_dtype(x.dtype), device=x.device)
    if out.numel() == 0:
        return out, None
    ref_tok_ptr = 0
    if ref_logps is not None:
        ref_logps = ref_logps.to(out.dtype).contiguous()
        ref_tok_ptr = ref_logps.data_ptr()
    bad = _launch("bon_token_rewards", x.device, backend, _native.rows_view(x),
                  _native.rows_view(xr) if xr is not None else None, ref_tok_ptr, _native.index_view(y), ignore_index,
                  1.0 / temperature, out.data_ptr())
    return out, bad


def yes_no(
    logits: torch.Tensor, positions: torch.Tensor | None, yes_ids: torch.Tensor, no_ids: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
    """(log P(yes-set), log P(no-set), first row with an invalid position or None) for (B, T, V) logits."""
    B, T, V = logits.shape
    backend = backend_for(logits.device)
    if backend is Backend.REFERENCE:
        bad = None
        if positions is not None:
            wrong = (positions < -T) | (positions >= T)
            bad = int(wrong.nonzero()[0]) if bool(wrong.any()) else None
        if bad is not None:
            return None, None, bad
        ly, ln = reference.yes_no_logprobs_reference(logits, yes_ids, no_ids, positions=positions)
        return ly, ln, None
    out_yes = torch.empty((B,), dtype=acc_dtype(logits.dtype), device=logits.device)
    out_no = torch.empty_like(out_yes)
    if B == 0:
        return out_yes, out_no, None
    bad = _launch("yes_no_logprobs", logits.device, backend, _native.rows_view(logits),
                  _native.index_view(positions) if positions is not None else None, yes_ids.data_ptr(),
                  yes_ids.numel(), no_ids.data_ptr(), no_ids.numel(), out_yes.data_ptr(), out_no.data_ptr())
    return out_yes, out_no, bad


# ---------------------------------------------------------------------------------------------------------------------
# lm_head-fused log-probs from hidden states


class LinearBackend(enum.Enum):
    TRITON = "triton"  # rlaifv_fast.ops.triton.linear_logps: tiles of h W^T on chip, never the (N, V) logits
    CHUNKED = "chunked"  # rlaifv_fast.ops.linear_chunked: bounded logits chunks through the sequence_logps kernels


LINEAR_BACKEND_ENV = "RLAIFV_FAST_LINEAR_BACKEND"
"""The explicit switch, read at every call: "auto" (default), "triton" or "chunked". "triton" on CPU tensors runs the
kernels in Triton's interpreter and needs TRITON_INTERPRET=1 in the environment before the first lm_head-fused call
imports the kernels (the CI tests use this, in a child process); "chunked" forces the chunked path on CUDA too."""

_triton_module = None


def _triton_linear():
    """The Triton kernels module, imported on first use (None when triton is not importable)."""
    global _triton_module
    if _triton_module is None:
        try:
            from .triton import linear_logps as module
        except ImportError:
            module = False
        _triton_module = module
    return _triton_module or None


def linear_backend_for(device: torch.device, dtype: torch.dtype) -> LinearBackend:
    """auto: Triton for CUDA tensors of fp32/bf16/fp16 when triton imports, the chunked path otherwise (CPU, fp64,
    no triton). RLAIFV_FAST_LINEAR_BACKEND overrides it (see LINEAR_BACKEND_ENV)."""
    choice = os.environ.get(LINEAR_BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "triton", "chunked"):
        raise ValueError(f"{LINEAR_BACKEND_ENV}={choice!r}: expected auto, triton or chunked")
    if choice == "chunked":
        return LinearBackend.CHUNKED
    if choice == "triton":
        if dtype == torch.float64:
            raise ValueError(f"{LINEAR_BACKEND_ENV}=triton: the Triton kernels take fp32/bf16/fp16, not float64")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"{LINEAR_BACKEND_ENV}=triton on {device.type} tensors needs TRITON_INTERPRET=1, set before the "
                "kernels are first imported"
            )
        if _triton_linear() is None:
            raise RuntimeError(f"{LINEAR_BACKEND_ENV}=triton but triton is not importable")
        return LinearBackend.TRITON
    if device.type == "cuda" and dtype != torch.float64 and _triton_linear() is not None:
        return LinearBackend.TRITON
    return LinearBackend.CHUNKED


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _linear_impl(backend: LinearBackend):
    if backend is LinearBackend.TRITON:
        return _triton_linear()
    from . import linear_chunked

    return linear_chunked


def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
    """(per-token log-probs, per-token lse) on the label grid (B, T') of hidden (B, T, H) @ weight.T (+ bias), and
    None; or (None, None, the first invalid flat position)."""
    h, y = _shifted(hidden, labels, shift)
    B, T, _ = h.shape
    backend = linear_backend_for(h.device, h.dtype)
    if B * T == 0:
        empty = torch.zeros((B, T), dtype=acc_dtype(h.dtype), device=h.device)
        return empty, empty.clone(), None
    if backend is LinearBackend.CHUNKED:
        return _linear_impl(backend).token_logps(h, weight, bias, y, ignore_index, temperature)
    with _on_device(h.device):
        tok, lse = _triton_linear().token_logps(h, weight, bias, y, ignore_index, temperature)
    bad = (y != ignore_index) & ((y < 0) | (y >= weight.shape[0]))
    if bool(bad.any()):  # the one host sync, after the launches (the kernels never read out of bounds)
        return None, None, int(bad.reshape(-1).nonzero()[0])
    return tok, lse, None


def linear_token_logps_backward(
    grad: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of sum_t grad[b,t] * logp[b,t] for (hidden, weight, bias), each in its input's dtype and shape, or
    None where `need` says it is not wanted."""
    need_dh, need_dw, need_db = need[0], need[1], need[2] and bias is not None
    h, y = _shifted(hidden, labels, shift)
    backend = linear_backend_for(h.device, h.dtype)
    with _on_device(h.device):
        dh, dw, db = _linear_impl(backend).token_logps_backward(
            grad, h, weight, bias, y, lse, ignore_index, temperature, need_dh, need_dw, need_db
        )
    if need_dh:
        if shift:
            full = torch.zeros(hidden.shape, dtype=hidden.dtype, device=hidden.device)
            full[:, :-1] = dh
            dh = full
        else:
            dh = dh.to(hidden.dtype)
    return dh, dw.to(weight.dtype) if need_dw else None, db.to(bias.dtype) if need_db else None


def linear_yes_no(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, yes_ids: torch.Tensor, no_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(yes-set), log P(no-set)) over the full vocabulary for (B, H) hidden states."""
    backend = linear_backend_for(hidden.device, hidden.dtype)
    acc = acc_dtype(hidden.dtype)
    if hidden.shape[0] == 0:
        empty = torch.empty((0,), dtype=acc, device=hidden.device)
        return empty, empty.clone()
    with _on_device(hidden.device):
        lse = _linear_impl(backend).row_lse(hidden, weight, bias).to(acc)

    def set_lse(ids: torch.Tensor) -> torch.Tensor:
        # the few columns of the set, exactly: (B, k) logits from the k weight rows, upcast
        z = hidden.to(acc) @ weight[ids].to(acc).T
        if bias is not None:
            z = z + bias[ids].to(acc)
        return torch.logsumexp(z, dim=1)

    return set_lse(yes_ids) - lse, set_lse(no_ids) - lse
