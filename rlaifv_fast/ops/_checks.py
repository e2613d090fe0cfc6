"""Input validation shared by the public ops: every rule raises a TypeError or ValueError that names the tensor,
what it got and what is required. Value checks on labels and positions happen in the kernels (no extra pass)."""

from __future__ import annotations

import math

import torch

from .._native import FLOAT_CODES, INDEX_CODES


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


def check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def invalid_label_error(labels: torch.Tensor, flat: int, T: int, *, shift: bool, V: int, ignore_index: int):
    b, t = divmod(flat, T)
    t_label = t + 1 if shift else t
    value = int(labels[b, t_label])
    return ValueError(
        f"labels[{b}, {t_label}] = {value} is outside [0, {V}) and is not ignore_index ({ignore_index})"
    )
