"""The dispatch point of every op: the custom-op bodies call these functions, which run the native kernels that serve
the tensors' device (chosen by rlaifv_fast.ops._kernels.backend_for: native CPU kernels, native CUDA kernels when the
build has them, the pure-PyTorch reference elsewhere) and turn their reports into results.

The lm_head-fused log-probs (linear_logps.py) have their own two backends behind one contract
(rlaifv_fast.ops._linear_backend.LinearKernels), resolved here and only here (``linear_kernels``): the Triton kernels
of ``rlaifv_fast.ops.triton.linear_logps`` for CUDA tensors, and the chunked path of
``rlaifv_fast.ops.linear_chunked`` (bounded logits chunks through the native row-block kernels) everywhere else, or
as the caller's `backend=` says.

Outputs are of the accumulation dtype: float32, or float64 for float64 logits.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .. import _native
from . import reference
from ._kernels import Backend, acc_dtype, backend_for, force_backend, launch  # noqa: F401 (force_backend: re-exported)
from ._linear_backend import BACKEND_CHOICES, LinearBackend, LinearKernels, LogitTransform


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
    bad = launch("token_logps_forward", x.device, backend, _native.rows_view(x), _native.index_view(y), ignore_index,
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
    launch("token_logps_backward", x.device, backend, _native.rows_view(x), _native.index_view(y), ignore_index,
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
    bad = launch("bon_token_rewards", x.device, backend, _native.rows_view(x),
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
    bad = launch("yes_no_logprobs", logits.device, backend, _native.rows_view(logits),
                  _native.index_view(positions) if positions is not None else None, yes_ids.data_ptr(),
                  yes_ids.numel(), no_ids.data_ptr(), no_ids.numel(), out_yes.data_ptr(), out_no.data_ptr())
    return out_yes, out_no, bad


# ---------------------------------------------------------------------------------------------------------------------
# lm_head-fused log-probs from hidden states


LINEAR_BACKEND_ENV = "RLAIFV_FAST_LINEAR_BACKEND"
"""What backend="auto" stands for, read at every call: "auto" (default), "triton" or "chunked". "triton" on CPU
tensors runs the kernels in Triton's interpreter and needs TRITON_INTERPRET=1 in the environment before the first
lm_head-fused call imports the kernels (the CI tests use this, in a child process); "chunked" forces the chunked path
on CUDA too."""

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


def linear_backend_for(device: torch.device, dtype: torch.dtype, backend: str = "auto") -> LinearBackend:
    """The backend a call runs on. `backend` "triton" or "chunked" is taken as given (Triton checked to be usable);
    "auto" is RLAIFV_FAST_LINEAR_BACKEND's choice when that is set, else Triton for CUDA tensors of fp32/bf16/fp16
    when triton imports and the chunked path otherwise (CPU, fp64, no triton)."""
    choice, origin = backend, "backend"
    if choice == "auto":
        choice = os.environ.get(LINEAR_BACKEND_ENV, "auto").strip().lower() or "auto"
        origin = LINEAR_BACKEND_ENV
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"{origin}={choice!r}: expected one of {', '.join(BACKEND_CHOICES)}")
    if choice == "chunked":
        return LinearBackend.CHUNKED
    if choice == "triton":
        if dtype == torch.float64:
            raise ValueError(f"{origin}=triton: the Triton kernels take fp32/bf16/fp16, not float64")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"{origin}=triton on {device.type} tensors needs TRITON_INTERPRET=1, set before the kernels are "
                "first imported"
            )
        if _triton_linear() is None:
            raise RuntimeError(f"{origin}=triton but triton is not importable")
        return LinearBackend.TRITON
    if device.type == "cuda" and dtype != torch.float64 and _triton_linear() is not None:
        return LinearBackend.TRITON
    return LinearBackend.CHUNKED


def linear_kernels(device: torch.device, dtype: torch.dtype, backend: str = "auto") -> LinearKernels:
    """The module implementing the resolved backend (linear_backend_for)."""
    if linear_backend_for(device, dtype, backend) is LinearBackend.TRITON:
        return _triton_linear()
    from . import linear_chunked

    return linear_chunked


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    transform: LogitTransform,
    backend: str = "auto",
) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
    """(per-token log-probs, per-token lse) on the label grid (B, T') of z (hidden (B, T, H) @ weight.T (+ bias),
    transformed), and None; or (None, None, the first invalid flat position)."""
    h, y = _shifted(hidden, labels, shift)
    B, T, _ = h.shape
    kernels = linear_kernels(h.device, h.dtype, backend)
    if B * T == 0:
        empty = torch.zeros((B, T), dtype=acc_dtype(h.dtype), device=h.device)
        return empty, empty.clone(), None
    with _on_device(h.device):
        return kernels.token_logps(h, weight, bias, y, ignore_index, transform)


def linear_token_logps_backward(
    grad: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    transform: LogitTransform,
    need: tuple[bool, bool, bool],
    backend: str = "auto",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of sum_t grad[b,t] * logp[b,t] for (hidden, weight, bias), each in its input's dtype and shape, or
    None where `need` says it is not wanted."""
    need_dh, need_dw, need_db = need[0], need[1], need[2] and bias is not None
    h, y = _shifted(hidden, labels, shift)
    kernels = linear_kernels(h.device, h.dtype, backend)
    with _on_device(h.device):
        dh, dw, db = kernels.token_logps_backward(
            grad, h, weight, bias, y, lse, ignore_index, transform, need_dh, need_dw, need_db
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
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, yes_ids: torch.Tensor, no_ids: torch.Tensor,
    transform: LogitTransform, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(yes-set), log P(no-set)) over the full vocabulary of z for (B, H) hidden states."""
    kernels = linear_kernels(hidden.device, hidden.dtype, backend)
    acc = acc_dtype(hidden.dtype)
    if hidden.shape[0] == 0:
        empty = torch.empty((0,), dtype=acc, device=hidden.device)
        return empty, empty.clone()
    with _on_device(hidden.device):
        lse = kernels.row_lse(hidden, weight, bias, transform).to(acc)

    def set_lse(ids: torch.Tensor) -> torch.Tensor:
        # the few columns of the set, exactly: (B, k) raw outputs from the k weight rows, upcast, then transformed
        a = hidden.to(acc) @ weight[ids].to(acc).T
        if bias is not None:
            a = a + bias[ids].to(acc)
        return torch.logsumexp(transform.apply(a), dim=1)

    return set_lse(yes_ids) - lse, set_lse(no_ids) - lse
