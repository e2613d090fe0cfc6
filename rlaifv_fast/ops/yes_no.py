"""yes_no_logprobs: batched yes/no probabilities for claim checking (RLAIF-V's "conquer" step), forward only.

    log P_yes[b] = logsumexp_{v in YES} z[b,v] - logsumexp_v z[b,v]      (the same for NO)

z is the labeler's logits at the first generated position, softmaxed over the FULL vocabulary. A claim is accepted iff
P_yes > P_no, strictly (ties and NaN reject). A response's score is -(number of its rejected claims).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from . import _checks, _dispatch


@torch.library.custom_op("rlaifv_fast::yes_no_logprobs", mutates_args=())
def yes_no_kernel(
    logits: torch.Tensor, positions: torch.Tensor | None, yes_ids: torch.Tensor, no_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    ly, ln, bad = _dispatch.yes_no(logits, positions, yes_ids, no_ids)
    if bad is not None:
        raise ValueError(
            f"positions[{bad}] = {int(positions[bad])} is outside the {logits.shape[1]} positions of the logits"
        )
    return ly, ln


@yes_no_kernel.register_fake
def _(logits, positions, yes_ids, no_ids):
    out = logits.new_empty((logits.shape[0],), dtype=_dispatch.acc_dtype(logits.dtype))
    return out, torch.empty_like(out)


class YesNo(NamedTuple):
    """logp_yes, logp_no: (B,) float32 (float64 for float64 logits); accepted: (B,) bool, logp_yes > logp_no."""

    logp_yes: torch.Tensor
    logp_no: torch.Tensor
    accepted: torch.Tensor


def yes_no_logprobs(
    logits: torch.Tensor,
    yes_ids: Sequence[int] | torch.Tensor,
    no_ids: Sequence[int] | torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
) -> YesNo:
    """Full-vocabulary log P(yes-set) and log P(no-set) per row, and the strict verdict.

    Args:
        logits: (B, V) logits of the first generated position, or (B, T, V) with `positions`.
        yes_ids, no_ids: token ids of the yes and no sets (e.g. "yes", "Yes" / "no", "No" as the labeler's tokenizer
            encodes them after the prompt); duplicates are ignored; the sets must not overlap. Pass Python ints
            under torch.compile (a tensor of ids is read on the host).
        positions: (B,) int32/int64 position per row for 3-D logits (negative counts from the end); default: the
            last position.

    Example:
        >>> yn = yes_no_logprobs(last_logits, [yes_id, Yes_id], [no_id, No_id])
        >>> scores = response_scores(yn.accepted, claim_to_response, num_responses=len(answers)).scores
    """
    logits = _checks.check_logits("logits", logits, ranks=(2, 3))
    V = logits.shape[-1]
    x = logits.unsqueeze(1) if logits.dim() == 2 else logits
    if positions is not None:
        if logits.dim() == 2:
            raise ValueError("positions are only meaningful with (B, T, V) logits; got (B, V) logits")
        positions = _checks.check_index("positions", positions, (x.shape[0],), x.device)
    elif x.shape[1] == 0:
        raise ValueError(f"logits (shape {tuple(logits.shape)}) has no positions to read (T = 0)")
    else:
        positions = None if x.shape[1] == 1 else torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    yes_t, no_t = _checks.check_token_sets(yes_ids, no_ids, V, x.device)
    with torch.no_grad():
        ly, ln = torch.ops.rlaifv_fast.yes_no_logprobs(x, positions, yes_t, no_t)
    return YesNo(ly, ln, ly > ln)


class ResponseScores(NamedTuple):
    """scores: (R,) -(rejected claims) as float32; n_claims, n_rejected: (R,) int64. A response with n_claims == 0
    has score 0 but no evidence: flag it rather than treat it as perfect."""

    scores: torch.Tensor
    n_claims: torch.Tensor
    n_rejected: torch.Tensor


def response_scores(
    accepted: torch.Tensor, response_index: torch.Tensor, *, num_responses: int | None = None
) -> ResponseScores:
    """Segment reduction claim -> response: score = -(number of rejected claims of the response)."""
    accepted = _checks.check_tensor("accepted", accepted)
    response_index = _checks.check_tensor("response_index", response_index)
    if accepted.dtype != torch.bool or accepted.dim() != 1:
        raise TypeError(f"accepted must be a 1-D bool tensor, got {accepted.dtype} {accepted.dim()}-D")
    if response_index.dtype not in (torch.int32, torch.int64) or tuple(response_index.shape) != tuple(accepted.shape):
        raise ValueError(
            f"response_index (shape {tuple(response_index.shape)}, dtype {response_index.dtype}) must be an integer "
            f"tensor with one entry per claim {tuple(accepted.shape)}"
        )
    _checks.check_same_device("response_index", response_index, accepted.device)
    index = response_index.long()
    if index.numel() and int(index.min()) < 0:
        raise ValueError(f"response_index holds a negative response {int(index.min())}")
    top = int(index.max()) + 1 if index.numel() else 0
    R = top if num_responses is None else int(num_responses)
    if R < top:
        raise ValueError(f"response_index refers to response {top - 1} but num_responses={R}")
    n_claims = torch.bincount(index, minlength=R)
    n_rejected = torch.bincount(index, weights=(~accepted).to(torch.float64), minlength=R).to(torch.int64)
    return ResponseScores(-n_rejected.to(torch.float32), n_claims, n_rejected)
