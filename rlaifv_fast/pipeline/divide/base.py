"""The divide step's result type and protocol: an answer -> atomic claims -> one polar question per claim.

Three dividers implement `Divider`: `RuleDivider` (rule.py: deterministic, offline), `LLMDivider` (llm.py: a model
behind the Engine protocol lists the claims and turns each into a question) and `HolisticDivider` (holistic.py: no
divide-and-conquer, one question about the whole answer; an ablation). The labeler is then asked
"<question> Please answer yes or no." (the engine appends the suffix).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

@dataclasses.dataclass(frozen=True)
class Division:
    """The claims of one answer and one polar question per claim (`questions[i]` asks about `claims[i]`).

    method: "rule" or the engine's model name. notes: human-readable reports (mismatches, fallbacks, oversized chunks).
    mismatch: (number of claims, number of questions the model gave) when any claim got other than exactly one
    question from the model; None when every claim got exactly one. fallbacks: indices of claims whose question came
    from the rule-based converter (the model's output gave none).
    """

    claims: tuple[str, ...]
    questions: tuple[str, ...]
    method: str
    notes: tuple[str, ...] = ()
    mismatch: tuple[int, int] | None = None
    fallbacks: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.claims) != len(self.questions):
            raise ValueError(
                f"Division needs one question per claim, got {len(self.claims)} claims and "
                f"{len(self.questions)} questions"
            )
        if any(not 0 <= i < len(self.claims) for i in self.fallbacks):
            raise ValueError(f"Division.fallbacks {self.fallbacks} index outside the {len(self.claims)} claims")


@runtime_checkable
class Divider(Protocol):
    def divide(self, answers: Sequence[str], *, instructions: Sequence[str] | None = None) -> list[Division]:
        """One Division per answer, in order. `instructions` (the prompts the answers reply to) is optional context."""



def check_instructions(answers: Sequence[str], instructions: Sequence[str] | None) -> None:
    if instructions is not None and len(instructions) != len(answers):
        raise ValueError(f"got {len(instructions)} instructions for {len(answers)} answers")
