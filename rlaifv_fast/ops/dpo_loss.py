"""DPO-family losses on per-sequence log-probs, with RLAIF-V's SFT term.

    h = (pi_c - pi_r) - (ref_c - ref_r)
    sigmoid (DPO):   -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)         (eps: label smoothing, cDPO)
    robust (rDPO):   (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
    hinge (SLiC):    relu(1 - beta h)
    ipo:             (h - 1 / (2 beta))^2, on length-normalised (mean) log-probs
    loss = mean over pairs + w_sft * mean(-pi_c)

pi_* are per-sequence SUMS of response-token log-probs (means for ipo). Rewards are beta * (pi - ref).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .sequence_logps import sequence_logps


class DPOLossType(str, enum.Enum):
    SIGMOID = "sigmoid"
    IPO = "ipo"
    ROBUST = "robust"
    HINGE = "hinge"


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """beta: KL strength (RLAIF-V: 0.1); loss_type: see module doc; label_smoothing: eps of sigmoid/robust, in
    [0, 0.5); sft_weight: weight of mean(-pi_chosen) (RLAIF-V's w_sft; 0 disables)."""

    beta: float = 0.1
    loss_type: DPOLossType = DPOLossType.SIGMOID
    label_smoothing: float = 0.0
    sft_weight: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "loss_type", DPOLossType(self.loss_type))
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"DPOConfig.beta must be a finite number > 0, got {self.beta}")
        if not (self.sft_weight >= 0 and math.isfinite(self.sft_weight)):
            raise ValueError(f"DPOConfig.sft_weight must be a finite number >= 0, got {self.sft_weight}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"DPOConfig.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type not in (DPOLossType.SIGMOID, DPOLossType.ROBUST):
            raise ValueError(f"label_smoothing applies to sigmoid and robust losses, not {self.loss_type.value}")


class DPOOutput(NamedTuple):
    """loss: scalar; losses: (P,) per pair (without the SFT term); chosen_rewards, rejected_rewards: (P,) detached;
    accuracy: fraction of pairs with chosen reward > rejected reward; margin: mean reward margin."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    accuracy: torch.Tensor
    margin: torch.Tensor


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    config: DPOConfig = DPOConfig(),
) -> DPOOutput:
    """The loss and metrics from precomputed per-sequence log-probs, (P,) each (sums; means for ipo).

    Example:
        >>> out = dpo_loss(pi_c, pi_r, ref_c, ref_r, config=DPOConfig(beta=0.1, sft_weight=1.0))
        >>> out.loss.backward()
    """
    tensors = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    shape = tuple(policy_chosen_logps.shape)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D float tensor of per-sequence log-probs")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} like policy_chosen_logps")
        if t.device != policy_chosen_logps.device:
            raise ValueError(f"{name} is on {t.device}, expected {policy_chosen_logps.device}")
    if shape[0] == 0:
        raise ValueError("dpo_loss needs at least one pair (got 0)")
    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)
    pi_c, pi_r = policy_chosen_logps.to(dtype), policy_rejected_logps.to(dtype)
    ref_c, ref_r = ref_chosen_logps.to(dtype).detach(), ref_rejected_logps.to(dtype).detach()
    beta, eps, kind = config.beta, config.label_smoothing, config.loss_type
    h = (pi_c - pi_r) - (ref_c - ref_r)
    if kind is DPOLossType.SIGMOID:
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif kind is DPOLossType.ROBUST:
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif kind is DPOLossType.HINGE:
        losses = torch.relu(1 - beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    loss = losses.mean()
    if config.sft_weight:
        loss = loss + config.sft_weight * (-pi_c).mean()
    chosen_rewards = (beta * (pi_c - ref_c)).detach()
    rejected_rewards = (beta * (pi_r - ref_r)).detach()
    accuracy = (chosen_rewards > rejected_rewards).to(dtype).mean()
    margin = (chosen_rewards - rejected_rewards).mean()
    return DPOOutput(loss, losses, chosen_rewards, rejected_rewards, accuracy, margin)


def dpo_loss_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    config: DPOConfig = DPOConfig(),
    ignore_index: int = -100,
    shift: bool = True,
    inplace_backward: bool = False,
) -> DPOOutput:
    """DPO from one concatenated forward: logits (2P, T, V) and labels (2P, T) hold [chosen; rejected].

    The policy log-probs come from sequence_logps (fused forward and backward); ipo uses their means, the other
    losses their sums. The reference log-probs must be computed the same way (sums, or means for ipo).
    """
    if logits.dim() != 3 or logits.shape[0] % 2 != 0:
        raise ValueError(
            f"logits (shape {tuple(logits.shape)}) must be (2P, T, V): P chosen rows followed by P rejected rows"
        )
    out = sequence_logps(
        logits,
        labels,
        ignore_index=ignore_index,
        shift=shift,
        average=config.loss_type is DPOLossType.IPO,
        inplace_backward=inplace_backward,
    )
    pi_c, pi_r = out.logps.chunk(2)
    return dpo_loss(pi_c, pi_r, ref_chosen_logps, ref_rejected_logps, config=config)
