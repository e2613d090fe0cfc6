"""Which native kernels serve a device, and the one launcher of ``rlaifv_fast._C``: native CPU kernels for CPU
tensors, native CUDA kernels for CUDA tensors when the build has them, the pure-PyTorch reference elsewhere (with a
one-time warning). The ops reach these through rlaifv_fast.ops._dispatch; the chunked lm_head-fused backend
(linear_chunked.py) calls the two row-block kernels here directly, so neither of those modules imports the other.

Outputs are of the accumulation dtype: float32, or float64 for float64 logits.
"""

from __future__ import annotations

import contextlib
import enum
import warnings

import torch

from .. import _native


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


def launch(kernel: str, device: torch.device, backend: Backend, *args, reports_errors: bool = True) -> int | None:
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


# ----------------------------------------------------------------------------------------------------------------------
# row blocks of logits (the chunked lm_head-fused path): (n, V) accumulation-dtype buffers with unit stride on V


def rows_lse(x: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """(n,) log-sum-exp of every row of x * inv_temp, for an (n, V) block (no labels, no masking)."""
    backend = backend_for(x.device)
    if backend is Backend.REFERENCE:
        return torch.logsumexp(x.to(acc_dtype(x.dtype)) * inv_temp, dim=-1)
    out = torch.empty((x.shape[0],), dtype=acc_dtype(x.dtype), device=x.device)
    if out.numel():
        launch("rows_lse", x.device, backend, _native.rows_view(x.unsqueeze(0)), float(inv_temp), out.data_ptr(),
               reports_errors=False)
    return out


def rows_grad(coef: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, inv_temp: float,
              out: torch.Tensor) -> None:
    """out = coef * (onehot(labels) - softmax(x * inv_temp)) * inv_temp for an (n, V) block, `out` of x's shape and
    dtype (it may be x). A label outside [0, V) (e.g. -1) lies in another block: that row has no one-hot term.
    coef and lse are (n,) in x's dtype (the accumulation dtype)."""
    if x.numel() == 0:
        return
    backend = backend_for(x.device)
    if backend is Backend.REFERENCE:
        p = torch.exp(x * inv_temp - lse.unsqueeze(1))
        inside = (labels >= 0) & (labels < x.shape[1])
        onehot = torch.zeros_like(x)
        rows = inside.nonzero().squeeze(1)
        onehot[rows, labels[rows]] = 1.0
        out.copy_(coef.unsqueeze(1) * (onehot - p) * inv_temp)
        return
    coef, lse = coef.contiguous(), lse.contiguous()  # held here: the kernel reads them through raw pointers
    launch("rows_grad", x.device, backend, _native.rows_view(x.unsqueeze(0)), _native.index_view(labels.unsqueeze(0)),
           float(inv_temp), coef.data_ptr(), lse.data_ptr(), _native.mut_rows_view(out.unsqueeze(0)),
           reports_errors=False)
