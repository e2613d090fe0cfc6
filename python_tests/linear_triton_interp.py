"""The Triton kernels of the lm_head-fused log-probs on CPU tensors under Triton's interpreter, against the float64 oracle.

Not collected by itself (no test_ prefix): test_linear_logps.py::test_triton_kernels_in_the_interpreter runs this
file in a child process with TRITON_INTERPRET=1 and RLAIFV_FAST_LINEAR_BACKEND=triton, because the interpreter must be
chosen before the kernels are first imported and must not leak into the other tests. Shapes are small (the
interpreter runs tile programs one by one in numpy) and chosen against the block sizes: H and V not multiples of
them, V below one vocabulary tile, more rows than one row block, all-masked rows.
"""

import os

import pytest
import torch

import rlaifv_fast
from rlaifv_fast.ops import _dispatch
from rlaifv_fast.ops.triton import linear_logps as kernels
from linear_cases import check_bon_case, check_linear_case, check_yes_no_case

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get(_dispatch.LINEAR_BACKEND_ENV) != "triton",
    reason="run by test_linear_logps.py in a child process with TRITON_INTERPRET=1",
)


def test_the_triton_backend_is_the_one_running():
    assert _dispatch.linear_backend_for(torch.device("cpu"), torch.float32) is _dispatch.LinearBackend.TRITON
    assert kernels.BLOCK_V == 64 and kernels.BLOCK_H == 32 and kernels.BLOCK_N == 32  # the shapes below assume these


@pytest.mark.parametrize(
    "B, T, H, V",
    [
        (2, 5, 37, 71),  # H, V not multiples of the blocks
        (1, 3, 20, 17),  # V below one vocabulary tile, H below one hidden tile
        (3, 13, 33, 130),  # more rows (39) than one row block, V just past two tiles
        (2, 4, 64, 64),  # exact multiples
        (1, 1, 5, 2),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_oracle(B, T, H, V, bias):
    check_linear_case(B, T, H, V, bias=bias, masked=0.25)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("average", [False, True])
def test_shift_average_temperature_per_token(shift, average):
    check_linear_case(3, 9, 37, 150, shift=shift, average=average, temperature=0.7, bias=True, per_token=True,
                      all_masked_rows=(1,))


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature(temperature):
    check_linear_case(2, 6, 41, 99, temperature=temperature, bias=True)


def test_all_rows_masked_and_fully_masked_batch():
    check_linear_case(3, 5, 19, 70, masked=0.3, all_masked_rows=(0, 2), bias=True)
    check_linear_case(2, 4, 19, 70, masked=1.0, bias=True)


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_weight_views_and_frozen_weight(layout):
    check_linear_case(2, 5, 23, 90, weight_layout=layout, hidden_layout="strided", bias=True)
    check_linear_case(2, 5, 23, 90, weight_layout=layout, weight_grad=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    check_linear_case(2, 6, 40, 100, dtype=dtype, bias=True, shift=True, per_token=True)


def test_flat_tokens_int32_labels():
    check_linear_case(37, 1, 29, 66, flat=True, per_token=True, label_dtype=torch.int32)


def test_yes_no():
    check_yes_no_case(5, 37, 71)
    check_yes_no_case(3, 21, 130, bias=True, weight_layout="sliced")


@pytest.mark.parametrize("ref_as_logps", [False, True])
def test_bon(ref_as_logps):
    check_bon_case(4, 6, 21, 75, ref_as_logps=ref_as_logps)


@pytest.mark.parametrize("logit_scale, softcap", [(8.0, None), (0.0625, 0.5), (8.0, 0.5), (-1.5, 3.0)])
def test_head_transform(logit_scale, softcap):
    # shift, bias, temperature, masked rows; a cap of 0.5 under scale 8 saturates tanh
    check_linear_case(2, 7, 37, 130, bias=True, shift=True, temperature=0.7, per_token=True, all_masked_rows=(1,),
                      logit_scale=logit_scale, softcap=softcap)


def test_head_transform_half_precision_yes_no_and_bon():
    check_linear_case(2, 5, 40, 100, dtype=torch.bfloat16, bias=True, logit_scale=2.0, softcap=5.0)
    check_yes_no_case(3, 21, 130, bias=True, logit_scale=8.0, softcap=0.5)
    check_bon_case(4, 6, 21, 75, logit_scale=2.0, softcap=5.0, ref_head=(1.0, None))


@pytest.mark.parametrize("softcap", [None, 0.5])
def test_triton_and_chunked_backends_agree(softcap):
    """backend="triton" and backend="chunked" (explicit arguments, whatever the environment) give the same
    outputs and gradients."""
    torch.manual_seed(3)
    h = torch.randn(2, 6, 29)
    w = torch.randn(90, 29) * 0.4
    b = torch.randn(90)
    y = torch.randint(0, 90, (2, 6))
    y[1, 2] = -100
    g = torch.randn(2)
    results = {}
    for backend in ("triton", "chunked"):
        args = [t.clone().requires_grad_(True) for t in (h, w, b)]
        out = rlaifv_fast.linear_sequence_logps(args[0], args[1], y, bias=args[2], shift=True, temperature=0.8,
                                                logit_scale=4.0, softcap=softcap, backend=backend)
        grads = torch.autograd.grad((out.logps * g).sum(), args)
        yn = rlaifv_fast.linear_yes_no_logprobs(h[:, 0], w, [1, 2], [3], bias=b, logit_scale=4.0, softcap=softcap,
                                                backend=backend)
        results[backend] = (out.logps, *grads, yn.logp_yes, yn.logp_no)
    for got, want in zip(results["triton"], results["chunked"]):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


def test_invalid_label_is_reported_without_out_of_bounds_reads():
    h, w = torch.randn(2, 3, 8), torch.randn(20, 8)
    y = torch.tensor([[1, 2, 3], [4, 20, -100]])
    with pytest.raises(ValueError, match=r"labels\[1, 1\] = 20 is outside \[0, 20\)"):
        rlaifv_fast.linear_sequence_logps(h, w, y)


def test_nan_poisons_only_its_row():
    h, w = torch.randn(3, 4, 9), torch.randn(30, 9)
    y = torch.randint(0, 30, (3, 4))
    h[1, 2, 3] = float("nan")
    out = rlaifv_fast.linear_sequence_logps(h, w, y)
    assert torch.isnan(out.logps[1]) and torch.isfinite(out.logps[[0, 2]]).all()
