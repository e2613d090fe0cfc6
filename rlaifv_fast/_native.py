"""The compiled module ``rlaifv_fast._C`` and the translation of torch tensors into the views its kernels take.

The extension does not link libtorch: it receives data pointers, shapes, strides (in elements), dtype codes and the
CUDA stream as integers. The dtype codes here match ``csrc/common/row_math.h``.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from . import _C
except ImportError as _error:  # pragma: no cover - exercised only on a broken install
    _C = None
    _IMPORT_ERROR: ImportError | None = _error
else:
    _IMPORT_ERROR = None

FLOAT_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
INDEX_CODES = {torch.int32: 0, torch.int64: 1}
NO_ERROR = 2**63 - 1  # the kernels' "no invalid position" value (kNoError)


def native() -> Any:
    """The compiled module, or a clear ImportError saying why it is missing."""
    if _C is None:
        import rlaifv_fast

        raise ImportError(
            "rlaifv_fast's native module rlaifv_fast._C is not available "
            f"(imported from {rlaifv_fast.__path__[0]}): {_IMPORT_ERROR}. Install the package with "
            "`pip install .` and run Python from outside the source tree (the source folder rlaifv_fast/ shadows "
            "the installed package when Python starts in the repository root)."
        ) from _IMPORT_ERROR
    return _C


def available() -> bool:
    return _C is not None


def build_info() -> dict[str, Any]:
    """What the native build compiled in: CPU (always), OpenMP, CUDA and its architectures, the compiler."""
    return dict(native().build_info())


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.build_info()["cuda"])


def rows_view(x: torch.Tensor) -> Any:
    """A (B, T, V) logits tensor with unit stride on V as a RowsView."""
    B, T, V = x.shape
    sb, st, _ = x.stride()
    return native().RowsView(x.data_ptr(), FLOAT_CODES[x.dtype], B, T, V, sb, st)


def mut_rows_view(x: torch.Tensor) -> Any:
    _, _, _ = x.shape
    sb, st, _ = x.stride()
    return native().MutRowsView(x.data_ptr(), FLOAT_CODES[x.dtype], sb, st)


def index_view(y: torch.Tensor) -> Any:
    """A (B, T) or (B,) integer tensor as an IndexView (a 1-D one has T stride 0)."""
    if y.dim() == 1:
        sb, st = y.stride(0), 0
    else:
        sb, st = y.stride()
    return native().IndexView(y.data_ptr(), INDEX_CODES[y.dtype], sb, st)


def cuda_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
