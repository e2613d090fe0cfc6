"""The fused ops. Each has a pure-PyTorch reference in rlaifv_fast.ops.reference (the test oracle and benchmark
baseline) and reaches the native kernels through one dispatch point (rlaifv_fast.ops._dispatch). All are
torch.library custom ops with fake implementations, so torch.compile traces them."""

from ._dispatch import Backend, force_backend
from .bon_rewards import BoNRewards, bon_rewards
from .dpo_loss import DPOConfig, DPOLossType, DPOOutput, dpo_loss, dpo_loss_from_logits
from .linear_logps import linear_bon_rewards, linear_sequence_logps, linear_yes_no_logprobs
from .sequence_logps import SequenceLogps, sequence_logps
from .yes_no import ResponseScores, YesNo, response_scores, yes_no_logprobs

__all__ = [
    "Backend",
    "force_backend",
    "BoNRewards",
    "DPOConfig",
    "DPOLossType",
    "DPOOutput",
    "ResponseScores",
    "SequenceLogps",
    "YesNo",
    "bon_rewards",
    "dpo_loss",
    "dpo_loss_from_logits",
    "linear_bon_rewards",
    "linear_sequence_logps",
    "linear_yes_no_logprobs",
    "response_scores",
    "sequence_logps",
    "yes_no_logprobs",
]
