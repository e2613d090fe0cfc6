"""A tiny random-weight InternVL3 (the transformers-native InternVLForConditionalGeneration, not remote code: InternViT
vision encoder, pixel-shuffle MLP projector, Qwen2 text model) with a local word-level tokenizer, built offline.

    path = build_tiny_internvl(tmp_dir / "tiny-internvl", seed=0)
    processor = AutoProcessor.from_pretrained(path)                 # InternVLProcessor (GotOcr2 image processor)
    model = AutoModelForImageTextToText.from_pretrained(path)       # InternVLForConditionalGeneration

Shapes (tiny, loads in well under a second):
- vision: InternViT, 2 layers, hidden 64, 2 heads, tile 16x16, patch 4 (a 4x4 grid); the projector's pixel shuffle
  with downsample_ratio 0.5 gives INTERNVL_IMAGE_SEQ_LENGTH = 4 `<IMG_CONTEXT>` tokens per tile.
- tiles (GotOcr2 image processor, crop_to_patches as InternVL's processor sets it): an image is resized to the grid
  of 1..INTERNVL_MAX_PATCHES tiles closest to its aspect ratio and cut into tiles, plus a thumbnail tile when there
  is more than one; pixel_values (tiles, 3, 16, 16) per image, concatenated over a batch. The test images (40x30,
  64x48, 33x57) get different tile counts, and the prompt "<img><IMG_CONTEXT> * 4 * tiles</img>".
- text: Qwen2, 2 layers, hidden 64, 2 heads (head_dim 32), tied input / output embeddings (as InternVL3-1B/2B).
- tokenizer: `tokenizers` WordLevel over InternVL3-hf's special tokens (Qwen's <|endoftext|>, <|im_start|>,
  <|im_end|>, and <img>, </img>, <IMG_CONTEXT>, <video>) + tiny_vlm.TINY_WORDS; no BOS, EOS <|im_end|>, PAD
  <|endoftext|>; generation stops at <|im_end|> or <|endoftext|>.
- chat template (InternVL3-hf's, no default system turn):
      "<|im_start|>user\n<IMG_CONTEXT>\nIs there a red circle? Please answer yes or no.<|im_end|>\n"
      "<|im_start|>assistant\n"
- processors: built with GotOcr2ImageProcessorPil, saved under the backend-neutral name (AutoProcessor loads the
  torchvision backend when torchvision imports); InternVLProcessor requires a video processor
  (InternVLVideoProcessor, torchvision backend only), which is saved and never used here.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from .tiny_vlm import TINY_WORDS, _check_words, _dedup

INTERNVL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
)
ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, VIDEO = INTERNVL_SPECIAL_TOKENS
UNK = "<unk>"  # word-level models need one; not an InternVL token
INTERNVL_TILE = 16
INTERNVL_PATCH = 4
INTERNVL_DOWNSAMPLE = 0.5
INTERNVL_MAX_PATCHES = 6
INTERNVL_IMAGE_SEQ_LENGTH = int((INTERNVL_TILE // INTERNVL_PATCH) ** 2 * INTERNVL_DOWNSAMPLE**2)

# OpenGVLab/InternVL3-*-hf: images as "<IMG_CONTEXT>\n" (the processor expands it), no default system turn.
TINY_INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def _build_tokenizer(words: Iterable[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_dedup([*INTERNVL_SPECIAL_TOKENS, UNK, *TINY_WORDS, *words]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*INTERNVL_SPECIAL_TOKENS, UNK)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=UNK,
        extra_special_tokens={"start_image_token": IMG_START, "end_image_token": IMG_END,
                              "context_image_token": IMG_CONTEXT, "video_token": VIDEO},
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_INTERNVL_CHAT_TEMPLATE
    return fast


def build_tiny_internvl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.2,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight InternVL3 with its tokenizer, chat template and processor.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights (0.2: outputs depend visibly on the image and the question;
            with 0.1 the tiny labeler's verdicts did not depend on the claim, and the family test's loop had no pair).

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    import torch
    from transformers import (
        GenerationConfig,
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words))
    tid = tokenizer.convert_tokens_to_ids
    hidden, heads, head_dim = 64, 2, 32
    vision = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        image_size=[INTERNVL_TILE, INTERNVL_TILE],
        patch_size=[INTERNVL_PATCH, INTERNVL_PATCH],
        initializer_range=initializer_range,
    )
    text = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        bos_token_id=None,
        eos_token_id=tid(IM_END),
        pad_token_id=tid(ENDOFTEXT),
        tie_word_embeddings=True,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tid(IMG_CONTEXT),
        image_seq_length=INTERNVL_IMAGE_SEQ_LENGTH,
        downsample_ratio=INTERNVL_DOWNSAMPLE,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    config.initializer_range = initializer_range
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = InternVLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=[tid(IM_END), tid(ENDOFTEXT)], pad_token_id=tid(ENDOFTEXT))

    size = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    image_processor = GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1,
                                               max_patches=INTERNVL_MAX_PATCHES)
    video_processor = InternVLVideoProcessor(size=size)
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                  image_seq_length=INTERNVL_IMAGE_SEQ_LENGTH, chat_template=TINY_INTERNVL_CHAT_TEMPLATE)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
