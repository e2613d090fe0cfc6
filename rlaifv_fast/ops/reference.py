"""Pure-PyTorch references: the oracle every backend is tested against (called on float64 inputs) and the baseline
every benchmark compares with (called on the inputs as they are: "fp32 log_softmax + gather").

One function per op; each materialises what the fused kernels avoid, which is the point of a reference.
"""

from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16/fp32 -> fp32, fp64 stays fp64: the accumulation rule of the kernels.
    return torch.promote_types(x.dtype, torch.float32)


def token_logps_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token label log-probs and log-sum-exps, (B, T') each; zero where the label is ignore_index."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    x = logits.to(_compute_dtype(logits)) / temperature
    mask = labels != ignore_index
    safe = torch.where(mask, labels, torch.zeros_like(labels)).long()
    lse = torch.logsumexp(x, dim=-1)
    logp = torch.log_softmax(x, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(mask, logp, zero), torch.where(mask, lse, zero)


def token_logps_grad_reference(
    grad: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
) -> torch.Tensor:
    """d(sum_t grad[b,t] * l[b,t]) / d logits = grad * (onehot(y) - softmax(x / tau)) / tau at unmasked tokens
    (no shift: the caller passes aligned views). Used where autograd is not available (inside custom-op kernels)."""
    x = logits.to(_compute_dtype(logits)) / temperature
    mask = labels != ignore_index
    safe = torch.where(mask, labels, torch.zeros_like(labels)).long()
    coef = torch.where(mask, grad.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
    onehot = torch.nn.functional.one_hot(safe, x.shape[-1]).to(x.dtype)
    return (coef.unsqueeze(-1) * (onehot - torch.softmax(x, dim=-1)) / temperature).to(logits.dtype)


def sequence_logps_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    average: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sequence sum or mean, token count, per-token log-probs) of sequence_logps (its docstring states the
    formulas)."""
    per_token, _ = token_logps_reference(
        logits, labels, ignore_index=ignore_index, shift=shift, temperature=temperature
    )
    mask = (labels[:, 1:] if shift else labels) != ignore_index
    counts = mask.sum(-1)
    sums = per_token.sum(-1)
    values = sums / counts.clamp(min=1) if average else sums
    return values, counts, per_token


def bon_rewards_reference(
    policy_logits: torch.Tensor,
    ref: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    length_normalize: bool = True,
    ignore_index: int = -100,
    shift: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward per candidate, response token count): r = beta / n * sum_t (log pi(y_t) - log pi_ref(y_t)).

    `ref` is either reference logits (N, T, V) or precomputed per-token reference log-probs on the label grid.
    """
    pol, _ = token_logps_reference(
        policy_logits, labels, ignore_index=ignore_index, shift=shift, temperature=temperature
    )
    if ref.dim() == 3:
        ref_tok, _ = token_logps_reference(ref, labels, ignore_index=ignore_index, shift=shift, temperature=temperature)
    else:
        ref_tok = ref.to(pol.dtype)
    mask = (labels[:, 1:] if shift else labels) != ignore_index
    counts = mask.sum(-1)
    diff = torch.where(mask, pol - ref_tok, torch.zeros((), dtype=pol.dtype, device=pol.device)).sum(-1)
    rewards = beta * diff / counts.clamp(min=1) if length_normalize else beta * diff
    return rewards, counts


def yes_no_logprobs_reference(
    logits: torch.Tensor,
    yes_ids: torch.Tensor,
    no_ids: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(yes-set), log P(no-set) over the full vocabulary at one position per row."""
    if logits.dim() == 3:
        B, T, _ = logits.shape
        pos = torch.full((B,), T - 1, device=logits.device) if positions is None else positions.long() % max(T, 1)
        logits = logits[torch.arange(B, device=logits.device), pos]
    logp = torch.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)
    return torch.logsumexp(logp[:, yes_ids.long()], dim=-1), torch.logsumexp(logp[:, no_ids.long()], dim=-1)
