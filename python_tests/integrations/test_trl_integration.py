"""TRL's DPOTrainer with rlaifv_fast's lm_head-fused label log-probs (rlaifv_fast.integrations.trl) against stock TRL.

- the same 3 DPO optimisation steps (same seed, data and config) give the same losses, weights and logged metrics,
  for the sigmoid and IPO losses, on a tiny offline Llama and a tiny LLaVA (images through TRL's vision collator);
- the patched fused head returns the per-token log-probs and metric fields of a float64 oracle (the logits written
  out) and the outputs and gradients of TRL's own head: plain, with a bias, scaled and soft-capped, under bf16 autocast;
- an older release of the supported range (`RLAIFV_TRL_COMPAT`: a folder holding it, installed with
  `pip install --no-deps --target`; `.ci/run` sets it) trains to the same losses and weights as stock TRL here, in a
  subprocess with that folder first on PYTHONPATH (marker `trl_compat`; skipped without the folder);
- the log-prob step never holds a (tokens, vocabulary) buffer: its peak memory beyond the model is far below one and
  below stock TRL's. Measured as the growth of the process's peak RSS (VmHWM after /proc/self/clear_refs) over its RSS
  before the step, in a fresh subprocess per head, on a 32k-vocabulary model where one (tokens, vocabulary) fp32
  buffer is ~117 MiB: torch's CPU allocator does not cache, and glibc serves and returns allocations this large with
  mmap/munmap, so the high-water mark follows the live tensors (tracemalloc does not see torch's allocations).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from rlaifv_fast.testing import TINY_WORDS  # noqa: E402

STEPS = 3
COMPAT_ENV = "RLAIFV_TRL_COMPAT"
_ALPHA_WORDS = [w for w in TINY_WORDS if w.isalpha() and w.islower()]
_METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "entropy", "logits/chosen",
            "logits/rejected", "mean_token_accuracy")


def _supported() -> bool:
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return Version(version("trl")) in SpecifierSet(">=1.15.0,<1.17")


requires_supported_trl = pytest.mark.skipif(
    not _supported(), reason="installed TRL is not one the integration supports"
)


def _preference_dataset(vlm: bool, n: int = 8, seed: int = 0):
    """Text rows (prompt / chosen / rejected strings) or, for a VLM, conversational rows with one image each."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(_ALPHA_WORDS) for _ in range(k))

    if not vlm:
        return Dataset.from_list([
            {"prompt": words(rng.randint(3, 8)), "chosen": " " + words(rng.randint(2, 7)),
             "rejected": " " + words(rng.randint(2, 7))}
            for _ in range(n)
        ])
    pixels = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        rows.append({
            "images": [Image.fromarray(pixels.integers(0, 256, (40, 48, 3), dtype=np.uint8))],
            "prompt": [{"role": "user", "content": "Describe the image. " + words(rng.randint(1, 4))}],
            "chosen": [{"role": "assistant", "content": words(rng.randint(2, 6))}],
            "rejected": [{"role": "assistant", "content": words(rng.randint(2, 6))}],
        })
    return Dataset.from_list(rows)


def train(trainer_cls, model_dir, out_dir, vlm: bool = False, **config):
    """STEPS DPO steps; (per-step losses, final state dict, logged metrics per step)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
    from trl import DPOConfig

    torch.manual_seed(0)
    if vlm:
        processing = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    else:
        processing = AutoTokenizer.from_pretrained(model_dir)
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
        bf16=False,  # DPOConfig defaults to bf16 autocast, which rounds TRL's logits to bf16 (ours stay fp32)
        **config,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=_preference_dataset(vlm), processing_class=processing)
    losses = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(*a, **k):
        loss = compute_loss(*a, **k)
        losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    logs = [{k: h[k] for k in _METRICS} for h in trainer.state.log_history if "loss" in h]
    return losses, state, logs


CASES = {  # id: (model, config)
    "text-sigmoid": ("text", {"loss_type": ["sigmoid"]}),
    "text-ipo": ("text", {"loss_type": ["ipo"]}),
    "text-sigmoid-precomputed-ref": ("text", {"loss_type": ["sigmoid"], "precompute_ref_log_probs": True}),
    "vlm-sigmoid": ("vlm", {"loss_type": ["sigmoid"]}),
    "vlm-ipo": ("vlm", {"loss_type": ["ipo"]}),
}
COMPAT_CASES = ("text-sigmoid", "text-ipo", "vlm-sigmoid")


@pytest.fixture(scope="module")
def models(tiny_llama, tiny_llava):
    return {"text": tiny_llama, "vlm": tiny_llava}


@pytest.fixture(scope="module")
def stock_runs(models, tmp_path_factory):
    """Stock TRL's runs, each computed once per module: case id -> (losses, state, logs)."""
    cache = {}

    def run(case):
        if case not in cache:
            from trl import DPOTrainer

            kind, config = CASES[case]
            out = tmp_path_factory.mktemp(f"stock-{case}")
            cache[case] = train(DPOTrainer, models[kind], out, vlm=kind == "vlm", **config)
        return cache[case]

    return run


def assert_same_run(ours, stock, initial_state, label):
    (our_losses, our_state, our_logs), (ref_losses, ref_state, ref_logs) = ours, stock
    print(f"\n{label}: losses stock TRL {ref_losses}\n{label}: losses rlaifv_fast {our_losses}")
    assert len(ref_losses) == len(our_losses) == STEPS
    for step, (a, b) in enumerate(zip(ref_losses, our_losses)):
        assert abs(a - b) <= 1e-4, f"{label} step {step}: stock {a} vs fused {b}"
    assert ref_losses[0] != ref_losses[-1]  # the steps actually trained: the loss moved and the weights changed
    assert ref_state.keys() == our_state.keys()
    # the weight updates agree to 0.1% of their size, per tensor: AdamW divides each entry's gradient by its own
    # magnitude, so where a gradient is near rounding noise the two runs' (equally valid) entries differ by up to lr
    for name in ref_state:
        if name.endswith("k_proj.bias"):
            # a key bias shifts all attention logits of a query alike: its exact gradient is 0, both runs feed AdamW
            # rounding noise only, which it turns into steps of +-lr of no consequence
            continue
        ref_update, our_update = ref_state[name] - initial_state[name], our_state[name] - initial_state[name]
        gap = (our_update - ref_update).norm().item()
        assert gap <= 1e-3 * ref_update.norm().item() + 1e-7, f"{label}: {name} update differs by {gap:.3g}"
    moved = max((ref_state[k] - initial_state[k]).abs().max().item() for k in ref_state)
    assert moved > 1e-3
    # the logged metrics (TRL's code downstream of the per-token outputs and the metric fields) agree too
    assert len(our_logs) == len(ref_logs) == STEPS
    for a, b in zip(ref_logs, our_logs):
        for key in _METRICS:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), f"{label}: {key}"


def _initial_state(model_dir, vlm):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    return cls.from_pretrained(model_dir, dtype=torch.float32).state_dict()


@requires_supported_trl
@pytest.mark.parametrize("case", list(CASES))
def test_three_dpo_steps_match_stock_trl(models, stock_runs, tmp_path, case):
    from rlaifv_fast.integrations.trl import FusedLogpsDPOTrainer

    kind, config = CASES[case]
    ours = train(FusedLogpsDPOTrainer, models[kind], tmp_path / "fused", vlm=kind == "vlm", **config)
    assert_same_run(ours, stock_runs(case), _initial_state(models[kind], kind == "vlm"), case)


# ---- the head alone: a float64 oracle and TRL's head


HEADS = {  # id: (bias, logit scale, soft-capping, bf16 autocast)
    "plain": (False, None, None, False),
    "bias": (True, None, None, False),
    "scaled-softcapped": (True, 0.5, 3.0, False),
    "bf16-autocast": (False, None, None, True),
}


def _head_model(model_dir, bias, scale, softcap):
    """The tiny Llama; optionally a random lm_head bias and a logit scale / final-logit soft-capping in its config
    (the config entries both fused heads read; Llama's own forward ignores them)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if bias:
        g = torch.Generator().manual_seed(1)
        model.lm_head.bias = torch.nn.Parameter(torch.randn(model.config.vocab_size, generator=g))
    if scale is not None:
        model.config.logit_scale = scale
    if softcap is not None:
        model.config.final_logit_softcapping = softcap
    return model


def _oracle(model, input_ids, attention_mask, labels, temperature, compute_dtype):
    """Per-token fields of the full float64 logits of the scored positions, from the model's own hidden states rounded
    to the compute dtype: log-prob of the label, entropy, log sum p^2, mean logit, label == argmax."""
    from rlaifv_fast.engines.lm_head import LMHead

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    y = labels[:, 1:]
    mask = y != -100
    head = LMHead.of(model)
    h = hidden[:, :-1][mask].to(compute_dtype).double()
    w = head.weight.detach().to(compute_dtype).double()
    b = None if head.bias is None else head.bias.detach().to(compute_dtype).double()
    z = head.transform(torch.nn.functional.linear(h, w, b)) / temperature
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    fields = {
        "log_probs": logp.gather(-1, y[mask][:, None])[:, 0],
        "entropy": -(p * logp).sum(-1),
        "log_sum_sq_probs": torch.log((p * p).sum(-1)),
        "mean_logits": z.mean(-1),
        "is_top1": z.argmax(-1) == y[mask],
    }
    return mask, fields


@requires_supported_trl
@pytest.mark.parametrize("head", list(HEADS))
def test_fused_head_outputs_and_gradients_match_trl(tiny_llama, head):
    from trl.trainer.utils import add_fused_lm_head

    from rlaifv_fast.integrations import trl as fused

    bias, scale, softcap, bf16 = HEADS[head]
    fields = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
    torch.manual_seed(0)
    V = _head_model(tiny_llama, False, None, None).config.vocab_size
    input_ids = torch.randint(5, V, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, :2] = 0  # left padding
    labels = input_ids.masked_fill(torch.rand(3, 11) < 0.4, -100)
    labels[1] = -100  # an all-masked row
    results = []
    for patch in (add_fused_lm_head, fused.add_fused_logps_lm_head):
        model = _head_model(tiny_llama, bias, scale, softcap)
        patch(model, temperature=0.7, outputs=fields)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # DPOConfig's default on CPU: bf16=True
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        # a per-sequence upstream gradient (as DPO's), i.e. a different coefficient for every token
        weights = torch.tensor([0.3, -1.2, 2.0])
        (out.log_probs.sum(-1) * weights).sum().add(out.loss).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out, grads))
    (ref, ref_grads), (ours, our_grads) = results
    compute_dtype = torch.bfloat16 if bf16 else torch.float32
    mask, oracle = _oracle(model, input_ids, attention_mask, labels, 0.7, compute_dtype)
    torch.testing.assert_close(ours.label_mask, mask)
    torch.testing.assert_close(ref.label_mask, mask)
    for name in fields:
        assert (getattr(ours, name)[~mask] == 0).all(), name
    # the log-probs: the op accumulates and keeps the logits in fp32, so it matches the float64 oracle on the
    # compute-dtype inputs; TRL rounds its logits to bf16 under autocast (first to the oracle within that rounding)
    torch.testing.assert_close(ours.log_probs[mask].double(), oracle["log_probs"], rtol=1e-5, atol=2e-5)
    trl_tol = 5e-2 if bf16 else 2e-5
    torch.testing.assert_close(ref.log_probs[mask].double(), oracle["log_probs"], rtol=trl_tol, atol=trl_tol)
    torch.testing.assert_close(ours.loss, ref.loss, rtol=trl_tol, atol=trl_tol)
    # the metric fields: projected in the compute dtype as TRL's (the same bf16 logits under autocast), so they match
    # TRL's closely, and the oracle within the rounding of those logits
    for name in ("entropy", "mean_logits", "log_sum_sq_probs"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(getattr(ours, name)[mask].double(), oracle[name], rtol=trl_tol, atol=trl_tol,
                                   msg=name)
    assert torch.equal(ours.is_top1, ref.is_top1)
    if not bf16:
        assert torch.equal(ours.is_top1[mask], oracle["is_top1"])
    # gradients: fp32 summation order differs; under autocast TRL rounds the logit gradient to bf16 before bf16
    # matmuls, and ours returns the bf16 inputs' gradients in bf16, so compare at the scale of each gradient
    rel = 2e-2 if bf16 else 2e-5
    assert ref_grads.keys() == our_grads.keys()
    for name in ref_grads:
        scale_ = ref_grads[name].abs().max().item()
        torch.testing.assert_close(our_grads[name], ref_grads[name], rtol=rel, atol=rel * scale_, msg=name)
    # without fused_lm_head the forward is the model's own (logits for generation)
    assert model(input_ids=input_ids).logits.shape == (3, 11, V)
    if head == "plain":  # a batch without one scored position: zeros, still differentiable (as TRL's)
        model.zero_grad()
        out = model(input_ids=input_ids, labels=torch.full_like(input_ids, -100), fused_lm_head=True)
        assert out.log_probs.shape == (3, 10) and (out.log_probs == 0).all() and (out.entropy == 0).all()
        out.log_probs.sum().backward()
        assert model.lm_head.weight.grad is not None and (model.lm_head.weight.grad == 0).all()


@requires_supported_trl
@pytest.mark.parametrize("scale, softcap", [(1.0, None), (0.5, 60.0)], ids=["plain", "scaled-softcapped"])
def test_metric_fields_over_many_blocks_match_float64_oracle(monkeypatch, scale, softcap):
    """The no-grad metric pass merged over many (rows, vocabulary slice) blocks: large logits (|z| ~ 100), ties
    between a label and an equal logit in an earlier column (also in an earlier slice), a bias, temperature."""
    from rlaifv_fast.engines.lm_head import LMHead
    from rlaifv_fast.integrations import trl as fused

    monkeypatch.setitem(fused._METRIC_CELLS, "cpu", 300)  # slices of 256 columns, one row per block
    assert fused._metric_blocks(12, 700, torch.device("cpu")) == (1, 256)
    g = torch.Generator().manual_seed(0)
    N, H, V = 12, 16, 700
    weight = torch.randn(V, H, generator=g) * 3
    weight[10] = weight[3]  # the same slice
    weight[600] = weight[3]  # a later slice
    bias = torch.randn(V, generator=g)
    bias[10] = bias[600] = bias[3]
    hidden = torch.randn(N, H, generator=g) * 3
    hidden[:4] = weight[3] * 2  # rows whose maximum is column 3, tied with 10 and 600
    targets = torch.randint(0, V, (N,), generator=g)
    targets[:4] = torch.tensor([3, 10, 600, 3])
    head = LMHead(weight, bias, scale, softcap)
    got = fused._metric_fields(hidden, weight, bias, targets, head, 0.7, fused._OPTIONAL_OUTPUTS)
    z = head.transform(torch.nn.functional.linear(hidden.double(), weight.double(), bias.double())) / 0.7
    assert z.abs().max() > 50
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    torch.testing.assert_close(got["entropy"].double(), -(p * logp).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["log_sum_sq_probs"].double(), torch.log((p * p).sum(-1)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["mean_logits"].double(), z.mean(-1), rtol=1e-5, atol=1e-4)
    expected_top1 = z.argmax(-1) == targets
    assert expected_top1[:4].tolist() == [True, False, False, True]  # the first of tied maxima counts
    assert torch.equal(got["is_top1"], expected_top1)
    assert fused._metric_fields(hidden, weight, bias, targets, head, 0.7, ("log_probs",)) == {}


@requires_supported_trl
def test_patch_dpo_trainer_instance_and_class(tiny_llama, stock_runs, tmp_path):
    from trl import DPOTrainer

    from rlaifv_fast.integrations import trl as fused

    ref_losses = stock_runs("text-sigmoid")[0]

    class Patched(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            fused.patch_dpo_trainer(self)
            assert getattr(self.model, fused._MARK)

    inst_losses, _, _ = train(Patched, tiny_llama, tmp_path / "instance", loss_type=["sigmoid"])
    patched_cls = fused.patch_dpo_trainer(DPOTrainer)
    assert issubclass(patched_cls, DPOTrainer)
    cls_losses, _, _ = train(patched_cls, tiny_llama, tmp_path / "class", loss_type=["sigmoid"])
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

    if not _supported():  # the installed TRL itself is refused at import, naming the supported range
        with pytest.raises(ImportError, match=r"supports TRL >=1\.15\.0,<1\.17"):
            importlib.import_module("rlaifv_fast.integrations.trl")
        return
    import rlaifv_fast.integrations.trl as fused

    for version in ("1.15.0", "1.16.0"):
        monkeypatch.setattr(fused, "trl_version", lambda v=version: v)
        assert fused.check_trl_version() == version
    for version in ("1.14.2", "1.17.0", "0.19.1", "1.16.1.dev0", "not-a-version"):
        monkeypatch.setattr(fused, "trl_version", lambda v=version: v)
        with pytest.raises(ImportError, match=rf"supports TRL >=1\.15\.0,<1\.17 .* TRL {version} is installed"):
            fused.check_trl_version()
    with pytest.raises(ImportError, match=r">=1\.15\.0,<1\.17"):
        fused.patch_dpo_trainer(object())
    monkeypatch.setattr(fused, "trl_version", lambda: None)
    with pytest.raises(ImportError, match=r"needs TRL: pip install 'trl>=1\.15\.0,<1\.17'"):
        fused.check_trl_version()


# ---- an older TRL release of the supported range, in a subprocess

_COMPAT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch

    test_file, out_dir, cases = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    models = json.loads(sys.argv[4])
    spec = importlib.util.spec_from_file_location("trl_integration_tests", test_file)
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    import trl
    import trl.trainer.dpo_trainer as dpo_module
    from trl.trainer.utils import add_fused_lm_head
    from rlaifv_fast.integrations.trl import FusedLogpsDPOTrainer, check_trl_version

    result = {"trl": trl.__version__, "trl_file": trl.__file__, "checked": check_trl_version(), "runs": {}}
    for case in cases:
        kind, config = tests.CASES[case]
        losses, state, logs = tests.train(FusedLogpsDPOTrainer, models[kind], f"{out_dir}/{case}",
                                          vlm=kind == "vlm", **config)
        torch.save(state, f"{out_dir}/{case}.pt")
        result["runs"][case] = {"losses": losses, "logs": logs}
    result["stock_head_restored"] = dpo_module.add_fused_lm_head is add_fused_lm_head
    print(json.dumps(result))
    """
)


def _compat_folder() -> Path:
    folder = os.environ.get(COMPAT_ENV)
    if not folder:
        pytest.skip(f"{COMPAT_ENV} is not set (a folder holding an older TRL release: pip install --no-deps "
                    "--target DIR trl==1.15.0; .ci/run sets it)")
    folder = Path(folder)
    if not (folder / "trl" / "__init__.py").is_file():
        pytest.skip(f"{COMPAT_ENV}={folder} holds no TRL (pip install --no-deps --target {folder} trl==1.15.0)")
    return folder


@pytest.mark.trl_compat
@requires_supported_trl
def test_older_trl_release_trains_like_stock_trl(models, stock_runs, tmp_path):
    """Our head under the older release vs stock TRL as installed here: the older release's own head is Triton-only
    (1.15.0 does not run on a CPU), and its DPOTrainer computes the same losses from the head's outputs."""
    from importlib.metadata import version

    folder = _compat_folder()
    script = tmp_path / "compat.py"
    script.write_text(_COMPAT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(script), __file__, str(tmp_path), ",".join(COMPAT_CASES),
         json.dumps({k: str(v) for k, v in models.items()})],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nolder TRL {result['trl']} from {result['trl_file']}; stock TRL here {version('trl')}")
    assert Path(result["trl_file"]).resolve().is_relative_to(folder.resolve())
    assert result["trl"] == result["checked"] != version("trl")
    assert result["stock_head_restored"]
    for case in COMPAT_CASES:
        kind, _ = CASES[case]
        run = result["runs"][case]
        ours = (run["losses"], torch.load(tmp_path / f"{case}.pt"), run["logs"])
        assert_same_run(ours, stock_runs(case), _initial_state(models[kind], kind == "vlm"),
                        f"{case} (TRL {result['trl']})")


# ---- peak memory of the log-prob step

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    which, vocab = sys.argv[1], int(sys.argv[2])
    if which == "trl":
        from trl.trainer.utils import add_fused_lm_head as patch
    else:
        from rlaifv_fast.integrations.trl import add_fused_logps_lm_head as patch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    patch(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # what DPOTrainer asks for

    def step(B, T):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, vocab, (B, T), generator=g)
        labels = ids.clone()
        labels[:, : T // 4] = -100  # prompt
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        logps = out.log_probs.sum(-1)
        (-torch.nn.functional.logsigmoid(logps[: B // 2] - logps[B // 2 :])).mean().backward()
        model.zero_grad(set_to_none=False)  # the gradient buffers stay: allocated by the warm-up
        return int(out.label_mask.sum())

    def kib(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    step(2, 8)  # warm up: lazy initialisation, gradient buffers
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS
    before = kib("VmRSS:")
    tokens = step(8, 160)
    peak = kib("VmHWM:")
    print(json.dumps({"peak_growth": (peak - before) * 1024, "tokens": tokens}))
    """
)


@requires_supported_trl
def test_logp_step_holds_no_tokens_by_vocabulary_buffer(tmp_path):
    vocab = 32000
    # glibc's mmap threshold fixed: allocations above 64 KiB come from mmap and go back at free, so the peak RSS
    # follows the live tensors (its default threshold grows with the allocations and keeps freed blocks resident)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "65536"}
    script = tmp_path / "mem.py"
    script.write_text(_MEMORY_SCRIPT)
    procs = {  # both at once: separate processes, each measures its own peak
        which: subprocess.Popen([sys.executable, str(script), which, str(vocab)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
        for which in ("trl", "rlaifv_fast")
    }
    res = {}
    for which, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        res[which] = json.loads(out.strip().splitlines()[-1])
    tokens = res["trl"]["tokens"]
    assert res["rlaifv_fast"]["tokens"] == tokens == 8 * 120  # 159 shifted labels per row, 39 of them prompt
    buffer = tokens * vocab * 4
    ours, stock = res["rlaifv_fast"]["peak_growth"], res["trl"]["peak_growth"]
    print(f"\nlog-prob step, {tokens} scored tokens x vocab {vocab} (one fp32 buffer = {buffer / 2**20:.0f} MiB): "
          f"peak RSS growth stock TRL {stock / 2**20:.0f} MiB, rlaifv_fast {ours / 2**20:.0f} MiB")
    # bounded blocks only (the op's 4 MiB logits block, the metric pass's 4 MiB block and its temporaries, the op's
    # (V, H) weight gradient before it is added to .grad): far from one (N, V) fp32 buffer, and below stock TRL's
    assert ours < buffer / 2
    assert ours < stock
