"""A tiny random-weight PaliGemma (PaliGemmaForConditionalGeneration: SigLIP vision tower + Gemma) with a local
word-level tokenizer, built offline. Like the published checkpoints it ships NO chat template: an engine needs one
given (engine option `chat_template`, e.g. TINY_PALIGEMMA_PROMPT_TEMPLATE).

    path = build_tiny_paligemma(tmp_dir / "tiny-paligemma", seed=0)
    processor = AutoProcessor.from_pretrained(path)                 # PaliGemmaProcessor + SiglipImageProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)       # PaliGemmaForConditionalGeneration

Shapes (tiny, loads in well under a second):
- vision: SigLIP, 2 layers, hidden 32, 2 heads, image 32x32, patch 8 -> 16 image tokens per image (every image is
  resized to 32x32, so all images give the same count); the projector maps to the text width 64.
- text: Gemma, 2 layers, hidden 64, 2 heads, 1 KV head (multi-query, as PaliGemma-3B), head_dim 32, tied input /
  output embeddings.
- tokenizer: `tokenizers` WordLevel with Gemma's first ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3), "\\n" (a token
  of its own, as in Gemma's vocabulary), tiny_vlm.TINY_WORDS (+ `words`), then <image>; the processor adds
  PaliGemma's 1024 <locDDDD> and 128 <segDDD> tokens (the model's vocabulary covers them). BOS is not added by the
  tokenizer (the processor places it).

Input format (the processor's): "<image>" x 16 + "<bos>" + prefix text + "\\n", then the answer (the suffix) and
"<eos>". token_type_ids are 0 on the prefix (image and prompt: attended bidirectionally) and 1 on the suffix
(causal); generation ends at <eos>.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from .tiny_vlm import TINY_WORDS, _check_words, _dedup

PAD, EOS, BOS, UNK, IMAGE = "<pad>", "<eos>", "<bos>", "<unk>", "<image>"
NEWLINE = "\n"  # the processor ends every prefix with it
PALIGEMMA_IMAGE_SIZE = 32
PALIGEMMA_PATCH_SIZE = 8
PALIGEMMA_IMAGE_TOKENS = (PALIGEMMA_IMAGE_SIZE // PALIGEMMA_PATCH_SIZE) ** 2

# A prompt template for PaliGemma (the checkpoints ship none): the user's text as the prefix, the image placeholder
# first; the processor adds <bos> after the image tokens and the "\n" that separates the prefix from the answer.
TINY_PALIGEMMA_PROMPT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endif %}{% endfor %}"
)


def _build_tokenizer(words: Iterable[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_dedup([PAD, EOS, BOS, UNK, NEWLINE, *TINY_WORDS, *words, IMAGE]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, EOS, BOS, UNK, IMAGE)])
    tok.add_tokens([AddedToken(NEWLINE, normalized=False)])  # a token of its own, as in Gemma's vocabulary
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_paligemma(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.15,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight PaliGemma with its tokenizer and processor (no chat
    template, as the published checkpoints).

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights (larger than Gemma's 0.02, and than the other tiny builders'
            0.1: Gemma scales its input embeddings by sqrt(hidden), so with smaller weights the last position's
            output is nearly that of its own token and hardly depends on the image and the prompt).

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    import torch
    from transformers import GenerationConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    try:
        from transformers import SiglipImageProcessorPil as _ImageProcessor  # PIL backend: no torchvision needed
    except ImportError:  # older transformers: the slow processor is PIL/numpy based
        from transformers import SiglipImageProcessor as _ImageProcessor

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words))
    image_processor = _ImageProcessor(
        size={"height": PALIGEMMA_IMAGE_SIZE, "width": PALIGEMMA_IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=PALIGEMMA_IMAGE_TOKENS,
    )
    image_processor.image_seq_length = PALIGEMMA_IMAGE_TOKENS
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <loc>/<seg> tokens
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, EOS, BOS, IMAGE)}
    hidden = 64
    text = dict(
        model_type="gemma",
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        pad_token_id=ids[PAD],
        eos_token_id=ids[EOS],
        bos_token_id=ids[BOS],
        tie_word_embeddings=True,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=PALIGEMMA_IMAGE_SIZE,
        patch_size=PALIGEMMA_PATCH_SIZE,
        vision_use_head=False,
    )
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids[IMAGE],
        vocab_size=len(tokenizer),
        projection_dim=hidden,
        hidden_size=hidden,
        tie_word_embeddings=True,
    )
    config.initializer_range = initializer_range

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD]
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
