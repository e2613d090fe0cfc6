"""bon_rewards against the float64 oracle, with reference logits or precomputed per-token reference log-probs; bad
inputs, opcheck and torch.compile, and the CUDA kernel (marked `cuda`)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rlaifv_fast
from rlaifv_fast.ops import reference
from rlaifv_fast.ops.bon_rewards import best_per_group
from oracle import DTYPES, assert_close_rel, make_labels, make_logits, oracle_bon_rewards, term_scale


def check(N, T, V, dtype, layout, masked, shift, normalize, beta, ref_as_logps, group):
    pol = make_logits(N, T, V, dtype=dtype, layout=layout)
    ref = make_logits(N, T, V, dtype=dtype, layout=layout)
    y = make_labels(N, T, V, masked_fraction=masked)
    want, want_n = oracle_bon_rewards(pol, ref, y, beta=beta, length_normalize=normalize, shift=shift)
    ref_arg = ref
    if ref_as_logps:
        ref_arg, _ = reference.token_logps_reference(ref, y, shift=shift)
    got = rlaifv_fast.bon_rewards(pol, ref_arg, y, beta=beta, length_normalize=normalize, groups=group, shift=shift)
    assert got.rewards.dtype == torch.float32
    assert torch.equal(got.counts, want_n)
    scale = beta * (term_scale(pol, y, shift=shift) + term_scale(ref, y, shift=shift))
    if normalize:
        scale = scale / want_n.clamp(min=1)
    assert_close_rel(got.rewards, want, scale, what="rewards")
    return got


@given(
    G=st.integers(1, 3),
    k=st.integers(1, 4),
    T=st.integers(1, 8),
    V=st.sampled_from([1, 2, 31, 123, 1000]) | st.integers(1, 2000),
    dtype=st.sampled_from(list(DTYPES)),
    layout=st.sampled_from(["contiguous", "strided", "transposed"]),
    masked=st.floats(0, 1),
    shift=st.booleans(),
    normalize=st.booleans(),
    ref_as_logps=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_oracle(G, k, T, V, dtype, layout, masked, shift, normalize, ref_as_logps, seed):
    torch.manual_seed(seed)
    got = check(G * k, T, V, DTYPES[dtype], layout, masked, shift, normalize, 0.1, ref_as_logps, k)
    assert got.best.shape == (G,)
    table = got.rewards.view(G, k)
    for g in range(G):
        assert got.rewards[got.best[g]] == table[g].max()
        assert g * k <= int(got.best[g]) < (g + 1) * k


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_both_backends(backend, dtype):
    check(6, 5, 300, DTYPES[dtype], "strided", 0.3, True, True, 0.5, False, [2, 4])
    check(6, 5, 300, DTYPES[dtype], "contiguous", 0.3, False, False, 0.5, True, None)


def test_length_normalisation_removes_short_answer_bias():
    # two candidates with the same per-token advantage: the normalised reward ties, the summed one prefers the longer
    V = 20
    pol = torch.zeros(2, 6, V)
    ref = torch.zeros(2, 6, V)
    y = torch.full((2, 6), -100)
    y[0, :2] = 3
    y[1, :6] = 3
    pol[..., 3] = 1.0  # policy puts more mass on token 3 than the reference does
    norm = rlaifv_fast.bon_rewards(pol, ref, y, beta=1.0)
    summed = rlaifv_fast.bon_rewards(pol, ref, y, beta=1.0, length_normalize=False)
    torch.testing.assert_close(norm.rewards[0], norm.rewards[1])
    assert summed.rewards[1] > summed.rewards[0]
    assert summed.best.tolist() == [1] and norm.best.tolist() == [0]  # ties go to the first


def test_best_per_group_ignores_nan_and_handles_ragged_groups():
    r = torch.tensor([0.1, float("nan"), 0.3, -1.0, 2.0, float("nan")])
    assert best_per_group(r, [3, 2, 1]).tolist() == [2, 4, 5]


def test_zero_token_candidate_gets_zero_reward():
    pol, ref = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    y = torch.randint(0, 9, (2, 3))
    y[1] = -100
    out = rlaifv_fast.bon_rewards(pol, ref, y, beta=0.1)
    assert out.counts.tolist() == [3, 0] and out.rewards[1].item() == 0.0


def test_no_grad():
    pol = torch.randn(2, 3, 9, requires_grad=True)
    out = rlaifv_fast.bon_rewards(pol, torch.randn(2, 3, 9), torch.randint(0, 9, (2, 3)), beta=0.1)
    assert not out.rewards.requires_grad


# --------------------------------------------------------------------------------------------------------------------
# bad input, torch.library and CUDA

ops = torch.ops.rlaifv_fast
DEV = "cuda"  # the CUDA cases are marked `cuda` and skipped without a device


def test_bad_inputs():
    x = torch.randn(4, 3, 7)
    y = torch.randint(0, 7, (4, 3))
    with pytest.raises(ValueError, match=r"group 1 has size 0; every group needs a candidate"):
        rlaifv_fast.bon_rewards(x, x, y, beta=0.1, groups=[4, 0])
    with pytest.raises(ValueError, match=r"sizes add up to 3 but there are 4 candidates"):
        rlaifv_fast.bon_rewards(x, x, y, beta=0.1, groups=[1, 2])
    with pytest.raises(ValueError, match=r"groups=3: must be a positive group size dividing the 4 candidates"):
        rlaifv_fast.bon_rewards(x, x, y, beta=0.1, groups=3)
    with pytest.raises(ValueError, match=r"no candidates to choose from"):
        rlaifv_fast.bon_rewards(torch.randn(0, 3, 7), torch.randn(0, 3, 7), y[:0], beta=0.1)
    with pytest.raises(ValueError, match=r"ref logits .*must match policy_logits"):
        rlaifv_fast.bon_rewards(x, x.double(), y, beta=0.1)
    with pytest.raises(ValueError, match=r"ref per-token log-probs .*shape \(4, 2\) \(the label grid, shifted\)"):
        rlaifv_fast.bon_rewards(x, torch.randn(4, 3), y, beta=0.1, shift=True)
    y_bad = y.clone()
    y_bad[3, 1] = 99
    with pytest.raises(ValueError, match=r"labels\[3, 1\] = 99"):
        rlaifv_fast.bon_rewards(x, x, y_bad, beta=0.1)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("ref_as_logps", [False, True])
def test_cuda_matches_oracle(dtype, ref_as_logps):
    N, T, V = 8, 6, 32000
    pol = make_logits(N, T, V, dtype=DTYPES[dtype], device=DEV)
    ref = make_logits(N, T, V, dtype=DTYPES[dtype], device=DEV)
    y = make_labels(N, T, V, device=DEV)
    want, _ = reference.bon_rewards_reference(pol.double(), ref.double(), y, beta=0.1, shift=True)
    ref_arg = reference.token_logps_reference(ref, y, shift=True)[0] if ref_as_logps else ref
    got = rlaifv_fast.bon_rewards(pol, ref_arg, y, beta=0.1, shift=True, groups=4)
    scale = 0.1 * (term_scale(pol, y, shift=True) + term_scale(ref, y, shift=True)) / got.counts.clamp(min=1)
    assert_close_rel(got.rewards.cpu(), want.cpu(), scale.cpu())


def test_nonsense_beta_is_refused():
    logits = torch.randn(4, 3, 10)
    labels = torch.randint(0, 10, (4, 3))
    for beta in (-0.1, float("nan"), 0.0):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            rlaifv_fast.bon_rewards(logits, logits.clone(), labels, beta=beta, groups=2)


def test_opcheck():
    x = make_logits(3, 4, 29)
    r = make_logits(3, 4, 29)
    y = make_labels(3, 4, 29)
    torch.library.opcheck(ops.bon_token_rewards.default, (x, r, None, y, -100, True, 1.0))
    torch.library.opcheck(ops.bon_token_rewards.default, (x, None, torch.randn(3, 4), y, -100, False, 1.0))


def test_compile_inductor():
    torch._dynamo.reset()
    x = make_logits(3, 5, 40)
    r = make_logits(3, 5, 40)
    y = make_labels(3, 5, 40)

    def f(x, r):
        return rlaifv_fast.bon_rewards(x, r, y, beta=0.1, groups=3).rewards

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, r), f(x, r))
