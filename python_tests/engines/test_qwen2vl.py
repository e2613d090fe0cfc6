"""Qwen2-VL (M-RoPE, dynamic image grids, mm_token_type_ids) on the tiny random-weight model, offline: the engine's
yes/no and sampling, response scoring and DPO training against direct transformers computations."""

from __future__ import annotations

import math
import os

import pytest
import torch
from fixtures_tiny import make_images, png_bytes
from safetensors.torch import load_file

from rlaifv_fast.pipeline.data import write_rlaifv_parquet
from rlaifv_fast.engines.base import DecodingConfig, SampleRequest, YesNoRequest
from rlaifv_fast.engines.hf import HFEngine

QUESTIONS = ["Is there a red circle?", "Is the sky blue?", "Is there a dog?", "Are there two cats?"]
TRIPLES_TEXT = [
    ("Describe the image.", "There is a red circle."),
    ("What is in the image?", "Two dogs and a cat."),
    ("Describe the image.", "No."),
]
PAIRS = [
    ("Describe the image.", "There is a red circle.", "There is a blue square and two dogs."),
    ("What is in the image?", "A small green triangle.", "A cat."),
    ("Describe the image.", "The background is black.", "The background is white with many red dots."),
    ("What color is the circle?", "The circle is red.", "The circle is blue."),
]

@pytest.fixture(scope="module")
def tiny_qwen2vl(tmp_path_factory):
    from rlaifv_fast.testing.tiny_qwen2vl import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl", seed=0)


@pytest.fixture(scope="module")
def engine(tiny_qwen2vl):
    with pytest.warns(UserWarning, match="plain path"):
        eng = HFEngine(tiny_qwen2vl)
        eng.yes_no([YesNoRequest("warm", "Is it?", None)])  # the one-time "no prefix sharing" warning
    return eng


@pytest.fixture(scope="module")
def reference(tiny_qwen2vl):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl, dtype=torch.float32).eval()
    return processor, model


def _prompt_inputs(processor, question: str, image) -> dict[str, torch.Tensor]:
    content = [{"type": "image"}, {"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def test_model_processor_and_template(tiny_qwen2vl, engine, reference):
    processor, model = reference
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert engine.config.model_type == "qwen2_vl" and engine.multimodal and not engine._positions_1d
    tok = engine.tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|endoftext|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id
    yes, no = engine.token_sets()
    assert {tok.convert_tokens_to_ids(w) for w in ("yes", "Yes")} <= set(yes)
    assert {tok.convert_tokens_to_ids(w) for w in ("no", "No")} <= set(no)
    rendered = engine.render("Is there a red circle?", image=True)
    assert rendered.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a red circle?"
                             "<|im_end|>\n<|im_start|>assistant\n")
    # images of different aspect ratios give different grids (a few tokens each), i.e. different M-RoPE positions
    counts = set()
    for img in make_images(3):
        enc = _prompt_inputs(processor, "Is it?", img)
        n = int((enc["input_ids"] == model.config.image_token_id).sum())
        assert n == int(enc["image_grid_thw"].prod()) // 4 and 4 <= n <= 9
        counts.add(tuple(enc["image_grid_thw"][0].tolist()))
    assert len(counts) > 1
    assert engine._eos_ids == sorted(tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))


def test_yes_no_matches_a_direct_forward(engine, reference):
    processor, model = reference
    imgs = make_images(3)
    requests = [YesNoRequest(f"r{i}", q, imgs[i % 3]) for i, q in enumerate(QUESTIONS)]
    requests.append(YesNoRequest("text", "Is the sky blue?", None))
    got = engine.yes_no(requests)
    assert [r.request_id for r in got] == [r.request_id for r in requests]
    yes, no = engine.token_sets()
    for req, res in zip(requests, got):
        if req.image is None:
            text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": req.question
                                                   + " Please answer yes or no."}]}], tokenize=False,
                                                 add_generation_prompt=True)
            inputs = dict(processor(text=[text], return_tensors="pt"))
        else:
            inputs = _prompt_inputs(processor, req.question + " Please answer yes or no.", req.image)
        with torch.no_grad():
            logp = model(**inputs).logits[0, -1].double().log_softmax(-1)
        assert res.logp_yes == pytest.approx(torch.logsumexp(logp[yes], 0).item(), abs=1e-5)
        assert res.logp_no == pytest.approx(torch.logsumexp(logp[no], 0).item(), abs=1e-5)
    assert len({round(r.logp_yes, 6) for r in got}) == len(got)  # the image and the question matter


def test_sample_same_seed_same_text_alone_or_batched(engine):
    imgs = make_images(3)
    requests = [SampleRequest(f"q{i}", q, imgs[i]) for i, (q, _) in enumerate(TRIPLES_TEXT)]
    requests.append(SampleRequest("text", "Describe a dog.", None))
    decoding = DecodingConfig(temperature=1.0, max_new_tokens=8)
    batched = engine.sample(requests, 3, decoding, run_seed=7)
    assert [[s.index for s in row] for row in batched] == [[0, 1, 2]] * len(requests)
    for req, row in zip(requests, batched):
        alone = engine.sample([req], 3, decoding, run_seed=7)[0]
        assert [(s.seed, s.text, s.num_tokens, s.finish_reason) for s in alone] == \
               [(s.seed, s.text, s.num_tokens, s.finish_reason) for s in row]
        assert all(1 <= s.num_tokens <= 8 and s.finish_reason in ("stop", "length") for s in row)
    texts = [s.text for row in batched for s in row]
    assert len(set(texts)) > len(texts) // 2  # per-candidate seeds: candidates differ
    again = engine.sample(requests[:1], 1, decoding, run_seed=8)[0][0]
    assert again.seed != batched[0][0].seed


def test_response_logps_matches_a_direct_forward(engine, reference):
    from rlaifv_fast.pipeline.scoring import Triple, response_logps

    processor, model = reference
    imgs = make_images(3)
    triples = [Triple(imgs[i], q, r) for i, (q, r) in enumerate(TRIPLES_TEXT)]
    got = response_logps(engine, triples, batch_size=3, return_per_token=True)
    alone = response_logps(engine, triples, batch_size=1)
    tok = engine.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for i, t in enumerate(triples):
        inputs = _prompt_inputs(processor, t.question, t.image)
        response = tok(t.response, add_special_tokens=False)["input_ids"] + [eos]
        P, R = inputs["input_ids"].shape[1], len(response)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([response])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"],
                                                 inputs["mm_token_type_ids"].new_zeros((1, R))], dim=1)
        with torch.no_grad():
            logp = model(**inputs).logits[0].double().log_softmax(-1)
        per_token = logp[P - 1 : P + R - 1].gather(1, torch.tensor(response)[:, None])[:, 0]
        assert got.counts[i].item() == R
        assert got.logps[i].item() == pytest.approx(per_token.sum().item(), abs=1e-5)
        assert alone.logps[i].item() == pytest.approx(per_token.sum().item(), abs=1e-5)
        assert torch.allclose(got.token_logps[i].double(), per_token, atol=1e-5)


def test_train_dpo_first_step_ln2_trains_the_lm_not_the_vision_tower(tiny_qwen2vl, tmp_path):
    from rlaifv_fast.pipeline.ref_logps import run_ref_logps
    from rlaifv_fast.pipeline.train import TrainConfig, train_dpo

    imgs = make_images(3)
    rows = [
        {"ds_name": "test", "image": {"bytes": png_bytes(imgs[i % 3]), "path": f"{i % 3}.png"}, "question": q,
         "chosen": c, "rejected": r, "origin_dataset": "t", "origin_split": "{}", "idx": f"pair{i}",
         "image_path": f"{i % 3}.png"}
        for i, (q, c, r) in enumerate(PAIRS)
    ]
    write_rlaifv_parquet(tmp_path / "pairs.rlaifv.parquet", rows)
    run_ref_logps(tmp_path / "pairs.rlaifv.parquet", HFEngine(tiny_qwen2vl), tmp_path / "pairs.ref.parquet",
                  progress=False)
    config = TrainConfig(lr=1e-3, warmup_ratio=0.0, max_steps=2, per_device_batch_size=2, sft_weight=0.0,
                         output_dir=str(tmp_path / "run"))
    result = train_dpo(tmp_path / "pairs.ref.parquet", tiny_qwen2vl, config)
    assert result.steps == 2 and len(result.metrics) == 2
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)

    before = load_file(os.path.join(tiny_qwen2vl, "model.safetensors"))
    after = load_file(os.path.join(result.final_dir, "model.safetensors"))
    assert before.keys() == after.keys()
    vision = [k for k in before if k.startswith(("visual.", "model.visual."))]
    language = [k for k in before if k not in vision]
    assert vision and language
    assert all(torch.equal(before[k], after[k]) for k in vision)
    assert sum(not torch.equal(before[k], after[k]) for k in language) > len(language) // 2


def test_truncated_responses_keep_per_token_image_inputs_aligned(tiny_qwen2vl, engine):
    """max_length cuts the response; Qwen2-VL's per-token processor outputs are cut with it (collate and the
    forward then agree on the length)."""
    from rlaifv_fast.pipeline.scoring import Triple, collate, encode_triples
    from rlaifv_fast.pipeline.train.trainer import _policy_logps, _truncate

    imgs = make_images(2)
    encoded = encode_triples(engine, [Triple(imgs[i], q, c) for i, (q, c, _) in enumerate(PAIRS[:2])])
    cut = [_truncate(e, e.prompt_len + 2)[0] for e in encoded]
    assert all(len(e.input_ids) == e.prompt_len + 2 for e in cut)
    for e in cut:
        for v in e.image_inputs.values():
            if hasattr(v, "dim") and v.dim() == 2 and v.shape[0] == 1 and v.shape[1] > 16:
                assert v.shape[1] == len(e.input_ids)
    logps = _policy_logps(engine.model, collate(engine, cut), ipo=False)
    assert logps.shape == (2,) and torch.isfinite(logps).all()
