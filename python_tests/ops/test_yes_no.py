"""yes_no_logprobs against the float64 oracle, verdicts, the claim -> response score reduction, bad inputs, opcheck and
torch.compile, and the CUDA kernel (marked `cuda`)."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import rlaifv_fast
from oracle import oracle_yes_no
from oracle import DTYPES, make_logits
from rlaifv_fast.ops import reference


def oracle(z, yes, no, positions=None):
    return oracle_yes_no(z, yes, no, positions=positions)


def close(got, want, z):
    # relative to the size of the terms: |logP| and the row's lse
    lse = torch.logsumexp(z.double().reshape(z.shape[0], -1), -1).abs() if z.numel() else torch.zeros(0)
    err = (got.double() - want).abs()
    ok = (err <= 1e-5 * (want.abs() + lse + 1)) | (torch.isnan(got) & torch.isnan(want)) | (got.double() == want)
    assert bool(ok.all()), f"max error {err.max().item():.3g}"


@given(
    B=st.integers(0, 16),
    V=st.sampled_from([2, 31, 123, 1000, 32000]) | st.integers(2, 3000),
    dtype=st.sampled_from(list(DTYPES)),
    n_yes=st.integers(1, 3),
    n_no=st.integers(1, 3),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_oracle_2d(B, V, dtype, n_yes, n_no, scale, seed):
    torch.manual_seed(seed)
    assume(n_yes + n_no <= V)  # both sets non-empty and disjoint
    ids = torch.randperm(V)[: n_yes + n_no].tolist()
    yes, no = ids[:n_yes], ids[n_yes:]
    z = (torch.randn(B, V) * scale).to(DTYPES[dtype])
    got = rlaifv_fast.yes_no_logprobs(z, yes + yes[:1], no)  # a duplicate id is ignored
    want_y, want_n = oracle(z, yes, no)
    close(got.logp_yes, want_y, z)
    close(got.logp_no, want_n, z)
    assert torch.equal(got.accepted, got.logp_yes > got.logp_no)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_positions_3d(backend, dtype):
    z = make_logits(5, 7, 500, dtype=DTYPES[dtype], layout="strided")
    pos = torch.tensor([0, 6, -1, 3, -7], dtype=torch.int32)
    got = rlaifv_fast.yes_no_logprobs(z, [5, 9], [11], positions=pos)
    want_y, want_n = oracle(z, [5, 9], [11], positions=pos.long())
    close(got.logp_yes, want_y, z[:, 0])
    close(got.logp_no, want_n, z[:, 0])
    last = rlaifv_fast.yes_no_logprobs(z, [5, 9], [11])  # default: the last position
    torch.testing.assert_close(last.logp_yes, rlaifv_fast.yes_no_logprobs(z[:, -1], [5, 9], [11]).logp_yes)


def test_strict_verdict_ties_and_nan_reject():
    z = torch.zeros(3, 4)
    z[1, 0] = 1.0  # yes wins
    z[2, 2] = float("nan")
    out = rlaifv_fast.yes_no_logprobs(z, [0], [1])
    assert out.accepted.tolist() == [False, True, False]
    assert torch.isnan(out.logp_yes[2]) and torch.isfinite(out.logp_yes[:2]).all()


def test_full_vocabulary_softmax():
    # probability mass on other tokens lowers both: P(yes) + P(no) < 1
    z = torch.tensor([[2.0, 1.0, 5.0, 0.0]])
    out = rlaifv_fast.yes_no_logprobs(z, [0], [1])
    p = torch.softmax(z.double(), -1)[0]
    assert abs(out.logp_yes.exp().item() - p[0].item()) < 1e-6
    assert abs(out.logp_no.exp().item() - p[1].item()) < 1e-6


def test_response_scores_segment_reduction():
    accepted = torch.tensor([True, False, False, True, False])
    index = torch.tensor([0, 0, 2, 2, 2])
    out = rlaifv_fast.response_scores(accepted, index, num_responses=4)
    assert out.scores.tolist() == [-1.0, 0.0, -2.0, 0.0]
    assert out.n_claims.tolist() == [2, 0, 3, 0]  # responses 1 and 3 have no claims: flagged by n_claims == 0
    assert out.n_rejected.tolist() == [1, 0, 2, 0]


# --------------------------------------------------------------------------------------------------------------------
# bad input, torch.library and CUDA

ops = torch.ops.rlaifv_fast
DEV = "cuda"  # the CUDA cases are marked `cuda` and skipped without a device


def test_bad_inputs(backend):
    z = torch.randn(3, 10)
    with pytest.raises(ValueError, match="yes_ids is empty"):
        rlaifv_fast.yes_no_logprobs(z, [], [1])
    with pytest.raises(ValueError, match=r"no_ids holds token id 10, outside the vocabulary \[0, 10\)"):
        rlaifv_fast.yes_no_logprobs(z, [1], [10])
    with pytest.raises(ValueError, match="token id 2 is in both yes_ids and no_ids"):
        rlaifv_fast.yes_no_logprobs(z, [1, 2], [2, 3])
    with pytest.raises(ValueError, match=r"positions\[1\] = 5 is outside the 4 positions"):
        rlaifv_fast.yes_no_logprobs(torch.randn(3, 4, 10), [1], [2], positions=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="positions are only meaningful with"):
        rlaifv_fast.yes_no_logprobs(z, [1], [2], positions=torch.tensor([0, 0, 0]))
    with pytest.raises(TypeError, match="yes_ids must be a 1-D int32/int64 tensor"):
        rlaifv_fast.yes_no_logprobs(z, torch.tensor([1.0]), [2])


def test_response_scores_bad_inputs():
    acc = torch.tensor([True, False])
    with pytest.raises(ValueError, match="refers to response 3 but num_responses=2"):
        rlaifv_fast.response_scores(acc, torch.tensor([0, 3]), num_responses=2)
    with pytest.raises(ValueError, match="one entry per claim"):
        rlaifv_fast.response_scores(acc, torch.tensor([0]))
    with pytest.raises(TypeError, match="accepted must be a 1-D bool tensor"):
        rlaifv_fast.response_scores(torch.tensor([1, 0]), torch.tensor([0, 0]))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_matches_oracle(dtype):
    z = make_logits(64, 3, 152064, dtype=DTYPES[dtype], device=DEV)
    pos = torch.randint(-3, 3, (64,), device=DEV)
    got = rlaifv_fast.yes_no_logprobs(z, [10, 20], [30, 40], positions=pos)
    want_y, want_n = reference.yes_no_logprobs_reference(
        z.double(), torch.tensor([10, 20], device=DEV), torch.tensor([30, 40], device=DEV), positions=pos
    )
    torch.testing.assert_close(got.logp_yes.double(), want_y, rtol=1e-5, atol=2e-4)
    torch.testing.assert_close(got.logp_no.double(), want_n, rtol=1e-5, atol=2e-4)


def test_token_ids_must_be_integers():
    z = torch.randn(2, 10)
    with pytest.raises(TypeError, match=r"yes_ids must hold integer token ids, got 3.7"):
        rlaifv_fast.yes_no_logprobs(z, [3.7], [1])
    with pytest.raises(TypeError, match=r"no_ids must hold integer token ids, got '5'"):
        rlaifv_fast.yes_no_logprobs(z, [3], ["5"])


def test_opcheck():
    x = make_logits(3, 4, 29)
    yes, no = torch.tensor([1, 5]), torch.tensor([2])
    torch.library.opcheck(ops.yes_no_logprobs.default, (x, torch.tensor([0, -1, 2]), yes, no))
    torch.library.opcheck(ops.yes_no_logprobs.default, (x[:, :1], None, yes, no))


def test_compile_inductor():
    torch._dynamo.reset()
    x = make_logits(3, 5, 40)

    def f(x):
        yn = rlaifv_fast.yes_no_logprobs(x, [1, 2], [3])
        return yn.logp_yes, yn.logp_no

    for a, b in zip(torch.compile(f, fullgraph=True)(x), f(x)):
        torch.testing.assert_close(a, b)
