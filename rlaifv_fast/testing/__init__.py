"""Offline test helpers: tiny random-weight models with local tokenizers, built in well under a second."""

from .tiny_gemma import build_tiny_gemma2, build_tiny_gemma3
from .tiny_idefics3 import build_tiny_idefics3, build_tiny_smolvlm
from .tiny_internvl import build_tiny_internvl
from .tiny_llava_next import build_tiny_llava_next
from .tiny_paligemma import TINY_PALIGEMMA_PROMPT_TEMPLATE, build_tiny_paligemma
from .tiny_qwen2vl import build_tiny_qwen2vl
from .tiny_qwen_vl import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl
from .tiny_vlm import (
    TINY_CHAT_TEMPLATE,
    TINY_IMAGE_SIZE,
    TINY_IMAGE_TOKENS,
    TINY_PATCH_SIZE,
    TINY_WORDS,
    build_tiny_llama,
    build_tiny_llava,
    vllm_key,
    vllm_state_dict_keys,
)

__all__ = [
    "TINY_CHAT_TEMPLATE",
    "TINY_IMAGE_SIZE",
    "TINY_IMAGE_TOKENS",
    "TINY_PALIGEMMA_PROMPT_TEMPLATE",
    "TINY_PATCH_SIZE",
    "TINY_WORDS",
    "build_tiny_gemma2",
    "build_tiny_gemma3",
    "build_tiny_idefics3",
    "build_tiny_internvl",
    "build_tiny_llama",
    "build_tiny_llava",
    "build_tiny_llava_next",
    "build_tiny_paligemma",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2vl",
    "build_tiny_qwen3_vl",
    "build_tiny_smolvlm",
    "vllm_key",
    "vllm_state_dict_keys",
]
