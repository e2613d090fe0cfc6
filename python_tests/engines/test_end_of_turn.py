"""The end-of-turn token (ChatPrompts.end_of_turn_id) and the tokens generation stops at (stop_ids), read from the
chat template, for checkpoints whose tokenizer EOS is not what closes an assistant turn (Gemma: <eos> vs
<end_of_turn>; Idefics3: <|end_of_text|> vs <end_of_utterance>), a template that writes no special token after the
answer (falls back to the tokenizer's EOS), and Gemma 3's placeholder tokens (the prompt's <start_of_image> and the
<image_soft_token> it expands into are both never generated)."""

from __future__ import annotations

import pytest

from rlaifv_fast.engines.prompting import ChatPrompts
from rlaifv_fast.testing.tiny_gemma import build_tiny_gemma2, build_tiny_gemma3
from rlaifv_fast.testing.tiny_idefics3 import build_tiny_idefics3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eot")
    return {"gemma2": build_tiny_gemma2(root / "gemma2"), "gemma3": build_tiny_gemma3(root / "gemma3"),
            "idefics3": build_tiny_idefics3(root / "idefics3")}


@pytest.mark.parametrize("key, end, eos", [("gemma2", "<end_of_turn>", "<eos>"), ("gemma3", "<end_of_turn>", "<eos>"),
                                           ("idefics3", "<end_of_utterance>", "<|end_of_text|>")])
def test_end_of_turn_is_the_token_closing_the_assistant_turn(folders, key, end, eos):
    prompts = ChatPrompts.load(str(folders[key]), model_name=key)
    tok = prompts.tokenizer
    assert tok.eos_token == eos
    generation_eos = [tok.convert_tokens_to_ids(eos), tok.convert_tokens_to_ids(end)]
    assert tok.convert_ids_to_tokens(prompts.end_of_turn_id(generation_eos)) == end
    assert tok.convert_ids_to_tokens(prompts.end_of_turn_id()) == end  # from the template alone
    assert prompts.stop_ids(generation_eos) == sorted(generation_eos)
    assert prompts.stop_ids(None) == sorted(generation_eos)  # the end-of-turn token and the tokenizer's EOS


def test_a_template_without_an_end_token_falls_back_to_eos(folders):
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    prompts = ChatPrompts.load(str(folders["gemma2"]), model_name="gemma2", chat_template=template)
    assert prompts.tokenizer.convert_ids_to_tokens(prompts.end_of_turn_id()) == "<eos>"


def test_gemma3_placeholders_are_the_prompt_and_the_expanded_image_tokens(folders):
    prompts = ChatPrompts.load(str(folders["gemma3"]), model_name="gemma3")
    assert prompts.placeholder_tokens() == ["<start_of_image>", "<image_soft_token>"]
