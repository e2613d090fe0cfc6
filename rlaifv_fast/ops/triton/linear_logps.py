"""Triton kernels of the lm_head-fused log-probs: label log-probs and lse straight from hidden states h (N, H) and
the lm_head weight W (V, H) (+ bias), never holding the (N, V) logits. The backend contract is
rlaifv_fast.ops._linear_backend.LinearKernels.

    a[n, v] = h[n] . W[v] + b[v]        z = softcap * tanh(s * a / softcap) / tau   (without soft-capping: s * a / tau)
    lse[n] = log sum_v exp z[n, v]      l[n] = z[n, y[n]] - lse[n]

with s the logit scale; soft-capping is a constexpr (HAS_SOFTCAP), so plain heads pay nothing for it.

Forward (`_forward_kernel`, grid (row blocks, vocabulary splits)): a (BLOCK_N, BLOCK_V) tile of z lives in registers,
built by a loop over H; an online max/sum-exp runs over the split's vocabulary tiles and each split writes one
partial (max, sum) per row, merged by a (rows, splits) logsumexp on the host side of the launch (no atomics, and the
vocabulary splits give the GPU enough programs for short batches). The label logit is an indexed dot h[n] . W[y[n]].
Only the per-token fp32 lse is saved for the backward.

Backward (`_backward_kernel`, grid (row blocks, vocabulary tiles)): recompute the tile, form
    da[n, v] = c[n] * (1[v == y[n]] - exp(z[n, v] - lse[n])) * dz/da / tau
    dz/da = s * sech^2(s * a / softcap)   (without soft-capping: s)
with c[n] the upstream gradient of token n (a per-sequence dL/dS broadcast over its tokens, divided by the count for
means), then accumulate dh += da W and dW += da^T h (and db += sum_n da) in fp32 with atomic adds.

Masked tokens (label == ignore_index) are dropped before any matmul: the host side orders the rows valid-first with a
stable sort and passes the number of valid rows as a device tensor, so a program whose row block lies past it returns
at once; there is no host synchronisation on the hot path. Rows are addressed through per-row element offsets into the
hidden states, so the causal shift (h[:, :-1] against y[:, 1:]) and any batch/time strides cost no copy.

Accumulation is fp32 for fp32/bf16/fp16 inputs (fp32 dots use IEEE precision, never TF32). Import this module only
through rlaifv_fast.ops._dispatch, which imports triton lazily; on CPU tensors the kernels run only under
TRITON_INTERPRET=1 (which must be set before this module is first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._linear_backend import LogitTransform

BLOCK_N = 32
BLOCK_V = 64
BLOCK_H = 32
"""Tile sizes in the interpreter (small: it runs each program in numpy, and the CI shapes are chosen against them)."""

GPU_BLOCKS = {"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_H": 64, "num_warps": 8}
"""Tile sizes and warps on a GPU (bf16 tiles for the tensor cores). Not tuned yet: no GPU was available when this
was written; benchmarks/bench_linear_logps.py --device cuda is the place to tune them."""

_MAX_SPLITS = 64


def _launch_config(device: torch.device) -> dict:
    if device.type == "cuda":
        return dict(GPU_BLOCKS)
    return {"BLOCK_N": BLOCK_N, "BLOCK_V": BLOCK_V, "BLOCK_H": BLOCK_H}


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b with fp32 accumulation: IEEE fp32 products when DOT_FP32 (fp32 inputs: never TF32), else the
    inputs' own tensor-core dot."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b.to(a.dtype), acc)


@triton.jit
def _tanh_sech2(x):
    """(tanh x, sech^2 x) through e = exp(-2|x|): tanh = sign(x) (1 - e) / (1 + e), sech^2 = 4e / (1 + e)^2, so a
    saturated tanh keeps the relative accuracy of its tiny slope (no 1 - tanh^2 cancellation)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t), 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _capped(a, logit_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """softcap * tanh(logit_scale * a / softcap), or logit_scale * a without soft-capping (before the temperature)."""
    u = a * logit_scale
    if HAS_SOFTCAP:
        t, _ = _tanh_sech2(u / softcap)
        u = softcap * t
    return u


@triton.jit
def _forward_kernel(
    h_ptr, row_off_ptr, count_ptr, stride_hh,
    w_ptr, stride_wv, stride_wh, b_ptr,
    y_ptr, part_m_ptr, part_s_ptr, label_z_ptr,
    H, V, v_per_split, num_splits, inv_tau, logit_scale, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, WITH_LABELS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    count = tl.load(count_ptr)
    if pid_n * BLOCK_N >= count:
        return
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < count
    h_off = tl.load(row_off_ptr + rows, mask=row_ok, other=0)
    offs_h = tl.arange(0, BLOCK_H)
    offs_v = tl.arange(0, BLOCK_V).to(tl.int64)  # 64-bit: V * H may pass 2**31

    m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_i = tl.zeros((BLOCK_N,), tl.float32)
    v_lo = pid_s * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        vs = v0 + offs_v
        v_ok = vs < v_hi
        z = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + offs_h
            k_ok = ks < H
            h = tl.load(h_ptr + h_off[:, None] + ks[None, :] * stride_hh, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            w = tl.load(w_ptr + vs[:, None] * stride_wv + ks[None, :] * stride_wh, mask=v_ok[:, None] & k_ok[None, :],
                        other=0.0)
            z = _dot(h, tl.trans(w), z, DOT_FP32)
        if HAS_BIAS:
            z += tl.load(b_ptr + vs, mask=v_ok, other=0.0).to(tl.float32)[None, :]
        z = tl.where(v_ok[None, :], _capped(z, logit_scale, softcap, HAS_SOFTCAP) * inv_tau, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        # every tile holds at least one real column, so m_new is -inf only for a row of -inf logits (NaN, as wanted)
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m_i = m_new
    tl.store(part_m_ptr + rows * num_splits + pid_s, m_i, mask=row_ok)
    tl.store(part_s_ptr + rows * num_splits + pid_s, s_i, mask=row_ok)

    if WITH_LABELS:
        if pid_s == 0:
            # the label logit: an indexed dot h[n] . W[y[n]] (+ b[y[n]])
            y = tl.load(y_ptr + rows, mask=row_ok, other=0).to(tl.int64)
            acc = tl.zeros((BLOCK_N,), tl.float32)
            for k0 in range(0, H, BLOCK_H):
                ks = k0 + offs_h
                k_ok = ks < H
                tile_ok = row_ok[:, None] & k_ok[None, :]
                h = tl.load(h_ptr + h_off[:, None] + ks[None, :] * stride_hh, mask=tile_ok, other=0.0)
                w = tl.load(w_ptr + y[:, None] * stride_wv + ks[None, :] * stride_wh, mask=tile_ok, other=0.0)
                acc += tl.sum(h.to(tl.float32) * w.to(tl.float32), axis=1)
            if HAS_BIAS:
                acc += tl.load(b_ptr + y, mask=row_ok, other=0.0).to(tl.float32)
            tl.store(label_z_ptr + rows, _capped(acc, logit_scale, softcap, HAS_SOFTCAP) * inv_tau, mask=row_ok)


@triton.jit
def _backward_kernel(
    h_ptr, row_off_ptr, count_ptr, stride_hh,
    w_ptr, stride_wv, stride_wh, b_ptr,
    y_ptr, lse_ptr, coef_ptr,
    dh_ptr, dw_ptr, db_ptr,
    H, V, inv_tau, logit_scale, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    DOT_FP32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    count = tl.load(count_ptr)
    if pid_n * BLOCK_N >= count:
        return
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < count
    h_off = tl.load(row_off_ptr + rows, mask=row_ok, other=0)
    offs_h = tl.arange(0, BLOCK_H)
    vs = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)  # 64-bit: V * H may pass 2**31
    v_ok = vs < V

    z = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + offs_h
        k_ok = ks < H
        h = tl.load(h_ptr + h_off[:, None] + ks[None, :] * stride_hh, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + vs[:, None] * stride_wv + ks[None, :] * stride_wh, mask=v_ok[:, None] & k_ok[None, :],
                    other=0.0)
        z = _dot(h, tl.trans(w), z, DOT_FP32)
    if HAS_BIAS:
        z += tl.load(b_ptr + vs, mask=v_ok, other=0.0).to(tl.float32)[None, :]
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0) * inv_tau
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    u = z * logit_scale
    if HAS_SOFTCAP:
        t, sech2 = _tanh_sech2(u / softcap)
        p = tl.exp(softcap * t * inv_tau - lse[:, None])
        coef_v = coef[:, None] * (logit_scale * sech2)  # the cap's slope dz/da, per entry
    else:
        p = tl.exp(u * inv_tau - lse[:, None])
        coef_v = coef[:, None] * logit_scale
    onehot = (vs[None, :] == y[:, None]).to(tl.float32)
    dz = coef_v * (onehot - p)
    dz = tl.where(row_ok[:, None] & v_ok[None, :], dz, 0.0)

    if NEED_DB:
        tl.atomic_add(db_ptr + vs, tl.sum(dz, axis=0), mask=v_ok)
    if NEED_DH or NEED_DW:
        dz_in = dz if DOT_FP32 else dz.to(h_ptr.dtype.element_ty)
        zero_h = tl.zeros((BLOCK_N, BLOCK_H), tl.float32)
        zero_w = tl.zeros((BLOCK_V, BLOCK_H), tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + offs_h
            k_ok = ks < H
            if NEED_DH:
                w = tl.load(w_ptr + vs[:, None] * stride_wv + ks[None, :] * stride_wh,
                            mask=v_ok[:, None] & k_ok[None, :], other=0.0)
                dh = _dot(dz_in, w, zero_h, DOT_FP32)
                tl.atomic_add(dh_ptr + rows.to(tl.int64)[:, None] * H + ks[None, :], dh,
                              mask=row_ok[:, None] & k_ok[None, :])
            if NEED_DW:
                h = tl.load(h_ptr + h_off[:, None] + ks[None, :] * stride_hh, mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0)
                dw = _dot(tl.trans(dz_in), h, zero_w, DOT_FP32)
                tl.atomic_add(dw_ptr + vs[:, None] * H + ks[None, :], dw, mask=v_ok[:, None] & k_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------------
# host side: row compaction and launches (device tensors only, no host synchronisation)


_INTERPRETED = not isinstance(_forward_kernel, triton.runtime.JITFunction)
"""Whether the kernels were decorated under TRITON_INTERPRET=1 (then they run in numpy on CPU tensors)."""


def _dot_fp32(dtype: torch.dtype) -> bool:
    # Triton's interpreter multiplies bf16 tiles as their raw uint16 bits (numpy has no bf16): there the tiles are
    # upcast first, which gives the same products (bf16 x bf16 is exact in fp32).
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _INTERPRETED)


class Rows:
    """The valid tokens of a (B, T') label grid, ordered valid-first: `order` (B*T',) flat label-grid positions,
    `count` a 1-element device tensor, `h_off` element offsets of the matching hidden rows, `labels` (B*T',) int32
    labels in that order (masked and out-of-range entries replaced by 0: the kernels never read out of bounds)."""

    def __init__(self, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int, V: int):
        B, T, _ = hidden.shape
        flat = labels.reshape(-1)
        valid = flat != ignore_index
        self.order = torch.argsort((~valid).to(torch.int8), stable=True)
        self.count = valid.sum().to(torch.int32).reshape(1)
        pos = torch.arange(B * T, device=hidden.device)
        offsets = (pos // max(T, 1)) * hidden.stride(0) + (pos % max(T, 1)) * hidden.stride(1)
        self.h_off = offsets[self.order].contiguous()
        y = flat[self.order]
        in_range = (y >= 0) & (y < V)
        self.labels = torch.where(valid[self.order] & in_range, y, 0).to(torch.int32).contiguous()
        self.n = B * T


def _launch_forward(h, rows: Rows, weight, bias, transform: LogitTransform, with_labels: bool):
    N = rows.n
    V, H = weight.shape
    dev = h.device
    cfg = _launch_config(h.device)
    n_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    # enough programs to fill a GPU when the batch is short; each split covers whole vocabulary tiles
    splits = max(1, min(_MAX_SPLITS, triton.cdiv(V, cfg["BLOCK_V"]), triton.cdiv(264, n_blocks)))
    v_per_split = triton.cdiv(triton.cdiv(V, splits), cfg["BLOCK_V"]) * cfg["BLOCK_V"]
    splits = triton.cdiv(V, v_per_split)
    part_m = torch.empty((N, splits), dtype=torch.float32, device=dev)
    part_s = torch.empty_like(part_m)
    label_z = torch.empty((N,), dtype=torch.float32, device=dev)
    _forward_kernel[(n_blocks, splits)](
        h, rows.h_off, rows.count, h.stride(2),
        weight, weight.stride(0), weight.stride(1), bias if bias is not None else weight,
        rows.labels, part_m, part_s, label_z,
        H, V, v_per_split, splits, *_scalars(transform),
        HAS_BIAS=bias is not None, HAS_SOFTCAP=transform.softcap is not None, WITH_LABELS=with_labels,
        DOT_FP32=_dot_fp32(h.dtype), **cfg,
    )
    lse = torch.logsumexp(part_m + torch.log(part_s), dim=1)
    return lse, label_z


def _scalars(transform: LogitTransform) -> tuple[float, float, float]:
    """(inv_tau, logit_scale, softcap) kernel arguments (softcap 1.0 when off: never read then)."""
    return 1.0 / transform.temperature, transform.logit_scale, transform.softcap or 1.0


def token_logps(hidden, weight, bias, labels, ignore_index: int, transform: LogitTransform):
    """Per-token log-probs and lse (B, T') fp32 (zero where masked) for aligned hidden (B, T', H) and labels
    (B, T'), and None; or (None, None, the first flat position with an invalid label), found after the launches by
    the one host synchronisation (the kernels never read out of bounds)."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    rows = Rows(hidden, labels, ignore_index, V)
    valid_sorted = torch.arange(rows.n, device=hidden.device) < rows.count
    lse, label_z = _launch_forward(hidden, rows, weight, bias, transform, True)
    tok = torch.zeros(rows.n, dtype=torch.float32, device=hidden.device)
    lse_out = torch.zeros_like(tok)
    tok.index_copy_(0, rows.order, torch.where(valid_sorted, label_z - lse, 0.0))
    lse_out.index_copy_(0, rows.order, torch.where(valid_sorted, lse, 0.0))
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        return None, None, int(bad.reshape(-1).nonzero()[0])
    return tok.view(B, T), lse_out.view(B, T), None


def row_lse(hidden2d, weight, bias, transform: LogitTransform):
    """lse of z over the full vocabulary for every row of (N, H) hidden states, fp32 (N,)."""
    h = hidden2d.unsqueeze(1)
    labels = torch.zeros(h.shape[:2], dtype=torch.int64, device=h.device)
    rows = Rows(h, labels, -1, weight.shape[0])  # every row is valid and rows keep their order
    lse, _ = _launch_forward(h, rows, weight, bias, transform, False)
    return lse


def token_logps_backward(grad, hidden, weight, bias, labels, lse, ignore_index: int, transform: LogitTransform,
                         need_dh: bool, need_dw: bool, need_db: bool):
    """(dh (B, T', H) fp32 or None, dW (V, H) fp32 or None, db (V,) fp32 or None) of sum grad * l."""
    B, T, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    rows = Rows(hidden, labels, ignore_index, V)
    coef = grad.reshape(-1).to(torch.float32)[rows.order].contiguous()
    lse_sorted = lse.reshape(-1).to(torch.float32)[rows.order].contiguous()
    dh = torch.zeros((rows.n, H), dtype=torch.float32, device=dev) if need_dh else None
    dw = torch.zeros((V, H), dtype=torch.float32, device=dev) if need_dw else None
    db = torch.zeros((V,), dtype=torch.float32, device=dev) if need_db else None
    if rows.n and (need_dh or need_dw or need_db):
        dummy = lse_sorted
        cfg = _launch_config(hidden.device)
        _backward_kernel[(triton.cdiv(rows.n, cfg["BLOCK_N"]), triton.cdiv(V, cfg["BLOCK_V"]))](
            hidden, rows.h_off, rows.count, hidden.stride(2),
            weight, weight.stride(0), weight.stride(1), bias if bias is not None else weight,
            rows.labels, lse_sorted, coef,
            dh if need_dh else dummy, dw if need_dw else dummy, db if need_db else dummy,
            H, V, *_scalars(transform),
            HAS_BIAS=bias is not None, HAS_SOFTCAP=transform.softcap is not None,
            NEED_DH=need_dh, NEED_DW=need_dw, NEED_DB=need_db,
            DOT_FP32=_dot_fp32(hidden.dtype), **cfg,
        )
    if need_dh:
        # rows past the valid count stay zero: scatter all of them back to their label-grid positions
        out = torch.empty_like(dh)
        out.index_copy_(0, rows.order, dh)
        dh = out.view(B, T, H)
    return dh, dw, db
