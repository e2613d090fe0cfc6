"""dpo_loss formulas, metrics, and the concatenated-logits path against a plain-PyTorch computation."""

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
