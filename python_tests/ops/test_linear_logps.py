"""The lm_head-fused log-probs: linear_sequence_logps / linear_yes_no_logprobs / linear_bon_rewards against the
float64 oracle on hidden @ weight.T (+ bias).

In process: the chunked CPU path (property tests at larger shapes with a small chunk bound so every call spans many
chunks, a check that no (N, V) buffer is ever allocated, torch.compile, opcheck, bad inputs). In a child process:
the Triton kernels under TRITON_INTERPRET=1 (linear_triton_interp.py). On a CUDA machine: the Triton kernels on the
GPU (marked cuda).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import rlaifv_fast
from rlaifv_fast.ops import _dispatch, linear_chunked
from rlaifv_fast.ops._linear_backend import LogitTransform
from linear_cases import check_bon_case, check_linear_case, check_yes_no_case, make_head
from oracle import head_logits64, make_labels

ROOT = Path(__file__).resolve().parents[2]
ops = torch.ops.rlaifv_fast


# (logit_scale, softcap): small and large scales, a cap small enough to saturate tanh, a negative scale
HEAD_TRANSFORMS = [(0.0625, None), (8.0, None), (1.0, 0.5), (8.0, 0.5), (0.0625, 0.5), (2.0, 5.0), (-1.5, 3.0)]


@contextlib.contextmanager
def chunk_bytes(n: int):
    with mock.patch.object(linear_chunked, "CHUNK_BYTES", n):
        yield


@pytest.fixture(autouse=True)
def _chunked_backend(monkeypatch):
    # the in-process tests are about the chunked path whatever the caller's environment says
    monkeypatch.setenv(_dispatch.LINEAR_BACKEND_ENV, "chunked")


# ----------------------------------------------------------------------------------------------------------------------
# the Triton kernels, in Triton's interpreter (child process)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or importlib.util.find_spec("numpy") is None,
                    reason="needs triton and numpy (the `test` extra)")
def test_triton_kernels_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", **{_dispatch.LINEAR_BACKEND_ENV: "triton"})
    # run from python_tests/: `python -m pytest` puts its working folder first on sys.path, and the repository root
    # would shadow the installed package (which holds the compiled _C) with the source tree
    cmd = [sys.executable, "-m", "pytest", "linear_triton_interp.py", "-q", "-x", "-p", "no:cacheprovider",
           "-W", "ignore::RuntimeWarning"]
    run = subprocess.run(cmd, cwd=ROOT / "python_tests", env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"interpreter tests failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def test_triton_kernels_compile_for_sm90():
    """The GPU tile sizes compile to a cubin for an H100 (sm_90) without a GPU: catches tensor-core shape, dtype and
    shared-memory errors that the interpreter cannot see."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no ahead-of-time compiler API: {e}")
    from rlaifv_fast.ops.triton import linear_logps as kernels

    cfg = dict(kernels.GPU_BLOCKS)
    warps = cfg.pop("num_warps")
    common = {"h_ptr": "*{dt}", "row_off_ptr": "*i64", "count_ptr": "*i32", "stride_hh": "i64", "w_ptr": "*{dt}",
              "stride_wv": "i64", "stride_wh": "i64", "b_ptr": "*{dt}", "y_ptr": "*i32"}
    transform = {"inv_tau": "fp32", "logit_scale": "fp32", "softcap": "fp32"}
    forward = {"part_m_ptr": "*fp32", "part_s_ptr": "*fp32", "label_z_ptr": "*fp32", "H": "i32", "V": "i32",
               "v_per_split": "i32", "num_splits": "i32", **transform}
    backward = {"lse_ptr": "*fp32", "coef_ptr": "*fp32", "dh_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32",
                "H": "i32", "V": "i32", **transform}
    for dt in ("bf16", "fp16", "fp32"):
        for fn, args, flags in (
            (kernels._forward_kernel, forward, {"HAS_BIAS": True, "HAS_SOFTCAP": True, "WITH_LABELS": True}),
            (kernels._backward_kernel, backward, {"HAS_BIAS": True, "HAS_SOFTCAP": True, "NEED_DH": True,
                                                  "NEED_DW": True, "NEED_DB": True}),
        ):
            consts = {**flags, "DOT_FP32": dt == "fp32", **cfg}
            sig = {k: v.format(dt=dt) for k, v in {**common, **args}.items()} | {k: "constexpr" for k in consts}
            compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            assert compiled.asm.get("cubin"), f"{fn.__name__} {dt}: no cubin"
            assert compiled.metadata.shared <= 227 * 1024, f"{fn.__name__} {dt}: too much shared memory"


# ----------------------------------------------------------------------------------------------------------------------
# the chunked path against the oracle


@given(
    B=st.integers(1, 3),
    T=st.integers(1, 40),
    H=st.integers(1, 80),
    V=st.sampled_from([1, 2, 63, 1000, 3001]) | st.integers(1, 2000),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    masked=st.sampled_from([0.0, 0.3, 1.0]),
    shift=st.booleans(),
    average=st.booleans(),
    temperature=st.sampled_from([1.0, 0.6, 2.0]),
    bias=st.booleans(),
    per_token=st.booleans(),
    weight_layout=st.sampled_from(["contiguous", "sliced", "transposed"]),
    weight_grad=st.booleans(),
    rows=st.sampled_from([1, 7, 64]),
    head=st.sampled_from([(1.0, None), *HEAD_TRANSFORMS]),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_matches_oracle(B, T, H, V, dtype, masked, shift, average, temperature, bias, per_token,
                                weight_layout, weight_grad, rows, head, seed):
    torch.manual_seed(seed)
    with chunk_bytes(rows * V * 4):  # `rows` logits rows per chunk
        check_linear_case(B, T, H, V, dtype=dtype, masked=masked, shift=shift, average=average,
                          temperature=temperature, bias=bias, per_token=per_token, weight_layout=weight_layout,
                          hidden_layout="strided" if seed % 2 else "contiguous", weight_grad=weight_grad,
                          all_masked_rows=(0,) if seed % 3 == 0 else (), logit_scale=head[0], softcap=head[1])


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_non_contiguous_weight_view(layout):
    # a ZeRO-3 / FSDP gathered parameter is often a view: the weight need not be contiguous
    with chunk_bytes(5 * 500 * 4):
        check_linear_case(2, 30, 48, 500, weight_layout=layout, bias=True, shift=True)


def test_fp16_and_flat_tokens():
    with chunk_bytes(4 * 300 * 4):
        check_linear_case(3, 11, 24, 300, dtype=torch.float16, bias=True, per_token=True)
        check_linear_case(50, 1, 24, 300, flat=True, per_token=True, label_dtype=torch.int32)


def test_fp64_stays_fp64():
    check_linear_case(2, 6, 10, 40, dtype=torch.float64, bias=True, per_token=True, shift=True)


@pytest.mark.parametrize("logit_scale, softcap", [(1.0, None), (3.0, 2.0)])
def test_gradcheck_fp64(logit_scale, softcap):
    h = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, -100, 6, 0], [-100, -100, 3, 2]])

    def f(h, w, b):
        out = rlaifv_fast.linear_sequence_logps(h, w, y, bias=b, shift=True, average=True, temperature=1.3,
                                                return_per_token=True, logit_scale=logit_scale, softcap=softcap)
        return out.logps, out.per_token

    with chunk_bytes(2 * 7 * 8):
        assert torch.autograd.gradcheck(f, (h, w, b))


def test_yes_no_and_bon():
    with chunk_bytes(3 * 700 * 4):
        check_yes_no_case(10, 33, 700, bias=True, weight_layout="sliced")
        check_yes_no_case(4, 8, 2)
        check_bon_case(6, 12, 20, 700)
        check_bon_case(6, 12, 20, 700, ref_as_logps=True, length_normalize=False, shift=False)


# ----------------------------------------------------------------------------------------------------------------------
# the head transform: logit scale and final-logit soft-capping (then the temperature)

@pytest.mark.parametrize("logit_scale, softcap", HEAD_TRANSFORMS)
def test_head_transform_matches_oracle(logit_scale, softcap):
    # 3 rows x 256 columns per buffer (1 row with the backward's two buffers): many blocks and vocabulary slices
    with chunk_bytes(3 * 256 * 4):
        check_linear_case(2, 13, 24, 700, bias=True, shift=True, temperature=0.7, per_token=True, masked=0.2,
                          all_masked_rows=(1,), logit_scale=logit_scale, softcap=softcap)
        check_linear_case(3, 5, 16, 300, average=True, logit_scale=logit_scale, softcap=softcap, weight_grad=False)


def test_head_transform_half_precision_and_large_logits():
    with chunk_bytes(4 * 300 * 4):
        check_linear_case(2, 9, 40, 300, dtype=torch.bfloat16, bias=True, shift=True, logit_scale=2.0, softcap=5.0)
        check_linear_case(2, 9, 40, 300, dtype=torch.float16, softcap=0.5, per_token=True)
        # logits of a few hundred: the lse and the saturated cap must stay finite and exact
        check_linear_case(2, 9, 40, 300, logit_scale=8.0, temperature=0.5, bias=True, per_token=True)
        check_linear_case(2, 9, 40, 300, logit_scale=8.0, softcap=50.0, temperature=0.5, per_token=True)


def test_head_transform_of_yes_no_and_bon():
    with chunk_bytes(3 * 700 * 4):
        check_yes_no_case(10, 33, 700, bias=True, logit_scale=8.0, softcap=0.5)
        check_yes_no_case(4, 8, 300, logit_scale=0.0625, weight_layout="sliced")
        check_bon_case(6, 12, 20, 700, logit_scale=2.0, softcap=5.0)
        check_bon_case(6, 12, 20, 700, logit_scale=2.0, softcap=5.0, ref_head=(1.0, None))  # reference uncapped
        check_bon_case(6, 12, 20, 700, softcap=0.5, ref_as_logps=True, shift=False)


def test_lm_head_op_kwargs_match_the_models_logits():
    """LMHead.op_kwargs() passed to the op gives the log-probs of LMHead.logits (the one head definition)."""
    from rlaifv_fast.engines.lm_head import LMHead

    hidden, weight, bias = make_head(2, 6, 12, 90, bias=True)
    labels = make_labels(2, 6, 90)
    for scale, cap in ((1.0, None), (0.25, None), (1.0, 3.0), (4.0, 1.5)):
        head = LMHead(weight, bias, scale, cap)
        got = rlaifv_fast.linear_sequence_logps(hidden, weight, labels, bias=bias, **head.op_kwargs())
        want = rlaifv_fast.sequence_logps(head.logits(hidden), labels)
        torch.testing.assert_close(got.logps, want.logps, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# memory: the chunked path never allocates an (N, V) buffer


class _Allocations(TorchDispatchMode):
    """Records the bytes of every new tensor an aten op returns while active (views of, and writes into, tensors
    that already exist are not allocations)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[str, int, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        seen = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.append((str(func), t.untyped_storage().nbytes(), tuple(t.shape)))
        return out


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_path_never_allocates_the_logits(softcap):
    # with soft-capping the backward holds two buffers (logits and the cap's slope) within the same bound
    transform = LogitTransform(logit_scale=0.5, softcap=softcap)
    B, T, H, V = 2, 200, 16, 5000
    bound = 64 << 10  # 3 logits rows per chunk
    hidden, weight, bias = make_head(B, T, H, V, bias=True)
    labels = make_labels(B, T, V, masked_fraction=0.1)
    N = B * (T - 1)
    logits_bytes = N * V * 4
    with chunk_bytes(bound):
        with _Allocations() as fwd:  # what the custom ops' bodies run, op by op
            tok, lse, bad = _dispatch.linear_token_logps(hidden, weight, bias, labels, -100, True, transform)
        assert bad is None
        g = torch.randn(B, T - 1)
        with _Allocations() as bwd:
            dh, dw, db = _dispatch.linear_token_logps_backward(
                g, hidden, weight, bias, labels, lse, -100, True, transform, (True, True, True)
            )
    required = {"d_weight": V * H * 4, "d_hidden": B * T * H * 4}
    for phase, record in (("forward", fwd), ("backward", bwd)):
        assert record.sizes, "the dispatch mode saw no allocation"
        for name, nbytes, shape in record.sizes:
            assert nbytes <= max(bound, *required.values()), (
                f"{phase}: {name} made a {shape} tensor of {nbytes} B, beyond the chunk bound {bound} B "
                f"(the full logits would be {logits_bytes} B)"
            )
        # the logits live in the one bounded buffer, a small fraction of the (N, V) logits
        n_valid = int((labels[:, 1:] != -100).sum())
        buffers = 2 if phase == "backward" and softcap is not None else 1
        with chunk_bytes(bound):
            rows, cols = linear_chunked._blocks(n_valid, V, torch.float32, buffers=buffers)
        assert buffers * rows * cols * 4 <= bound and rows * cols * 4 < logits_bytes // 20
        seen = sum(shape == (rows * cols,) for _, _, shape in record.sizes)
        assert seen == buffers, f"{phase}: {seen} chunk buffers seen, expected {buffers}"
    assert max(required.values()) < logits_bytes // 10  # the shapes make the check meaningful
    # and the result is still right
    want = head_logits64(hidden, weight, bias, logit_scale=0.5, softcap=softcap).log_softmax(-1)[:, :-1]
    y = labels[:, 1:]
    want_tok = torch.where(y != -100, want.gather(-1, y.clamp(min=0)[..., None])[..., 0], 0.0)
    torch.testing.assert_close(tok.double(), want_tok, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_no_weight_sized_buffer():
    hidden, weight, _ = make_head(2, 30, 8, 4000)
    labels = make_labels(2, 30, 4000)
    h = hidden.requires_grad_(True)
    with chunk_bytes(4 * 4000 * 4):
        out = rlaifv_fast.linear_sequence_logps(h, weight, labels)
        with _Allocations() as record:
            out.logps.sum().backward()
    assert weight.grad is None and h.grad is not None
    assert max(n for _, n, _ in record.sizes) <= max(4 * 4000 * 4, h.numel() * 4)


# ----------------------------------------------------------------------------------------------------------------------
# torch.library registration


def test_opcheck():
    hidden, weight, bias = make_head(2, 5, 12, 37, bias=True)
    labels = make_labels(2, 5, 37, masked_fraction=0.3)
    h = hidden.requires_grad_(True)
    w = weight.requires_grad_(True)
    # (temperature, logit scale, soft-capping (0.0: none), backend)
    for options in ((1.5, 1.0, 0.0, "auto"), (1.0, 1.0, 0.0, "chunked"), (0.7, 8.0, 0.5, "auto"),
                    (1.0, 0.0625, 0.0, "chunked")):
        torch.library.opcheck(ops.linear_token_logps.default, (h, w, bias, labels, -100, True, *options))
    torch.library.opcheck(ops.linear_token_logps.default, (h, w, None, labels, -100, False, 1.0, 2.0, 5.0, "auto"))
    for options in ((1.5, 1.0, 0.0, "auto"), (0.7, 8.0, 0.5, "chunked")):
        tok, lse = ops.linear_token_logps(h.detach(), w.detach(), bias, labels, -100, True, *options)
        g = torch.randn_like(tok)
        for need in ((True, True, True), (True, False, False), (False, True, False)):
            torch.library.opcheck(ops.linear_token_logps_backward.default,
                                  (g, h.detach(), w.detach(), bias, labels, lse, -100, True, *options, *need))
    for options in ((1.0, 0.0, "auto"), (8.0, 0.5, "chunked")):
        torch.library.opcheck(ops.linear_yes_no_logprobs.default,
                              (hidden[:, 0].detach(), weight.detach(), bias, torch.tensor([1, 4]), torch.tensor([2]),
                               *options))


def test_compile_fullgraph():
    torch._dynamo.reset()
    hidden, weight, bias = make_head(3, 6, 16, 50, bias=True)
    labels = make_labels(3, 6, 50, masked_fraction=0.3)
    g = torch.randn(3)

    def step(h, w, b):
        out = rlaifv_fast.linear_sequence_logps(h, w, labels, bias=b, shift=True, average=True, logit_scale=0.5,
                                                softcap=3.0)
        return (out.logps * g).sum()

    def grads(fn):
        args = [t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias)]
        loss = fn(*args)
        return (loss, *torch.autograd.grad(loss, args))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(grads(compiled), grads(step)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_name_the_argument():
    h, w, b = make_head(2, 3, 8, 20, bias=True)
    y = make_labels(2, 3, 20)
    f = rlaifv_fast.linear_sequence_logps
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor"):
        f([1.0], w, y)
    with pytest.raises(TypeError, match="hidden .*dtype torch.int64"):
        f(torch.zeros(2, 3, 8, dtype=torch.long), w, y)
    with pytest.raises(ValueError, match=r"hidden \(shape \(2, 3, 4, 8\)\): expected a 2-D or 3-D"):
        f(torch.randn(2, 3, 4, 8), w, y)
    with pytest.raises(TypeError, match="weight .*dtype torch.bfloat16.* must have the dtype of hidden"):
        f(h, w.bfloat16(), y)
    with pytest.raises(ValueError, match=r"weight \(shape \(20, 9\)\) must be \(V, H\) with H = 8"):
        f(h, torch.randn(20, 9), y)
    with pytest.raises(ValueError, match="weight .*V = 0"):
        f(h, torch.randn(0, 8), y)
    with pytest.raises(ValueError, match=r"bias \(shape \(19,\)"):
        f(h, w, y, bias=torch.randn(19))
    with pytest.raises(ValueError, match=r"labels .*shape must be \(2, 3\)"):
        f(h, w, y[:, :2])
    with pytest.raises(TypeError, match="labels .*int32 or int64"):
        f(h, w, y.float())
    with pytest.raises(ValueError, match="shift=True needs hidden as"):
        f(h[:, 0], w, y[:, 0], shift=True)
    with pytest.raises(ValueError, match="temperature"):
        f(h, w, y, temperature=0.0)
    bad = y.clone()
    bad[1, 2] = 20
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 20 is outside \[0, 20\)"):
        f(h, w, bad)
    bad[1, 2] = -5
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = -5 is outside"):
        f(h, w, bad, shift=True)


def test_bad_inputs_of_yes_no_and_bon():
    h, w, _ = make_head(2, 3, 8, 20)
    y = make_labels(2, 3, 20)
    with pytest.raises(ValueError, match="yes_ids holds token id 20"):
        rlaifv_fast.linear_yes_no_logprobs(h[:, 0], w, [20], [1])
    with pytest.raises(ValueError, match=r"hidden \(shape \(2, 3, 8\)\): expected a 2-D"):
        rlaifv_fast.linear_yes_no_logprobs(h, w, [2], [1])
    with pytest.raises(ValueError, match="token id 1 is in both"):
        rlaifv_fast.linear_yes_no_logprobs(h[:, 0], w, [1], [1])
    with pytest.raises(ValueError, match="exactly one of ref_hidden"):
        rlaifv_fast.linear_bon_rewards(h, w, y, beta=0.1)
    with pytest.raises(ValueError, match="ref_hidden needs ref_weight"):
        rlaifv_fast.linear_bon_rewards(h, w, y, ref_hidden=h, beta=0.1)
    with pytest.raises(ValueError, match="ref_weight has 21 vocabulary rows"):
        rlaifv_fast.linear_bon_rewards(h, w, y, ref_hidden=h, ref_weight=torch.randn(21, 8), beta=0.1)
    with pytest.raises(ValueError, match=r"ref_logps .*must be a float tensor of shape \(2, 2\)"):
        rlaifv_fast.linear_bon_rewards(h, w, y, ref_logps=torch.randn(2, 3), beta=0.1, shift=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"softcap": -1.0}, r"softcap must be None \(no soft-capping\) or a finite number > 0, got -1.0"),
    ({"softcap": 0.0}, r"softcap must be None .* > 0, got 0.0"),
    ({"softcap": float("nan")}, "softcap must be a finite number, got nan"),
    ({"softcap": float("inf")}, "softcap must be a finite number, got inf"),
    ({"logit_scale": 0.0}, "logit_scale must be nonzero"),
    ({"logit_scale": float("inf")}, "logit_scale must be a finite number, got inf"),
    ({"logit_scale": float("nan")}, "logit_scale must be a finite number, got nan"),
    ({"logit_scale": "2"}, "logit_scale must be a finite number, got '2'"),
    ({"backend": "fastest"}, "backend must be one of 'auto', 'triton', 'chunked', got 'fastest'"),
])
def test_bad_head_transform_and_backend(kwargs, match):
    h, w, _ = make_head(2, 3, 8, 20)
    y = make_labels(2, 3, 20)
    with pytest.raises(ValueError, match=match):
        rlaifv_fast.linear_sequence_logps(h, w, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        rlaifv_fast.linear_yes_no_logprobs(h[:, 0], w, [1], [2], **kwargs)
    with pytest.raises(ValueError, match=match):
        rlaifv_fast.linear_bon_rewards(h, w, y, ref_hidden=h, ref_weight=w, beta=0.1, **kwargs)
    ref_kwargs = {("ref_" + k if k != "backend" else k): v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match.replace("logit_scale", "ref_logit_scale").replace("softcap",
                                                                                                   "ref_softcap")):
        rlaifv_fast.linear_bon_rewards(h, w, y, ref_hidden=h, ref_weight=w, beta=0.1, **ref_kwargs)


def test_reference_head_without_reference_hidden_states_is_an_error():
    h, w, _ = make_head(2, 3, 8, 20)
    y = make_labels(2, 3, 20)
    with pytest.raises(ValueError, match="ref_softcap applies to ref_hidden's head"):
        rlaifv_fast.linear_bon_rewards(h, w, y, ref_logps=torch.zeros(2, 3), beta=0.1, ref_softcap=None)


def test_explicit_backend_argument(monkeypatch):
    """backend= wins over the environment; "chunked" runs the chunked path, "triton" needs the interpreter here."""
    hidden, weight, bias = make_head(2, 5, 12, 40, bias=True)
    labels = make_labels(2, 5, 40)
    monkeypatch.setenv(_dispatch.LINEAR_BACKEND_ENV, "fastest")  # never read: the argument decides
    got = rlaifv_fast.linear_sequence_logps(hidden, weight, labels, bias=bias, backend="chunked", softcap=2.0)
    want = rlaifv_fast.sequence_logps(2.0 * torch.tanh((hidden @ weight.T + bias) / 2.0), labels)
    torch.testing.assert_close(got.logps, want.logps, rtol=1e-5, atol=1e-5)
    assert _dispatch.linear_backend_for(torch.device("cpu"), torch.float32, "chunked") is \
        _dispatch.LinearBackend.CHUNKED
    assert _dispatch.linear_kernels(torch.device("cpu"), torch.float32, "chunked") is linear_chunked
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="backend=triton on cpu tensors needs TRITON_INTERPRET=1"):
            rlaifv_fast.linear_sequence_logps(hidden, weight, labels, backend="triton")
    with pytest.raises(ValueError, match="backend=triton: the Triton kernels take fp32/bf16/fp16, not float64"):
        rlaifv_fast.linear_sequence_logps(hidden.double(), weight.double(), labels, backend="triton")


def test_backend_switch(monkeypatch):
    monkeypatch.setenv(_dispatch.LINEAR_BACKEND_ENV, "fastest")
    h, w, _ = make_head(1, 2, 4, 5)
    with pytest.raises(ValueError, match="RLAIFV_FAST_LINEAR_BACKEND='fastest'"):
        rlaifv_fast.linear_sequence_logps(h, w, torch.zeros(1, 2, dtype=torch.long))
    monkeypatch.setenv(_dispatch.LINEAR_BACKEND_ENV, "auto")
    assert _dispatch.linear_backend_for(torch.device("cpu"), torch.float32) is _dispatch.LinearBackend.CHUNKED
    if os.environ.get("TRITON_INTERPRET") != "1":
        monkeypatch.setenv(_dispatch.LINEAR_BACKEND_ENV, "triton")
        with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
            rlaifv_fast.linear_sequence_logps(h, w, torch.zeros(1, 2, dtype=torch.long))


def test_empty_inputs():
    h, w, _ = make_head(2, 1, 4, 5)
    out = rlaifv_fast.linear_sequence_logps(h, w, torch.zeros(2, 1, dtype=torch.long), shift=True)
    assert out.logps.tolist() == [0.0, 0.0] and out.counts.tolist() == [0, 0]
    out = rlaifv_fast.linear_sequence_logps(torch.randn(0, 3, 4), w, torch.zeros(0, 3, dtype=torch.long))
    assert out.logps.shape == (0,)


# ----------------------------------------------------------------------------------------------------------------------
# the Triton kernels on a GPU


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_cuda_matches_oracle(monkeypatch, dtype):
    monkeypatch.setenv(_dispatch.LINEAR_BACKEND_ENV, "auto")
    assert _dispatch.linear_backend_for(torch.device("cuda"), dtype) is _dispatch.LinearBackend.TRITON
    check_linear_case(3, 50, 200, 1000, dtype=dtype, bias=True, shift=True, per_token=True, all_masked_rows=(1,),
                      device="cuda")
    check_linear_case(2, 40, 96, 3001, dtype=dtype, weight_layout="sliced", average=True, temperature=0.7,
                      device="cuda")
