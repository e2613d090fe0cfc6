"""dpo_loss formulas, metrics, and the concatenated-logits path against a plain-PyTorch computation; bad inputs and
torch.compile(fullgraph=True) of a DPO step."""

import pytest
import torch
import torch.nn.functional as F

import rlaifv_fast
from rlaifv_fast import DPOConfig
from rlaifv_fast.ops import reference
from oracle import make_labels


def logps(P=5, dtype=torch.float64):
    return [torch.randn(P, dtype=dtype) * 10 for _ in range(4)]


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_sigmoid_and_robust(eps):
    pc, pr, rc, rr = logps()
    h = (pc - pr) - (rc - rr)
    out = rlaifv_fast.dpo_loss(pc, pr, rc, rr, config=DPOConfig(beta=0.3, label_smoothing=eps))
    want = (-(1 - eps) * F.logsigmoid(0.3 * h) - eps * F.logsigmoid(-0.3 * h)).mean()
    torch.testing.assert_close(out.loss, want)
    rob = rlaifv_fast.dpo_loss(pc, pr, rc, rr, config=DPOConfig(beta=0.3, loss_type="robust", label_smoothing=eps))
    want_r = ((-(1 - eps) * F.logsigmoid(0.3 * h) + eps * F.logsigmoid(-0.3 * h)) / (1 - 2 * eps)).mean()
    torch.testing.assert_close(rob.loss, want_r)


def test_hinge_ipo_and_sft_term():
    pc, pr, rc, rr = logps()
    h = (pc - pr) - (rc - rr)
    hinge = rlaifv_fast.dpo_loss(pc, pr, rc, rr, config=DPOConfig(beta=0.2, loss_type="hinge"))
    torch.testing.assert_close(hinge.loss, torch.relu(1 - 0.2 * h).mean())
    ipo = rlaifv_fast.dpo_loss(pc, pr, rc, rr, config=DPOConfig(beta=0.2, loss_type="ipo"))
    torch.testing.assert_close(ipo.loss, ((h - 1 / 0.4) ** 2).mean())
    sft = rlaifv_fast.dpo_loss(pc, pr, rc, rr, config=DPOConfig(beta=0.2, sft_weight=0.5))
    torch.testing.assert_close(sft.loss, -F.logsigmoid(0.2 * h).mean() + 0.5 * (-pc).mean())


def test_metrics():
    pc, pr, rc, rr = logps()
    out = rlaifv_fast.dpo_loss(pc, pr, rc, rr, config=DPOConfig(beta=0.1))
    torch.testing.assert_close(out.chosen_rewards, 0.1 * (pc - rc))
    torch.testing.assert_close(out.rejected_rewards, 0.1 * (pr - rr))
    assert out.accuracy.item() == ((pc - rc) > (pr - rr)).double().mean().item()
    torch.testing.assert_close(out.margin, (0.1 * ((pc - rc) - (pr - rr))).mean())
    assert not out.chosen_rewards.requires_grad


def test_reference_logps_get_no_gradient():
    pc, pr, rc, rr = [t.requires_grad_(True) for t in logps()]
    rlaifv_fast.dpo_loss(pc, pr, rc, rr).loss.backward()
    assert rc.grad is None and rr.grad is None and pc.grad is not None


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_from_concatenated_logits(loss_type):
    P, T, V = 3, 6, 40
    logits = torch.randn(2 * P, T, V, dtype=torch.float64, requires_grad=True)
    labels = make_labels(2 * P, T, V, masked_fraction=0.3)
    ref_c, ref_r = torch.randn(P, dtype=torch.float64), torch.randn(P, dtype=torch.float64)
    cfg = DPOConfig(beta=0.1, loss_type=loss_type, sft_weight=0.3)
    out = rlaifv_fast.dpo_loss_from_logits(logits, labels, ref_c, ref_r, config=cfg)
    out.loss.backward()
    x2 = logits.detach().clone().requires_grad_(True)
    pi, _, _ = reference.sequence_logps_reference(x2, labels, shift=True, average=loss_type == "ipo")
    want = rlaifv_fast.dpo_loss(pi[:P], pi[P:], ref_c, ref_r, config=cfg)
    want.loss.backward()
    torch.testing.assert_close(out.loss, want.loss)
    torch.testing.assert_close(logits.grad, x2.grad)


# --------------------------------------------------------------------------------------------------------------------
# bad input and torch.compile


def test_bad_inputs():
    a = torch.randn(3)
    with pytest.raises(ValueError, match=r"ref_rejected_logps has shape \(2,\), expected \(3,\)"):
        rlaifv_fast.dpo_loss(a, a, a, a[:2])
    with pytest.raises(ValueError, match="DPOConfig.beta must be a finite number > 0"):
        rlaifv_fast.DPOConfig(beta=0)
    with pytest.raises(ValueError, match="label_smoothing applies to sigmoid and robust"):
        rlaifv_fast.DPOConfig(loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="'nope' is not a valid DPOLossType"):
        rlaifv_fast.DPOConfig(loss_type="nope")
    with pytest.raises(ValueError, match=r"must be \(2P, T, V\)"):
        rlaifv_fast.dpo_loss_from_logits(torch.randn(3, 2, 4), torch.zeros(3, 2, dtype=torch.long), a[:1], a[:1])


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


def test_nonsense_parameters_are_refused():
    with pytest.raises(ValueError, match="beta must be a finite number > 0, got inf"):
        DPOConfig(beta=float("inf"))
    with pytest.raises(ValueError, match="sft_weight must be a finite number >= 0, got -1"):
        DPOConfig(sft_weight=-1.0)
