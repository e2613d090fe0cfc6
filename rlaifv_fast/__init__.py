"""rlaifv_fast: a fast, trustworthy implementation of RLAIF-V (CVPR 2025) with fused native kernels."""

from ._native import build_info
from .ops import (
    BoNRewards,
    DPOConfig,
    DPOLossType,
    DPOOutput,
    ResponseScores,
    SequenceLogps,
    YesNo,
    bon_rewards,
    dpo_loss,
    dpo_loss_from_logits,
    linear_bon_rewards,
    linear_sequence_logps,
    linear_yes_no_logprobs,
    response_scores,
    sequence_logps,
    yes_no_logprobs,
)

__version__ = "0.1.0"

__all__ = [
    "BoNRewards",
    "DPOConfig",
    "DPOLossType",
    "DPOOutput",
    "ResponseScores",
    "SequenceLogps",
    "YesNo",
    "__version__",
    "bon_rewards",
    "build_info",
    "dpo_loss",
    "dpo_loss_from_logits",
    "linear_bon_rewards",
    "linear_sequence_logps",
    "linear_yes_no_logprobs",
    "response_scores",
    "sequence_logps",
    "yes_no_logprobs",
]
