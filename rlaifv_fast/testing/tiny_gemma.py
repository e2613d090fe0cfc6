"""Tiny random-weight Gemma 2 (Gemma2ForCausalLM, text only) and Gemma 3 (Gemma3ForConditionalGeneration: SigLIP
vision tower + Gemma 3 text model) with local word-level tokenizers, built offline.

    path = build_tiny_gemma2(tmp_dir / "tiny-gemma2", seed=0)       # AutoTokenizer, AutoModelForCausalLM
    path = build_tiny_gemma3(tmp_dir / "tiny-gemma3", seed=0)       # Gemma3Processor, AutoModelForImageTextToText

Tokenizer (both, as the published instruction-tuned checkpoints'): `tokenizers` WordLevel with Gemma's first ids
(<pad> 0, <eos> 1, <bos> 2, <unk> 3), <start_of_turn> / <end_of_turn>, "\\n" and "\\n\\n" as tokens of their own (as
in Gemma's vocabulary), tiny_vlm.TINY_WORDS + "model" (+ `words`); Gemma 3
adds <start_of_image>, <end_of_image> and, last (beyond the text vocabulary, as in the checkpoint),
<image_soft_token>. BOS is added by the tokenizer (the templates write it, so the engines then add no special
tokens); eos_token is <eos>, while an assistant turn ends with <end_of_turn>: the template closes every turn with
"<end_of_turn>\\n" and the generation config stops at [<eos>, <end_of_turn>] (as google/gemma-2-*-it and
google/gemma-3-*-it).

Chat template (the checkpoints', without tool use), e.g. one user turn:
    "<bos><start_of_turn>user\\nDescribe the image.<end_of_turn>\\n<start_of_turn>model\\n"
Gemma 3 writes an image as <start_of_image>; its processor expands it into
"\\n\\n<start_of_image>" + <image_soft_token> x GEMMA3_IMAGE_TOKENS + "<end_of_image>\\n\\n", and returns
token_type_ids (1 on the image tokens, which attend to each other bidirectionally; 0 on text).

Shapes (tiny, loads in well under a second):
- Gemma 2: 2 layers (sliding-window attention, window GEMMA_SLIDING_WINDOW, then global), hidden 64, 2 heads, 1 KV
  head, head_dim 32, attention logit soft-capping 50 (the checkpoints'; transformers applies it in eager attention,
  not in sdpa) and final-logit soft-capping GEMMA2_FINAL_SOFTCAP (the checkpoints use 30; a smaller cap bends this
  tiny model's logits visibly), tied embeddings.
- Gemma 3: vision SigLIP, 2 layers, hidden 32, 2 heads, image 32x32, patch 4 (8x8 patches), average-pooled to
  GEMMA3_IMAGE_TOKENS = 16 image tokens per image (every image is resized to 32x32, pan-and-scan off as in the
  checkpoints' processor config); the projector's weight is random (transformers initialises it to zeros, which
  would make every image feature 0); text: 2 layers ("sliding_attention", "full_attention"), window
  GEMMA_SLIDING_WINDOW, hidden 64, 2 heads, 1 KV head, head_dim 32, tied embeddings, no final-logit soft-capping
  (as the checkpoints; see build_tiny_gemma3's final_logit_softcapping). Saved in the published weight layout
  (`vision_tower.vision_model.*`, engines/layout.py), which vLLM loads.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from ..engines.layout import write_hub_layout
from .tiny_vlm import TINY_WORDS, _check_words, _dedup

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
START_OF_IMAGE, END_OF_IMAGE, IMAGE_SOFT_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
NEWLINES = ("\n", "\n\n")  # tokens of their own in Gemma's vocabulary
_EXTRA_WORDS = ("model",)

GEMMA_SLIDING_WINDOW = 16  # shorter than the test prompts, so the sliding-window layers differ from global ones
GEMMA2_FINAL_SOFTCAP = 5.0
GEMMA3_IMAGE_SIZE = 32
GEMMA3_PATCH_SIZE = 4
GEMMA3_IMAGE_TOKENS = 16  # (32 / 4)^2 = 64 patches, average-pooled 2x2

# google/gemma-2-*-it's template: no system role, roles alternate, the assistant is "model", every turn closed by
# "<end_of_turn>\n".
TINY_GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# google/gemma-3-*-it's template: a system message becomes a prefix of the first user turn, images are written as
# <start_of_image> in content order, text parts trimmed, every turn closed by "<end_of_turn>\n".
TINY_GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def _build_tokenizer(words: Iterable[str], *, vision: bool):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN] + ([START_OF_IMAGE, END_OF_IMAGE] if vision else [])
    last = [IMAGE_SOFT_TOKEN] if vision else []
    vocab = {t: i for i, t in enumerate(_dedup([*specials, *NEWLINES, *TINY_WORDS, *_EXTRA_WORDS, *words, *last]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials + last])
    tok.add_tokens([AddedToken(t, normalized=False) for t in NEWLINES])  # matched before the whitespace split
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    extra = {"boi_token": START_OF_IMAGE, "eoi_token": END_OF_IMAGE, "image_token": IMAGE_SOFT_TOKEN} if vision else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=extra,
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_GEMMA3_CHAT_TEMPLATE if vision else TINY_GEMMA2_CHAT_TEMPLATE
    return fast


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    tid = tokenizer.convert_tokens_to_ids
    return GenerationConfig(bos_token_id=tid(BOS), eos_token_id=[tid(EOS), tid(END_OF_TURN)], pad_token_id=tid(PAD))


def _text_kwargs(tokenizer, initializer_range: float) -> dict:
    tid = tokenizer.convert_tokens_to_ids
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=GEMMA_SLIDING_WINDOW,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        bos_token_id=tid(BOS),
        eos_token_id=tid(EOS),
        pad_token_id=tid(PAD),
        tie_word_embeddings=True,
    )


def build_tiny_gemma2(
    out_dir: str | os.PathLike, *, seed: int = 0, words: Iterable[str] | None = None, initializer_range: float = 0.2
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight Gemma 2 with its tokenizer and chat template.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (no whitespace inside a word).
        initializer_range: std of the random weights.

    Returns:
        The folder, loadable offline with AutoTokenizer / AutoModelForCausalLM.
    """
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words), vision=False)
    config = Gemma2Config(**_text_kwargs(tokenizer, initializer_range), attn_logit_softcapping=50.0,
                          final_logit_softcapping=GEMMA2_FINAL_SOFTCAP, layer_types=["sliding_attention",
                                                                                     "full_attention"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Gemma2ForCausalLM(config).eval()
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_gemma3(
    out_dir: str | os.PathLike, *, seed: int = 0, words: Iterable[str] | None = None, initializer_range: float = 0.2,
    final_logit_softcapping: float | None = None,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight Gemma 3 (image-text-to-text) with its tokenizer, chat
    template and Gemma3Processor; arguments as build_tiny_gemma2, except:

    final_logit_softcapping: declared in the text config (the checkpoints declare none). transformers'
        Gemma3ForConditionalGeneration does not apply it (Gemma3ForCausalLM and vLLM's Gemma 3 do), so with one the
        two runtimes compute different models; the project scores what the transformers model computes.

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words), vision=True)
    tid = tokenizer.convert_tokens_to_ids
    text = Gemma3TextConfig(**_text_kwargs(tokenizer, initializer_range),
                            final_logit_softcapping=final_logit_softcapping,
                            layer_types=["sliding_attention", "full_attention"])
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=GEMMA3_IMAGE_SIZE,
        patch_size=GEMMA3_PATCH_SIZE,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=tid(START_OF_IMAGE),
        eoi_token_index=tid(END_OF_IMAGE),
        image_token_index=tid(IMAGE_SOFT_TOKEN),
        initializer_range=initializer_range,
        tie_word_embeddings=True,
    )
    config.vision_config.initializer_range = initializer_range
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Gemma3ForConditionalGeneration(config).eval()
        # transformers initialises the projector's weight to zeros (every image feature 0): random, so that the
        # image and its bidirectional attention change the text's log-probs
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=initializer_range)
    model.generation_config = _generation_config(tokenizer)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE}, do_pan_and_scan=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=GEMMA3_IMAGE_TOKENS, chat_template=TINY_GEMMA3_CHAT_TEMPLATE)
    model.save_pretrained(out, safe_serialization=True)
    write_hub_layout(out)  # the published layout of the SigLIP tower, which vLLM loads (engines/layout.py)
    processor.save_pretrained(out)
    return out
