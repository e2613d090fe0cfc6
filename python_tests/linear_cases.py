"""Shared checks of the lm_head-fused log-probs against the float64 oracle, used by test_linear_logps.py (chunked
path, in process) and linear_triton_interp.py (the Triton kernels under TRITON_INTERPRET=1, in a child process)."""

from __future__ import annotations

import torch

import rlaifv_fast
from rlaifv_fast.ops import reference
from oracle import (assert_close_rel, head_logits64, head_slope64, make_labels, oracle_bon_rewards, oracle_sequence,
                    oracle_yes_no, term_scale)

GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-9, torch.float64: 1e-12}
OUT_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5, torch.float64: 1e-12}


def make_head(B, T, H, V, *, dtype=torch.float32, bias=False, weight_layout="contiguous", hidden_layout="contiguous",
              flat=False):
    """(hidden, weight, bias) with exact values in `dtype`. weight_layout: contiguous, sliced (every other column of a
    wider matrix: a non-contiguous view), transposed (a (H, V) buffer seen as (V, H)). hidden_layout: contiguous or
    strided (every other position of a longer sequence)."""
    if flat:
        hidden = torch.randn(B, H).to(dtype)
    elif hidden_layout == "strided":
        hidden = torch.randn(B, 2 * T, H).to(dtype)[:, ::2]
    else:
        hidden = torch.randn(B, T, H).to(dtype)
    scale = 1.5 / max(H, 1) ** 0.5
    if weight_layout == "sliced":
        weight = (torch.randn(V, 2 * H) * scale * 2).to(dtype)[:, ::2]
    elif weight_layout == "transposed":
        weight = (torch.randn(H, V) * scale * 2).to(dtype).T
    else:
        weight = (torch.randn(V, H) * scale * 2).to(dtype)
    b = torch.randn(V).to(dtype) if bias else None
    return hidden, weight, b


def check_linear_case(B, T, H, V, *, dtype=torch.float32, masked=0.2, shift=False, average=False, temperature=1.0,
                      bias=False, per_token=False, weight_layout="contiguous", hidden_layout="contiguous",
                      flat=False, weight_grad=True, all_masked_rows=(), label_dtype=torch.int64, device="cpu",
                      logit_scale=1.0, softcap=None, backend="auto"):
    """Outputs and gradients (hidden, weight, bias) of linear_sequence_logps against the float64 oracle on the head's
    logits (oracle.head_logits64: hidden @ weight.T + bias, logit scale, soft-capping), with a random upstream
    gradient per sequence (and per token when per_token)."""
    hidden, weight, b = make_head(B, T, H, V, dtype=dtype, bias=bias, weight_layout=weight_layout,
                                  hidden_layout=hidden_layout, flat=flat)
    labels = make_labels(B, 1 if flat else T, V, masked_fraction=masked, dtype=label_dtype)
    for row in all_masked_rows:
        labels[row] = -100
    if flat:
        labels = labels[:, 0]
    g = torch.randn(B, dtype=torch.float64)
    g_tok = None

    # oracle: float64 on the exact input values
    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = b.detach().double().requires_grad_(True) if b is not None else None
    z64 = head_logits64(h64, w64, b64, logit_scale=logit_scale, softcap=softcap)
    z3 = z64.unsqueeze(1) if flat else z64
    y3 = labels.unsqueeze(1) if flat else labels
    want, want_n, want_tok = oracle_sequence(z3, y3, shift=shift, average=average, temperature=temperature)
    loss64 = (want * g).sum()
    if per_token:
        g_tok = torch.randn(want_tok.shape, dtype=torch.float64)
        loss64 = loss64 + (want_tok * g_tok).sum()
    loss64.backward()

    hs = hidden.detach().to(device).requires_grad_(True)
    ws = weight.detach().to(device).requires_grad_(weight_grad)
    bs = b.detach().to(device).requires_grad_(True) if b is not None else None
    got = rlaifv_fast.linear_sequence_logps(hs, ws, labels.to(device), bias=bs, shift=shift, average=average,
                                            temperature=temperature, return_per_token=per_token,
                                            logit_scale=logit_scale, softcap=softcap, backend=backend)
    got = type(got)(*(t.cpu() if t is not None else None for t in got))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.logps.dtype == acc and got.counts.dtype == torch.int64
    assert got.logps.shape == (B,)
    assert torch.equal(got.counts, want_n)
    scale = term_scale(z3.detach(), y3, shift=shift, temperature=temperature)
    if average:
        scale = scale / want_n.clamp(min=1)
    assert_close_rel(got.logps, want.detach(), scale, rtol=OUT_RTOL[dtype], what="logps")
    for row in all_masked_rows:
        assert got.logps[row].item() == 0.0
    if per_token:
        want_tok_flat = want_tok.detach()[:, 0] if flat else want_tok.detach()
        assert got.per_token.shape == want_tok_flat.shape
        tok64, lse64 = reference.token_logps_reference(z3.detach(), y3, shift=shift, temperature=temperature)
        tok_scale = (tok64 - lse64).abs() + lse64.abs()  # |z_y / tau| + |lse| per token
        tok_scale = tok_scale[:, 0] if flat else tok_scale
        assert_close_rel(got.per_token, want_tok_flat, tok_scale, rtol=OUT_RTOL[dtype], what="per_token")

    if B == 0 or (not flat and T - int(shift) <= 0):
        return
    loss = (got.logps.double() * g).sum()
    if per_token:
        loss = loss + (got.per_token.double() * (g_tok[:, 0] if flat else g_tok)).sum()
    loss.backward()
    grads = [t.grad.cpu() if t is not None and t.grad is not None else None for t in (hs, ws, bs)]

    # error bounds relative to the size of the summed terms: |dz| against |W|, |h| and 1
    with torch.no_grad():
        x = z3.detach() / temperature
        if shift:
            x, yy = x[:, :-1], y3[:, 1:]
        else:
            yy = y3
        mask = yy != -100
        coef = g.view(-1, 1) / (want_n.clamp(min=1).view(-1, 1) if average else 1.0)
        coef = coef.expand(mask.shape)
        if per_token:
            coef = coef + g_tok
        p = torch.softmax(x, -1)
        onehot = torch.nn.functional.one_hot(yy.clamp(min=0).long(), V)
        dz_abs = (coef.abs() * mask).unsqueeze(-1) * (p + onehot) / temperature
        slope = head_slope64(hidden, weight, b, logit_scale=logit_scale, softcap=softcap)
        slope = slope.unsqueeze(1) if flat else slope
        dz_abs = dz_abs * (slope[:, :-1] if shift else slope)
        if shift:
            dz_abs = torch.cat([dz_abs, torch.zeros_like(dz_abs[:, :1])], 1)
        dz_abs = dz_abs.reshape(-1, V)
        h_rows = h64.detach().reshape(-1, H)
        scale_h = dz_abs @ w64.detach().abs()
        scale_w = dz_abs.T @ h_rows.abs()
        scale_b = dz_abs.sum(0)
    rtol = GRAD_RTOL[dtype]
    dh, dw, db = grads
    assert dh.dtype == dtype and dh.shape == hidden.shape
    assert_close_rel(dh.reshape(-1, H), h64.grad.reshape(-1, H), scale_h, rtol=rtol, what="d_hidden")
    if weight_grad:
        assert dw.dtype == dtype and dw.shape == weight.shape
        assert_close_rel(dw, w64.grad, scale_w, rtol=rtol, what="d_weight")
    else:
        assert dw is None
    if bs is not None:
        assert db.dtype == dtype
        assert_close_rel(db, b64.grad, scale_b, rtol=rtol, what="d_bias")
    for row in all_masked_rows:
        assert dh[row].abs().max().item() == 0.0


def check_yes_no_case(B, H, V, *, dtype=torch.float32, bias=False, weight_layout="contiguous", logit_scale=1.0,
                      softcap=None, backend="auto"):
    hidden, weight, b = make_head(B, 1, H, V, dtype=dtype, bias=bias, weight_layout=weight_layout, flat=True)
    yes, no = [0, V // 2], [V - 1]
    if V < 3:
        yes, no = [0], [V - 1]
    got = rlaifv_fast.linear_yes_no_logprobs(hidden, weight, yes, no, bias=b, logit_scale=logit_scale, softcap=softcap,
                                             backend=backend)
    z = head_logits64(hidden, weight, b, logit_scale=logit_scale, softcap=softcap)
    want_y, want_n = oracle_yes_no(z, yes, no)
    lse = torch.logsumexp(z, -1)
    scale = lse.abs() + z.abs().max(-1).values
    assert_close_rel(got.logp_yes, want_y, scale, what="logp_yes")
    assert_close_rel(got.logp_no, want_n, scale, what="logp_no")
    assert torch.equal(got.accepted, got.logp_yes > got.logp_no)


def check_bon_case(N, T, H, V, *, dtype=torch.float32, shift=True, length_normalize=True, ref_as_logps=False,
                   logit_scale=1.0, softcap=None, ref_head=None, backend="auto"):
    """ref_head: (ref_logit_scale, ref_softcap) of the reference, or None for the policy's (the op's default)."""
    hp, wp, _ = make_head(N, T, H, V, dtype=dtype)
    hr, wr, _ = make_head(N, T, H + 3, V, dtype=dtype, weight_layout="sliced")
    labels = make_labels(N, T, V, masked_fraction=0.3)
    ref_scale, ref_cap = ref_head if ref_head is not None else (logit_scale, softcap)
    zp = head_logits64(hp, wp, logit_scale=logit_scale, softcap=softcap)
    zr = head_logits64(hr, wr, logit_scale=ref_scale, softcap=ref_cap)
    heads = {"logit_scale": logit_scale, "softcap": softcap, "backend": backend}
    if ref_as_logps:
        ref_tok = reference.token_logps_reference(zr, labels, shift=shift)[0]
        got = rlaifv_fast.linear_bon_rewards(hp, wp, labels, ref_logps=ref_tok.float(), beta=0.1, groups=2,
                                             shift=shift, length_normalize=length_normalize, **heads)
    else:
        if ref_head is not None:
            heads.update(ref_logit_scale=ref_scale, ref_softcap=ref_cap)
        got = rlaifv_fast.linear_bon_rewards(hp, wp, labels, ref_hidden=hr, ref_weight=wr, beta=0.1, groups=2,
                                             shift=shift, length_normalize=length_normalize, **heads)
    want, counts = oracle_bon_rewards(zp, zr, labels, beta=0.1, shift=shift, length_normalize=length_normalize)
    assert torch.equal(got.counts, counts)
    scale = 0.1 * (term_scale(zp, labels, shift=shift) + term_scale(zr, labels, shift=shift))
    if length_normalize:
        scale = scale / counts.clamp(min=1)
    assert_close_rel(got.rewards, want, scale, what="rewards")
    # the best candidate per group, decided on the oracle's rewards where they are not within rounding of a tie
    want_best = want.view(-1, 2).argmax(1) + torch.arange(0, N, 2)
    close = (want.view(-1, 2)[:, 0] - want.view(-1, 2)[:, 1]).abs() <= 1e-4 * scale.view(-1, 2).max(1).values
    assert torch.equal(got.best[~close], want_best[~close])
