"""CUDA kernels against the float64 oracle (run on the GPU machine; skipped cleanly without a CUDA device)."""

import pytest
import torch

import rlaifv_fast
from rlaifv_fast.ops import reference
from oracle import DTYPES, assert_close_rel, make_labels, make_logits, term_scale

pytestmark = pytest.mark.cuda
DEV = "cuda"


def test_cuda_backend_is_native():
    from rlaifv_fast.ops import _dispatch

    assert rlaifv_fast.build_info()["cuda"]
    assert _dispatch.backend_for(torch.device(DEV)) is _dispatch.Backend.CUDA


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
@pytest.mark.parametrize("V", [1, 2, 31, 123, 1000, 32000, 152064])
@pytest.mark.parametrize("shift", [False, True])
def test_sequence_logps(dtype, layout, V, shift):
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


def test_inplace_backward_matches():
    x = make_logits(2, 9, 5000, dtype=torch.bfloat16, device=DEV)
    y = make_labels(2, 9, 5000, device=DEV)
    a = x.clone().requires_grad_(True)
    rlaifv_fast.sequence_logps(a, y, shift=True).logps.sum().backward()
    h = x.clone().float().requires_grad_(True)
    logits = h.to(torch.bfloat16)
    rlaifv_fast.sequence_logps(logits, y, shift=True, inplace_backward=True).logps.sum().backward()
    torch.testing.assert_close(h.grad.to(torch.bfloat16), a.grad)


def test_invalid_label_detected_in_kernel():
    y = make_labels(2, 4, 100, device=DEV)
    y[1, 3] = 100
    with pytest.raises(ValueError, match=r"labels\[1, 3\] = 100 is outside \[0, 100\)"):
        rlaifv_fast.sequence_logps(torch.randn(2, 4, 100, device=DEV), y)


def test_nan_row_isolated():
    x = torch.randn(3, 2, 300, device=DEV)
    x[1, 0, 5] = float("nan")
    out = rlaifv_fast.sequence_logps(x, torch.randint(0, 300, (3, 2), device=DEV))
    assert torch.isnan(out.logps[1]) and torch.isfinite(out.logps[[0, 2]]).all()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("ref_as_logps", [False, True])
def test_bon_rewards(dtype, ref_as_logps):
    N, T, V = 8, 6, 32000
    pol = make_logits(N, T, V, dtype=DTYPES[dtype], device=DEV)
    ref = make_logits(N, T, V, dtype=DTYPES[dtype], device=DEV)
    y = make_labels(N, T, V, device=DEV)
    want, _ = reference.bon_rewards_reference(pol.double(), ref.double(), y, beta=0.1, shift=True)
    ref_arg = reference.token_logps_reference(ref, y, shift=True)[0] if ref_as_logps else ref
    got = rlaifv_fast.bon_rewards(pol, ref_arg, y, beta=0.1, shift=True, groups=4)
    scale = 0.1 * (term_scale(pol, y, shift=True) + term_scale(ref, y, shift=True)) / got.counts.clamp(min=1)
    assert_close_rel(got.rewards.cpu(), want.cpu(), scale.cpu())


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_yes_no(dtype):
    z = make_logits(64, 3, 152064, dtype=DTYPES[dtype], device=DEV)
    pos = torch.randint(-3, 3, (64,), device=DEV)
    got = rlaifv_fast.yes_no_logprobs(z, [10, 20], [30, 40], positions=pos)
    want_y, want_n = reference.yes_no_logprobs_reference(
        z.double(), torch.tensor([10, 20], device=DEV), torch.tensor([30, 40], device=DEV), positions=pos
    )
    torch.testing.assert_close(got.logp_yes.double(), want_y, rtol=1e-5, atol=2e-4)
    torch.testing.assert_close(got.logp_no.double(), want_n, rtol=1e-5, atol=2e-4)


def test_side_stream():
    x = torch.randn(4, 8, 1000, device=DEV)
    y = torch.randint(0, 1000, (4, 8), device=DEV)
    want = rlaifv_fast.sequence_logps(x, y).logps
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = rlaifv_fast.sequence_logps(x, y).logps
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(got, want)
