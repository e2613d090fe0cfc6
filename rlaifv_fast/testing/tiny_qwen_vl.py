"""Tiny random-weight Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) and Qwen3-VL (Qwen3VLForConditionalGeneration)
with a local word-level tokenizer, built offline.

    path = build_tiny_qwen2_5_vl(tmp_dir / "tiny-qwen2.5-vl", seed=0)   # or build_tiny_qwen3_vl(...)
    processor = AutoProcessor.from_pretrained(path)                 # Qwen2_5_VLProcessor / Qwen3VLProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)

Both reuse tiny_qwen2vl's tokenizer (the Qwen special tokens + tiny_vlm.TINY_WORDS, no BOS, EOS <|im_end|>, PAD
<|endoftext|>; generation stops at <|im_end|> or <|endoftext|>) and image sizes (patch 4, spatial merge 2: one
image token per 8x8 pixels, 4 to 9 `<|image_pad|>` tokens per image depending on its aspect ratio).

- Qwen2.5-VL: the Qwen2-VL template (a default system turn "You are a helpful assistant."); vision: Qwen2.5-VL ViT
  (RMSNorm, SwiGLU MLP, window attention), 2 blocks, width 32, 2 heads, window 16 pixels (2x2 merged tokens),
  block 1 full attention (as `fullatt_block_indexes`), merger to the text width 64; text: Qwen2, 2 layers, hidden
  64, 2 heads (head_dim 32), M-RoPE sections (4, 6, 6), tied input / output embeddings (as Qwen2.5-VL-3B).
- Qwen3-VL: Qwen3-VL-Instruct's template (no default system turn); vision: Qwen3-VL ViT (learned position
  embeddings on a 4x4 grid, bilinearly interpolated per image; DeepStack features from block 0 added to the first
  text layer's input), 2 blocks, width 32, 2 heads; text: Qwen3 (q/k RMSNorm), 2 layers, hidden 64, 2 heads,
  head_dim 32, interleaved M-RoPE sections (6, 5, 5) (= head_dim / 2).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from .tiny_qwen2vl import (
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    QWEN2VL_MAX_PIXELS,
    QWEN2VL_MERGE_SIZE,
    QWEN2VL_MIN_PIXELS,
    QWEN2VL_PATCH_SIZE,
    QWEN2VL_SPECIAL_TOKENS,
    TINY_QWEN2VL_CHAT_TEMPLATE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    _build_tokenizer,
)
from .tiny_vlm import _check_words

# Qwen2.5-VL-Instruct ships Qwen2-VL's template.
TINY_QWEN2_5_VL_CHAT_TEMPLATE = TINY_QWEN2VL_CHAT_TEMPLATE

# Qwen3-VL-Instruct's template without tool calls / reasoning: a system turn only when given, images and videos
# inline in content order, assistant turns closed by <|im_end|>.
TINY_QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_HIDDEN, _HEADS, _HEAD_DIM = 64, 2, 32


def _text_config(tokenizer, ids, initializer_range, rope_parameters, **extra):
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=2 * _HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=_HEADS,
        num_key_value_heads=_HEADS,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        rope_parameters=rope_parameters,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        **extra,
    )


def _token_ids(config_kwargs, ids):
    return dict(
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        **config_kwargs,
    )


def _image_processor(**extra):
    try:
        from transformers import Qwen2VLImageProcessorPil as _ImageProcessor  # PIL backend: no torchvision needed
    except ImportError:  # older transformers: the slow processor is PIL/numpy based
        from transformers import Qwen2VLImageProcessor as _ImageProcessor

    return _ImageProcessor(
        min_pixels=QWEN2VL_MIN_PIXELS,
        max_pixels=QWEN2VL_MAX_PIXELS,
        patch_size=QWEN2VL_PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=QWEN2VL_MERGE_SIZE,
        **extra,
    )


def _save(out, model, processor, ids, seed):
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT]
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def _init(model_cls, config, seed):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return model_cls(config).eval()


def build_tiny_qwen2_5_vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.1,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight Qwen2.5-VL with its tokenizer, chat template and processor.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights (larger than Qwen's 0.02 so outputs depend visibly on the
            image and the prompt).

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words))
    tokenizer.chat_template = TINY_QWEN2_5_VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
    assert sum(rope["mrope_section"]) * 2 == _HEAD_DIM == _HIDDEN // _HEADS
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=QWEN2VL_PATCH_SIZE,
        spatial_merge_size=QWEN2VL_MERGE_SIZE,
        temporal_patch_size=2,
        window_size=2 * QWEN2VL_PATCH_SIZE * QWEN2VL_MERGE_SIZE,  # 2x2 merged tokens per attention window
        fullatt_block_indexes=[1],
        out_hidden_size=_HIDDEN,
        initializer_range=initializer_range,
    )
    # tied input / output embeddings, as Qwen2.5-VL-3B (Qwen has no BOS)
    text = _text_config(tokenizer, ids, initializer_range, rope, bos_token_id=None, tie_word_embeddings=True)
    config = Qwen2_5_VLConfig(**_token_ids(dict(text_config=text, vision_config=vision, tie_word_embeddings=True),
                                           ids))
    config.initializer_range = initializer_range
    model = _init(Qwen2_5_VLForConditionalGeneration, config, seed)
    # The processor requires a video processor; it is constructed and saved, never used (no videos here).
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=QWEN2VL_MIN_PIXELS,
        max_pixels=QWEN2VL_MAX_PIXELS,
        patch_size=QWEN2VL_PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=QWEN2VL_MERGE_SIZE,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=_image_processor(),
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=TINY_QWEN2_5_VL_CHAT_TEMPLATE,
    )
    return _save(out, model, processor, ids, seed)


def build_tiny_qwen3_vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.1,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight Qwen3-VL with its tokenizer, chat template and processor.

    Args: as build_tiny_qwen2_5_vl.

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words))
    tokenizer.chat_template = TINY_QWEN3_VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True}
    assert sum(rope["mrope_section"]) * 2 == _HEAD_DIM
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=QWEN2VL_PATCH_SIZE,
        spatial_merge_size=QWEN2VL_MERGE_SIZE,
        temporal_patch_size=2,
        out_hidden_size=_HIDDEN,
        num_position_embeddings=16,  # a 4x4 grid, interpolated to each image's patch grid
        deepstack_visual_indexes=[0],
        initializer_range=initializer_range,
    )
    config = Qwen3VLConfig(
        **_token_ids(dict(text_config=_text_config(tokenizer, ids, initializer_range, rope, head_dim=_HEAD_DIM,
                                                   tie_word_embeddings=False),
                          vision_config=vision, tie_word_embeddings=False), ids)
    )
    config.initializer_range = initializer_range
    model = _init(Qwen3VLForConditionalGeneration, config, seed)
    mean_std = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])  # Qwen3-VL's normalisation
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": QWEN2VL_MIN_PIXELS, "longest_edge": QWEN2VL_MAX_PIXELS},
        patch_size=QWEN2VL_PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=QWEN2VL_MERGE_SIZE,
    )
    processor = Qwen3VLProcessor(
        image_processor=_image_processor(**mean_std),
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=TINY_QWEN3_VL_CHAT_TEMPLATE,
    )
    return _save(out, model, processor, ids, seed)
