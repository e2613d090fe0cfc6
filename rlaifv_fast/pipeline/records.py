"""The typed records the stages exchange, and their one codec.

A stage writes its records as JSON lines (store.RecordStore, crash-safe) and the next stage reads them back:
`encode(record)` gives the JSON object, `decode(cls, obj, where=...)` checks and rebuilds the record, naming the
file and line of a malformed one. The field names are the on-disk format (stable; the README documents them).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterator
from typing import Any, TypeVar

from .store import RecordFileError, read_records

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class CandidateRecord:
    """One sampled answer (generate): reproducible alone from (run_seed, prompt_id, index) -> seed."""

    id: str
    prompt_id: str
    question: str
    image: str | None
    index: int
    seed: int
    run_seed: int
    text: str
    num_tokens: int
    finish_reason: str
    model: str
    decoding: dict


@dataclasses.dataclass(frozen=True)
class FeedbackRecord:
    """A candidate with its claims, the labeler's yes/no per claim and its score -(rejected claims) (feedback)."""

    id: str
    prompt_id: str
    question: str
    image: str | None
    text: str
    seed: int | None
    model: str | None
    claims: list
    questions: list
    logp_yes: list
    logp_no: list
    p_yes: list
    p_no: list
    verdicts: list
    n_claims: int
    n_rejected: int
    score: float
    no_claims: bool
    divider: str
    divide_notes: list
    labeler: str


@dataclasses.dataclass(frozen=True)
class BoNRecord:
    """One prompt's Best-of-N: every candidate with its rewards, and the picks under both reward rules (bon)."""

    id: str
    prompt_id: str
    question: str
    image: str | None
    picked_index: int
    picked_index_normalized: int
    picked_index_unnormalized: int
    text: str
    reward: float
    candidates: list
    policy: str
    reference: str
    beta: float
    length_normalize: bool
    run_seed: int
    decoding: dict


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One benchmark item and the model's answer to it (eval): the greedy answer, and for polar questions the
    full-vocabulary log P(yes-set), log P(no-set) at the first answer position."""

    id: str
    benchmark: str
    split: str
    kind: str
    prompt: str
    image: str | None
    meta: dict
    answer: str
    num_tokens: int
    finish_reason: str
    logp_yes: float | None
    logp_no: float | None
    model: str


_SCALARS = {int: (int,), float: (int, float), str: (str,), bool: (bool,), list: (list,), dict: (dict,)}


def encode(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def decode(cls: type[R], obj: dict[str, Any], *, where: str = "record") -> R:
    """The record of type `cls` from its JSON object; a missing, unknown or mistyped field is a RecordFileError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in obj]
    if missing:
        raise RecordFileError(f"{where}: not a {cls.__name__}: field(s) {missing} missing")
    unknown = sorted(set(obj) - set(names))
    if unknown:
        raise RecordFileError(f"{where}: not a {cls.__name__}: unknown field(s) {unknown}")
    for n in names:
        tp = hints[n]
        args = typing.get_args(tp)
        allowed = tuple(t for a in (args or (tp,)) for t in _SCALARS.get(a, ()))
        optional = type(None) in args
        value = obj[n]
        if value is None and optional:
            continue
        if allowed and (not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool))):
            raise RecordFileError(f"{where}: {cls.__name__}.{n} has the wrong type ({type(value).__name__})")
    return cls(**{n: obj[n] for n in names})


def read_typed(path: str | os.PathLike, cls: type[R]) -> Iterator[R]:
    """The records of a stage's JSONL output as `cls`, each checked (errors name the file and line)."""
    for lineno, obj in enumerate(read_records(path), 1):
        yield decode(cls, obj, where=f"{os.fspath(path)}: record {lineno}")
