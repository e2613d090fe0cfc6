"""yes_no_logprobs against the float64 oracle, verdicts, and the claim -> response score reduction."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import rlaifv_fast
from oracle import oracle_yes_no
from oracle import DTYPES, make_logits


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
