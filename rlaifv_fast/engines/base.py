"""The engine protocol: the one small interface the pipeline needs from a model runtime (transformers or vLLM).

Engines do four things: sample n candidates per request with per-candidate seeds (deconfounded sampling: one
decoding setting for all, candidates differ only by seed), answer greedily (evaluation), generate greedy text (the
LLM divide step), and score yes/no questions (full-vocabulary log P(yes-set), log P(no-set) at the first generated
position).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..options import Options, option
from ..pipeline.images import ImageInput

YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")
YES_NO_SUFFIX = " Please answer yes or no."


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodingConfig(Options):
    """One decoding setting for every candidate (RLAIF-V reference: temperature 0.7, 512 new tokens, sampling on,
    no top-p for LLaVA; OmniLMM adds repetition penalty 1.1)."""

    temperature: float = option(0.7, gt=0, finite=True, help="sampling temperature")
    max_new_tokens: int = option(512, ge=1, help="most new tokens per candidate")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling mass (1: off)")
    top_k: int = option(0, ge=0, help="sample among the k most likely tokens (0: off)")
    repetition_penalty: float = option(1.0, gt=0, finite=True, help="repetition penalty (1: off)")


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


def decode_sample(tokenizer, token_ids: Sequence[int], *, stopped: bool) -> str:
    """The text of generated token ids, written so that tokenizing it again (no special tokens added) gives back
    the ids: when generation `stopped` at an end token, that last token is left out (scoring appends the end token
    itself); every other special token the model generated is kept, and spaces are not "cleaned up" (skipping
    special tokens or cleaning spaces would make the scored sequence differ from the sampled one)."""
    ids = [int(t) for t in token_ids]
    if stopped and ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@runtime_checkable
class Engine(Protocol):
    model_name: str

    def sample(
        self, requests: Sequence[SampleRequest], n: int, decoding: DecodingConfig, *, run_seed: int
    ) -> list[list[Sample]]:
        """n candidates per request, each seeded by candidate_seed(run_seed, request_id, index)."""

    def greedy(self, requests: Sequence[SampleRequest], *, max_new_tokens: int) -> list[Sample]:
        """One greedy answer per request (image + prompt), in request order (evaluation)."""

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
