"""No divide-and-conquer (the paper's ablation): the whole answer is one claim, asked as one question."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Division, check_instructions

HOLISTIC_QUESTION = "Is this description of the image accurate?"


class HolisticDivider:
    """No divide-and-conquer (the paper's ablation): the whole answer is one claim, asked as one question,
    "<HOLISTIC_QUESTION> <answer>", so the score is 0 (accepted) or -1 (rejected)."""

    method = "holistic"

    def __init__(self, question: str = HOLISTIC_QUESTION):
        if not question.strip():
            raise ValueError("HolisticDivider needs a non-empty question")
        self.question = question.strip()

    def divide(self, answers: Sequence[str], *, instructions: Sequence[str] | None = None) -> list[Division]:
        check_instructions(answers, instructions)
        out = []
        for answer in answers:
            text = " ".join(answer.split())
            if not text:
                out.append(Division((), (), self.method))
            else:
                out.append(Division((text,), (f"{self.question} {text}",), self.method))
        return out

