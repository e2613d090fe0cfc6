"""Input validation shared by the public ops: every rule raises a TypeError or ValueError that names the tensor,
what it got and what is required. Value checks on labels and positions happen in the kernels (no extra pass)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._native import FLOAT_CODES, INDEX_CODES
from ._linear_backend import BACKEND_CHOICES


def _describe(name: str, t: torch.Tensor) -> str:
    return f"{name} (shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device})"


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_logits(name: str, x: object, ranks: tuple[int, ...]) -> torch.Tensor:
    x = check_tensor(name, x)
    if x.dtype not in FLOAT_CODES:
        raise TypeError(
            f"{_describe(name, x)}: logits must be float32, bfloat16, float16 or float64 "
            "(integer, bool and complex logits are not supported)"
        )
    if x.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{_describe(name, x)}: expected a {want} tensor, got {x.dim()}-D")
    if x.shape[-1] == 0:
        raise ValueError(f"{_describe(name, x)}: the vocabulary dimension is empty (V = 0)")
    if x.shape[-1] > 1 and x.stride(-1) != 1 and x.numel() > 0:
        raise ValueError(
            f"{_describe(name, x)}: the vocabulary dimension must have unit stride, got stride {x.stride(-1)}; "
            "call .contiguous() first (any strides on the batch and time dimensions are fine)"
        )
    return x


def check_index(name: str, y: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    y = check_tensor(name, y)
    if y.dtype not in INDEX_CODES:
        raise TypeError(f"{_describe(name, y)}: must be int32 or int64")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"{_describe(name, y)}: shape must be {tuple(shape)} to match the logits")
    check_same_device(name, y, device)
    return y


def check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{_describe(name, t)}: must be on the logits' device {device}")


def check_token_logps(name: str, t: torch.Tensor, shape: tuple[int, int], shift: bool, device: torch.device) -> None:
    """Cached per-token log-probs on the label grid: a float tensor of `shape` on `device`."""
    if tuple(t.shape) != tuple(shape) or not t.is_floating_point():
        raise ValueError(
            f"{name} (shape {tuple(t.shape)}, dtype {t.dtype}) must be a float tensor of shape {tuple(shape)} (the "
            f"label grid{', shifted' if shift else ''})"
        )
    check_same_device(name, t, device)


def check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_logit_transform(logit_scale: object, softcap: object, *, scale_name: str = "logit_scale",
                          softcap_name: str = "softcap") -> tuple[float, float | None]:
    """(logit scale, soft-capping or None) of the lm_head-fused ops: the scale finite and nonzero, the soft-capping
    None or finite > 0."""
    scale = _finite_number(scale_name, logit_scale)
    if scale == 0.0:
        raise ValueError(f"{scale_name} must be nonzero (all logits would be 0), got {logit_scale!r}")
    if softcap is None:
        return scale, None
    cap = _finite_number(softcap_name, softcap)
    if cap <= 0:
        raise ValueError(f"{softcap_name} must be None (no soft-capping) or a finite number > 0, got {softcap!r}")
    return scale, cap


def check_linear_backend(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_CHOICES))}, got {backend!r}")
    return backend


def invalid_label_error(labels: torch.Tensor, flat: int, T: int, *, shift: bool, V: int, ignore_index: int):
    b, t = divmod(flat, T)
    t_label = t + 1 if shift else t
    value = int(labels[b, t_label])
    return ValueError(
        f"labels[{b}, {t_label}] = {value} is outside [0, {V}) and is not ignore_index ({ignore_index})"
    )


def _token_set(name: str, ids: Sequence[int] | torch.Tensor, V: int) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dtype not in (torch.int32, torch.int64) or ids.dim() != 1:
            raise TypeError(
                f"{name} must be a 1-D int32/int64 tensor or a sequence of ints, got {ids.dtype} {ids.dim()}-D"
            )
        values = ids.tolist()
    else:
        # a float or a string is not a token id: int() would truncate 3.7 or parse "5" silently
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
        if bad:
            raise TypeError(f"{name} must hold integer token ids, got {bad[0]!r} ({type(bad[0]).__name__})")
        values = [int(i) for i in ids]
    values = sorted(set(values))
    if not values:
        raise ValueError(f"{name} is empty: the token set needs at least one token id")
    wrong = [i for i in values if not 0 <= i < V]
    if wrong:
        raise ValueError(f"{name} holds token id {wrong[0]}, outside the vocabulary [0, {V})")
    return values


def check_token_sets(yes_ids, no_ids, V: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The yes and no token sets as int64 tensors on `device`: integer ids inside [0, V), each set non-empty,
    duplicates dropped, the sets disjoint."""
    yes = _token_set("yes_ids", yes_ids, V)
    no = _token_set("no_ids", no_ids, V)
    both = set(yes) & set(no)
    if both:
        raise ValueError(f"token id {min(both)} is in both yes_ids and no_ids")
    return (torch.tensor(yes, dtype=torch.int64, device=device), torch.tensor(no, dtype=torch.int64, device=device))
