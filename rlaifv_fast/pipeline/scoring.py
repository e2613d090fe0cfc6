"""Scoring responses under a transformers model: log pi(response | image, question), the quantity behind the
reference log-probs, DPO and the Best-of-N self-reward.

One sequence per (image, question, response) triple:

    input_ids = render(question, image) ++ tokenize(response) ++ [EOS]
    labels    = -100 on every prompt position (system text, template, image tokens) ++ response ids ++ [EOS]

`render` is the model's chat template with the generation prompt (HFEngine.render), so the response sits exactly
where the model would have generated it; the EOS label makes "stop here" part of the answer's probability, as in
RLAIF-V's training data. Rows are right-padded (labels -100 on padding), and `sequence_logps(..., shift=True)`
compares the logits at position t with the label at t + 1.

Tokenization: the prompt and the response are tokenized SEPARATELY and their ids concatenated. Tokenizing the joined
text can merge characters across the boundary into one BPE token (e.g. "ASSISTANT:" + " The" -> ": The" pieces
differ), which would leave no clean response/prompt split and score a token the model never emitted at that place.
Separate tokenization is what generation produced (the prompt ids, then sampled ids), what TRL's DPO trainer does,
and it keeps the labels exactly the response's own tokens. SentencePiece tokenizers add their dummy-prefix space
to the response ("answer" -> "▁answer"), which matches a reply following "ASSISTANT:".

Only the positions that predict response tokens go through the LM head: the hidden states of a batch are cut at
the shortest prompt (the image tokens and template text never need (T, V) logits), then the head runs on the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ..engines.hf import HFEngine, _image_key, _per_token_keys, collate_image_inputs, response_token_value
from .images import ImageInput, load_image
from ..ops import sequence_logps

IGNORE_INDEX = -100


class Triple(NamedTuple):
    """One response to score: `image` (path, bytes, PIL image, {bytes, path} dict, or None for text only)."""

    image: ImageInput
    question: str
    response: str


@dataclasses.dataclass(frozen=True)
class EncodedResponse:
    """Token ids and labels of one triple; `image_inputs` are the processor's image tensors (None without image)."""

    input_ids: list[int]
    labels: list[int]
    image_inputs: dict[str, Any] | None
    prompt_len: int

    @property
    def num_response_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


class ScoringBatch(NamedTuple):
    """Right-padded model inputs and labels (B, T) of a batch of encoded responses; `offset` is where the logits
    start (the shortest prompt minus one: every earlier label is -100 in every row)."""

    inputs: dict[str, Any]
    labels: torch.Tensor
    offset: int


class ResponseLogps(NamedTuple):
    """Per response, in input order: logps (N,) sums over the response tokens (+EOS), means (N,), counts (N,) int64,
    token_logps: one 1-D tensor of per-token log-probs per response (response tokens only) or None."""

    logps: torch.Tensor
    means: torch.Tensor
    counts: torch.Tensor
    token_logps: list[torch.Tensor] | None


def _as_triple(t: Any) -> Triple:
    if isinstance(t, Triple):
        return t
    image, question, response = t
    return Triple(image, question, response)


def _no_image(image: ImageInput) -> bool:
    return image is None or (isinstance(image, dict) and not image.get("bytes") and not image.get("path"))


def eos_token_id(engine: HFEngine) -> int:
    """The end token appended after each response: the one that closes an assistant turn in the model's chat
    template (HFEngine.end_token_id, from ChatPrompts.end_of_turn_id), which generation stops at."""
    return int(engine.end_token_id)


def encode_triples(
    engine: HFEngine, triples: Iterable[Any], *, append_eos: bool | Sequence[bool] = True
) -> list[EncodedResponse]:
    """Encode triples (any (image, question, response) 3-sequences) in input order. Each distinct image is decoded
    and processed once; each distinct prompt of an image is tokenized once. `append_eos` is one flag for all, or
    one per triple (e.g. False for a sample that stopped at max_new_tokens: it never produced an EOS)."""
    triples = [_as_triple(t) for t in triples]
    eos_flags = [bool(append_eos)] * len(triples) if isinstance(append_eos, bool) else [bool(f) for f in append_eos]
    if len(eos_flags) != len(triples):
        raise ValueError(f"append_eos has {len(eos_flags)} flags for {len(triples)} triples")
    eos = [eos_token_id(engine)]
    groups: dict[Any, list[int]] = {}
    for i, t in enumerate(triples):
        groups.setdefault(None if _no_image(t.image) else _image_key(t.image), []).append(i)
    prompts: list[tuple[list[int], dict | None]] = [([], None)] * len(triples)
    for key, members in groups.items():
        image = load_image(triples[members[0]].image) if key is not None else None
        rendered = {i: engine.render(triples[i].question, image=image is not None) for i in members}
        texts = list(dict.fromkeys(rendered.values()))
        ids, mms = engine._encode_group(texts, image)
        by_text = dict(zip(texts, zip(ids, mms)))
        for i in members:
            prompts[i] = by_text[rendered[i]]
    out = []
    for t, (prompt_ids, mm), with_eos in zip(triples, prompts, eos_flags):
        response_ids = list(engine.tokenizer(t.response, add_special_tokens=False)["input_ids"]) + (eos if with_eos else [])
        out.append(
            EncodedResponse(
                input_ids=list(prompt_ids) + response_ids,
                labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
                image_inputs=_extend_per_token(mm, len(prompt_ids), len(response_ids), engine._model_type),
                prompt_len=len(prompt_ids),
            )
        )
    return out


def _extend_per_token(mm: dict | None, prompt_len: int, extra: int, model_type: str) -> dict | None:
    """Per-token processor outputs (e.g. Qwen2-VL's mm_token_type_ids, PaliGemma's token_type_ids) cover the prompt
    only: extend them over the response tokens with the value the model type gives a response there
    (engines.hf.response_token_value: 0 = text, PaliGemma's token_type_ids 1 = the causal suffix)."""
    keys = _per_token_keys(mm, prompt_len) if mm else []
    if not keys or extra == 0:
        return mm
    mm = dict(mm)
    for k in keys:
        fill = response_token_value(model_type, k)
        mm[k] = torch.cat([mm[k], mm[k].new_full((mm[k].shape[0], extra), fill)], dim=1)
    return mm


def cut_per_token(mm: dict | None, full_len: int, keep: int) -> dict | None:
    """Per-token processor outputs cut to the first `keep` tokens (when a sequence of `full_len` is truncated)."""
    keys = _per_token_keys(mm, full_len) if mm else []
    if not keys:
        return mm
    return {k: (v[:, :keep] if k in keys else v) for k, v in mm.items()}


def collate(engine: HFEngine, encoded: Sequence[EncodedResponse]) -> ScoringBatch:
    """Right-padded input ids, attention mask and labels (-100 on padding) and the rows' image inputs collated as
    the processor batches them (engines.hf.collate_image_inputs), moved to the engine's device and dtype."""
    if not encoded:
        raise ValueError("collate: no responses")
    B, T = len(encoded), max(len(e.input_ids) for e in encoded)
    ids = torch.full((B, T), engine._pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    inputs.update(collate_image_inputs([e.image_inputs for e in encoded], [len(e.input_ids) for e in encoded], T,
                                       left=False, model_type=engine._model_type))
    offset = max(min(e.prompt_len for e in encoded) - 1, 0)
    return ScoringBatch(engine._move(inputs), labels.to(engine.device), offset)


def batch_logits(engine: HFEngine, batch: ScoringBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) from position `batch.offset` on: (B, T - offset, V) in the model's dtype and the matching
    (B, T - offset) labels, for sequence_logps / bon_rewards with shift=True. No grad."""
    with torch.no_grad():
        out = engine._backbone_call(**batch.inputs, use_cache=False)
        logits = engine._head(out.last_hidden_state[:, batch.offset :])
    return logits, batch.labels[:, batch.offset :]


def response_token_logps(per_token: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The response tokens' entries of per-token log-probs on the shifted label grid, one 1-D tensor per row."""
    mask = labels[:, 1:] != IGNORE_INDEX
    return [row[m].cpu() for row, m in zip(per_token, mask)]


def response_logps(
    model_or_engine: HFEngine,
    triples: Iterable[Any],
    *,
    batch_size: int = 8,
    return_per_token: bool = False,
    append_eos: bool | Sequence[bool] = True,
    progress: bool = False,
    desc: str = "score",
) -> ResponseLogps:
    """log pi(response + EOS | rendered prompt, image) for each (image, question, response) triple, batched.

    Args:
        model_or_engine: an HFEngine (its loaded model, processor, chat template and device are used).
        triples: (image, question, response) 3-sequences (or Triple).
        batch_size: sequences per forward; rows are ordered by length to limit padding, results do not depend on
            the batch (padding is masked).
        return_per_token: also return each response's per-token log-probs.
        append_eos: score the end-of-sequence token after the response (default, as generation ends with it);
            one flag for all triples or one per triple.

    Example:
        >>> out = response_logps(engine, [(image, "Describe the image.", "A red circle.")], batch_size=8)
        >>> out.logps, out.means, out.counts
    """
    engine = model_or_engine
    if not isinstance(engine, HFEngine):
        raise TypeError(f"response_logps needs an HFEngine (transformers), got {type(engine).__name__}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = encode_triples(engine, triples, append_eos=append_eos)
    N = len(encoded)
    acc = torch.float64 if engine.dtype == torch.float64 else torch.float32
    sums = torch.zeros(N, dtype=acc)
    counts = torch.zeros(N, dtype=torch.int64)
    tokens: list[torch.Tensor | None] = [None] * N
    order = sorted(range(N), key=lambda i: len(encoded[i].input_ids))
    with tqdm(total=N, desc=desc, unit="seq", disable=not progress) as bar:
        for start in range(0, N, int(batch_size)):
            chunk = order[start : start + int(batch_size)]
            logits, labels = batch_logits(engine, collate(engine, [encoded[i] for i in chunk]))
            out = sequence_logps(logits, labels, shift=True, return_per_token=return_per_token)
            index = torch.tensor(chunk, dtype=torch.long)
            sums[index] = out.logps.to("cpu", acc)
            counts[index] = out.counts.cpu()
            if return_per_token:
                for i, row in zip(chunk, response_token_logps(out.per_token, labels)):
                    tokens[i] = row
            bar.update(len(chunk))
    means = sums / counts.clamp(min=1)
    return ResponseLogps(sums, means, counts, tokens if return_per_token else None)  # type: ignore[arg-type]
