"""A tiny random-weight LLaVA-NeXT (LLaVA-1.6: CLIP vision tower + Mistral text model, "anyres" image cropping) with a
local word-level tokenizer, built offline.

    path = build_tiny_llava_next(tmp_dir / "tiny-llava-next", seed=0)
    processor = AutoProcessor.from_pretrained(path)                 # LlavaNextProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)       # LlavaNextForConditionalGeneration

Shapes (tiny, loads in well under a second):
- vision: CLIP, 2 layers, hidden 64, 2 heads, crop 32x32, patch 8 -> 16 features per crop (CLS dropped by the
  "default" strategy), vision_feature_layer -2.
- anyres: image_grid_pinpoints are llava-v1.6's pattern scaled to the crop, crop x {(1,2), (2,1), (2,2), (3,1), (1,3)}
  (height, width); an image is resized and padded to its best grid, cut into crops, and a base crop of the whole
  image comes first. The test images (40x30, 64x48, 33x57) get 3, 5 and 5 crops (pixel_values (1, crops, 3, 32, 32)
  and image_sizes (1, 2) per image), and different numbers of `<image>` tokens (the unpadded feature grid plus
  one image_newline per row).
- text: Mistral, 2 layers, hidden 64, 2 heads (head_dim 32), vocab = tiny_vlm.TINY_WORDS + "[", "]", "INST".
- tokenizer: as tiny_vlm's (BOS <s> prepended, EOS </s>, PAD <pad>, `<image>` special).
- chat template (TINY_LLAVA_NEXT_CHAT_TEMPLATE): llava-v1.6-mistral-7b-hf's, e.g.
      "[INST] <image>\nIs there a red circle? Please answer yes or no. [/INST]"
  (the tokenizer adds <s>); an assistant turn is " {answer}</s> " (the published template writes the end token as
  the typo '<\\s>'; the model itself ends its answers with </s>, as here).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from ..engines.layout import write_hub_layout
from .tiny_vlm import BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS, _build_tokenizer, _check_words

LLAVA_NEXT_CROP = 32
LLAVA_NEXT_PATCH = 8
LLAVA_NEXT_GRID = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # llava-v1.6's pinpoints in units of the crop (h, w)
_EXTRA_WORDS = ("[", "]", "INST")

# llava-hf/llava-v1.6-mistral-7b-hf: images of a user turn first ("<image>\n" each), then its texts; no generation
# prompt (the turn ends with " [/INST]").
TINY_LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)


def build_tiny_llava_next(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.1,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight LLaVA-NeXT with its tokenizer, chat template and processor.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights.

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer([*_EXTRA_WORDS, *_check_words(words)])
    tokenizer.chat_template = TINY_LLAVA_NEXT_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    hidden, heads, head_dim = 64, 2, 32
    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        image_size=LLAVA_NEXT_CROP,
        patch_size=LLAVA_NEXT_PATCH,
        projection_dim=hidden,
        initializer_range=initializer_range,
    )
    text = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        sliding_window=None,
        initializer_range=initializer_range,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    pinpoints = [[h * LLAVA_NEXT_CROP, w * LLAVA_NEXT_CROP] for h, w in LLAVA_NEXT_GRID]
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids[IMAGE],
        image_grid_pinpoints=pinpoints,
        image_seq_length=(LLAVA_NEXT_CROP // LLAVA_NEXT_PATCH) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config.initializer_range = initializer_range

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": LLAVA_NEXT_CROP},
        crop_size={"height": LLAVA_NEXT_CROP, "width": LLAVA_NEXT_CROP},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=LLAVA_NEXT_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token (dropped again by the "default" strategy)
        chat_template=TINY_LLAVA_NEXT_CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    write_hub_layout(out)  # the published layout of the CLIP tower, which vLLM loads (engines/layout.py)
    return out
