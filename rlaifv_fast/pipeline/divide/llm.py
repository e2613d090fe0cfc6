"""The LLM divider: a model behind the Engine protocol (greedy `engine.generate`) lists the claims of each answer
(prompt `CLAIMS_PROMPT`) and turns each claim into a yes/no question (prompt `QUESTION_PROMPT`, one prompt per
claim, batched engine calls).

FIX (the reference code cuts the split prompt to its first 300 words and zips claims with questions): long answers
are divided in sentence chunks of at most `max_chunk_words` words, so the tail is always checked, and every
claim/question count mismatch is returned in `Division.mismatch` and `Division.notes`, never zipped away. A claim
whose question cannot be parsed gets the rule-based question and is listed in `Division.fallbacks`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Division, check_instructions
from .rule import _AUX, _HAVE, _LIST_MARKER, _QUOTES, _key, chunk_answer, claim_to_question_rule, split_sentences

if TYPE_CHECKING:  # engines pull in PIL; dividing needs nothing but the standard library
    from ...engines.base import Engine


CLAIMS_PROMPT = """\
You extract the facts that an answer about an image states.

List every atomic, self-contained factual claim the answer makes, one claim per line. Each claim is one short \
declarative sentence that makes sense on its own: repeat the subject instead of writing "it", "they" or "this". \
Split claims joined by "and", commas or lists into separate claims. Keep negations ("There is no dog."). Do not \
include opinions, feelings, guesses, or statements about the answer itself, and do not add anything the answer does \
not say. If the answer states no fact, reply with "None".
{context}
Answer:
{answer}

Claims:"""

QUESTION_PROMPT = """\
Rewrite the statement as a yes/no question. Keep its tense and every negation ("not", "no", "never"); keep all of \
its content and add nothing. Reply with the question only.

Statement: {claim}
Question:"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLMDividerConfig:
    """max_chunk_words: an answer is divided in sentence chunks of at most this many words (a longer single sentence
    is its own chunk; nothing is cut). batch_size: prompts per engine.generate call."""

    max_chunk_words: int = 200
    claims_max_new_tokens: int = 512
    question_max_new_tokens: int = 64
    batch_size: int = 64

    def __post_init__(self):
        for name in ("max_chunk_words", "claims_max_new_tokens", "question_max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLMDividerConfig.{name} must be >= 1, got {getattr(self, name)}")


class EngineOutputError(ValueError):
    """engine.generate returned a number of completions different from the number of prompts: outputs can no longer
    be matched to prompts, so nothing is guessed."""


_CHATTER = re.compile(r"^(?:sure|certainly|okay|ok|of course|absolutely|i hope|let me know)\b", re.I)
_INTRO = re.compile(r"^(?:here (?:are|is)|below (?:are|is)|the following|these are)\b", re.I)
_ABOUT_OUTPUT = re.compile(r"\b(?:claims?|facts?|statements?|list|questions?|sentences?)\b", re.I)


def _is_preamble(line: str) -> bool:
    """"Here are the facts:", "Sure! ...", "I hope this helps." (but not the claim "Here is a dog.")."""
    return (
        line.endswith(":")
        or bool(_CHATTER.match(line))
        or bool(_INTRO.match(line) and _ABOUT_OUTPUT.search(line))
    )
_ITEM_PREFIX = re.compile(r"^(?:(?:claim|fact|statement|question|q)\s*\d*\s*[:.)-]\s*)", re.I)
_NO_CLAIMS = re.compile(
    r"^(?:none|n/?a|nothing|no (?:factual )?(?:claims|facts)\b.*|there are no (?:factual )?(?:claims|facts)\b.*)$", re.I
)


def _clean_line(line: str) -> str:
    line = line.strip().replace("**", "").replace("__", "")
    line = line.lstrip("#").strip()
    for _ in range(3):
        stripped = _ITEM_PREFIX.sub("", _LIST_MARKER.sub("", line)).strip()
        if stripped == line:
            break
        line = stripped
    return line.strip(_QUOTES + " ")


def parse_claims(output: str) -> list[str]:
    """Claims from a model's list: numbered ("1.", "1)"), bulleted ("-", "*", "•") or plain lines; preambles
    ("Here are the facts:"), headings, quotes and "None" are skipped; several sentences on one line are split;
    duplicates (case-insensitive) dropped; each claim ends with a period."""
    claims: list[str] = []
    seen: set[str] = set()
    for raw in output.splitlines():
        line = _clean_line(raw)
        if not line or _is_preamble(line) or _NO_CLAIMS.match(line.rstrip(".!")):
            continue
        for sentence in split_sentences(line):
            sentence = " ".join(sentence.split()).strip(_QUOTES + " ")
            if not re.search(r"[^\W\d_]{2}", sentence):  # no word: a stray marker "1." or "-"
                continue
            if sentence[-1] not in ".!?":
                sentence += "."
            key = sentence.lower().rstrip(".!")
            if key not in seen:
                seen.add(key)
                claims.append(sentence)
    return claims


def parse_question(output: str) -> list[str]:
    """The yes/no questions in a model's reply (usually one): lines holding a "?" (the text up to it, after any
    "Question:" label or leading sentence); failing that, a first line that starts with an auxiliary verb."""
    questions: list[str] = []
    lines = [_clean_line(raw) for raw in output.splitlines()]
    lines = [ln for ln in lines if ln and not (_is_preamble(ln) and "?" not in ln)]
    for line in lines:
        if "?" not in line:
            continue
        q = line[: line.index("?") + 1]
        if ":" in q:
            q = q.rsplit(":", 1)[1]
        q = re.split(r"(?<=[.!])\s+", q)[-1].strip(_QUOTES + " ")
        if len(q.split()) >= 2:
            questions.append(q[:1].upper() + q[1:])
    if not questions and lines:
        first = lines[0].rstrip(".!").strip(_QUOTES + " ")
        if len(first.split()) >= 2 and (_key(first.split()[0]) in _AUX or _key(first.split()[0]) in _HAVE):
            questions.append(first[:1].upper() + first[1:] + "?")
    return questions


class LLMDivider:
    """Divide with a language model behind the Engine protocol (greedy `engine.generate`)."""

    def __init__(self, engine: Engine, config: LLMDividerConfig = LLMDividerConfig()):
        self.engine = engine
        self.config = config
        self.method = str(getattr(engine, "model_name", type(engine).__name__))

    def _generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        outputs: list[str] = []
        bs = self.config.batch_size
        for start in range(0, len(prompts), bs):
            batch = prompts[start : start + bs]
            got = list(self.engine.generate(batch, max_new_tokens=max_new_tokens))
            if len(got) != len(batch):
                raise EngineOutputError(f"engine.generate returned {len(got)} completions for {len(batch)} prompts")
            outputs.extend(got)
        return outputs

    def claims_prompt(self, chunk: str, *, instruction: str | None = None, earlier: str | None = None) -> str:
        context = ""
        if instruction:
            context += f"\nQuestion the answer replies to: {' '.join(instruction.split())}\n"
        if earlier:
            context += f"\nEarlier part of the answer (context only; do not list its claims): {earlier}\n"
        return CLAIMS_PROMPT.format(context=context, answer=chunk)

    @staticmethod
    def question_prompt(claim: str) -> str:
        return QUESTION_PROMPT.format(claim=claim)

    def divide(self, answers: Sequence[str], *, instructions: Sequence[str] | None = None) -> list[Division]:
        check_instructions(answers, instructions)
        cfg = self.config
        notes: list[list[str]] = [[] for _ in answers]

        # 1. claims, chunk by chunk, all chunks of all answers in batched calls
        prompts, owner = [], []
        for a, answer in enumerate(answers):
            chunks = chunk_answer(answer, cfg.max_chunk_words)
            for c, chunk in enumerate(chunks):
                n = len(chunk.split())
                if n > cfg.max_chunk_words:
                    notes[a].append(f"chunk {c}: one sentence of {n} words exceeds max_chunk_words; sent whole")
                earlier = split_sentences(chunks[c - 1])[-1] if c else None
                instruction = instructions[a] if instructions is not None else None
                prompts.append(self.claims_prompt(chunk, instruction=instruction, earlier=earlier))
                owner.append(a)
            if len(chunks) > 1:
                notes[a].append(f"answer divided in {len(chunks)} chunks of <= {cfg.max_chunk_words} words")
        claims: list[list[str]] = [[] for _ in answers]
        for a, output in zip(owner, self._generate(prompts, cfg.claims_max_new_tokens)):
            known = {c.lower().rstrip(".!") for c in claims[a]}
            claims[a].extend(c for c in parse_claims(output) if c.lower().rstrip(".!") not in known)
        for a, answer in enumerate(answers):
            if answer.strip() and not claims[a]:
                notes[a].append("the model listed no claims")

        # 2. one question per claim, batched
        flat = [(a, i, claim) for a in range(len(answers)) for i, claim in enumerate(claims[a])]
        outputs = self._generate([self.question_prompt(claim) for _, _, claim in flat], cfg.question_max_new_tokens)
        questions: list[list[str]] = [[""] * len(c) for c in claims]
        model_counts: list[list[int]] = [[0] * len(c) for c in claims]
        fallbacks: list[list[int]] = [[] for _ in answers]
        for (a, i, claim), output in zip(flat, outputs):
            parsed = parse_question(output)
            model_counts[a][i] = len(parsed)
            if parsed:
                questions[a][i] = parsed[0]
                if len(parsed) > 1:
                    notes[a].append(f"claim {i}: the model gave {len(parsed)} questions; kept the first")
            else:
                questions[a][i] = claim_to_question_rule(claim)
                fallbacks[a].append(i)
                notes[a].append(
                    f"claim {i}: no question in the model output {output[:80]!r}; used the rule-based question"
                )

        out = []
        for a in range(len(answers)):
            counts = model_counts[a]
            mismatch = (len(counts), sum(counts)) if any(n != 1 for n in counts) else None
            if mismatch is not None:
                notes[a].append(f"count mismatch: {mismatch[0]} claims, {mismatch[1]} questions from the model")
            out.append(
                Division(
                    claims=tuple(claims[a]),
                    questions=tuple(questions[a]),
                    method=self.method,
                    notes=tuple(notes[a]),
                    mismatch=mismatch,
                    fallbacks=tuple(fallbacks[a]),
                )
            )
        return out
