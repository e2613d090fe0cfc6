"""The engine protocol: the one small interface the pipeline needs from a model runtime (transformers or vLLM).

Engines do three things: sample n candidates per request with per-candidate seeds (deconfounded sampling: one
decoding setting for all, candidates differ only by seed), generate greedy text (the LLM divide step), and score
yes/no questions (full-vocabulary log P(yes-set), log P(no-set) at the first generated position).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..images import ImageInput

YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")
YES_NO_SUFFIX = " Please answer yes or no."


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """One decoding setting for every candidate (RLAIF-V reference: temperature 0.7, 512 new tokens, sampling on,
    no top-p for LLaVA; OmniLMM adds repetition penalty 1.1)."""

    temperature: float = 0.7
    max_new_tokens: int = 512
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"DecodingConfig.temperature must be > 0 (sampling), got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"DecodingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"DecodingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("DecodingConfig.top_k must be >= 0 and repetition_penalty > 0")


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """A prompt: an image (path, bytes, PIL, or None for text-only) and the user's instruction."""

    request_id: str
    prompt: str
    image: ImageInput = None


@dataclasses.dataclass(frozen=True)
class Sample:
    request_id: str
    index: int
    seed: int
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (max_new_tokens reached)


@dataclasses.dataclass(frozen=True)
class YesNoRequest:
    """A polar question about an image; the engine appends YES_NO_SUFFIX and reads the first generated position."""

    request_id: str
    question: str
    image: ImageInput = None


@dataclasses.dataclass(frozen=True)
class YesNoResult:
    request_id: str
    logp_yes: float
    logp_no: float

    @property
    def accepted(self) -> bool:
        return self.logp_yes > self.logp_no  # strict: ties reject


@runtime_checkable
class Engine(Protocol):
    model_name: str

    def sample(
        self, requests: Sequence[SampleRequest], n: int, decoding: DecodingConfig, *, run_seed: int
    ) -> list[list[Sample]]:
        """n candidates per request, each seeded by candidate_seed(run_seed, request_id, index)."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy text-only completions of chat prompts (used by the LLM divide step)."""

    def yes_no(
        self,
        requests: Sequence[YesNoRequest],
        *,
        yes_words: Sequence[str] = YES_WORDS,
        no_words: Sequence[str] = NO_WORDS,
    ) -> list[YesNoResult]:
        """Full-vocabulary log P(yes-set) and log P(no-set) at the first generated position."""
