"""sequence_logps, all of it in one file: against the float64 oracle (outputs, gradients, layouts, dtypes, the ugly
cases), bad inputs, torch.library opcheck and torch.compile, and the CUDA kernels (marked `cuda`)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rlaifv_fast
from rlaifv_fast.ops import reference
from oracle import DTYPES, assert_close_rel, make_labels, make_logits, oracle_sequence, term_scale

VOCABS = st.one_of(st.sampled_from([1, 2, 31, 123, 1000, 32000]), st.integers(1, 3000))
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float64: 1e-12}


def check_against_oracle(B, T, V, dtype, layout, masked, shift, average, temperature, label_dtype=torch.int64):
    x = make_logits(B, T, V, dtype=dtype, layout=layout)
    y = make_labels(B, T, V, masked_fraction=masked, dtype=label_dtype)
    g = torch.randn(B, dtype=torch.float64)  # a different upstream gradient per sequence (Liger's bug)

    xo = x.detach().double().requires_grad_(True)
    want, want_n, want_tok = oracle_sequence(xo, y, shift=shift, average=average, temperature=temperature)
    (want * g).sum().backward()

    xs = x.detach().requires_grad_(True)
    got = rlaifv_fast.sequence_logps(
        xs, y, shift=shift, average=average, temperature=temperature, return_per_token=True
    )
    assert got.logps.dtype == torch.float32 and got.counts.dtype == torch.int64
    assert got.logps.shape == (B,) and got.per_token.shape == want_tok.shape
    assert torch.equal(got.counts, want_n)
    scale = term_scale(x, y, shift=shift, temperature=temperature)
    if average:
        scale = scale / want_n.clamp(min=1)
    assert_close_rel(got.logps, want.detach(), scale, what="logps")
    tok_scale = term_scale(x.reshape(B * T, 1, V) if T else x, y.reshape(B * T, 1) if T else y,
                           temperature=temperature) if not shift and T else None
    if tok_scale is not None:
        assert_close_rel(got.per_token.reshape(-1), want_tok.detach().reshape(-1), tok_scale, what="per_token")

    (got.logps.double() * g).sum().backward()
    assert xs.grad.dtype == dtype and xs.grad.shape == x.shape
    expect = xo.grad
    gmax = (g.abs().max().item() if B else 0.0) / temperature
    err = (xs.grad.double() - expect).abs()
    bound = GRAD_RTOL[dtype] * expect.abs() + 1e-6 * gmax + 1e-30
    assert bool((err <= bound).all()), f"grad error {err.max().item():.3g}"


@given(
    B=st.integers(0, 4),
    T=st.integers(0, 9),
    V=VOCABS,
    dtype=st.sampled_from(list(DTYPES)),
    layout=st.sampled_from(["contiguous", "strided", "transposed"]),
    masked=st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0, 1),
    shift=st.booleans(),
    average=st.booleans(),
    temperature=st.sampled_from([1.0, 0.7, 2.0]) | st.floats(0.25, 4.0),
    label_dtype=st.sampled_from([torch.int64, torch.int32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_oracle(B, T, V, dtype, layout, masked, shift, average, temperature, label_dtype, seed):
    torch.manual_seed(seed)
    check_against_oracle(B, T, V, DTYPES[dtype], layout, masked, shift, average, temperature, label_dtype)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shift", [False, True])
def test_both_backends(backend, dtype, shift):
    check_against_oracle(3, 7, 1000, DTYPES[dtype], "strided", 0.3, shift, average=False, temperature=0.8)


def test_large_vocab_bf16_does_not_drift():
    # bf16 accumulation drifts past ~250k vocab in several peers; the kernels accumulate in fp32
    check_against_oracle(2, 2, 262_144, torch.bfloat16, "contiguous", 0.0, False, False, 1.0)


def test_gradcheck_fp64():
    x = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, -100, 6, 0], [-100, -100, 3, 2]])
    for shift in (False, True):
        for average in (False, True):
            def f(x):
                out = rlaifv_fast.sequence_logps(x, y, shift=shift, average=average, temperature=1.3,
                                                 return_per_token=True)
                return out.logps, out.per_token
            assert torch.autograd.gradcheck(f, (x,))


def test_all_masked_rows_give_zero_never_nan():
    x = torch.randn(3, 5, 11, requires_grad=True)
    y = torch.full((3, 5), -100)
    y[1, 2] = 4
    out = rlaifv_fast.sequence_logps(x, y, average=True)
    assert out.counts.tolist() == [0, 1, 0]
    assert out.logps[0].item() == 0.0 and out.logps[2].item() == 0.0
    out.logps.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum() == 0 and x.grad[2].abs().sum() == 0


def test_nan_and_inf_poison_only_their_row():
    x = torch.randn(4, 3, 50)
    y = torch.randint(0, 50, (4, 3))
    x[1, 1, 7] = float("nan")
    x[2, 0, 3] = float("inf")
    x[3, 2, :] = float("-inf")  # all -inf row: log_softmax is NaN there too
    x[0, 1, 10:] = float("-inf")  # a partly -inf row is fine
    y[0, 1] = 2
    xs = x.clone().requires_grad_(True)
    out = rlaifv_fast.sequence_logps(xs, y)
    want = reference.sequence_logps_reference(x.double(), y)[0]
    assert torch.isnan(out.logps[1:]).all() and torch.isnan(want[1:]).all()
    assert torch.isfinite(out.logps[0]) and abs(out.logps[0].item() - want[0].item()) < 1e-4
    out.logps[0].backward()
    assert torch.isfinite(xs.grad[0]).all()


def test_label_at_minus_inf_logit_gives_minus_inf():
    x = torch.zeros(1, 1, 4)
    x[0, 0, 2] = float("-inf")
    out = rlaifv_fast.sequence_logps(x, torch.tensor([[2]]))
    assert out.logps.item() == -math.inf


def test_vocab_of_one_is_certain():
    x = torch.randn(2, 3, 1, requires_grad=True)
    out = rlaifv_fast.sequence_logps(x, torch.zeros(2, 3, dtype=torch.long))
    assert out.logps.abs().max() == 0
    out.logps.sum().backward()
    assert x.grad.abs().max() == 0


def test_empty_batch_and_time():
    assert rlaifv_fast.sequence_logps(torch.randn(0, 4, 9), torch.zeros(0, 4, dtype=torch.long)).logps.shape == (0,)
    out = rlaifv_fast.sequence_logps(torch.randn(2, 0, 9), torch.zeros(2, 0, dtype=torch.long))
    assert out.logps.tolist() == [0.0, 0.0] and out.counts.tolist() == [0, 0]
    out = rlaifv_fast.sequence_logps(torch.randn(2, 1, 9), torch.zeros(2, 1, dtype=torch.long), shift=True)
    assert out.logps.tolist() == [0.0, 0.0]


def test_fp64_inputs_stay_fp64():
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (2, 3))
    out = rlaifv_fast.sequence_logps(x, y)
    assert out.logps.dtype == torch.float64
    torch.testing.assert_close(out.logps, oracle_sequence(x, y)[0], rtol=1e-12, atol=1e-12)


def test_logits_are_not_overwritten_by_default():
    x = torch.randn(2, 4, 33, requires_grad=True)
    before = x.detach().clone()
    rlaifv_fast.sequence_logps(x, torch.randint(0, 33, (2, 4))).logps.sum().backward()
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_inplace_backward_reuses_logits(dtype):
    dt = DTYPES[dtype]
    h = torch.randn(2, 5, 16, requires_grad=True)
    w = torch.randn(40, 16)
    y = make_labels(2, 5, 40, masked_fraction=0.3)
    g = torch.tensor([0.5, -2.0])

    def run(inplace):
        h.grad = None
        logits = (h @ w.T).to(dt)
        out = rlaifv_fast.sequence_logps(logits, y, shift=True, inplace_backward=inplace)
        (out.logps * g).sum().backward()
        return h.grad.clone(), logits

    want, logits_plain = run(False)
    got, logits_inplace = run(True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # the buffer now holds the gradient, as documented
    assert not torch.equal(logits_inplace.detach(), logits_plain.detach())


def test_inplace_backward_is_caught_when_logits_are_still_needed():
    x = torch.randn(2, 3, 8, requires_grad=True)
    logits = x * 1.0
    y = torch.randint(0, 8, (2, 3))
    other = (logits**2).sum()  # saves logits for its own backward
    loss = rlaifv_fast.sequence_logps(logits, y, inplace_backward=True).logps.sum() + other
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_per_token_gradient_flows():
    # a loss on per-token log-probs (reduction "none"), not only on the sums
    x = torch.randn(2, 4, 9, dtype=torch.float64, requires_grad=True)
    y = make_labels(2, 4, 9, masked_fraction=0.25)
    w = torch.randn(2, 4, dtype=torch.float64)
    (rlaifv_fast.sequence_logps(x, y, return_per_token=True).per_token * w).sum().backward()
    xo = x.detach().clone().requires_grad_(True)
    (oracle_sequence(xo, y)[2] * w).sum().backward()
    torch.testing.assert_close(x.grad, xo.grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# bad input, torch.library and CUDA

ops = torch.ops.rlaifv_fast
DEV = "cuda"  # the CUDA cases are marked `cuda` and skipped without a device


def seq(x, y, **kw):
    return rlaifv_fast.sequence_logps(x, y, **kw)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"logits \(shape \(4, 10\).*expected a 3-D tensor, got 2-D"):
        seq(torch.randn(4, 10), torch.zeros(4, dtype=torch.long))


def test_labels_shape_mismatch():
    with pytest.raises(ValueError, match=r"labels \(shape \(2, 4\).*shape must be \(2, 3\)"):
        seq(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("shift", [False, True])
def test_label_out_of_range_names_position(backend, shift):
    y = torch.zeros(2, 4, dtype=torch.long)
    y[1, 2] = 7
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 7 is outside \[0, 5\) and is not ignore_index \(-100\)"):
        seq(torch.randn(2, 4, 5), y, shift=shift)


def test_negative_label_other_than_ignore_index():
    y = torch.zeros(2, 4, dtype=torch.int32)
    y[0, 3] = -1
    with pytest.raises(ValueError, match=r"labels\[0, 3\] = -1"):
        seq(torch.randn(2, 4, 5), y)
    # a custom ignore index is honoured
    assert seq(torch.randn(2, 4, 5), y, ignore_index=-1).counts.tolist() == [3, 4]


def test_label_error_in_backward_path_raises_before_any_gradient():
    x = torch.randn(1, 2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="outside"):
        seq(x, torch.tensor([[0, 3]]))
    assert x.grad is None


def test_non_unit_vocab_stride():
    x = torch.randn(2, 5, 3).transpose(1, 2)  # (2, 3, 5) with V stride 3
    with pytest.raises(ValueError, match=r"vocabulary dimension must have unit stride, got stride 3"):
        seq(x, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_non_float_logits(dtype):
    with pytest.raises(TypeError, match=r"logits .*must be float32, bfloat16, float16 or float64"):
        seq(torch.zeros(1, 2, 3, dtype=dtype), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_non_integer_labels(dtype):
    with pytest.raises(TypeError, match=r"labels .*must be int32 or int64"):
        seq(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=dtype))


def test_mismatched_devices():
    with pytest.raises(ValueError, match=r"labels .*device meta.*must be on the logits' device cpu"):
        seq(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long, device="meta"))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        seq([[[0.0]]], torch.zeros(1, 1, dtype=torch.long))


def test_empty_vocab():
    with pytest.raises(ValueError, match=r"vocabulary dimension is empty \(V = 0\)"):
        seq(torch.randn(1, 2, 0), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        seq(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=temperature)


def _token_args(dtype=torch.float32, shift=False):
    x = make_logits(2, 5, 37, dtype=dtype, layout="strided").requires_grad_(True)
    y = make_labels(2, 5, 37, masked_fraction=0.3)
    return x, y, -100, shift, 1.5, False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shift", [False, True])
def test_opcheck_token_logps(dtype, shift):
    torch.library.opcheck(ops.token_logps.default, _token_args(dtype, shift))


def test_opcheck_backward_ops():
    x, y, ignore, shift, temp, _ = _token_args(shift=True)
    x = x.detach()
    tok, lse = ops.token_logps(x, y, ignore, shift, temp, False)
    g = torch.randn_like(tok)
    torch.library.opcheck(ops.token_logps_backward.default, (g, x, y, lse, ignore, shift, temp))
    torch.library.opcheck(ops.token_logps_backward_.default, (g, x.clone(), y, lse, ignore, shift, temp))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
@pytest.mark.parametrize("V", [1, 2, 31, 123, 1000, 32000, 152064])
@pytest.mark.parametrize("shift", [False, True])
def test_cuda_matches_oracle(dtype, layout, V, shift):
    B, T = 3, 5
    x = make_logits(B, T, V, dtype=DTYPES[dtype], layout=layout, device=DEV)
    y = make_labels(B, T, V, masked_fraction=0.3, device=DEV)
    g = torch.randn(B, dtype=torch.float64, device=DEV)
    xo = x.detach().double().requires_grad_(True)
    want, want_n, _ = reference.sequence_logps_reference(xo, y, shift=shift, average=True, temperature=0.7)
    (want * g).sum().backward()
    xs = x.detach().requires_grad_(True)
    got = rlaifv_fast.sequence_logps(xs, y, shift=shift, average=True, temperature=0.7)
    assert torch.equal(got.counts, want_n)
    scale = term_scale(x, y, shift=shift, temperature=0.7) / want_n.clamp(min=1)
    assert_close_rel(got.logps.cpu(), want.detach().cpu(), scale.cpu())
    (got.logps.double() * g).sum().backward()
    rtol = {"fp32": 1e-5, "bf16": 2.0**-8, "fp16": 2.0**-11}[dtype]
    err = (xs.grad.double() - xo.grad).abs()
    assert bool((err <= rtol * xo.grad.abs() + 1e-6 * g.abs().max() / 0.7).all()), err.max().item()


@pytest.mark.cuda
def test_cuda_inplace_backward_matches():
    x = make_logits(2, 9, 5000, dtype=torch.bfloat16, device=DEV)
    y = make_labels(2, 9, 5000, device=DEV)
    a = x.clone().requires_grad_(True)
    rlaifv_fast.sequence_logps(a, y, shift=True).logps.sum().backward()
    h = x.clone().float().requires_grad_(True)
    logits = h.to(torch.bfloat16)
    rlaifv_fast.sequence_logps(logits, y, shift=True, inplace_backward=True).logps.sum().backward()
    torch.testing.assert_close(h.grad.to(torch.bfloat16), a.grad)


@pytest.mark.cuda
def test_cuda_invalid_label_detected_in_kernel():
    y = make_labels(2, 4, 100, device=DEV)
    y[1, 3] = 100
    with pytest.raises(ValueError, match=r"labels\[1, 3\] = 100 is outside \[0, 100\)"):
        rlaifv_fast.sequence_logps(torch.randn(2, 4, 100, device=DEV), y)


@pytest.mark.cuda
def test_cuda_nan_row_isolated():
    x = torch.randn(3, 2, 300, device=DEV)
    x[1, 0, 5] = float("nan")
    out = rlaifv_fast.sequence_logps(x, torch.randint(0, 300, (3, 2), device=DEV))
    assert torch.isnan(out.logps[1]) and torch.isfinite(out.logps[[0, 2]]).all()


@pytest.mark.cuda
def test_cuda_side_stream():
    x = torch.randn(4, 8, 1000, device=DEV)
    y = torch.randint(0, 1000, (4, 8), device=DEV)
    want = rlaifv_fast.sequence_logps(x, y).logps
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = rlaifv_fast.sequence_logps(x, y).logps
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(got, want)


def test_compile_inductor():
    torch._dynamo.reset()
    x = make_logits(3, 5, 40)
    y = make_labels(3, 5, 40)

    def f(x):
        return rlaifv_fast.sequence_logps(x, y, shift=True, average=True).logps

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))
