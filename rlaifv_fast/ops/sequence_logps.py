"""sequence_logps: per-sequence label log-probs with a fused backward: the heart of DPO, reference log-probs and the SFT term.

    l[b,t] = x[b,t,y]/tau - logsumexp_v x[b,t,v]/tau   where y[b,t] != ignore_index, else 0
    S[b]   = sum_t l[b,t]      n[b] = #{t : y[b,t] != ignore_index}      mean[b] = S[b] / max(n[b], 1)

The kernels produce the per-token l and an fp32 lse per token in one read of the logits; sums and means are plain
torch reductions on (B, T) numbers, so autograd hands the backward a per-token coefficient g[b,t] (a per-sequence
upstream gradient broadcast over the sequence, scaled by 1/n for means). The backward reads the logits once more and
writes dx = g * (onehot(y) - softmax(x/tau)) / tau once, from the saved lse.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _checks, _dispatch, _grid


@torch.library.custom_op("rlaifv_fast::token_logps", mutates_args=())
def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
    inplace_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token label log-probs and lse (B, T') of the accumulation dtype; inputs already validated."""
    tok, lse, bad = _dispatch.token_logps(logits, labels, ignore_index, shift, temperature)
    if bad is not None:
        x_len = logits.shape[1] - 1 if shift else logits.shape[1]
        raise _checks.invalid_label_error(
            labels, bad, x_len, shift=shift, V=logits.shape[-1], ignore_index=ignore_index
        )
    return tok, lse


@token_logps.register_fake
def _(logits, labels, ignore_index, shift, temperature, inplace_backward):
    B, T, _ = logits.shape
    out = logits.new_empty((B, _grid.grid_length(T, shift)), dtype=_dispatch.acc_dtype(logits.dtype))
    return out, torch.empty_like(out)


@torch.library.custom_op("rlaifv_fast::token_logps_backward", mutates_args=())
def token_logps_backward(
    grad: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
) -> torch.Tensor:
    """d(sum_t grad * logp)/d logits, into a new tensor shaped and typed like the logits."""
    out = _dispatch.new_gradient_buffer(logits)
    _dispatch.token_logps_backward(grad, logits, labels, lse, ignore_index, shift, temperature, out)
    return out


@token_logps_backward.register_fake
def _(grad, logits, labels, lse, ignore_index, shift, temperature):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.custom_op("rlaifv_fast::token_logps_backward_", mutates_args=("logits",))
def token_logps_backward_(
    grad: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
) -> None:
    """The in-place variant: overwrites the logits with their gradient."""
    _dispatch.token_logps_backward(grad, logits, labels, lse, ignore_index, shift, temperature, logits)


def _rows_disjoint(x: torch.Tensor) -> bool:
    """Whether the (B, T) rows of V entries occupy disjoint memory (an expanded or overlapping view does not):
    only then can the gradient be written over the logits."""
    V = x.shape[-1]
    dims = sorted((x.stride(i), x.shape[i]) for i in range(2) if x.shape[i] > 1)
    extent = V
    for stride, size in dims:
        if stride < extent:
            return False
        extent = stride * size
    return True


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index, shift, temperature, inplace_backward = inputs
    _, lse = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.options = (ignore_index, shift, temperature, inplace_backward)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_tok, _grad_lse):
    logits, labels, lse = ctx.saved_tensors
    ignore_index, shift, temperature, inplace_backward = ctx.options
    if grad_tok is None:
        return None, None, None, None, None, None
    if inplace_backward and _rows_disjoint(logits):
        # Reuses the logits buffer (opt-in): the caller promises nothing else needs these logits. Autograd's
        # version counter still catches a later reader that saved them.
        torch.ops.rlaifv_fast.token_logps_backward_(grad_tok, logits, labels, lse, ignore_index, shift, temperature)
        dx = logits
    else:
        dx = torch.ops.rlaifv_fast.token_logps_backward(
            grad_tok, logits, labels, lse, ignore_index, shift, temperature
        )
    return dx, None, None, None, None, None


token_logps.register_autograd(_backward, setup_context=_setup_context)


class SequenceLogps(NamedTuple):
    """logps: (B,) per-sequence sums (or means with average=True), float32 (float64 for float64 logits);
    counts: (B,) int64 number of label tokens; per_token: (B, T') per-token log-probs or None."""

    logps: torch.Tensor
    counts: torch.Tensor
    per_token: torch.Tensor | None


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    average: bool = False,
    temperature: float = 1.0,
    return_per_token: bool = False,
    inplace_backward: bool = False,
) -> SequenceLogps:
    """Per-sequence label log-probs of `logits` (B, T, V) at `labels` (B, T), fused forward and backward.

    Args:
        logits: float32, bfloat16, float16 or float64; any strides on B and T, unit stride on V.
        labels: int32 or int64, (B, T); entries equal to `ignore_index` are masked, others must lie in [0, V).
        shift: compare logits[:, :-1] with labels[:, 1:] (causal LM alignment) without copying; outputs then
            cover T - 1 positions.
        average: return sum / max(count, 1) per sequence (an all-masked row gives 0, never NaN).
        temperature: log-probs of softmax(logits / temperature).
        return_per_token: also return the per-token log-probs (zero at masked positions).
        inplace_backward: let the backward overwrite `logits` with their gradient (no extra memory); only when
            nothing else will read these logits afterwards.

    Returns:
        SequenceLogps(logps, counts, per_token). Accumulation is float32 whatever the input dtype (float64 for
        float64 inputs). A NaN or +inf logit makes its own row's outputs NaN and no other row's.

    Example:
        >>> out = sequence_logps(logits, labels, shift=True)
        >>> loss = -(out.logps / out.counts.clamp(min=1)).mean()
    """
    logits = _checks.check_logits("logits", logits, ranks=(3,))
    labels = _checks.check_index("labels", labels, tuple(logits.shape[:2]), logits.device)
    temperature = _checks.check_temperature(temperature)
    tok, _ = torch.ops.rlaifv_fast.token_logps(
        logits, labels, int(ignore_index), bool(shift), temperature, bool(inplace_backward)
    )
    counts = _grid.scored(labels, shift, ignore_index).sum(-1)
    logps = _grid.per_sequence(tok.sum(-1), counts, average)
    return SequenceLogps(logps, counts, tok if return_per_token else None)
