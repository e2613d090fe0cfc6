"""lm_head-fused log-probs: the outputs of sequence_logps, yes_no_logprobs and bon_rewards straight from the last
hidden states h and the lm_head weight W (V, H) (+ bias b), without ever holding the (N, V) logits.

    a[n, v] = h[n] . W[v] + b[v]
    z[n, v] = softcap * tanh(logit_scale * a[n, v] / softcap) / tau      (softcap None: logit_scale * a[n, v] / tau)
    l[n] = z[n, y[n]] - logsumexp_v z[n, v]                               where y[n] != ignore_index

The logit scale (Cohere, Granite) and the final-logit soft-capping (Gemma 2 and 3) are the model's head transform,
in the order of TRL's fused head and of rlaifv_fast.engines.lm_head.LMHead (whose op_kwargs() gives these
arguments); the temperature divides after them. linear_sequence_logps gives sequence_logps's outputs on those
logits; linear_yes_no_logprobs gives yes_no_logprobs's on the last position; linear_bon_rewards gives bon_rewards's
from policy and reference hidden states. The backends (Triton kernels on CUDA, a chunked path elsewhere: one contract,
rlaifv_fast.ops._linear_backend) are chosen by `backend=` in rlaifv_fast.ops._dispatch. Only a per-token fp32 lse is
saved for the backward, which recomputes the logits tile by tile (or chunk by chunk) and returns the gradients of the
hidden states, the weight and the bias: each only when it requires grad, so a frozen lm_head (LoRA elsewhere) costs
no weight gradient.

Under DeepSpeed ZeRO-3 or FSDP the lm_head weight is sharded: gather it around the call (README, "lm_head-fused
log-probs"); any view of the gathered (V, H) matrix works, contiguous or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, _dispatch, _grid
from ._linear_backend import LogitTransform
from .bon_rewards import BoNRewards, best_per_group, group_sizes
from .sequence_logps import SequenceLogps
from .yes_no import YesNo

# The custom ops take the transform as floats (softcap 0.0: none) and the backend choice as a string; the public ops
# below validate both once.


@torch.library.custom_op("rlaifv_fast::linear_token_logps", mutates_args=())
def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
    logit_scale: float,
    softcap: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token label log-probs and lse (B, T') of hidden (B, T, H) @ weight.T (+ bias), transformed; inputs
    validated."""
    transform = LogitTransform.from_op(logit_scale, softcap, temperature)
    tok, lse, bad = _dispatch.linear_token_logps(hidden, weight, bias, labels, ignore_index, shift, transform, backend)
    if bad is not None:
        T = hidden.shape[1] - 1 if shift else hidden.shape[1]
        raise _checks.invalid_label_error(labels, bad, T, shift=shift, V=weight.shape[0], ignore_index=ignore_index)
    return tok, lse


@linear_token_logps.register_fake
def _(hidden, weight, bias, labels, ignore_index, shift, temperature, logit_scale, softcap, backend):
    B, T, _ = hidden.shape
    out = hidden.new_empty((B, _grid.grid_length(T, shift)), dtype=_dispatch.acc_dtype(hidden.dtype))
    return out, torch.empty_like(out)


@torch.library.custom_op("rlaifv_fast::linear_token_logps_backward", mutates_args=())
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
    logit_scale: float,
    softcap: float,
    backend: str,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d hidden, d weight, d bias) of sum grad * logp; an empty tensor stands for a gradient not asked for."""
    transform = LogitTransform.from_op(logit_scale, softcap, temperature)
    dh, dw, db = _dispatch.linear_token_logps_backward(
        grad, hidden, weight, bias, labels, lse, ignore_index, shift, transform, (need_hidden, need_weight, need_bias),
        backend,
    )

    def given(t):  # a fresh empty tensor each (custom-op outputs must not alias one another)
        return t if t is not None else hidden.new_empty((0,))

    return given(dh), given(dw), given(db)


@linear_token_logps_backward.register_fake
def _(grad, hidden, weight, bias, labels, lse, ignore_index, shift, temperature, logit_scale, softcap, backend,
      need_hidden, need_weight, need_bias):
    dh = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_hidden else hidden.new_empty((0,))
    dw = weight.new_empty(weight.shape) if need_weight else hidden.new_empty((0,))
    db = bias.new_empty(bias.shape) if need_bias and bias is not None else hidden.new_empty((0,))
    return dh, dw, db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, *options = inputs
    _, lse = output
    ctx.save_for_backward(hidden, weight, bias, labels, lse)
    ctx.options = tuple(options)  # ignore_index, shift, temperature, logit_scale, softcap, backend
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_tok, _grad_lse):
    hidden, weight, bias, labels, lse = ctx.saved_tensors
    n_inputs = 4 + len(ctx.options)
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    if grad_tok is None or not (need_h or need_w or need_b):
        return (None,) * n_inputs
    dh, dw, db = torch.ops.rlaifv_fast.linear_token_logps_backward(
        grad_tok, hidden, weight, bias, labels, lse, *ctx.options,
        bool(need_h), bool(need_w), bool(need_b and bias is not None),
    )
    return (dh if need_h else None, dw if need_w else None, db if need_b and bias is not None else None,
            *(None,) * (n_inputs - 3))


linear_token_logps.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("rlaifv_fast::linear_yes_no_logprobs", mutates_args=())
def linear_yes_no_kernel(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, yes_ids: torch.Tensor, no_ids: torch.Tensor,
    logit_scale: float, softcap: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    transform = LogitTransform.from_op(logit_scale, softcap, 1.0)
    return _dispatch.linear_yes_no(hidden, weight, bias, yes_ids, no_ids, transform, backend)


@linear_yes_no_kernel.register_fake
def _(hidden, weight, bias, yes_ids, no_ids, logit_scale, softcap, backend):
    out = hidden.new_empty((hidden.shape[0],), dtype=_dispatch.acc_dtype(hidden.dtype))
    return out, torch.empty_like(out)


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def _check_head(hidden: torch.Tensor, weight: object, bias: object, *, hidden_name: str = "hidden",
                weight_name: str = "weight", bias_name: str = "bias"):
    weight = _checks.check_tensor(weight_name, weight)
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"{weight_name} (dtype {weight.dtype}) must have the dtype of {hidden_name} ({hidden.dtype}); cast one "
            "of them (under autocast, pass hidden.to(weight.dtype) or the reverse)"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{weight_name} (shape {tuple(weight.shape)}) must be (V, H) with H = {hidden.shape[-1]}, the last "
            f"dimension of {hidden_name}"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"{weight_name} (shape {tuple(weight.shape)}): the vocabulary dimension is empty (V = 0)")
    _checks.check_same_device(weight_name, weight, hidden.device)
    if bias is not None:
        bias = _checks.check_tensor(bias_name, bias)
        if bias.dtype != weight.dtype or tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"{bias_name} (shape {tuple(bias.shape)}, dtype {bias.dtype}) must be ({weight.shape[0]},) of "
                f"{weight_name}'s dtype {weight.dtype}"
            )
        _checks.check_same_device(bias_name, bias, hidden.device)
    return weight, bias


def _check_hidden(name: str, hidden: object, ranks: tuple[int, ...]) -> torch.Tensor:
    hidden = _checks.check_tensor(name, hidden)
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"{name} (dtype {hidden.dtype}) must be float32, bfloat16, float16 or float64")
    if hidden.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} (shape {tuple(hidden.shape)}): expected a {want} tensor, got {hidden.dim()}-D")
    return hidden


def _as_grid(name: str, hidden: torch.Tensor, labels: object, shift: bool):
    """(hidden (B, T, H), labels (B, T)) from 3-D hidden states or a flat (N, H) batch of tokens (N sequences of one
    token each)."""
    if hidden.dim() == 3:
        return hidden, _checks.check_index("labels", labels, tuple(hidden.shape[:2]), hidden.device)
    if shift:
        raise ValueError(f"shift=True needs {name} as (B, T, H); a flat (N, H) batch of tokens has no time axis")
    labels = _checks.check_index("labels", labels, (hidden.shape[0],), hidden.device)
    return hidden.unsqueeze(1), labels.unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------------------
# public ops


def linear_sequence_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    shift: bool = False,
    average: bool = False,
    temperature: float = 1.0,
    return_per_token: bool = False,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
) -> SequenceLogps:
    """sequence_logps(logits, labels, ...) on the head's logits, computed from hidden @ weight.T (+ bias) without
    ever holding them: forward and backward.

    Args:
        hidden: (B, T, H) last hidden states (any strides), or (N, H): a flat batch of N tokens, each its own
            "sequence" (logps and counts (N,), per_token (N,)); float32, bfloat16, float16 or float64.
        weight: the lm_head weight (V, H), of hidden's dtype; any view (e.g. a slice of a gathered ZeRO-3 / FSDP
            parameter); it may require no grad (frozen head).
        labels: int32/int64 (B, T) (or (N,)); ignore_index entries are masked, others must lie in [0, V).
        bias: optional (V,) lm_head bias, weight's dtype.
        shift, average, temperature, return_per_token: as in sequence_logps.
        logit_scale, softcap: the model's head transform, logits = softcap * tanh(logit_scale * (h W^T + b) /
            softcap) (softcap None: logit_scale * (h W^T + b)); the temperature divides after it. LMHead.of(model)
            .op_kwargs() (rlaifv_fast.engines.lm_head) gives a model's values.
        backend: "auto" (Triton on CUDA, the chunked path elsewhere; RLAIFV_FAST_LINEAR_BACKEND, when set, decides
            for "auto"), "triton" or "chunked".

    Returns:
        SequenceLogps(logps, counts, per_token), float32 accumulation (float64 for float64 inputs). Gradients flow to
        hidden, weight and bias, each only if it requires grad; every sequence may have its own upstream gradient.

    Example:
        >>> out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
        >>> h = out.hidden_states[-1]
        >>> logps = linear_sequence_logps(h, model.lm_head.weight, labels, shift=True).logps
    """
    hidden = _check_hidden("hidden", hidden, ranks=(2, 3))
    weight, bias = _check_head(hidden, weight, bias)
    flat = hidden.dim() == 2
    h3, y = _as_grid("hidden", hidden, labels, shift)
    temperature = _checks.check_temperature(temperature)
    logit_scale, softcap = _checks.check_logit_transform(logit_scale, softcap)
    backend = _checks.check_linear_backend(backend)
    tok, _ = torch.ops.rlaifv_fast.linear_token_logps(h3, weight, bias, y, int(ignore_index), bool(shift), temperature,
                                                      logit_scale, softcap or 0.0, backend)
    counts = _grid.scored(y, shift, ignore_index).sum(-1)
    logps = _grid.per_sequence(tok.sum(-1), counts, average)
    per_token = (tok.squeeze(1) if flat else tok) if return_per_token else None
    return SequenceLogps(logps, counts, per_token)


def linear_yes_no_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    yes_ids: Sequence[int] | torch.Tensor,
    no_ids: Sequence[int] | torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
) -> YesNo:
    """yes_no_logprobs(logits, yes_ids, no_ids) on the head's logits from hidden @ weight.T (+ bias), without the
    (B, V) logits, no grad.

    Args:
        hidden: (B, H) hidden states of the first generated position (e.g. out.hidden_states[-1][:, -1]).
        weight, bias: the labeler's lm_head (V, H) and optional bias (V,), hidden's dtype.
        yes_ids, no_ids: token ids of the yes and no sets, as in yes_no_logprobs.
        logit_scale, softcap, backend: as in linear_sequence_logps (the set logits get the same transform).

    Example:
        >>> yn = linear_yes_no_logprobs(h_last, labeler.lm_head.weight, [yes_id, Yes_id], [no_id, No_id])
    """
    hidden = _check_hidden("hidden", hidden, ranks=(2,))
    weight, bias = _check_head(hidden, weight, bias)
    V = weight.shape[0]
    yes_t, no_t = _checks.check_token_sets(yes_ids, no_ids, V, hidden.device)
    logit_scale, softcap = _checks.check_logit_transform(logit_scale, softcap)
    backend = _checks.check_linear_backend(backend)
    with torch.no_grad():
        ly, ln = torch.ops.rlaifv_fast.linear_yes_no_logprobs(hidden, weight, bias, yes_t, no_t, logit_scale,
                                                              softcap or 0.0, backend)
    return YesNo(ly, ln, ly > ln)


def linear_bon_rewards(
    policy_hidden: torch.Tensor,
    policy_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    policy_bias: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    length_normalize: bool = True,
    groups: int | Sequence[int] | torch.Tensor | None = None,
    ignore_index: int = -100,
    shift: bool = False,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    ref_logit_scale: float | str = "policy",
    ref_softcap: float | None | str = "policy",
    backend: str = "auto",
) -> BoNRewards:
    """bon_rewards from hidden states: r = beta / n * sum_t (log pi(y_t) - log pi_ref(y_t)), no grad, no logits.

    Args:
        policy_hidden: (N, T, H) policy hidden states of the N candidates; policy_weight (V, H) its lm_head.
        labels: (N, T) response token ids, ignore_index elsewhere.
        ref_hidden, ref_weight: the reference model's hidden states (N, T, H') and lm_head (V, H'); or instead
            ref_logps: its per-token log-probs (N, T') on the label grid (e.g. cached). Exactly one of the two.
        beta, length_normalize, groups, ignore_index, shift, temperature: as in bon_rewards.
        logit_scale, softcap: the policy head's transform (as in linear_sequence_logps).
        ref_logit_scale, ref_softcap: the reference head's, for ref_hidden; "policy" (default): the policy's values
            (ref_softcap=None: no soft-capping on the reference).
        backend: as in linear_sequence_logps.

    Example:
        >>> out = linear_bon_rewards(h_pol, pol.lm_head.weight, labels, ref_hidden=h_ref,
        ...                          ref_weight=ref.lm_head.weight, beta=0.1, groups=16, shift=True)
    """
    policy_hidden = _check_hidden("policy_hidden", policy_hidden, ranks=(3,))
    policy_weight, policy_bias = _check_head(policy_hidden, policy_weight, policy_bias, hidden_name="policy_hidden",
                                             weight_name="policy_weight", bias_name="policy_bias")
    N, T, _ = policy_hidden.shape
    labels = _checks.check_index("labels", labels, (N, T), policy_hidden.device)
    temperature = _checks.check_temperature(temperature)
    logit_scale, softcap = _checks.check_logit_transform(logit_scale, softcap)
    backend = _checks.check_linear_backend(backend)
    if (ref_hidden is None) == (ref_logps is None):
        raise ValueError("give exactly one of ref_hidden (with ref_weight) and ref_logps")
    given_ref = [name for name, v in (("ref_logit_scale", ref_logit_scale), ("ref_softcap", ref_softcap))
                 if not (isinstance(v, str) and v == "policy")]
    if ref_hidden is None and given_ref:
        raise ValueError(f"{given_ref[0]} applies to ref_hidden's head; with ref_logps leave it at 'policy'")
    ref_scale = logit_scale if isinstance(ref_logit_scale, str) and ref_logit_scale == "policy" else ref_logit_scale
    ref_cap = softcap if isinstance(ref_softcap, str) and ref_softcap == "policy" else ref_softcap
    ref_scale, ref_cap = _checks.check_logit_transform(ref_scale, ref_cap, scale_name="ref_logit_scale",
                                                       softcap_name="ref_softcap")
    T_out = _grid.grid_length(T, shift)
    if ref_hidden is not None:
        ref_hidden = _check_hidden("ref_hidden", ref_hidden, ranks=(3,))
        if tuple(ref_hidden.shape[:2]) != (N, T):
            raise ValueError(f"ref_hidden (shape {tuple(ref_hidden.shape)}) must be (N, T, H') with (N, T) = {(N, T)}")
        if ref_weight is None:
            raise ValueError("ref_hidden needs ref_weight, the reference model's lm_head weight (V, H')")
        ref_weight, ref_bias = _check_head(ref_hidden, ref_weight, ref_bias, hidden_name="ref_hidden",
                                           weight_name="ref_weight", bias_name="ref_bias")
        if ref_weight.shape[0] != policy_weight.shape[0]:
            raise ValueError(
                f"ref_weight has {ref_weight.shape[0]} vocabulary rows, policy_weight {policy_weight.shape[0]}: the "
                "two models must share the vocabulary"
            )
        _checks.check_same_device("ref_hidden", ref_hidden, policy_hidden.device)
    else:
        ref_logps = _checks.check_tensor("ref_logps", ref_logps)
        _checks.check_token_logps("ref_logps", ref_logps, (N, T_out), shift, policy_hidden.device)
    sizes = group_sizes(groups, N)
    with torch.no_grad():
        args = (labels, int(ignore_index), bool(shift), temperature)
        pol, _ = torch.ops.rlaifv_fast.linear_token_logps(policy_hidden, policy_weight, policy_bias, *args,
                                                          logit_scale, softcap or 0.0, backend)
        if ref_hidden is not None:
            ref_tok, _ = torch.ops.rlaifv_fast.linear_token_logps(ref_hidden, ref_weight, ref_bias, *args,
                                                                  ref_scale, ref_cap or 0.0, backend)
        else:
            ref_tok = ref_logps.to(pol.dtype)
        mask = _grid.scored(labels, shift, ignore_index)
        counts = mask.sum(-1)
        total = torch.where(mask, pol - ref_tok, torch.zeros((), dtype=pol.dtype, device=pol.device)).sum(-1)
        rewards = beta * _grid.per_sequence(total, counts, length_normalize)
        best = best_per_group(rewards, sizes)
    return BoNRewards(rewards, counts, best)
