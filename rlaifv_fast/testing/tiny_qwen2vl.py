"""A tiny random-weight Qwen2-VL (Qwen2VLForConditionalGeneration) with a local word-level tokenizer, built offline.

    path = build_tiny_qwen2vl(tmp_dir / "tiny-qwen2vl", seed=0)
    processor = AutoProcessor.from_pretrained(path)                 # Qwen2VLProcessor (+ image / video processors)
    model = AutoModelForImageTextToText.from_pretrained(path)       # Qwen2VLForConditionalGeneration

Shapes (tiny, loads in well under a second):
- vision: Qwen2-VL ViT, 2 blocks, embed 32, 2 heads, patch 4, temporal patch 2, spatial merge 2 (one image token
  per 8x8 pixels); the image processor resizes every image to a multiple of 8 with min_pixels 8*8*4 and max_pixels
  8*8*9, so an image gives 4 to 9 `<|image_pad|>` tokens depending on its aspect ratio (the grid differs between
  images: M-RoPE positions differ too).
- processors: built with Qwen2VLImageProcessorPil, but the saved type is the backend-neutral name
  "Qwen2VLImageProcessor": AutoProcessor loads the torchvision backend when torchvision imports (it only needs
  torchvision's Python transforms, no C++ ops) and the PIL one otherwise (~0.015 max pixel difference between the
  two). Qwen2VLProcessor requires a video processor: Qwen2VLVideoProcessor exists with the torchvision backend only,
  so AutoProcessor.from_pretrained(path, backend="pil") fails; the video processor is never used here.
- text: Qwen2, 2 layers, hidden 64, 2 heads (head_dim 32), M-RoPE sections (4, 6, 6) (= head_dim / 2).
- tokenizer: `tokenizers` WordLevel over the special tokens of Qwen2-VL (<|endoftext|>, <|im_start|>, <|im_end|>,
  <|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>, ...) + tiny_vlm.TINY_WORDS (+ `words`); no BOS
  (as Qwen), EOS <|im_end|>, PAD <|endoftext|>; generation stops at <|im_end|> or <|endoftext|>.
- chat template (TINY_QWEN2VL_CHAT_TEMPLATE, Qwen2-VL's own): a default system turn, then
      "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a red circle?<|im_end|>\n"
      "<|im_start|>assistant\n"
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from .tiny_vlm import TINY_WORDS, _check_words, _dedup

QWEN2VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
ENDOFTEXT, IM_START, IM_END = QWEN2VL_SPECIAL_TOKENS[:3]
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
UNK = "<unk>"  # word-level models need one; not a Qwen token
_EXTRA_WORDS = ("helpful", "You", "are")

QWEN2VL_PATCH_SIZE = 4
QWEN2VL_MERGE_SIZE = 2
QWEN2VL_FACTOR = QWEN2VL_PATCH_SIZE * QWEN2VL_MERGE_SIZE  # pixels per image token side
QWEN2VL_MIN_PIXELS = QWEN2VL_FACTOR * QWEN2VL_FACTOR * 4
QWEN2VL_MAX_PIXELS = QWEN2VL_FACTOR * QWEN2VL_FACTOR * 9

# Qwen2-VL-Instruct's template (images and videos inline, in content order; a default system turn).
TINY_QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tokenizer(words: Iterable[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        tok: i for i, tok in enumerate(_dedup([*QWEN2VL_SPECIAL_TOKENS, UNK, *TINY_WORDS, *_EXTRA_WORDS, *words]))
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*QWEN2VL_SPECIAL_TOKENS, UNK)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_PAD, "video_token": VIDEO_PAD},
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_QWEN2VL_CHAT_TEMPLATE
    return fast


def build_tiny_qwen2vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.1,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight Qwen2-VL with its tokenizer, chat template and processor.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights (larger than Qwen's 0.02 so outputs depend visibly on the
            image and the prompt).

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    try:
        from transformers import Qwen2VLImageProcessorPil as _ImageProcessor  # PIL backend: no torchvision needed
    except ImportError:  # older transformers: the slow processor is PIL/numpy based
        from transformers import Qwen2VLImageProcessor as _ImageProcessor

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}

    hidden, heads, head_dim = 64, 2, 32
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=False,
    )
    assert sum(text["rope_parameters"]["mrope_section"]) * 2 == head_dim == hidden // heads
    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=hidden,  # the merger's output: the text width
        mlp_ratio=2,
        num_heads=2,
        in_channels=3,
        patch_size=QWEN2VL_PATCH_SIZE,
        spatial_merge_size=QWEN2VL_MERGE_SIZE,
        temporal_patch_size=2,
        initializer_range=initializer_range,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
    )
    config.initializer_range = initializer_range

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT]
    )

    image_processor = _ImageProcessor(
        min_pixels=QWEN2VL_MIN_PIXELS,
        max_pixels=QWEN2VL_MAX_PIXELS,
        patch_size=QWEN2VL_PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=QWEN2VL_MERGE_SIZE,
    )
    # The processor requires a video processor; it is constructed and saved, never used (no videos here).
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=QWEN2VL_MIN_PIXELS,
        max_pixels=QWEN2VL_MAX_PIXELS,
        patch_size=QWEN2VL_PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=QWEN2VL_MERGE_SIZE,
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=TINY_QWEN2VL_CHAT_TEMPLATE,
    )

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
