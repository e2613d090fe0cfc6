"""Every bad input gets a clear TypeError/ValueError naming the tensor and the rule; never a crash or a silent NaN."""

import pytest
import torch

import rlaifv_fast


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


def test_bon_bad_inputs():
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


def test_yes_no_bad_inputs(backend):
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


def test_dpo_bad_inputs():
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


def test_ops_refuse_nonsense_parameters():
    from rlaifv_fast import DPOConfig, bon_rewards, yes_no_logprobs

    z = torch.randn(2, 10)
    with pytest.raises(TypeError, match=r"yes_ids must hold integer token ids, got 3.7"):
        yes_no_logprobs(z, [3.7], [1])
    with pytest.raises(TypeError, match=r"no_ids must hold integer token ids, got '5'"):
        yes_no_logprobs(z, [3], ["5"])
    with pytest.raises(ValueError, match="beta must be a finite number > 0, got inf"):
        DPOConfig(beta=float("inf"))
    with pytest.raises(ValueError, match="sft_weight must be a finite number >= 0, got -1"):
        DPOConfig(sft_weight=-1.0)
    logits = torch.randn(4, 3, 10)
    labels = torch.randint(0, 10, (4, 3))
    for beta in (-0.1, float("nan"), 0.0):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            bon_rewards(logits, logits.clone(), labels, beta=beta, groups=2)
