"""The chunked backend of the lm_head-fused log-probs (linear_logps.py) for CPU tensors (and any device without the
Triton kernels); it follows the contract of rlaifv_fast.ops._linear_backend.LinearKernels.

The valid tokens are cut into blocks of rows and the vocabulary into slices; one matmul writes the raw outputs
a = h W^T + b of a (rows, slice) block into a reused buffer, the transform (logit scale, soft-capping; see
_linear_backend.LogitTransform) is applied in place, and the native row-block kernels (rlaifv_fast.ops._kernels)
process the buffer:
  forward   rows_lse gives each row's lse of z over the slice; slices merge by logaddexp. The label logit is an
            indexed dot h[n] . W[y[n]] (+ b[y[n]]), transformed the same way.
  backward  rows_grad writes dz = c (onehot - softmax(z)) * inv_temp over the buffer in place from the saved
            full-row lse (rows whose label lies in another slice get no one-hot); with soft-capping it is then
            multiplied by the slope of the cap, logit_scale * sech^2(logit_scale * a / softcap), which a second
            buffer holds (computed from a before the cap overwrites it); then dh += dz W[slice], dW[slice] += dz^T h,
            db[slice] += sum dz.
Blocks are as tall as the bound allows (all valid tokens when they fit with slices of at least MIN_SLICE columns):
a per-token-chunk matmul would stream (and pack) the whole weight once per chunk, which on 2 cores made 64-row
chunks ~2x slower than one large matmul, while a tall block reads each weight slice once.

The (N, V) logits never exist. Extra memory: the logits buffers (one, or two halves with soft-capping in the
backward: together at most CHUNK_BYTES), the fp32 gradients asked for, row-sized vectors, and, for weights not in
the accumulation dtype (bf16/fp16: computed in fp32) or not readable by BLAS as they are, one converted copy of the
weight. Masked tokens are dropped before any matmul (on the CPU, finding them costs no synchronisation).
"""

from __future__ import annotations

import torch

from . import _kernels
from ._linear_backend import LogitTransform

CHUNK_BYTES = 4 << 20
"""The bound on the logits buffers (rows x slice x element size, both buffers together where there are two). 4 MiB
keeps the CPU benchmark's extra memory under 5% of the plain path's (B2 T256 H512 V32000 fp32); larger buffers mean
fewer, larger matmuls (fewer OpenMP fork/joins, which cost most on a loaded machine)."""

CUDA_CHUNK_BYTES = 512 << 20
"""The bound on CUDA tensors (the chunked path serves CUDA only without triton, for fp64, or when forced): a GPU
needs large matmuls, and 512 MiB is still far below the tens of GB of a large-vocabulary batch's logits."""

MIN_SLICE = 256
"""Vocabulary slices are at least this wide (or V): blocks lose rows before slices get narrower."""


def _blocks(n: int, V: int, dtype: torch.dtype, device: torch.device | None = None, buffers: int = 1
            ) -> tuple[int, int]:
    """(rows per block, columns per slice) with `buffers` * rows * columns * element size <= the device's bound (at
    least 1 x 1)."""
    size = torch.empty((), dtype=dtype).element_size()
    bound = CUDA_CHUNK_BYTES if device is not None and device.type == "cuda" else CHUNK_BYTES
    cells = max(1, bound // (size * buffers))
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


def _row_lse(h: torch.Tensor, w: torch.Tensor, bias, transform: LogitTransform, buf: torch.Tensor, cols: int):
    """lse over the full vocabulary of z for the rows h, slice by slice through the native row-block kernel."""
    V = w.shape[0]
    lse = None
    for v0 in range(0, V, cols):
        v1 = min(v0 + cols, V)
        z = transform.cap_(_block_logits(buf, h, w, bias, v0, v1))
        part = _kernels.rows_lse(z, transform.inv_temp)
        lse = part if lse is None else torch.logaddexp(lse, part)
    return lse


def token_logps(hidden, weight, bias, labels, ignore_index: int, transform: LogitTransform):
    """(per-token log-probs, lse) on the (B, T') label grid (zero where masked), and the first invalid flat position
    or None. `hidden` (B, T', H) and `labels` are already aligned (shifted views)."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    acc = _kernels.acc_dtype(hidden.dtype)
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
    lse_v = torch.cat([_row_lse(tokens.h[s : s + rows], w, b, transform, buf, cols)
                       for s in range(0, tokens.n, rows)])
    tok_v = transform.cap_(_label_logits(tokens, w, b, acc)).mul_(transform.inv_temp) - lse_v
    tok.view(-1)[tokens.flat] = tok_v
    lse.view(-1)[tokens.flat] = lse_v
    return tok, lse, None


def row_lse(hidden2d, weight, bias, transform: LogitTransform):
    """lse of z over the full vocabulary for every row of (N, H) hidden states, accumulation dtype (N,)."""
    N, H = hidden2d.shape
    V = weight.shape[0]
    acc = _kernels.acc_dtype(hidden2d.dtype)
    w = _blas_weight(weight, acc)
    b = bias.to(acc) if bias is not None else None
    rows, cols = _blocks(N, V, acc, hidden2d.device)
    buf = torch.empty((rows * cols,), dtype=acc, device=hidden2d.device)
    return torch.cat([_row_lse(hidden2d[s : s + rows].to(acc), w, b, transform, buf, cols)
                      for s in range(0, N, rows)])


def token_logps_backward(grad, hidden, weight, bias, labels, lse, ignore_index: int, transform: LogitTransform,
                         need_dh: bool, need_dw: bool, need_db: bool):
    """(dh (B, T', H), dW (V, H), db (V,)) in the accumulation dtype (None where not needed) of sum grad * l."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    acc = _kernels.acc_dtype(hidden.dtype)
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
    coef = grad.to(acc)[tokens.index].contiguous()
    lse_v = lse.to(acc)[tokens.index].contiguous()
    capped = transform.softcap is not None
    rows, cols = _blocks(tokens.n, V, acc, hidden.device, buffers=2 if capped else 1)
    buf = torch.empty((rows * cols,), dtype=acc, device=dev)
    slope_buf = torch.empty((rows * cols,), dtype=acc, device=dev) if capped else None
    dh_v = torch.zeros((tokens.n, H), dtype=acc, device=dev) if need_dh else None
    for s in range(0, tokens.n, rows):
        e = min(s + rows, tokens.n)
        h, y, c, l = tokens.h[s:e], tokens.y[s:e], coef[s:e], lse_v[s:e]
        for v0 in range(0, V, cols):
            v1 = min(v0 + cols, V)
            z = _block_logits(buf, h, w, b, v0, v1)
            slope = transform.cap_slope(z, slope_buf[: z.numel()].view(z.shape)) if capped else None
            transform.cap_(z)
            local = torch.where((y >= v0) & (y < v1), y - v0, -1)  # -1: the label lies in another slice
            # dz = c (onehot - softmax(z)) * inv_temp, written over the logits (full-row lse), then the cap's slope
            _kernels.rows_grad(c, z, local, l, transform.inv_temp, z)
            if slope is not None:
                z.mul_(slope)
            if need_dh:
                dh_v[s:e].addmm_(z, w[v0:v1])
            if need_dw:
                dw[v0:v1].addmm_(z.t(), h)
            if need_db:
                db[v0:v1] += z.sum(0)
    if need_dh:
        dh[tokens.index] = dh_v
    return dh, dw, db
