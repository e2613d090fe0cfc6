"""Test helpers: random inputs in awkward layouts, and the float64 oracle with the accuracy rule of ops.md."""

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


def oracle_sequence(logits, labels, **kw):
    return reference.sequence_logps_reference(logits.double(), labels, **kw)


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
