"""bon_rewards: the self-feedback Best-of-N reward (RLAIF-V, section "inference-time scaling"), forward only.

    r[i] = beta / n[i] * sum_t (log pi(y_t) - log pi_ref(y_t))      (beta * sum without length normalisation)

n[i] is candidate i's number of response tokens; dividing by it removes DPO's bias towards short answers. The best
candidate of each group (one prompt's N samples) is the argmax of r over the group. One fused pass streams the policy
and reference logits once each; the reference may instead be given as per-token log-probs (e.g. cached).
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import NamedTuple

import torch

from . import _checks, _dispatch, _grid


@torch.library.custom_op("rlaifv_fast::bon_token_rewards", mutates_args=())
def bon_token_rewards(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    temperature: float,
) -> torch.Tensor:
    """Per-token log pi_policy(y_t) - log pi_ref(y_t) on the label grid (zero where masked)."""
    diff, bad = _dispatch.bon_token_rewards(
        policy_logits, ref_logits, ref_logps, labels, ignore_index, shift, temperature
    )
    if bad is not None:
        T = policy_logits.shape[1] - 1 if shift else policy_logits.shape[1]
        raise _checks.invalid_label_error(
            labels, bad, T, shift=shift, V=policy_logits.shape[-1], ignore_index=ignore_index
        )
    return diff


@bon_token_rewards.register_fake
def _(policy_logits, ref_logits, ref_logps, labels, ignore_index, shift, temperature):
    B, T, _ = policy_logits.shape
    return policy_logits.new_empty((B, _grid.grid_length(T, shift)), dtype=_dispatch.acc_dtype(policy_logits.dtype))


class BoNRewards(NamedTuple):
    """rewards: (N,) per candidate; counts: (N,) response tokens; best: (G,) index of each group's best candidate
    (into the N candidates; NaN rewards never win, ties go to the first)."""

    rewards: torch.Tensor
    counts: torch.Tensor
    best: torch.Tensor


def group_sizes(groups: int | Sequence[int] | torch.Tensor | None, n: int) -> list[int]:
    """Group sizes for `n` candidates laid out group by group: None is one group, an int k is groups of k."""
    if groups is None:
        sizes = [n]
    elif isinstance(groups, int):
        if groups <= 0 or n % groups != 0:
            raise ValueError(f"groups={groups}: must be a positive group size dividing the {n} candidates")
        sizes = [groups] * (n // groups)
    else:
        sizes = [int(s) for s in (groups.tolist() if isinstance(groups, torch.Tensor) else groups)]
        empty = [i for i, s in enumerate(sizes) if s <= 0]
        if empty:
            raise ValueError(f"groups: group {empty[0]} has size {sizes[empty[0]]}; every group needs a candidate")
        if sum(sizes) != n:
            raise ValueError(f"groups: sizes add up to {sum(sizes)} but there are {n} candidates")
    if n == 0 or not sizes:
        raise ValueError("groups: no candidates to choose from (empty group)")
    return sizes


def best_per_group(rewards: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Index of the largest reward in each consecutive group; NaN counts as -inf, ties go to the first."""
    G, width = len(sizes), max(sizes)
    sizes_t = torch.tensor(sizes, device=rewards.device)
    starts = torch.cumsum(sizes_t, 0) - sizes_t
    cols = torch.arange(width, device=rewards.device)
    valid = cols[None, :] < sizes_t[:, None]
    index = (starts[:, None] + cols[None, :]).clamp(max=rewards.numel() - 1)
    table = torch.where(valid, rewards.nan_to_num(nan=-torch.inf)[index], -torch.inf)
    # argmax takes the first maximum; rows of all -inf/NaN fall back to the group's first candidate
    return starts + table.argmax(dim=1)


def bon_rewards(
    policy_logits: torch.Tensor,
    ref: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    length_normalize: bool = True,
    groups: int | Sequence[int] | torch.Tensor | None = None,
    ignore_index: int = -100,
    shift: bool = False,
    temperature: float = 1.0,
) -> BoNRewards:
    """Best-of-N self-reward per candidate and the best candidate per group, no grad.

    Args:
        policy_logits: (N, T, V) logits of the aligned policy for N candidates.
        ref: either the reference model's logits (N, T, V) (same dtype as the policy's), or its per-token
            log-probs (N, T') on the label grid (T' = T - 1 with shift), e.g. cached from the reference stage.
        labels: (N, T) response token ids, ignore_index elsewhere (prompt, image, padding).
        beta: the DPO beta of the policy.
        length_normalize: divide by the number of response tokens (RLAIF-V's rule); else beta * sum.
        groups: None (one group), an int k (consecutive groups of k), or a sequence of group sizes.

    Example:
        >>> out = bon_rewards(policy_logits, ref_logits, labels, beta=0.1, groups=16, shift=True)
        >>> answers = [candidates[i] for i in out.best.tolist()]
    """
    policy_logits = _checks.check_logits("policy_logits", policy_logits, ranks=(3,))
    N, T, V = policy_logits.shape
    labels = _checks.check_index("labels", labels, (N, T), policy_logits.device)
    temperature = _checks.check_temperature(temperature)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (beta > 0 and math.isfinite(beta)):
        # a negative beta would pick the worst answer, a NaN one no answer at all
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    ref = _checks.check_tensor("ref", ref)
    ref_logits = ref_logps = None
    if ref.dim() == 3:
        ref_logits = _checks.check_logits("ref", ref, ranks=(3,))
        if ref.shape != policy_logits.shape or ref.dtype != policy_logits.dtype:
            raise ValueError(
                f"ref logits (shape {tuple(ref.shape)}, dtype {ref.dtype}) must match policy_logits "
                f"(shape {tuple(policy_logits.shape)}, dtype {policy_logits.dtype})"
            )
        _checks.check_same_device("ref", ref, policy_logits.device)
    elif ref.dim() == 2:
        _checks.check_token_logps("ref per-token log-probs", ref, (N, _grid.grid_length(T, shift)), shift,
                                  policy_logits.device)
        ref_logps = ref
    else:
        raise ValueError(
            f"ref (shape {tuple(ref.shape)}): expected reference logits (N, T, V) or per-token log-probs (N, T')"
        )
    sizes = group_sizes(groups, N)
    with torch.no_grad():
        diff = torch.ops.rlaifv_fast.bon_token_rewards(
            policy_logits, ref_logits, ref_logps, labels, int(ignore_index), bool(shift), temperature
        )
        counts = _grid.scored(labels, shift, ignore_index).sum(-1)
        rewards = beta * _grid.per_sequence(diff.sum(-1), counts, length_normalize)
        best = best_per_group(rewards, sizes)
    return BoNRewards(rewards, counts, best)
