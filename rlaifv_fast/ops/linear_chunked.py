"""The chunked backend of op 4 (lm_head-fused log-probs) for CPU tensors (and any device without the Triton kernels):
the valid tokens are taken a chunk at a time, their logits computed by one matmul into a reused buffer of at most
CHUNK_BYTES, and that buffer handed to the op-1 kernels through the dispatch point (forward: label log-prob and lse;
backward: the logits gradient written over the buffer in place, then dh = dz W and dW += dz^T h). The (N, V) logits
never exist; the extra memory is one buffer, the fp32 gradients the caller asked for, and, for weights that are not
in the accumulation dtype (bf16/fp16) or not usable by BLAS as they are, one converted copy of the weight.

Masked tokens are dropped before any matmul (boolean indexing: on the CPU the host owns the data, so finding them
costs no synchronisation).
"""

from __future__ import annotations

import torch

from . import _dispatch

CHUNK_BYTES = 8 << 20
"""The bound on the logits buffer: rows per chunk = CHUNK_BYTES // (V * element size), at least one."""


def chunk_rows(V: int, dtype: torch.dtype) -> int:
    return max(1, CHUNK_BYTES // (V * torch.empty((), dtype=dtype).element_size()))


def _blas_weight(weight: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """The weight as the matmuls can read it: as is when it is already of the accumulation dtype with one unit
    stride (any view of a (V, H) matrix or its transpose), else one converted contiguous copy."""
    if weight.dtype == acc and (weight.stride(1) == 1 or weight.stride(0) == 1):
        return weight
    return weight.to(acc).contiguous()


class _Tokens:
    """Label-grid positions of the valid tokens, in order: flat indices into (B, T') plus their (b, t)."""

    def __init__(self, labels: torch.Tensor, ignore_index: int):
        B, T = labels.shape
        self.flat = (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)
        self.b = torch.div(self.flat, max(T, 1), rounding_mode="floor")
        self.t = self.flat - self.b * T
        self.n = self.flat.numel()


def _chunk_logits(buf, hidden, w, bias, tokens: _Tokens, start: int, stop: int, acc: torch.dtype):
    """Logits of the valid tokens start:stop into the front of the buffer; returns (logits view, their hidden rows)."""
    h = hidden[tokens.b[start:stop], tokens.t[start:stop]].to(acc)
    z = buf[: stop - start]
    if bias is not None:
        torch.addmm(bias, h, w.t(), out=z)
    else:
        torch.mm(h, w.t(), out=z)
    return z, h


def token_logps(hidden, weight, bias, labels, ignore_index: int, temperature: float):
    """(per-token log-probs, lse) on the (B, T') label grid (zero where masked), and the first invalid flat
    position or None. `hidden` (B, T', H) and `labels` are already aligned (shifted views)."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    acc = _dispatch.acc_dtype(hidden.dtype)
    tok = torch.zeros((B, T), dtype=acc, device=hidden.device)
    lse = torch.zeros_like(tok)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        return None, None, int(bad.reshape(-1).nonzero()[0])
    tokens = _Tokens(labels, ignore_index)
    if tokens.n == 0:
        return tok, lse, None
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    y = labels[tokens.b, tokens.t]
    step = chunk_rows(V, acc)
    buf = torch.empty((min(step, tokens.n), V), dtype=acc, device=hidden.device)
    tok_flat, lse_flat = tok.view(-1), lse.view(-1)
    for start in range(0, tokens.n, step):
        stop = min(start + step, tokens.n)
        z, _ = _chunk_logits(buf, hidden, w, b, tokens, start, stop, acc)
        t_c, l_c, _ = _dispatch.token_logps(z.unsqueeze(0), y[start:stop].unsqueeze(0), ignore_index, False,
                                            temperature)
        tok_flat[tokens.flat[start:stop]] = t_c[0]
        lse_flat[tokens.flat[start:stop]] = l_c[0]
    return tok, lse, None


def row_lse(hidden2d, weight, bias):
    """lse over the full vocabulary of every row of (N, H) hidden states (temperature 1), accumulation dtype (N,)."""
    N, H = hidden2d.shape
    V = weight.shape[0]
    acc = _dispatch.acc_dtype(hidden2d.dtype)
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    step = chunk_rows(V, acc)
    buf = torch.empty((min(step, max(N, 1)), V), dtype=acc, device=hidden2d.device)
    out = torch.empty((N,), dtype=acc, device=hidden2d.device)
    for start in range(0, N, step):
        stop = min(start + step, N)
        z = buf[: stop - start]
        h = hidden2d[start:stop].to(acc)
        if b is not None:
            torch.addmm(b, h, w.t(), out=z)
        else:
            torch.mm(h, w.t(), out=z)
        out[start:stop] = torch.logsumexp(z, dim=1)
    return out


def token_logps_backward(grad, hidden, weight, bias, labels, lse, ignore_index: int, temperature: float,
                         need_dh: bool, need_dw: bool, need_db: bool):
    """(dh (B, T', H), dW (V, H), db (V,)) in the accumulation dtype (None where not needed) of sum grad * l."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    acc = _dispatch.acc_dtype(hidden.dtype)
    dev = hidden.device
    dh = torch.zeros((B, T, H), dtype=acc, device=dev) if need_dh else None
    dw = torch.zeros((V, H), dtype=acc, device=dev) if need_dw else None
    db = torch.zeros((V,), dtype=acc, device=dev) if need_db else None
    tokens = _Tokens(labels, ignore_index)
    if tokens.n == 0 or not (need_dh or need_dw or need_db):
        return dh, dw, db
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    y = labels[tokens.b, tokens.t]
    coef = grad.to(acc)[tokens.b, tokens.t]
    lse_v = lse.to(acc)[tokens.b, tokens.t]
    step = chunk_rows(V, acc)
    buf = torch.empty((min(step, tokens.n), V), dtype=acc, device=dev)
    for start in range(0, tokens.n, step):
        stop = min(start + step, tokens.n)
        z, h = _chunk_logits(buf, hidden, w, b, tokens, start, stop, acc)
        zz = z.unsqueeze(0)
        # the op-1 backward kernel, writing dz = c (onehot - softmax) / tau over the logits it reads
        _dispatch.token_logps_backward(coef[start:stop].unsqueeze(0), zz, y[start:stop].unsqueeze(0),
                                       lse_v[start:stop].unsqueeze(0), ignore_index, False, temperature, zz)
        if need_dh:
            dh[tokens.b[start:stop], tokens.t[start:stop]] = z @ w
        if need_dw:
            dw.addmm_(z.t(), h)
        if need_db:
            db += z.sum(0)
    return dh, dw, db
