"""A tiny random-weight LLaVA (CLIP vision tower + Llama text model) with a local word-level tokenizer, built offline.

    path = build_tiny_llava(tmp_dir / "tiny-llava", seed=0)            # build_tiny_llama: text-only twin
    processor = AutoProcessor.from_pretrained(path)                 # LlavaProcessor + CLIPImageProcessorPil
    model = AutoModelForImageTextToText.from_pretrained(path)       # LlavaForConditionalGeneration

Shapes (kept tiny so loading takes well under a second):
- vision: CLIP, 2 layers, hidden 64, 2 heads (head_dim 32), image 32x32, patch 8 -> 16 patches + CLS; LLaVA's
  "default" feature strategy drops CLS, so every image becomes TINY_IMAGE_TOKENS = 16 `<image>` tokens;
  vision_feature_layer -2 (as LLaVA-1.5).
- text: Llama, 2 layers, hidden 64, 2 heads (head_dim 32, a size vLLM accepts), vocab = the word list below.
- tokenizer: `tokenizers` WordLevel over TINY_WORDS (+ `words`), wrapped in PreTrainedTokenizerFast; pre-tokenizer
  splits on whitespace, isolates punctuation and digits; <s> is prepended by add_special_tokens; decoding joins words
  with spaces and removes the space before punctuation.
- chat template (TINY_CHAT_TEMPLATE, LLaVA-1.5 style), e.g. one user turn with an image and a text:
      "USER: <image>\nIs there a red circle? Please answer yes or no. ASSISTANT:"
  The template is stored on the tokenizer (tokenizer_config / chat_template.jinja) and on the processor.

vLLM: transformers 5.x saves the CLIP tower as `vision_tower.*` while vLLM (0.32) expects the LLaVA-1.5 checkpoint
layout `vision_tower.vision_model.*`. `build_tiny_llava(..., for_vllm=True)` rewrites the safetensors file(s) with the
vision keys renamed (`vllm_key`); all other keys (`language_model.model.*`, `language_model.lm_head.*`,
`multi_modal_projector.*`) are already in the layout vLLM loads. transformers loads both layouts.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable

from ..engines.layout import hub_layout_key, write_hub_layout

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD, BOS, EOS, UNK, IMAGE = SPECIAL_TOKENS

TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_IMAGE_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2  # CLS dropped by the "default" feature strategy

_PUNCT = tuple(".,?!:;'\"-()/")
_DIGITS = tuple("0123456789")
_WORDS = """
USER ASSISTANT SYSTEM user assistant system
yes Yes no No YES NO true false True False
Please please answer Answer or and but not nor only
Is is Are are Was was Were were Does does Do do Did did Can can Has has Have have
there There a A an An the The this This that That these These those those it It its they They
image Image picture photo scene describe Describe description detail details detailed briefly
question questions claim claims fact facts statement statements sentence sentences split Split rewrite Rewrite
each Each every one two three four five six seven eight nine ten many few some several all any none
into as per line lines list numbered atomic simple polar self contained keep unchanged same
in In on On at of with without to from by for about above below under over near next behind between inside
left right top bottom center middle front back side corner background foreground
red green blue yellow black white gray grey orange purple pink brown colour color colors colours colored
circle square triangle rectangle shape shapes dot dots line object objects thing things
small large big tiny huge little bright dark light
what What where Where which Which who Who how How why Why
you You I me my we your Your he she his her
see shows show showing shown contains contain containing has have having there's
man woman person people dog cat car tree house sky grass water table chair cup ball
be being been am will would should could may might must
here now then also very more most less than
""".split()


def _dedup(words: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


TINY_WORDS: tuple[str, ...] = tuple(_dedup([*_PUNCT, *_DIGITS, *_WORDS]))

# LLaVA-1.5 style: "USER: <image>\n{text} ASSISTANT: {answer}</s>USER: ... ASSISTANT:". Images of a turn come first,
# then its text parts joined by a space; a system message is written as is before the first turn. Content may be a
# string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ text }}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}{{ text }}{{ '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['role'] | upper }}{{ ': ' }}{{ '<image>\n' * n_images }}{{ text }}{{ ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


vllm_key = hub_layout_key  # the name tests use


def vllm_state_dict_keys(path: str | os.PathLike) -> list[str]:
    """The sorted weight names stored in the safetensors file(s) of a saved model folder."""
    from safetensors import safe_open

    names: list[str] = []
    for f in sorted(pathlib.Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            names.extend(sf.keys())
    return sorted(names)


def _build_tokenizer(words: Iterable[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_dedup([*SPECIAL_TOKENS, *TINY_WORDS, *words]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # join with spaces, no space before punctuation
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def _check_words(words: Iterable[str] | None) -> list[str]:
    if words is None:
        return []
    if isinstance(words, str):
        raise TypeError("words must be an iterable of words, not a single string")
    out = []
    for w in words:
        if not isinstance(w, str) or not w or any(c.isspace() for c in w):
            raise ValueError(f"extra vocabulary entries must be non-empty words without whitespace, got {w!r}")
        out.append(w)
    return out


def build_tiny_llava(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    for_vllm: bool = False,
    initializer_range: float = 0.1,
    image_size: int = TINY_IMAGE_SIZE,
    patch_size: int = TINY_PATCH_SIZE,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    head_dim: int = 32,
    vision_layers: int | None = None,
    vision_feature_layer: int = -2,
) -> pathlib.Path:
    """Build and save (safetensors) a tiny random-weight LLaVA with its tokenizer, chat template and processor.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: weights are a deterministic function of the seed (the global torch RNG is left untouched).
        words: extra whole words for the vocabulary (appended after TINY_WORDS; no whitespace inside a word).
        for_vllm: also rename the CLIP tower weights `vision_tower.X` -> `vision_tower.vision_model.X` in the saved
            safetensors (the layout vLLM 0.32 loads; transformers loads it too).
        initializer_range: std of the random weights (larger than LLaVA's 0.02 so outputs depend visibly on the
            image and the prompt).
        image_size, patch_size: the CLIP input; (image_size // patch_size) ** 2 image tokens per image (default 16;
            336 and 14 give LLaVA-1.5's 576 for benchmarks).
        hidden_size, num_hidden_layers, head_dim: the width / depth of both towers (heads = hidden_size // head_dim;
            vLLM accepts head sizes 32, 64, 80, ...).
        vision_layers: depth of the CLIP tower when it differs from the text model's (None: num_hidden_layers).
        vision_feature_layer: the CLIP layer whose patch features go to the projector (-2 as LLaVA-1.5; -1 the last).

    Returns:
        The folder, loadable offline with AutoProcessor / AutoModelForImageTextToText (and AutoTokenizer).
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    try:
        from transformers import CLIPImageProcessorPil as _ImageProcessor  # PIL backend: no torchvision needed
    except ImportError:  # older transformers: the slow CLIP processor is PIL/numpy based
        from transformers import CLIPImageProcessor as _ImageProcessor

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = _check_words(words)

    tokenizer = _build_tokenizer(extra)
    vocab_size = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    if hidden_size % head_dim or image_size % patch_size:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of head_dim ({head_dim}) and image_size ({image_size}) "
            f"a multiple of patch_size ({patch_size})"
        )
    heads = hidden_size // head_dim
    n_image_tokens = (image_size // patch_size) ** 2
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers if vision_layers is None else int(vision_layers),
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
        initializer_range=initializer_range,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids[IMAGE],
        image_seq_length=n_image_tokens,
        vision_feature_layer=int(vision_feature_layer),
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config.initializer_range = initializer_range

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])

    image_processor = _ImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token (dropped again by the "default" strategy)
        chat_template=TINY_CHAT_TEMPLATE,
        image_token=IMAGE,
    )

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    if for_vllm:
        write_hub_layout(out)
    return out


def build_tiny_llama(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    initializer_range: float = 0.1,
) -> pathlib.Path:
    """Build and save a tiny random-weight text-only Llama (LlamaForCausalLM, the same text shapes, tokenizer and chat
    template as build_tiny_llava; no processor): AutoTokenizer / AutoModelForCausalLM load it offline."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(_check_words(words))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
