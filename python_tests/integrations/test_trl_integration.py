"""TRL's DPOTrainer with rlaifv_fast's fused label log-probs (rlaifv_fast.integrations.trl) against stock TRL.

- the same 3 DPO optimisation steps (tiny offline Llama, same seed, data and config) give the same losses and weights;
- the patched fused head returns the same per-token log-probs, metric fields and gradients as TRL's;
- the peak memory of the log-prob step (backbone + LM head + label log-probs, forward and backward) is lower. Measured
  as the growth of the process's peak RSS over its RSS just before the step, in a fresh subprocess per head, on a
  32k-vocabulary model where each (tokens, vocabulary) fp32 buffer is ~131 MB: torch's CPU allocator does not cache,
  and glibc serves and returns allocations this large with mmap/munmap, so the high-water mark follows the live
  tensors (tracemalloc does not see torch's allocations, and the profiler's memory events miss allocations inside ops).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from rlaifv_fast.testing import TINY_WORDS, build_tiny_llama  # noqa: E402

STEPS = 3
_ALPHA_WORDS = [w for w in TINY_WORDS if w.isalpha() and w.islower()]


def _supported() -> bool:
    from importlib.metadata import version

    return version("trl") in ("1.16.0",)


requires_supported_trl = pytest.mark.skipif(
    not _supported(), reason="installed TRL is not one the integration supports"
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", seed=0)


def _preference_dataset(n: int = 12, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(_ALPHA_WORDS) for _ in range(k))

    rows = [
        {
            "prompt": words(rng.randint(3, 8)),
            "chosen": " " + words(rng.randint(2, 7)),
            "rejected": " " + words(rng.randint(2, 7)),
        }
        for _ in range(n)
    ]
    return Dataset.from_list(rows)


def _train(trainer_cls, model_dir, out_dir, **config):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=STEPS,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        beta=0.1,
        bf16=False,  # DPOConfig defaults to bf16 autocast, which rounds both heads' logit gradients to bf16
        **config,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=_preference_dataset(), processing_class=tokenizer)
    losses = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(*a, **k):
        loss = compute_loss(*a, **k)
        losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return losses, state, trainer


@requires_supported_trl
@pytest.mark.parametrize(
    "loss_type, precompute_ref", [("sigmoid", False), ("ipo", False), ("sigmoid", True)],
    ids=["sigmoid", "ipo", "sigmoid-precomputed-ref"],
)
def test_three_dpo_steps_match_stock_trl(tiny_llama, tmp_path, loss_type, precompute_ref):
    from trl import DPOTrainer

    from rlaifv_fast.integrations.trl import FusedLogpsDPOTrainer

    config = {"loss_type": [loss_type], "precompute_ref_log_probs": precompute_ref}
    ref_losses, ref_state, ref_trainer = _train(DPOTrainer, tiny_llama, tmp_path / "stock", **config)
    our_losses, our_state, our_trainer = _train(FusedLogpsDPOTrainer, tiny_llama, tmp_path / "fused", **config)
    print(f"\n{loss_type} losses stock TRL {ref_losses}\n{loss_type} losses rlaifv_fast {our_losses}")
    assert len(ref_losses) == len(our_losses) == STEPS
    for step, (a, b) in enumerate(zip(ref_losses, our_losses)):
        assert abs(a - b) <= 1e-4, f"step {step}: stock {a} vs fused {b}"
    # the steps actually trained: the loss moved and the weights changed
    assert ref_losses[0] != ref_losses[-1]
    assert ref_state.keys() == our_state.keys()
    for name in ref_state:
        torch.testing.assert_close(our_state[name], ref_state[name], rtol=1e-4, atol=1e-5, msg=name)
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).state_dict()
    moved = max((ref_state[k] - initial[k]).abs().max().item() for k in ref_state)
    assert moved > 1e-3
    # the logged metrics (computed by TRL downstream of the per-token outputs) agree too
    ref_logs = [h for h in ref_trainer.state.log_history if "loss" in h]
    our_logs = [h for h in our_trainer.state.log_history if "loss" in h]
    for a, b in zip(ref_logs, our_logs):
        for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "entropy",
                    "logits/chosen", "logits/rejected", "mean_token_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key


def _batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return batch["input_ids"], batch["attention_mask"], labels


@requires_supported_trl
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_fused_head_outputs_and_gradients_match_trl(tiny_llama, bf16):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rlaifv_fast.integrations.trl import add_fused_logps_lm_head

    fields = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
    from transformers import AutoConfig

    torch.manual_seed(0)
    input_ids = torch.randint(5, AutoConfig.from_pretrained(tiny_llama).vocab_size, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, :2] = 0  # left padding
    labels = input_ids.masked_fill(torch.rand(3, 11) < 0.4, -100)
    labels[1] = -100  # an all-masked row
    results = []
    for patch in (add_fused_lm_head, add_fused_logps_lm_head):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        patch(model, temperature=0.7, outputs=fields)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # DPOConfig's default on CPU: bf16=True
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        # a per-sequence upstream gradient (as DPO's), i.e. a different coefficient for every token
        weights = torch.tensor([0.3, -1.2, 2.0])
        (out.log_probs.sum(-1) * weights).sum().add(out.loss).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out, grads))
    (ref, ref_grads), (ours, our_grads) = results
    torch.testing.assert_close(ours.label_mask, ref.label_mask)
    # both read the same logits (bf16 under autocast) and accumulate in fp32
    torch.testing.assert_close(ours.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for name in fields:
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5, atol=1e-5, msg=name)
    assert (ours.log_probs[~ours.label_mask] == 0).all()
    # gradients: fp32 summation order differs; under autocast both round the logit gradient to bf16 (ties may round
    # differently) before the bf16 matmuls, so compare at the scale of each gradient with bf16's resolution
    rel = 2e-2 if bf16 else 2e-6
    for name in ref_grads:
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(our_grads[name], ref_grads[name], rtol=rel, atol=rel * scale, msg=name)
    # without fused_lm_head the forward is the model's own (logits for generation)
    assert model(input_ids=input_ids).logits.shape == (3, 11, model.config.vocab_size)


@requires_supported_trl
def test_patch_dpo_trainer_instance_and_class(tiny_llama, tmp_path):
    from trl import DPOTrainer

    from rlaifv_fast.integrations import trl as fused

    ref_losses, _, _ = _train(DPOTrainer, tiny_llama, tmp_path / "stock")

    class Patched(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            fused.patch_dpo_trainer(self)

    inst_losses, _, inst_trainer = _train(Patched, tiny_llama, tmp_path / "instance")
    assert getattr(inst_trainer.model, fused._MARK)
    cls_losses, _, cls_trainer = _train(fused.patch_dpo_trainer(DPOTrainer), tiny_llama, tmp_path / "class")
    assert isinstance(cls_trainer, DPOTrainer) and getattr(cls_trainer.model, fused._MARK)
    assert fused.patch_dpo_trainer(fused.FusedLogpsDPOTrainer) is fused.FusedLogpsDPOTrainer
    # the stock trainer is left alone: TRL's own head is back in place after each patched construction
    import trl.trainer.dpo_trainer as dpo_module
    from trl.trainer.utils import add_fused_lm_head

    assert dpo_module.add_fused_lm_head is add_fused_lm_head
    for losses in (inst_losses, cls_losses):
        assert losses == pytest.approx(ref_losses, abs=1e-4)
    with pytest.raises(TypeError, match="DPOTrainer"):
        fused.patch_dpo_trainer(object())


def test_unsupported_trl_version_is_refused(monkeypatch):
    import importlib

    if not _supported():  # the installed TRL itself is refused at import, naming the supported versions
        with pytest.raises(ImportError, match=r"supports TRL 1\.16\.0 only"):
            importlib.import_module("rlaifv_fast.integrations.trl")
        return
    import rlaifv_fast.integrations.trl as fused

    monkeypatch.setattr(fused, "trl_version", lambda: "0.19.1")
    with pytest.raises(ImportError, match=r"supports TRL 1\.16\.0 only.*0\.19\.1"):
        fused.check_trl_version()
    with pytest.raises(ImportError, match=r"1\.16\.0"):
        fused.patch_dpo_trainer(object())
    monkeypatch.setattr(fused, "trl_version", lambda: None)
    with pytest.raises(ImportError, match=r"needs TRL: pip install trl==1\.16\.0"):
        fused.check_trl_version()


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from transformers import AutoModelForCausalLM

    which, model_dir = sys.argv[1], sys.argv[2]
    if which == "trl":
        from trl.trainer.utils import add_fused_lm_head as patch
    else:
        from rlaifv_fast.integrations.trl import add_fused_logps_lm_head as patch

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    patch(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # what DPOTrainer asks for

    def step(B, T):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, model.config.vocab_size, (B, T), generator=g)
        labels = ids.clone()
        labels[:, : T // 4] = -100  # prompt
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        logps = out.log_probs.sum(-1)
        (-torch.nn.functional.logsigmoid(logps[: B // 2] - logps[B // 2 :])).mean().backward()
        model.zero_grad(set_to_none=False)
        return out

    step(2, 8)  # warm up: lazy initialisation, gradient buffers

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    before = rss()
    out = step(8, 160)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = int(out.label_mask.sum())
    print(json.dumps({"peak_growth": peak - before, "tokens": tokens, "vocab": model.config.vocab_size}))
    """
)


def _letters(i: int) -> str:
    s = ""
    for _ in range(4):
        s = "abcdefghijklmnopqrstuvwxyz"[i % 26] + s
        i //= 26
    return "q" + s


@requires_supported_trl
def test_logp_step_peak_memory_is_lower(tmp_path):
    extra = [_letters(i) for i in range(32000 - len(TINY_WORDS) - 16)]
    model_dir = build_tiny_llama(tmp_path / "wide-llama", seed=0, words=extra)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    script = tmp_path / "mem.py"
    script.write_text(_MEMORY_SCRIPT)
    res = {}
    for which in ("trl", "rlaifv_fast"):
        proc = subprocess.run(
            [sys.executable, str(script), which, str(model_dir)],
            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        res[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    tokens, vocab = res["trl"]["tokens"], res["trl"]["vocab"]
    buffer = tokens * vocab * 4
    print(
        f"\nlog-prob step, {tokens} scored tokens x vocab {vocab} (one fp32 buffer = {buffer / 2**20:.0f} MiB): "
        f"peak RSS growth stock TRL {res['trl']['peak_growth'] / 2**20:.0f} MiB, "
        f"rlaifv_fast {res['rlaifv_fast']['peak_growth'] / 2**20:.0f} MiB"
    )
    assert res["rlaifv_fast"]["tokens"] == tokens
    # ours holds one (tokens, vocab) buffer (gradient written over it) plus bounded metric chunks
    assert res["rlaifv_fast"]["peak_growth"] < res["trl"]["peak_growth"] - buffer
