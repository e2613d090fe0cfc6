"""Divide: an answer -> atomic, self-contained factual claims -> one polar question per claim.

base.py holds the result type (`Division`) and the protocol (`Divider`); rule.py, llm.py and holistic.py the three
dividers. `make_divider` picks one from a `DividerKind`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .base import Division, Divider, check_instructions
from .holistic import HOLISTIC_QUESTION, HolisticDivider
from .llm import CLAIMS_PROMPT, QUESTION_PROMPT, EngineOutputError, LLMDivider, LLMDividerConfig, parse_claims, parse_question
from .rule import (
    HEDGE_WORDS,
    OPINION_PREFIXES,
    SUBJECTIVE_WORDS,
    RuleDivider,
    chunk_answer,
    claim_to_question_rule,
    split_claims_rule,
    split_sentences,
)

if TYPE_CHECKING:
    from ...engines.base import Engine


class DividerKind(str, enum.Enum):
    """rule: deterministic splitter (offline); llm: a prompted model; holistic: one question per answer (ablation)."""

    RULE = "rule"
    LLM = "llm"
    HOLISTIC = "holistic"


def make_divider(kind: DividerKind | str, engine: Engine | None = None) -> Divider:
    kind = DividerKind(kind)
    if kind is DividerKind.LLM:
        if engine is None:
            raise ValueError("the llm divider needs an engine (the divider model)")
        return LLMDivider(engine)
    return HolisticDivider() if kind is DividerKind.HOLISTIC else RuleDivider()


__all__ = [
    "CLAIMS_PROMPT",
    "HEDGE_WORDS",
    "HOLISTIC_QUESTION",
    "OPINION_PREFIXES",
    "QUESTION_PROMPT",
    "SUBJECTIVE_WORDS",
    "Division",
    "Divider",
    "DividerKind",
    "EngineOutputError",
    "HolisticDivider",
    "LLMDivider",
    "LLMDividerConfig",
    "RuleDivider",
    "check_instructions",
    "chunk_answer",
    "claim_to_question_rule",
    "make_divider",
    "parse_claims",
    "parse_question",
    "split_claims_rule",
    "split_sentences",
]
