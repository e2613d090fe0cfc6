"""Test helpers: random inputs in awkward layouts, and the float64 oracle with the accuracy rule (errors relative to
the size of the terms: |logit| + lse per token)."""

from __future__ import annotations

import torch

from rlaifv_fast.ops import reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_logits(B, T, V, dtype=torch.float32, layout="contiguous", scale=3.0, device="cpu"):
    """Logits with unit stride on V and the requested layout on B and T: contiguous, strided (every other position
    of a wider, padded buffer) or transposed (a (T, B, V) buffer seen as (B, T, V))."""
    if layout == "contiguous":
        x = (torch.randn(B, T, V, device=device) * scale).to(dtype)
    elif layout == "strided":
        x = (torch.randn(B, 2 * T, V + 3, device=device) * scale).to(dtype)[:, ::2, :V]
    elif layout == "transposed":
        x = (torch.randn(T, B, V, device=device) * scale).to(dtype).transpose(0, 1)
    else:
        raise ValueError(layout)
    return x


def make_labels(B, T, V, masked_fraction=0.2, ignore_index=-100, dtype=torch.int64, device="cpu"):
    y = torch.randint(0, V, (B, T), device=device)
    mask = torch.rand(B, T, device=device) < masked_fraction
    return torch.where(mask, torch.full_like(y, ignore_index), y).to(dtype)


def _lse64(x):
    """log sum exp over the last dimension in float64, written out (max shift, exp, sum, log): no log_softmax or
    logsumexp, so the oracle shares no code with rlaifv_fast.ops.reference. A NaN or +inf anywhere in a row makes
    that row NaN (inf - inf), as the ops' contract says."""
    m = x.max(dim=-1, keepdim=True).values
    return (m + torch.log(torch.exp(x - m).sum(dim=-1, keepdim=True))).squeeze(-1)


def head_logits64(hidden, weight, bias=None, *, logit_scale=1.0, softcap=None):
    """A model head's logits in float64, written out: softcap * tanh(logit_scale * (h W^T + b) / softcap), or
    logit_scale * (h W^T + b) without soft-capping (float64 inputs keep their autograd graph)."""
    a = hidden.double() @ weight.double().T
    if bias is not None:
        a = a + bias.double()
    a = a * logit_scale
    return softcap * torch.tanh(a / softcap) if softcap is not None else a


def head_slope64(hidden, weight, bias=None, *, logit_scale=1.0, softcap=None):
    """|d logits / d (h W^T + b)| of head_logits64, float64 (no graph): the size factor of the head's gradients."""
    with torch.no_grad():
        a = hidden.double() @ weight.double().T + (bias.double() if bias is not None else 0.0)
        if softcap is None:
            return torch.full_like(a, abs(logit_scale))
        return abs(logit_scale) / torch.cosh(logit_scale * a / softcap) ** 2


def token_logps64(logits, labels, *, shift=False, temperature=1.0, ignore_index=-100):
    """(B, T') per-token label log-probs, 0 at ignored labels, computed independently in float64."""
    x = logits.double() / temperature
    y = labels.long()
    if shift:
        x, y = x[:, :-1], y[:, 1:]
    keep = y != ignore_index
    idx = torch.where(keep, y, torch.zeros_like(y))
    picked = torch.take_along_dim(x, idx.unsqueeze(-1), dim=-1).squeeze(-1)
    return torch.where(keep, picked - _lse64(x), torch.zeros((), dtype=torch.float64)), keep


def oracle_sequence(logits, labels, *, shift=False, average=False, temperature=1.0, ignore_index=-100):
    """(sum or mean, counts, per-token) of sequence_logps, independently in float64."""
    tok, keep = token_logps64(logits, labels, shift=shift, temperature=temperature, ignore_index=ignore_index)
    counts = keep.sum(-1)
    sums = tok.sum(-1)
    return (sums / counts.clamp(min=1) if average else sums), counts, tok


def oracle_bon_rewards(policy, ref, labels, *, beta, length_normalize=True, shift=False, ignore_index=-100):
    """(rewards, counts) of bon_rewards, independently in float64; `ref` logits or per-token log-probs."""
    pol, keep = token_logps64(policy, labels, shift=shift, ignore_index=ignore_index)
    if ref.dim() == 3:
        ref_tok, _ = token_logps64(ref, labels, shift=shift, ignore_index=ignore_index)
    else:
        ref_tok = torch.where(keep, ref.double(), torch.zeros((), dtype=torch.float64))
    counts = keep.sum(-1)
    total = (pol - ref_tok).sum(-1)
    return beta * (total / counts.clamp(min=1) if length_normalize else total), counts


def oracle_yes_no(z, yes, no, positions=None):
    """log P(yes-set), log P(no-set) at one position per row, independently in float64."""
    x = z.double()
    if x.dim() == 3:
        B, T, _ = x.shape
        pos = torch.full((B,), T - 1) if positions is None else positions.long() % max(T, 1)
        x = x[torch.arange(B), pos]
    lse = _lse64(x)
    yes_t, no_t = torch.tensor(sorted(set(yes))), torch.tensor(sorted(set(no)))
    return _lse64(x[:, yes_t]) - lse, _lse64(x[:, no_t]) - lse


def term_scale(logits, labels, *, shift=False, temperature=1.0, ignore_index=-100):
    """Per-sequence sum of |label logit / tau| + |lse|: the size of the terms the kernel adds (the accuracy rule is
    relative to it, since a sum of large terms can cancel to a small result)."""
    tok, lse = reference.token_logps_reference(
        logits.double(), labels, ignore_index=ignore_index, shift=shift, temperature=temperature
    )
    return ((tok - lse).abs() + lse.abs()).sum(-1)


def assert_close_rel(actual, expected, scale, rtol=1e-5, what="value"):
    actual = actual.double()
    expected = expected.double()
    both_nan = torch.isnan(actual) & torch.isnan(expected)
    err = (actual - expected).abs()
    bound = rtol * (expected.abs() + scale.double()) + 1e-12
    ok = both_nan | (err <= bound) | (actual == expected)
    assert bool(ok.all()), f"{what}: max error {err[~ok].max().item():.3g} beyond bound {bound[~ok].min().item():.3g}"
