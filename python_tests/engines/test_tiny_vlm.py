"""The tiny offline LLaVA / Llama builders (rlaifv_fast.testing)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from rlaifv_fast.testing import (
    TINY_CHAT_TEMPLATE,
    TINY_IMAGE_TOKENS,
    TINY_WORDS,
    build_tiny_llava,
    vllm_key,
    vllm_state_dict_keys,
)

REQUIRED_WORDS = (
    "yes Yes no No Please answer or . ? Is there a the image describe Describe red green blue yellow circle square "
    "triangle USER ASSISTANT :"
).split()


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_loads_offline(tiny_llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    processor = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, local_files_only=True)
    assert type(processor).__name__ == "LlavaProcessor"
    try:
        import torchvision  # noqa: F401
    except ImportError:  # no torchvision: the PIL backend must be the one loaded
        assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert sorted(p.name for p in tiny_llava.glob("*.safetensors")) == ["model.safetensors"]
    tok = AutoTokenizer.from_pretrained(tiny_llava, local_files_only=True)
    assert tok.chat_template == TINY_CHAT_TEMPLATE
    assert model.config.text_config.head_dim in (32, 64)
    assert model.config.text_config.hidden_size // model.config.text_config.num_attention_heads in (32, 64)


def test_vocabulary_has_required_words(tiny_llava):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava, local_files_only=True)
    for special in ("<pad>", "<s>", "</s>", "<unk>", "<image>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id or special == "<unk>"
    for word in REQUIRED_WORDS:
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    assert tok.encode("Hello", add_special_tokens=False) == [tok.unk_token_id]
    assert tok("Is there a red circle?")["input_ids"][0] == tok.bos_token_id
    text = "Is there a red circle? yes."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_chat_template_renders(tiny_llava):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}
    assert (
        processor.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        == "USER: <image>\nIs there a red circle? ASSISTANT:"
    )
    assert processor.apply_chat_template([user], tokenize=False) == "USER: <image>\nIs there a red circle? "
    text_only = [{"role": "user", "content": "Describe the image."}]
    assert processor.tokenizer.apply_chat_template(text_only, tokenize=False, add_generation_prompt=True) == (
        "USER: Describe the image. ASSISTANT:"
    )
    turns = [
        {"role": "system", "content": "Please answer."},
        user,
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
        {"role": "user", "content": [{"type": "text", "text": "Is it blue?"}]},
    ]
    assert processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == (
        "Please answer. USER: <image>\nIs there a red circle? ASSISTANT: yes</s>USER: Is it blue? ASSISTANT:"
    )


def test_processor_expands_image_and_model_runs(tiny_llava, images):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, local_files_only=True)
    enc = processor(text=["USER: <image>\nIs there a red circle? ASSISTANT:"], images=[images[0]], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert ids.count(model.config.image_token_id) == TINY_IMAGE_TOKENS == 16
    assert tuple(enc["pixel_values"].shape) == (1, 3, 32, 32)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, len(ids), len(processor.tokenizer))
    assert torch.isfinite(logits).all()
    # the image matters
    enc2 = processor(text=["USER: <image>\nIs there a red circle? ASSISTANT:"], images=[images[1]], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**enc2).logits[0, -1], logits[0, -1])


def test_deterministic_per_seed(tmp_path):
    state = torch.get_rng_state()
    a = build_tiny_llava(tmp_path / "a", seed=3)
    b = build_tiny_llava(tmp_path / "b", seed=3)
    c = build_tiny_llava(tmp_path / "c", seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _md5(a / name) == _md5(b / name), name
    assert _md5(a / "model.safetensors") != _md5(c / "model.safetensors")


def test_for_vllm_renames_vision_keys(tmp_path, tiny_llava):
    from transformers import AutoModelForImageTextToText

    v = build_tiny_llava(tmp_path / "v", seed=0, for_vllm=True)
    hf_keys = vllm_state_dict_keys(tiny_llava)
    vllm_keys = vllm_state_dict_keys(v)
    assert any(k.startswith("vision_tower.") for k in hf_keys)
    assert not any(k.startswith("vision_tower.vision_model.") for k in hf_keys)
    assert sorted(vllm_key(k) for k in hf_keys) == vllm_keys
    assert all(k.startswith("vision_tower.vision_model.") for k in vllm_keys if k.startswith("vision_tower."))
    others = [k for k in vllm_keys if not k.startswith("vision_tower.")]
    assert others and all(k.startswith(("language_model.model.", "language_model.lm_head.", "multi_modal_projector."))
                          for k in others)
    assert vllm_key("vision_tower.vision_model.x") == "vision_tower.vision_model.x"
    # transformers loads the vLLM layout to the same weights
    a = AutoModelForImageTextToText.from_pretrained(tiny_llava, local_files_only=True).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(v, local_files_only=True).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_extra_words(tmp_path):
    from transformers import AutoTokenizer

    path = build_tiny_llava(tmp_path / "w", words=["zebra", "giraffe", "red"])
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert len(tok) == 5 + len(TINY_WORDS) + 2
    assert tok.encode("zebra giraffe", add_special_tokens=False)[0] != tok.unk_token_id
    with pytest.raises(ValueError, match="without whitespace"):
        build_tiny_llava(tmp_path / "bad", words=["two words"])
    with pytest.raises(TypeError):
        build_tiny_llava(tmp_path / "bad2", words="zebra")


def test_tiny_llama_text_only(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    messages = [{"role": "user", "content": "Is it red?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "USER: Is it red? ASSISTANT:"
    with torch.no_grad():
        out = model(**tok(prompt, return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)
