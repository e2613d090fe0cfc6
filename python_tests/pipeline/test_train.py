"""DPO training on the tiny LLaVA: the step-0 loss, what trains and what stays frozen, checkpoints, resume, DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from fixtures_tiny import make_images, png_bytes
from safetensors.torch import load_file

from rlaifv_fast.cli import main
from rlaifv_fast.pipeline.data import write_rlaifv_parquet
from rlaifv_fast.engines.hf import HFEngine
from rlaifv_fast.pipeline.ref_logps import run_ref_logps
from rlaifv_fast.pipeline.train import LoRAConfig, TrainConfig, train_dpo

PAIRS = [
    ("Describe the image.", "There is a red circle.", "There is a blue square and two dogs."),
    ("What is in the image?", "A small green triangle.", "A cat."),
    ("Describe the image.", "The background is black.", "The background is white with many red dots."),
    ("What color is the circle?", "The circle is red.", "The circle is blue."),
    ("Describe the image.", "Two red dots.", "Three blue squares and a dog."),
    ("What is in the image?", "A blue square.", "A green circle and a cat."),
    ("How many dots are there?", "There are two dots.", "There are many dots."),
    ("Describe the image.", "A white background.", "A black background with a red triangle."),
]


def _load(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


def _metrics(folder) -> list[dict]:
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pairs(tiny_llava, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    imgs = make_images(3)
    rows = [
        {"ds_name": "test", "image": {"bytes": png_bytes(imgs[i % 3]), "path": f"{i % 3}.png"}, "question": q,
         "chosen": c, "rejected": r, "origin_dataset": "t", "origin_split": "{}", "idx": f"pair{i}",
         "image_path": f"{i % 3}.png"}
        for i, (q, c, r) in enumerate(PAIRS)
    ]
    write_rlaifv_parquet(root / "pairs.rlaifv.parquet", rows)
    run_ref_logps(root / "pairs.rlaifv.parquet", HFEngine(tiny_llava), root / "pairs.ref.parquet", progress=False)
    return root / "pairs.ref.parquet"


def test_first_step_is_ln2_lm_trains_vision_frozen_checkpoints_load(tiny_llava, pairs, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "run"
    config = TrainConfig(lr=1e-3, warmup_ratio=0.0, max_steps=4, per_device_batch_size=2, save_every=2,
                         output_dir=str(out))
    result = train_dpo(pairs, tiny_llava, config)
    assert result.steps == 4 and result.final_dir == str(out / "final") and result.truncated == 0
    # policy == reference at step 0: h = 0 and the sigmoid loss is ln 2, rewards 0
    first = result.metrics[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/margin"]) < 1e-5 and first["lr"] == pytest.approx(1e-3)
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]

    from rlaifv_fast.engines.layout import hub_layout_key

    # saved in the published LLaVA layout (vision_tower.vision_model.*), which vLLM and transformers both load
    before = {hub_layout_key(k): v for k, v in _load(tiny_llava).items()}
    after = _load(result.final_dir)
    assert before.keys() == after.keys() and any(k.startswith("vision_tower.vision_model.") for k in after)
    vision = [k for k in before if "vision_tower" in k]
    language = [k for k in before if "language_model" in k or "lm_head" in k]
    assert vision and language
    assert all(torch.equal(before[k], after[k]) for k in vision)
    assert sum(not torch.equal(before[k], after[k]) for k in language) > len(language) // 2

    for folder in (out / "checkpoint-2", out / "checkpoint-4", out / "final"):
        files = os.listdir(folder)
        assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
        assert "processor_config.json" in files or "preprocessor_config.json" in files
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary folders left
    assert all(torch.equal(after[k], v) for k, v in _load(out / "checkpoint-4").items())
    model = AutoModelForImageTextToText.from_pretrained(result.final_dir)
    loaded = dict(model.named_parameters())
    assert AutoProcessor.from_pretrained(result.final_dir) is not None
    name = next(k for k in loaded if "language_model" in k and k.endswith("q_proj.weight"))
    assert not torch.equal(loaded[name], AutoModelForImageTextToText.from_pretrained(tiny_llava).state_dict()[name])


def test_loss_decreases(tiny_llava, pairs, tmp_path):
    config = TrainConfig(lr=2e-3, warmup_ratio=0.0, max_steps=10, per_device_batch_size=4, sft_weight=0.0,
                         output_dir=str(tmp_path / "run"))
    losses = [m["loss"] for m in train_dpo(pairs, tiny_llava, config).metrics]
    assert len(losses) == 10
    assert losses[-1] < 0.5 * losses[0]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_truncation_scores_the_same_tokens_as_the_reference(tiny_llava, pairs, tmp_path):
    engine = HFEngine(tiny_llava)
    prompt_len = len(engine._encode_group([engine.render("What is in the image?", image=True)],
                                          make_images(1)[0])[0][0])
    config = TrainConfig(max_length=prompt_len + 3, max_steps=2, per_device_batch_size=4, lr=1e-3,
                         loss_type="ipo", output_dir=str(tmp_path / "run"))
    result = train_dpo(pairs, tiny_llava, config)
    assert result.truncated > 0
    # ipo at step 0: h = 0, loss = (1 / (2 beta))^2 only if the reference means cover the same truncated tokens
    assert result.metrics[0]["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, abs=1e-3)


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_llava, pairs, tmp_path):
    base = dict(lr=1e-3, max_steps=6, per_device_batch_size=2, save_every=3, seed=3)

    class Stop(Exception):
        pass

    def crash(step, metrics):  # killed after logging step 4, past the last checkpoint (3)
        if step == 4:
            raise Stop

    killed = TrainConfig(**base, output_dir=str(tmp_path / "killed"))
    with pytest.raises(Stop):
        train_dpo(pairs, tiny_llava, killed, callback=crash)
    assert (tmp_path / "killed" / "checkpoint-3").is_dir() and not (tmp_path / "killed" / "final").exists()
    assert [m["step"] for m in _metrics(tmp_path / "killed")] == [1, 2, 3, 4]
    resumed = train_dpo(pairs, tiny_llava, TrainConfig(**base, output_dir=str(tmp_path / "killed"), resume=True))
    assert resumed.resumed_from == str(tmp_path / "killed" / "checkpoint-3")
    assert [m["step"] for m in resumed.metrics] == [4, 5, 6]
    full = train_dpo(pairs, tiny_llava, TrainConfig(**base, output_dir=str(tmp_path / "full")))
    for a, b in zip(full.metrics[3:], resumed.metrics):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    want, got = _load(full.final_dir), _load(resumed.final_dir)
    assert all(torch.allclose(want[k], got[k], atol=1e-6, rtol=0) for k in want)
    assert [m["step"] for m in _metrics(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]


def test_lora_trains_adapters_and_saves_a_merged_model(tiny_llava, pairs, tmp_path):
    pytest.importorskip("peft")
    config = TrainConfig(lora=LoRAConfig(r=4, alpha=8), lr=1e-2, warmup_ratio=0.0, max_steps=2,
                         per_device_batch_size=4, save_every=1, output_dir=str(tmp_path / "run"))
    result = train_dpo(pairs, tiny_llava, config)
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert "adapter_model.safetensors" in os.listdir(tmp_path / "run" / "checkpoint-1")
    from rlaifv_fast.engines.layout import hub_layout_key

    # saved in the published LLaVA layout (vision_tower.vision_model.*), which vLLM and transformers both load
    before = {hub_layout_key(k): v for k, v in _load(tiny_llava).items()}
    after = _load(result.final_dir)
    assert before.keys() == after.keys() and any(k.startswith("vision_tower.vision_model.") for k in after)  # merged: plain weights, no adapter keys
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("language_model" in k and "_proj" in k for k in changed)


def test_lora_without_peft_is_a_clear_error(tiny_llava, pairs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        train_dpo(pairs, tiny_llava, TrainConfig(lora=LoRAConfig(), output_dir=str(tmp_path / "run")))


def test_bad_config_and_missing_reference_columns(tiny_llava, tmp_path):
    with pytest.raises(ValueError, match="per_device_batch_size"):
        TrainConfig(per_device_batch_size=0)
    with pytest.raises(ValueError):
        TrainConfig(loss_type="nope")
    imgs = make_images(1)
    rows = [{"ds_name": "t", "image": {"bytes": png_bytes(imgs[0]), "path": "a.png"}, "question": "Q?",
             "chosen": "A red circle.", "rejected": "A cat.", "origin_dataset": "t", "origin_split": "{}",
             "idx": "p0", "image_path": "a.png"}]
    write_rlaifv_parquet(tmp_path / "p.parquet", rows)
    with pytest.raises(ValueError, match="reflogps"):
        train_dpo(tmp_path / "p.parquet", tiny_llava, TrainConfig(output_dir=str(tmp_path / "run")))


def test_two_process_ddp_matches_one_process(tiny_llava, pairs, tmp_path):
    """2 processes x 2 pairs (DDP, gloo on CPU) == 1 process x 4 pairs. On one machine without MPI, accelerate
    launch --cpu starts a single process, so torchrun starts the two and the Accelerator joins them (MULTI_CPU)."""
    common = ["--pairs", str(pairs), "--model", str(tiny_llava), "--lr", "1e-3", "--warmup-ratio", "0",
              "--max-steps", "3", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rlaifv_fast.cli", "train", *common, "--per-device-batch-size", "2", "--output-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["notes"]["steps"] == 3
    assert main(["train", *common, "--per-device-batch-size", "4", "--output-dir", str(tmp_path / "one")]) == 0
    ddp, one = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    assert [m["step"] for m in ddp] == [m["step"] for m in one] == [1, 2, 3]
    for a, b in zip(ddp, one):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    want, got = _load(tmp_path / "one" / "final"), _load(tmp_path / "ddp" / "final")
    assert all(torch.allclose(want[k], got[k], atol=1e-5) for k in want)


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--pairs", "--model", "--output-dir", "--beta", "--loss-type", "--sft-weight", "--lr", "--epochs",
                 "--max-steps", "--per-device-batch-size", "--gradient-accumulation-steps", "--max-length", "--bf16",
                 "--gradient-checkpointing", "--no-freeze-vision-tower", "--lora", "--lora.r", "--seed", "--resume"):
        assert flag in text, flag


def test_gradient_checkpointing_and_bf16(tiny_llava, pairs, tmp_path):
    base = dict(lr=1e-3, warmup_ratio=0.0, max_steps=2, per_device_batch_size=4)
    plain = train_dpo(pairs, tiny_llava, TrainConfig(**base, output_dir=str(tmp_path / "plain")))
    ckpt = train_dpo(pairs, tiny_llava, TrainConfig(**base, gradient_checkpointing=True,
                                                     output_dir=str(tmp_path / "gc")))
    for a, b in zip(plain.metrics, ckpt.metrics):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    bf16 = train_dpo(pairs, tiny_llava, TrainConfig(**base, bf16=True, output_dir=str(tmp_path / "bf16")))
    assert abs(bf16.metrics[0]["loss"] - math.log(2)) < 0.05  # bf16 logits vs the float32 reference
    assert _load(bf16.final_dir)[next(iter(_load(tiny_llava)))].dtype == torch.float32  # master weights


def test_text_only_causal_lm(tiny_llama, tmp_path):
    rows = [{"ds_name": "t", "image": {"bytes": None, "path": None}, "question": q, "chosen": c, "rejected": r,
             "origin_dataset": "t", "origin_split": "{}", "idx": f"p{i}", "image_path": ""}
            for i, (q, c, r) in enumerate(PAIRS[:4])]
    write_rlaifv_parquet(tmp_path / "p.parquet", rows)
    run_ref_logps(tmp_path / "p.parquet", HFEngine(tiny_llama), tmp_path / "ref.parquet", progress=False)
    result = train_dpo(tmp_path / "ref.parquet", tiny_llama,
                       TrainConfig(lr=1e-3, warmup_ratio=0.0, max_steps=2, per_device_batch_size=2,
                                   output_dir=str(tmp_path / "run")))
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert result.metrics[1]["loss"] != pytest.approx(math.log(2), abs=1e-5)


def test_lm_head_chunked_path_equals_the_logits_path(tiny_llava, tmp_path):
    """The chunked LM-head path (no full logits) trains exactly like the logits path."""
    import torch
    from rlaifv_fast.ops import sequence_logps
    from rlaifv_fast.pipeline.scoring import Triple, collate, encode_triples
    from rlaifv_fast.engines.hf import HFEngine
    from rlaifv_fast.pipeline.train.trainer import _policy_logps
    from fixtures_tiny import make_images

    engine = HFEngine(tiny_llava, dtype="float32")
    image = make_images(1)[0]
    triples = [Triple(image, "Describe the image.", t) for t in
               ["there is a red circle .", "there is a blue square and a green triangle .", "no", "yes yes yes ."]]
    batch = collate(engine, encode_triples(engine, triples))
    model = engine.model
    grads = {}
    for path in ("logits", "lm_head_chunked"):
        model.zero_grad(set_to_none=True)
        g = torch.tensor([1.0, -2.0, 0.5, 3.0])
        logps = _policy_logps(model, batch, ipo=False, path=path)
        (logps * g).sum().backward()
        grads[path] = (logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (a, ga), (b, gb) = grads["logits"], grads["lm_head_chunked"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-6, msg=name)


def _tiny_softcapped(folder):
    """A text-only Gemma-2-style model (final-logit soft-capping 5, logits well past it) with the tiny tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    from rlaifv_fast.testing.tiny_vlm import BOS, EOS, PAD, SPECIAL_TOKENS, _build_tokenizer, _check_words

    tokenizer = _build_tokenizer(_check_words(None))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, head_dim=32, final_logit_softcapping=5.0,
                          initializer_range=0.5, bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_one_lm_head_definition_and_soft_capping(tmp_path):
    from rlaifv_fast.engines.lm_head import LMHead

    folder, model = _tiny_softcapped(tmp_path / "gemma2")
    head = LMHead.of(model)
    assert head.softcap == 5.0 and head.scale == 1.0 and not head.plain
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        assert torch.allclose(head.logits(out.hidden_states[-1]), out.logits, atol=1e-5)  # the model's own logits
        assert out.logits.abs().max() <= 5.0
    # the reference is scored with the capped logits, and the logits path trains on the same: ln 2 at step 1
    rows = [{"ds_name": "t", "image": {"bytes": None, "path": None}, "question": q, "chosen": c, "rejected": r,
             "origin_dataset": "t", "origin_split": "{}", "idx": f"p{i}", "image_path": ""}
            for i, (q, c, r) in enumerate(PAIRS[:2])]
    write_rlaifv_parquet(tmp_path / "p.parquet", rows)
    run_ref_logps(tmp_path / "p.parquet", HFEngine(folder), tmp_path / "ref.parquet", progress=False)
    config = TrainConfig(lr=1e-3, warmup_ratio=0.0, max_steps=1, per_device_batch_size=2,
                         output_dir=str(tmp_path / "run"))
    result = train_dpo(tmp_path / "ref.parquet", folder, config)
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # the fused lm_head path applies the same soft-capping (LMHead.op_kwargs): it agrees with the reference too
    fused = train_dpo(tmp_path / "ref.parquet", folder,
                      dataclasses.replace(config, logps_path="lm_head_chunked", output_dir=str(tmp_path / "run2")))
    assert fused.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # and the two paths give the same per-sequence policy log-probs, with the cap active (logits past it)
    from rlaifv_fast.pipeline.scoring import Triple, collate, encode_triples
    from rlaifv_fast.pipeline.train.trainer import _policy_logps

    engine = HFEngine(folder, dtype="float32")
    batch = collate(engine, encode_triples(engine, [Triple(None, q, c) for q, c, _ in PAIRS[:3]]))
    with torch.no_grad():
        raw = engine.model(**batch.inputs, output_hidden_states=True).hidden_states[-1]
        assert (torch.nn.functional.linear(raw, head.weight).abs() > 2 * head.softcap).any()  # tanh saturates
        paths = {p: _policy_logps(engine.model, batch, ipo=False, path=p) for p in ("logits", "lm_head_chunked")}
    torch.testing.assert_close(paths["lm_head_chunked"], paths["logits"], rtol=0, atol=1e-5)
