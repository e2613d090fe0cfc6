"""The contract of the lm_head-fused backends: what the Triton kernels (rlaifv_fast.ops.triton.linear_logps)
and the chunked path (rlaifv_fast.ops.linear_chunked) each provide, and the logit transform both apply. Which one
runs is decided in one place, rlaifv_fast.ops._dispatch.linear_kernels.

With a = h W^T + b the raw head outputs (computed tile by tile or chunk by chunk, never as a whole), a backend works
on

    z = softcap * tanh(logit_scale * a / softcap) / tau        (without soft-capping: z = logit_scale * a / tau)

the order of TRL's fused head and of rlaifv_fast.engines.lm_head.LMHead: the logit scale, then the final-logit
soft-capping, then the sampling temperature. Its derivative dz/da = logit_scale * sech^2(logit_scale * a / softcap)
/ tau (without soft-capping logit_scale / tau) is what the backward adds to the softmax gradient.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol

import torch


class LinearBackend(enum.Enum):
    TRITON = "triton"  # rlaifv_fast.ops.triton.linear_logps: tiles of h W^T on chip, never the (N, V) logits
    CHUNKED = "chunked"  # rlaifv_fast.ops.linear_chunked: bounded logits chunks through the native row kernels


BACKEND_CHOICES = ("auto", *(b.value for b in LinearBackend))
"""The values of the ops' `backend=` argument: "auto" picks Triton for CUDA tensors of fp32/bf16/fp16 when triton
imports and the chunked path otherwise (the environment variable RLAIFV_FAST_LINEAR_BACKEND, when set, is the
choice "auto" stands for)."""


@dataclasses.dataclass(frozen=True)
class LogitTransform:
    """The head transform and temperature a backend applies to the raw outputs a (see the module docstring).
    Values are validated by the public ops (rlaifv_fast.ops._checks.check_logit_transform)."""

    logit_scale: float = 1.0
    softcap: float | None = None
    temperature: float = 1.0

    @classmethod
    def from_op(cls, logit_scale: float, softcap: float, temperature: float) -> LogitTransform:
        """From the custom ops' float arguments, where softcap 0.0 stands for none."""
        return cls(float(logit_scale), float(softcap) if softcap else None, float(temperature))

    @property
    def op_softcap(self) -> float:
        return self.softcap if self.softcap is not None else 0.0

    @property
    def inv_temp(self) -> float:
        """The factor on capped values: z = cap(a) * inv_temp, with cap the identity without soft-capping (then the
        logit scale folds into this factor)."""
        return (1.0 if self.softcap is not None else self.logit_scale) / self.temperature

    def cap_(self, a: torch.Tensor) -> torch.Tensor:
        """softcap * tanh(logit_scale * a / softcap), in place; a unchanged without soft-capping."""
        if self.softcap is not None:
            a.mul_(self.logit_scale / self.softcap).tanh_().mul_(self.softcap)
        return a

    def cap_slope(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """d cap(a) / da = logit_scale * sech^2(logit_scale * a / softcap) into `out` (a's shape; soft-capping only).
        Through cosh, so a saturated tanh keeps its tiny slope's relative accuracy (no 1 - tanh^2 cancellation);
        cosh overflows to inf only where sech^2 underflows to 0 anyway."""
        torch.mul(a, self.logit_scale / self.softcap, out=out)
        return out.cosh_().square_().reciprocal_().mul_(self.logit_scale)

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        """z of the raw outputs a (a new tensor)."""
        return self.cap_(a.clone()).mul_(self.inv_temp)


class LinearKernels(Protocol):
    """One backend of the lm_head-fused log-probs. Inputs are validated; `hidden` (B, T', H) and `labels` (B, T')
    are aligned (shifted views when shift=True); results are in the accumulation dtype (float32; float64 for float64
    inputs where the backend takes them)."""

    def token_logps(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    labels: torch.Tensor, ignore_index: int, transform: LogitTransform
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
        """(per-token label log-probs, lse of z) on the (B, T') grid, zero where masked, and None; or (None, None,
        the first flat position whose label is neither ignore_index nor in [0, V))."""

    def row_lse(self, hidden2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                transform: LogitTransform) -> torch.Tensor:
        """(N,) lse of z over the full vocabulary for every row of (N, H) hidden states."""

    def token_logps_backward(self, grad: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None, labels: torch.Tensor, lse: torch.Tensor, ignore_index: int,
                             transform: LogitTransform, need_dh: bool, need_dw: bool, need_db: bool
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(dh (B, T', H), dW (V, H), db (V,)) of sum grad * logp, each None where not needed; `lse` is the
        forward's."""
