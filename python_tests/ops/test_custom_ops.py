"""torch.library registration: opcheck of every custom op, and torch.compile(fullgraph=True) tracing the public ops."""

import pytest
import torch

import rlaifv_fast
from oracle import make_labels, make_logits

ops = torch.ops.rlaifv_fast


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


def test_opcheck_bon_and_yes_no():
    x = make_logits(3, 4, 29)
    r = make_logits(3, 4, 29)
    y = make_labels(3, 4, 29)
    torch.library.opcheck(ops.bon_token_rewards.default, (x, r, None, y, -100, True, 1.0))
    torch.library.opcheck(ops.bon_token_rewards.default, (x, None, torch.randn(3, 4), y, -100, False, 1.0))
    yes, no = torch.tensor([1, 5]), torch.tensor([2])
    torch.library.opcheck(ops.yes_no_logprobs.default, (x, torch.tensor([0, -1, 2]), yes, no))
    torch.library.opcheck(ops.yes_no_logprobs.default, (x[:, :1], None, yes, no))


def test_compile_fullgraph_dpo_step():
    torch._dynamo.reset()
    h = torch.randn(4, 6, 16, requires_grad=True)
    w = torch.randn(50, 16)
    y = make_labels(4, 6, 50, masked_fraction=0.3)
    ref = torch.randn(4)

    def step(h):
        logits = h @ w.T
        out = rlaifv_fast.dpo_loss_from_logits(
            logits, y, ref[:2], ref[2:], config=rlaifv_fast.DPOConfig(beta=0.1, sft_weight=0.5)
        )
        return out.loss

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(h)
    (g_c,) = torch.autograd.grad(loss_c, h)
    loss_e = step(h)
    (g_e,) = torch.autograd.grad(loss_e, h)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(g_c, g_e)


def test_compile_inductor_all_ops():
    torch._dynamo.reset()
    x = make_logits(3, 5, 40)
    r = make_logits(3, 5, 40)
    y = make_labels(3, 5, 40)

    def f(x, r):
        s = rlaifv_fast.sequence_logps(x, y, shift=True, average=True).logps
        b = rlaifv_fast.bon_rewards(x, r, y, beta=0.1, groups=3).rewards
        yn = rlaifv_fast.yes_no_logprobs(x, [1, 2], [3])
        return s, b, yn.logp_yes, yn.logp_no

    got = torch.compile(f, fullgraph=True)(x, r)
    want = f(x, r)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
