"""Model runtimes behind one small protocol (base.Engine): transformers (HFEngine, the embedded default, CPU or GPU)
and vLLM (VLLMEngine). make_engine is the one place that picks one from a config."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Mapping
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

class EngineKind(str, enum.Enum):
    """hf: transformers (the embedded default, CPU or GPU); vllm: vLLM (batch serving; tensor/data parallel)."""

    HF = "hf"
    VLLM = "vllm"


ENGINE_KINDS = tuple(k.value for k in EngineKind)


def make_engine(kind: EngineKind | str, model: str, *, options: dict[str, Any] | None = None,
                chat_template: str | None = None) -> Engine:
    """An engine of `kind` ("hf" or "vllm") for the model at `model` (a local folder, or a hub name when the user
    allows downloads through the options). `options` pass through to the engine (for vLLM: to vllm.LLM untouched);
    `chat_template` (a Jinja file or the template text) replaces the folder's template in both engines' prompts."""
    options = dict(options or {})
    if "chat_template" in options:
        raise ValueError("chat_template is not an engine option here: pass it as the stage's chat_template option "
                         "(--chat-template) or make_engine's chat_template")
    try:
        kind = EngineKind(kind)
    except ValueError:
        raise ValueError(f"unknown engine kind {kind!r}; choose one of {ENGINE_KINDS}") from None
    if kind is EngineKind.HF:
        from .hf import HFEngine

        return HFEngine(model, **options, chat_template=chat_template)
    from .vllm_engine import VLLMEngine

    return VLLMEngine(model, options, chat_template=chat_template)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Which engine a stage wants for one role: runtime, model folder, options and the chat template given for it
    (None: the folder's; a stage's `chat_template` option)."""

    kind: EngineKind
    model: str
    options: tuple[tuple[str, Any], ...] = ()
    chat_template: str | None = None

    @classmethod
    def of(cls, kind: EngineKind | str, model: str, options: dict[str, Any] | None = None, *,
           chat_template: str | None = None) -> EngineSpec:
        items = tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in (options or {}).items()))
        return cls(EngineKind(kind), str(model), items, chat_template)

    def options_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.options}


class EnginePool(Mapping[str, Engine]):
    """The engines of one stage run, by role ("policy", "labeler", "divider", "reference", ...), built on first use;
    roles with the same spec share one engine (self-feedback: the labeler is the policy). A transformers engine
    without a `device` option goes to this process's GPU when there is one (cuda:LOCAL_RANK under torchrun).
    close() shuts vLLM engines down, so their memory is free before the next stage."""

    def __init__(self, specs: Mapping[str, EngineSpec | None]):
        self._specs = {role: spec for role, spec in specs.items() if spec is not None}
        self._built: dict[EngineSpec, Engine] = {}

    def __getitem__(self, role: str) -> Engine:
        spec = self._specs[role]
        if spec not in self._built:
            options = spec.options_dict()
            if spec.kind is EngineKind.HF and "device" not in options:
                import torch

                if torch.cuda.is_available():
                    options["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            self._built[spec] = make_engine(spec.kind, spec.model, options=options, chat_template=spec.chat_template)
        return self._built[spec]

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def close(self) -> None:
        for engine in self._built.values():
            close = getattr(engine, "close", None)
            if callable(close):
                close()
        self._built.clear()
        import gc

        gc.collect()

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "ENGINE_KINDS",
    "EngineKind",
    "EnginePool",
    "EngineSpec",
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
