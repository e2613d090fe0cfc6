"""Model runtimes behind one small protocol (base.Engine): transformers (HFEngine, the embedded default, CPU or GPU)
and vLLM (VLLMEngine). make_engine is the one place that picks one from a config."""

from __future__ import annotations

from typing import Any

from .base import (
    NO_WORDS,
    YES_NO_SUFFIX,
    YES_WORDS,
    DecodingConfig,
    Engine,
    Sample,
    SampleRequest,
    YesNoRequest,
    YesNoResult,
)

ENGINE_KINDS = ("hf", "vllm")


def make_engine(kind: str, model: str, *, options: dict[str, Any] | None = None) -> Engine:
    """An engine of `kind` ("hf" or "vllm") for the model at `model` (a local folder, or a hub name when the user
    allows downloads through the options). `options` pass through to the engine (for vLLM: to vllm.LLM untouched)."""
    options = dict(options or {})
    if kind == "hf":
        from .hf import HFEngine

        return HFEngine(model, **options)
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model, options)
    raise ValueError(f"unknown engine kind {kind!r}; choose one of {ENGINE_KINDS}")


__all__ = [
    "ENGINE_KINDS",
    "NO_WORDS",
    "YES_NO_SUFFIX",
    "YES_WORDS",
    "DecodingConfig",
    "Engine",
    "Sample",
    "SampleRequest",
    "YesNoRequest",
    "YesNoResult",
    "make_engine",
]
