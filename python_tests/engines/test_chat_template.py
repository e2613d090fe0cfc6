"""The chat_template engine option, on the tiny PaliGemma (whose folder, like the published checkpoints, has no chat
template): without one loading is an error saying how to pass it; given as a Jinja file or as the template text, the
prompts are rendered with it; bad values are errors naming them."""

from __future__ import annotations

import pytest
from fixtures_tiny import make_images

from rlaifv_fast.engines import EngineSpec, make_engine
from rlaifv_fast.engines.hf import HFEngine
from rlaifv_fast.engines.prompting import read_chat_template
from rlaifv_fast.testing import TINY_PALIGEMMA_PROMPT_TEMPLATE, build_tiny_paligemma


@pytest.fixture(scope="module")
def tiny_paligemma(tmp_path_factory):
    return build_tiny_paligemma(tmp_path_factory.mktemp("paligemma") / "model", seed=0)


def test_a_folder_without_template_is_an_error_naming_the_option(tiny_paligemma):
    with pytest.raises(ValueError, match="has no chat template.*chat_template"):
        HFEngine(tiny_paligemma)


def test_template_from_a_file_or_its_text_renders_the_prompt(tiny_paligemma, tmp_path):
    path = tmp_path / "paligemma.jinja"
    path.write_text(TINY_PALIGEMMA_PROMPT_TEMPLATE)
    from_file = make_engine("hf", str(tiny_paligemma), chat_template=str(path))
    from_text = HFEngine(tiny_paligemma, chat_template=TINY_PALIGEMMA_PROMPT_TEMPLATE)
    for engine in (from_file, from_text):
        assert engine.render("What color is the circle?", image=True) == "<image>What color is the circle?"
        assert engine.render("Describe it.", image=False) == "Describe it."


def test_the_processor_prefix_and_no_training_targets_among_the_image_inputs(tiny_paligemma):
    """The processor adds the image tokens, <bos> after them and the "\\n" ending the prefix (token type 0); its
    `labels` (a training target) are not an image input."""
    engine = HFEngine(tiny_paligemma, chat_template=TINY_PALIGEMMA_PROMPT_TEMPLATE)
    tok = engine.tokenizer
    ids, mms = engine._encode_group([engine.render("Is it red?", image=True)], make_images(1, seed=0)[0])
    image = tok.convert_tokens_to_ids("<image>")
    expected = [image] * 16 + [tok.bos_token_id] + tok("Is it red?", add_special_tokens=False)["input_ids"]
    assert ids[0] == expected + [tok.convert_tokens_to_ids("\n")]
    assert "labels" not in mms[0] and mms[0]["token_type_ids"].tolist() == [[0] * len(ids[0])]


@pytest.mark.parametrize("value, match", [("no-such-file", "neither a file nor a Jinja template"),
                                          ("", "a Jinja file or the template text")])
def test_bad_template_values(value, match):
    with pytest.raises(ValueError, match=match):
        read_chat_template(value)


def test_empty_template_file_and_template_among_engine_options(tmp_path, tiny_paligemma):
    empty = tmp_path / "empty.jinja"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        read_chat_template(str(empty))
    with pytest.raises(ValueError, match="not an engine option"):
        make_engine("hf", str(tiny_paligemma), options={"chat_template": TINY_PALIGEMMA_PROMPT_TEMPLATE})
    spec = EngineSpec.of("hf", str(tiny_paligemma), {}, chat_template=TINY_PALIGEMMA_PROMPT_TEMPLATE)
    assert spec != EngineSpec.of("hf", str(tiny_paligemma), {})  # a stage's engines differ by their template
