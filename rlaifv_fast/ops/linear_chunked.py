"""The chunked backend of the lm_head-fused log-probs (linear_logps.py) for CPU tensors (and any device without the
Triton kernels).

The valid tokens are cut into blocks of rows and the vocabulary into slices; one matmul writes the logits of a
(rows, slice) block into a reused buffer of at most CHUNK_BYTES, and the sequence_logps kernels of the dispatch point
process that buffer:
  forward   the native forward kernel gives each row's lse over the slice (labels pointed at column 0, so every row
            counts); slices merge by logaddexp. The label logit is an indexed dot h[n] . W[y[n]] (+ b[y[n]]).
  backward  the native backward kernel writes dz = c (onehot - softmax(z / tau)) / tau over the buffer in place from
            the saved full-row lse (rows whose label lies outside the slice get their column-0 one-hot taken back),
            then dh += dz W[slice], dW[slice] += dz^T h, db[slice] += sum dz.
Blocks are as tall as the bound allows (all valid tokens when they fit with slices of at least MIN_SLICE columns):
a per-token-chunk matmul would stream (and pack) the whole weight once per chunk, which on 2 cores made 64-row
chunks ~2x slower than one large matmul, while a tall block reads each weight slice once.

The (N, V) logits never exist. Extra memory: the buffer, the fp32 gradients asked for, row-sized vectors, and, for
weights not in the accumulation dtype (bf16/fp16: computed in fp32) or not readable by BLAS as they are, one
converted copy of the weight. Masked tokens are dropped before any matmul (on the CPU, finding them costs no
synchronisation).
"""

from __future__ import annotations

import torch

from . import _dispatch

CHUNK_BYTES = 4 << 20
"""The bound on the logits buffer (rows x slice x element size). 4 MiB keeps the CPU benchmark's extra memory under
5% of the plain path's (B2 T256 H512 V32000 fp32); larger buffers mean fewer, larger matmuls (fewer OpenMP
fork/joins, which cost most on a loaded machine)."""

CUDA_CHUNK_BYTES = 512 << 20
"""The bound on CUDA tensors (the chunked path serves CUDA only without triton, for fp64, or when forced): a GPU
needs large matmuls, and 512 MiB is still far below the tens of GB of a large-vocabulary batch's logits."""

MIN_SLICE = 256
"""Vocabulary slices are at least this wide (or V): blocks lose rows before slices get narrower."""

_NATIVE_IGNORE = -1  # local labels lie in [0, slice): -1 never masks one, whatever the caller's ignore_index


def _blocks(n: int, V: int, dtype: torch.dtype, device: torch.device | None = None) -> tuple[int, int]:
    """(rows per block, columns per slice) with rows * columns * element size <= the device's bound (at least
    1 x 1)."""
    size = torch.empty((), dtype=dtype).element_size()
    bound = CUDA_CHUNK_BYTES if device is not None and device.type == "cuda" else CHUNK_BYTES
    cells = max(1, bound // size)
    cols = min(V, max(MIN_SLICE, cells // max(n, 1)))
    cols = min(cols, cells)
    rows = max(1, min(n, cells // cols))
    return rows, cols


def _blas_weight(weight: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """The weight as the matmuls can read it: as is when it is already of the accumulation dtype with one unit
    stride (any view of a (V, H) matrix or of its transpose), else one converted contiguous copy."""
    if weight.dtype == acc and (weight.stride(1) == 1 or weight.stride(0) == 1):
        return weight
    return weight.to(acc).contiguous()


class _Tokens:
    """The valid tokens of an aligned (B, T', H) / (B, T') pair: flat label-grid positions, hidden rows (gathered in
    the accumulation dtype: an (n, H) copy, activation-sized), labels."""

    def __init__(self, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int, acc: torch.dtype):
        B, T = labels.shape
        self.flat = (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)
        b = torch.div(self.flat, max(T, 1), rounding_mode="floor")
        t = self.flat - b * T
        self.index = (b, t)
        self.n = self.flat.numel()
        self.h = hidden[b, t].to(acc)
        self.y = labels[b, t].long()


def _label_logits(tokens: _Tokens, w: torch.Tensor, bias, acc: torch.dtype) -> torch.Tensor:
    """h[n] . W[y[n]] (+ b[y[n]]) by an indexed dot, in blocks whose gathered weight rows stay within the bound."""
    n, H = tokens.h.shape
    out = torch.empty((n,), dtype=acc, device=tokens.h.device)
    step = max(1, CHUNK_BYTES // (max(H, 1) * torch.empty((), dtype=acc).element_size()))
    for s in range(0, n, step):
        e = min(s + step, n)
        y = tokens.y[s:e]
        out[s:e] = (tokens.h[s:e] * w[y].to(acc)).sum(-1)
        if bias is not None:
            out[s:e] += bias[y]
    return out


def _block_logits(buf: torch.Tensor, h: torch.Tensor, w: torch.Tensor, bias, v0: int, v1: int) -> torch.Tensor:
    """The (rows, v1 - v0) logits of hidden rows h into the front of the flat buffer (contiguous)."""
    z = buf[: h.shape[0] * (v1 - v0)].view(h.shape[0], v1 - v0)
    if bias is not None:
        torch.addmm(bias[v0:v1], h, w[v0:v1].t(), out=z)
    else:
        torch.mm(h, w[v0:v1].t(), out=z)
    return z


def _row_lse(h: torch.Tensor, w: torch.Tensor, bias, temperature: float, buf: torch.Tensor, cols: int):
    """lse over the full vocabulary of z / tau for the rows h, slice by slice through the native forward kernel."""
    V = w.shape[0]
    n = h.shape[0]
    lse = None
    zeros = torch.zeros((1, n), dtype=torch.int64, device=h.device)  # every row counts; the label is not used
    for v0 in range(0, V, cols):
        v1 = min(v0 + cols, V)
        z = _block_logits(buf, h, w, bias, v0, v1)
        _, part, _ = _dispatch.token_logps(z.unsqueeze(0), zeros, _NATIVE_IGNORE, False, temperature)
        lse = part[0] if lse is None else torch.logaddexp(lse, part[0])
    return lse


def token_logps(hidden, weight, bias, labels, ignore_index: int, temperature: float):
    """(per-token log-probs, lse) on the (B, T') label grid (zero where masked), and the first invalid flat position
    or None. `hidden` (B, T', H) and `labels` are already aligned (shifted views)."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    acc = _dispatch.acc_dtype(hidden.dtype)
    tok = torch.zeros((B, T), dtype=acc, device=hidden.device)
    lse = torch.zeros_like(tok)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        return None, None, int(bad.reshape(-1).nonzero()[0])
    tokens = _Tokens(hidden, labels, ignore_index, acc)
    if tokens.n == 0:
        return tok, lse, None
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    rows, cols = _blocks(tokens.n, V, acc, hidden.device)
    buf = torch.empty((rows * cols,), dtype=acc, device=hidden.device)
    lse_v = torch.cat([_row_lse(tokens.h[s : s + rows], w, b, temperature, buf, cols)
                       for s in range(0, tokens.n, rows)])
    tok_v = _label_logits(tokens, w, b, acc) / temperature - lse_v
    tok.view(-1)[tokens.flat] = tok_v
    lse.view(-1)[tokens.flat] = lse_v
    return tok, lse, None


def row_lse(hidden2d, weight, bias):
    """lse over the full vocabulary of every row of (N, H) hidden states (temperature 1), accumulation dtype (N,)."""
    N, H = hidden2d.shape
    V = weight.shape[0]
    acc = _dispatch.acc_dtype(hidden2d.dtype)
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    rows, cols = _blocks(N, V, acc, hidden2d.device)
    buf = torch.empty((rows * cols,), dtype=acc, device=hidden2d.device)
    return torch.cat([_row_lse(hidden2d[s : s + rows].to(acc), w, b, 1.0, buf, cols) for s in range(0, N, rows)])


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
    if not (need_dh or need_dw or need_db):
        return dh, dw, db
    tokens = _Tokens(hidden, labels, ignore_index, acc)
    if tokens.n == 0:
        return dh, dw, db
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    coef = grad.to(acc)[tokens.index]
    lse_v = lse.to(acc)[tokens.index]
    inv_tau = 1.0 / temperature
    rows, cols = _blocks(tokens.n, V, acc, hidden.device)
    buf = torch.empty((rows * cols,), dtype=acc, device=dev)
    dh_v = torch.zeros((tokens.n, H), dtype=acc, device=dev) if need_dh else None
    for s in range(0, tokens.n, rows):
        e = min(s + rows, tokens.n)
        h, y, c, l = tokens.h[s:e], tokens.y[s:e], coef[s:e].unsqueeze(0), lse_v[s:e].unsqueeze(0)
        for v0 in range(0, V, cols):
            v1 = min(v0 + cols, V)
            z = _block_logits(buf, h, w, b, v0, v1)
            inside = (y >= v0) & (y < v1)
            local = torch.where(inside, y - v0, 0)
            outside = (~inside).nonzero().squeeze(1)
            z0 = z[outside, 0]  # the logits the kernel will take for labels: kept to rewrite that column exactly
            # dz = c (onehot - softmax) / tau, written over the logits by the sequence_logps kernel (full-row lse)
            _dispatch.token_logps_backward(c, z.unsqueeze(0), local.unsqueeze(0), l, _NATIVE_IGNORE, False,
                                           temperature, z.unsqueeze(0))
            # rows whose label lies in another slice: no one-hot here (recomputed, not subtracted, so a tiny
            # softmax term keeps its relative accuracy)
            z[outside, 0] = -c[0, outside] * torch.exp(z0 * inv_tau - l[0, outside]) * inv_tau
            if need_dh:
                dh_v[s:e].addmm_(z, w[v0:v1])
            if need_dw:
                dw[v0:v1].addmm_(z.t(), h)
            if need_db:
                db[v0:v1] += z.sum(0)
    if need_dh:
        dh[tokens.index] = dh_v
    return dh, dw, db
