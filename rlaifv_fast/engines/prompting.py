"""Prompts as the model's own processor renders them: shared by every engine, so the transformers and vLLM engines
send token-for-token the same prompts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .token_sets import resolve_token_ids


@dataclasses.dataclass
class ChatPrompts:
    """The tokenizer, the multimodal processor (None for text-only models) and the object holding the chat
    template, loaded from a model folder (or hub name)."""

    tokenizer: Any
    processor: Any | None
    chat: Any
    model_name: str
    template: str | None = None  # a chat template given by the user (load's chat_template), else the folder's
    _token_sets: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def multimodal(self) -> bool:
        return self.processor is not None

    @classmethod
    def load(cls, source: str, *, model_name: str, chat_template: str | None = None,
             **load_kwargs: Any) -> ChatPrompts:
        """chat_template: a Jinja file or the template text, used instead of the folder's (for checkpoints that ship
        none, e.g. PaliGemma); load_kwargs go to from_pretrained (trust_remote_code, local_files_only, revision,
        ...)."""
        from transformers import AutoProcessor, AutoTokenizer

        error = None
        try:
            processor = AutoProcessor.from_pretrained(source, **load_kwargs)
        except (OSError, ValueError, KeyError, TypeError) as e:
            processor, error = None, e
        if processor is not None and hasattr(processor, "image_processor") and hasattr(processor, "tokenizer"):
            tokenizer = processor.tokenizer
        else:
            _require_processor_for_vision(source, error)
            tokenizer = processor if hasattr(processor, "encode") else AutoTokenizer.from_pretrained(source,
                                                                                                  **load_kwargs)
            processor = None
        template = read_chat_template(chat_template) if chat_template is not None else None
        if template is not None:
            chat = processor if processor is not None else tokenizer
        else:
            chat = processor if processor is not None and getattr(processor, "chat_template", None) else tokenizer
            if not getattr(chat, "chat_template", None):
                raise ValueError(f"{source} has no chat template (neither processor nor tokenizer); pass one as "
                                 "chat_template (a stage's --chat-template, or the engines' chat_template=): a Jinja "
                                 "file or the template text")
        return cls(tokenizer, processor, chat, model_name, template)

    def render(self, text: str, *, image: bool) -> str:
        """The chat prompt of one user turn (image first, then text) with the generation prompt."""
        if self.multimodal:
            content: Any = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
        else:
            if image:
                raise ValueError(f"{self.model_name} is a text-only model; it cannot take an image")
            content = text
        extra = {"chat_template": self.template} if self.template is not None else {}
        return self.chat.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, **extra
        )

    def add_special_tokens(self, text: str) -> bool:
        """Whether tokenizing `text` should add special tokens: not when the template already starts with BOS."""
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def placeholder_tokens(self) -> list[str]:
        """The tokens the processor expands into image / video / audio features (e.g. <image>, <|image_pad|>,
        <IMG_CONTEXT>). An answer must never contain one: its text goes back through the processor (feedback,
        scoring), which would take it for an image. The engines therefore never generate these tokens. Both the
        processor's and the tokenizer's are taken: they differ where the prompt's placeholder is not the token the
        model replaces (Gemma 3: <start_of_image> in the prompt, <image_soft_token> x N after expansion)."""
        if self.processor is None:
            return []
        out = []
        for owner, attr in [(o, a) for o in (self.processor, self.tokenizer)
                            for a in ("image_token", "video_token", "audio_token")]:
            token = getattr(owner, attr, None)
            if isinstance(token, str) and token and token not in out:
                ids = self.tokenizer.convert_tokens_to_ids([token])
                if ids and ids[0] is not None and ids[0] != self.tokenizer.unk_token_id:
                    out.append(token)
        return out

    def end_of_turn_id(self, generation_eos: Any = None) -> int:
        """The token that closes an assistant turn, which scoring appends after a response: the first special token
        the chat template writes right after an assistant message (Gemma's <end_of_turn>, ChatML's <|im_end|>,
        Llama-2's </s>); for a template that writes none there (or renders no assistant turn), the tokenizer's EOS,
        else the first of `generation_eos` (the generation config's eos_token_id: an id or a list)."""
        key = ("end_of_turn", tuple(_ids(generation_eos)))
        if key not in self._token_sets:
            found = self._template_end_of_turn()
            if found is None:
                eos = self.tokenizer.eos_token_id
                found = int(eos) if eos is not None else (_ids(generation_eos) or [None])[0]
            if found is None:
                raise ValueError(f"{self.model_name}: no end-of-turn token (the chat template writes no special "
                                 "token after an assistant message; no EOS in the tokenizer or generation config)")
            self._token_sets[key] = found
        return self._token_sets[key]

    def stop_ids(self, generation_eos: Any = None) -> list[int]:
        """The token ids generation stops at, the same in every engine: the end-of-turn token (end_of_turn_id), the
        generation config's eos ids (`generation_eos`) and the tokenizer's EOS (vLLM stops at it in any case)."""
        eos = _ids(generation_eos) + _ids(self.tokenizer.eos_token_id)
        return sorted({self.end_of_turn_id(generation_eos), *eos})

    def _template_end_of_turn(self) -> int | None:
        """The first special token after the assistant's text when the template renders a user turn and an assistant
        turn (None when it writes none, or cannot render an assistant turn)."""
        from jinja2 import TemplateError

        mark = "END0OF0TURN0MARK"
        if self.multimodal:
            turns = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": mark}]}]
        else:
            turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
        extra = {"chat_template": self.template} if self.template is not None else {}
        try:
            text = self.chat.apply_chat_template(turns, tokenize=False, add_generation_prompt=False, **extra)
        except (TemplateError, ValueError, TypeError, KeyError):
            return None
        if not isinstance(text, str) or mark not in text:
            return None
        tail = text[text.index(mark) + len(mark):]
        special = {int(i) for i in self.tokenizer.all_special_ids}
        special |= {int(i) for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items()
                    if getattr(t, "special", False)}
        for i in self.tokenizer(tail, add_special_tokens=False)["input_ids"]:
            if int(i) in special and int(i) != self.tokenizer.unk_token_id:
                return int(i)
        return None

    def yes_no_ids(self, yes_words: Sequence[str], no_words: Sequence[str]) -> tuple[list[int], list[int]]:
        """(yes ids, no ids) for this tokenizer (resolved once per word lists); the sets must not overlap."""
        key = (tuple(yes_words), tuple(no_words))
        if key not in self._token_sets:
            yes = resolve_token_ids(self.tokenizer, yes_words)
            no = resolve_token_ids(self.tokenizer, no_words)
            both = set(yes) & set(no)
            if both:
                raise ValueError(f"yes words {yes_words!r} and no words {no_words!r} share token ids {sorted(both)}")
            self._token_sets[key] = (yes, no)
        return self._token_sets[key]


def _ids(value: Any) -> list[int]:
    """Token ids given as one id, a list of ids, or None."""
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]


def read_chat_template(value: str) -> str:
    """A chat template option: the text of the Jinja file it names, else the template itself when it holds Jinja
    markup ("{{" / "{%"); anything else is an error naming the value."""
    import os

    if not isinstance(value, str) or not value:
        raise ValueError(f"chat_template must be a Jinja file or the template text, got {value!r}")
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            text = f.read()
        if not text.strip():
            raise ValueError(f"chat_template file {value} is empty")
        return text
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"chat_template {value!r} is neither a file nor a Jinja template (no '{{{{' or '{{%')")


def _require_processor_for_vision(source: str, error: Exception | None) -> None:
    """A vision-language checkpoint without a loadable image processor is an error here, naming what is missing,
    not a silent fall-back to text-only that fails far away."""
    import json
    import os

    config = os.path.join(source, "config.json")
    if not os.path.isfile(config):
        return
    with open(config, encoding="utf-8") as f:
        data = json.load(f)
    if "vision_config" not in data:
        return
    present = [n for n in ("processor_config.json", "preprocessor_config.json") if os.path.exists(os.path.join(
        source, n))]
    what = ("its processor could not be loaded" + (f" ({error})" if error else "")) if present else (
        "processor_config.json / preprocessor_config.json is missing (save the processor with the model: "
        "processor.save_pretrained(folder))")
    raise ValueError(f"{source} is a vision-language model ({data.get('model_type')}) but {what}")

