"""Yes/no token sets resolved from words for the tokenizer at hand (the conquer step: the labeler's yes-set and no-set).

For each word the set holds the id the word has as the FIRST generated token after the prompt: the last token id of its
encoding (the reference code's rule), in the labeler's prompt context when one is given; plus the leading-space variant
(" yes", SentencePiece "▁yes", byte-level BPE "Ġyes") where the tokenizer has it as a distinct single token. Ids are
deduplicated (first occurrence order); the unknown token is never part of a set.
"""

from __future__ import annotations

from collections.abc import Sequence

# Pieces that stand for a bare space: a leading-space variant may encode as [space piece, word piece].
_SPACE_PIECES = frozenset({" ", "▁", "Ġ", "Ċ"})


def _base_tokenizer(tokenizer):
    """A processor's tokenizer, or the tokenizer itself."""
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and hasattr(inner, "encode") else tokenizer


def _encode(tok, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    return list(ids.ids if hasattr(ids, "ids") else ids)


def _new_tokens(tok, text: str, context: str | None) -> list[int]:
    """Token ids `text` adds after `context` (the whole encoding without a context)."""
    if not context:
        return _encode(tok, text)
    ctx = _encode(tok, context)
    full = _encode(tok, context + text)
    k = 0
    while k < min(len(ctx), len(full)) and ctx[k] == full[k]:
        k += 1
    return full[k:]


def _is_space_piece(tok, token_id: int) -> bool:
    piece = tok.convert_ids_to_tokens(int(token_id))
    return isinstance(piece, str) and piece != "" and all(c in _SPACE_PIECES for c in piece)


def _unknown_id(tok) -> int | None:
    unk = getattr(tok, "unk_token_id", None)
    return int(unk) if unk is not None else None


def resolve_token_ids(tokenizer, words: Sequence[str], *, context: str | None = None) -> list[int]:
    """Token ids of `words` as first generated tokens, for the yes/no sets of the labeler.

    Args:
        tokenizer: a transformers tokenizer (or a processor with a `.tokenizer`).
        words: e.g. ("yes", "Yes").
        context: optional prompt text the answer follows (e.g. the rendered prompt ending in "ASSISTANT:"); words are
            encoded after it and only the tokens they add count.

    Returns:
        Deduplicated ids: for each word the last token id of its encoding, then that of " " + word when the
        leading-space variant is a single token of its own (a bare space piece before it is ignored).

    Raises:
        ValueError: no word resolves to a known token (the message names the words and the tokenizer).
    """
    if isinstance(words, str):
        words = (words,)
    tok = _base_tokenizer(tokenizer)
    unk = _unknown_id(tok)
    ids: list[int] = []

    def add(token_id: int) -> None:
        token_id = int(token_id)
        if token_id != unk and token_id not in ids:
            ids.append(token_id)

    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"yes/no words must be non-empty strings, got {word!r}")
        plain = _new_tokens(tok, word, context)
        if plain:
            add(plain[-1])
        if not word.startswith(" "):
            spaced = _new_tokens(tok, " " + word, context)
            while len(spaced) > 1 and _is_space_piece(tok, spaced[0]):
                spaced = spaced[1:]
            if len(spaced) == 1:
                add(spaced[0])
    if not ids:
        name = getattr(tok, "name_or_path", None) or type(tok).__name__
        raise ValueError(
            f"none of the words {list(words)!r} is a known token of the tokenizer {name!r} "
            f"({type(tok).__name__}, vocabulary {len(tok)}): every encoding is empty or the unknown token"
        )
    return ids
