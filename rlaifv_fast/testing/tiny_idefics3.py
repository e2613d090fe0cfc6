"""Tiny random-weight SmolVLM and Idefics3 models (SigLIP-style vision encoder, pixel-shuffle connector, Llama text
model, image splitting) with local word-level tokenizers, built offline. SmolVLM is Idefics3's architecture with
its own processor (the image splitting and prompt strings are the same code).

    path = build_tiny_smolvlm(tmp_dir / "tiny-smolvlm", seed=0)    # SmolVLMProcessor, SmolVLMForConditionalGeneration
    path = build_tiny_idefics3(tmp_dir / "tiny-idefics3", seed=0)  # Idefics3Processor, Idefics3ForConditionalGeneration

Shapes (tiny, loads in well under a second):
- vision: 2 layers, hidden 64, 2 heads, image 16x16, patch 4 (a 4x4 grid); the connector's pixel shuffle with scale
  factor 2 turns a 16x16 image into IMAGE_SEQ_LEN = 4 `<image>` tokens.
- image splitting: an image is resized to longest edge 48 (3x the 16-pixel tile, as the real processors use a
  multiple of their tile), then to multiples of 16, cut into 16x16 tiles and followed by a 16x16 global image. The
  test images (40x30, 64x48, 33x57) give 3x3 + 1 = 10, 10 and 3x2 + 1 = 7 images (pixel_values (1, n, 3, 16, 16) and
  pixel_attention_mask (1, n, 16, 16) per image); the prompt gets "<fake_token_around_image><row_r_col_c><image>..."
  per tile and "<fake_token_around_image><global-img><image>...<fake_token_around_image>" for the global image.
- text: Llama, 2 layers, hidden 64, 2 heads (head_dim 32), vocab = tiny_vlm.TINY_WORDS + "User", "Assistant".
- tokenizers, as the real checkpoints':
  SmolVLM (HuggingFaceTB/SmolVLM-Instruct): BOS <|im_start|> (written by the template, never added), EOS
  <end_of_utterance>, PAD <|im_end|>.
  Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3): BOS <|begin_of_text|> (written by the template), EOS <|end_of_text|>,
  PAD <|reserved_special_token_0|>; an assistant turn ends with <end_of_utterance>, and generation stops at
  <end_of_utterance> or <|end_of_text|>.
- chat template (the checkpoints'), e.g. one user turn with an image (SmolVLM; Idefics3 starts with
  <|begin_of_text|> instead of <|im_start|>):
      "<|im_start|>User:<image>Is there a red circle? Please answer yes or no.<end_of_utterance>\nAssistant:"
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from .tiny_vlm import TINY_WORDS, _check_words, _dedup

IDEFICS3_TILE = 16
IDEFICS3_PATCH = 4
IDEFICS3_SCALE_FACTOR = 2
IDEFICS3_LONGEST_EDGE = 3 * IDEFICS3_TILE
IMAGE_SEQ_LEN = (IDEFICS3_TILE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE_FACTOR**2

FAKE_IMAGE, IMAGE, END_OF_UTTERANCE, GLOBAL_IMAGE = (
    "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
)
_ROW_COL = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
_IMAGE_TOKENS = (FAKE_IMAGE, IMAGE, END_OF_UTTERANCE, GLOBAL_IMAGE, *_ROW_COL)
_EXTRA_WORDS = ("User", "Assistant")


def _chat_template(start: str) -> str:
    """SmolVLM's / Idefics3's template: "<start>User:<image>text<end_of_utterance>\\nAssistant: answer..."."""
    return (
        start + "{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


TINY_SMOLVLM_CHAT_TEMPLATE = _chat_template("<|im_start|>")
TINY_IDEFICS3_CHAT_TEMPLATE = _chat_template("<|begin_of_text|>")

# kind -> (special tokens in id order, bos, eos, pad, unk, generation stop tokens, chat template)
_KINDS = {
    "smolvlm": (("<|endoftext|>", "<|im_start|>", "<|im_end|>", *_IMAGE_TOKENS), "<|im_start|>", END_OF_UTTERANCE,
                "<|im_end|>", "<|endoftext|>", (END_OF_UTTERANCE,), TINY_SMOLVLM_CHAT_TEMPLATE),
    "idefics3": (("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<unk>", *_IMAGE_TOKENS),
                 "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<unk>",
                 (END_OF_UTTERANCE, "<|end_of_text|>"), TINY_IDEFICS3_CHAT_TEMPLATE),
}


def _build_tokenizer(kind: str, words: Iterable[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, pad, unk, _, template = _KINDS[kind]
    vocab = {tok: i for i, tok in enumerate(_dedup([*specials, *TINY_WORDS, *_EXTRA_WORDS, *words]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    extra = {"image_token": IMAGE, "fake_image_token": FAKE_IMAGE, "global_image_token": GLOBAL_IMAGE,
             "end_of_utterance_token": END_OF_UTTERANCE}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens=extra if kind == "smolvlm" else {"image_token": IMAGE},
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = template
    return fast


def _build(kind: str, out_dir, *, seed: int, words, initializer_range: float) -> pathlib.Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig

    if kind == "smolvlm":
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessorPil as ImageProcessor
        from transformers import SmolVLMVisionConfig as VisionConfig
    else:
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
        from transformers import Idefics3VisionConfig as VisionConfig

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(kind, _check_words(words))
    _, bos, eos, pad, _, stops, template = _KINDS[kind]
    tid = tokenizer.convert_tokens_to_ids
    hidden, heads, head_dim = 64, 2, 32
    vision = VisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        image_size=IDEFICS3_TILE,
        patch_size=IDEFICS3_PATCH,
        initializer_range=initializer_range,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        bos_token_id=tid(bos),
        eos_token_id=tid(eos),
        pad_token_id=tid(pad),
        tie_word_embeddings=False,
    )
    config = Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tid(IMAGE),
        scale_factor=IDEFICS3_SCALE_FACTOR,
        pad_token_id=tid(pad),
        tie_word_embeddings=False,
    )
    config.initializer_range = initializer_range
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Model(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tid(bos), eos_token_id=[tid(s) for s in stops], pad_token_id=tid(pad)
    )

    image_processor = ImageProcessor(
        do_image_splitting=True,
        size={"longest_edge": IDEFICS3_LONGEST_EDGE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
    )
    if kind == "smolvlm":
        from transformers import SmolVLMProcessor, SmolVLMVideoProcessor

        # The processor requires a video processor (torchvision backend only); it is saved, never used here.
        video_processor = SmolVLMVideoProcessor(max_image_size={"longest_edge": IDEFICS3_TILE},
                                                size={"longest_edge": IDEFICS3_LONGEST_EDGE})
        processor = SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=video_processor, image_seq_len=IMAGE_SEQ_LEN,
                                     chat_template=template)
    else:
        from transformers import Idefics3Processor

        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_len=IMAGE_SEQ_LEN, chat_template=template)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def build_tiny_smolvlm(
    out_dir: str | os.PathLike, *, seed: int = 0, words: Iterable[str] | None = None, initializer_range: float = 0.2
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight SmolVLM with its tokenizer, chat template and processor
    (SmolVLMProcessor needs the `num2words` package and torchvision for its video processor).

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights (0.2: outputs depend visibly on the image and the question;
            with 0.1 the tiny labeler said "no" to every claim of the family test's loop).

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    return _build("smolvlm", out_dir, seed=seed, words=words, initializer_range=initializer_range)


def build_tiny_idefics3(
    out_dir: str | os.PathLike, *, seed: int = 0, words: Iterable[str] | None = None, initializer_range: float = 0.2
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight Idefics3 with its tokenizer, chat template and processor;
    arguments and result as build_tiny_smolvlm."""
    return _build("idefics3", out_dir, seed=seed, words=words, initializer_range=initializer_range)
