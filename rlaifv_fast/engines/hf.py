"""HFEngine: the Engine protocol on transformers (image-text-to-text models with a processor, or text-only causal LMs).

- sample(): n candidates per request; each candidate is sampled with its own torch.Generator seeded by
  candidate_seed(run_seed, request_id, index), so a candidate is the same alone or in any batch. transformers'
  generate runs greedy; a logits processor applies repetition penalty, temperature, top-k and top-p itself, samples
  each row with its own generator (exponential race: argmax p / E, E ~ Exp(1), one full-vocabulary draw per row and
  step) and hands generate scores that are -inf except at the sampled token. The processor's image / video
  placeholder tokens are never generated (suppressed), and a candidate's text keeps every special token it sampled
  but the end token that stopped it (base.decode_sample), so scoring re-tokenizes exactly the sampled tokens.
- generate(): greedy text-only chat completions (the LLM divide step).
- yes_no(): "<question> Please answer yes or no." rendered with the chat template and the generation prompt; the
  hidden state of the LAST prompt position only goes through the LM head ((B, V) logits, never (B, T, V)), and the
  fused op rlaifv_fast.yes_no_logprobs gives full-vocabulary log P(yes-set), log P(no-set). With share_prefix
  (default), requests are grouped by image; the common token prefix of a group (the image tokens and the template
  text before the question) runs ONCE with a KV cache, and the question suffixes run as a batch against that cache
  (right-padded, positions continuing after the prefix). share_prefix=False runs every full prompt (left-padded):
  the baseline; both agree to ~1e-6 in float32.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..pipeline.images import ImageInput, load_image
from ..seeds import candidate_seed
from .base import (
    NO_WORDS,
    YES_NO_SUFFIX,
    YES_WORDS,
    DecodingConfig,
    Sample,
    SampleRequest,
    YesNoRequest,
    YesNoResult,
    decode_sample,
)
from .prompting import ChatPrompts

# Model types whose prompts use plain 1-D positions and full-attention caches: the prefix-sharing path and explicit
# position ids are used only for these (others take the plain path, positions computed by the model).
_PREFIX_SHARING_MODEL_TYPES = frozenset({"llava", "llama", "qwen2", "qwen3"})
_PREFIX_SHARING_TEXT_TYPES = frozenset({"llama", "qwen2", "qwen3"})
# Processor outputs that are per-token (shape (1, T)) and are rebuilt by the engine itself.
_TOKEN_KEYS = ("input_ids", "attention_mask")
# Processor outputs that are training targets, not model inputs (PaliGemma's processor returns `labels`): never
# passed to the model, whose own loss would run on them.
_TARGET_KEYS = ("labels",)
# The value a per-token processor output takes on tokens after the prompt (a scored response), by model type and
# key; every other per-token output is 0 there (text). PaliGemma's token_type_ids are 0 on the prefix (attended
# bidirectionally) and 1 on the suffix (causal), as its processor gives a `suffix`; transformers' PaliGemma
# generate appends 1 for generated tokens itself.
_RESPONSE_TOKEN_VALUES: dict[str, dict[str, int]] = {"paligemma": {"token_type_ids": 1}}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _resolve_dtype(dtype, device: torch.device):
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        if dtype in _DTYPES:
            return _DTYPES[dtype]
    raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")


def _image_key(image: ImageInput):
    """A grouping key for an image input: same key -> same pixels (different keys may still be the same image)."""
    if image is None:
        return None
    if isinstance(image, dict):
        if image.get("bytes"):
            return _image_key(bytes(image["bytes"]))
        if image.get("path"):
            return _image_key(image["path"])
        return ("dict", id(image))
    if isinstance(image, (bytes, bytearray)):
        return ("bytes", hashlib.blake2b(bytes(image), digest_size=16).hexdigest())
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.path.abspath(os.fspath(image)))
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
            return ("pil", image.mode, image.size, digest)
    except Exception:  # pragma: no cover - unusual PIL objects
        pass
    return ("object", id(image))


def response_token_value(model_type: str, key: str) -> int:
    """The value of per-token processor output `key` on response tokens for `model_type` (_RESPONSE_TOKEN_VALUES;
    default 0: text)."""
    return _RESPONSE_TOKEN_VALUES.get(model_type, {}).get(key, 0)


def _image_inputs(encoding: Any) -> dict[str, Any]:
    """A processor output's model inputs besides the token ids and the mask (image tensors, per-token type ids):
    the training targets it may hold (_TARGET_KEYS) are left out."""
    return {k: v for k, v in encoding.items() if k not in _TOKEN_KEYS and k not in _TARGET_KEYS}


# The attention implementations of transformers that apply a config's attn_logit_softcapping (Gemma 2); sdpa drops
# it silently, and flash-attention only where the installed flash-attn supports it.
_SOFTCAP_ATTENTION = ("eager", "flex_attention")


def _attention_implementation(config: Any, requested: str | None, source: str) -> str | None:
    """The attn_implementation to load with: as requested; for a model with attention logit soft-capping "eager"
    when none is requested, and an implementation that would drop the soft-capping is an error."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text, "attn_logit_softcapping", None):
        return requested
    if requested is None:
        return "eager"
    if requested not in _SOFTCAP_ATTENTION:
        raise ValueError(f"{source}: attn_implementation={requested!r} does not apply this model's attention logit "
                         f"soft-capping ({text.attn_logit_softcapping}); use one of {list(_SOFTCAP_ATTENTION)}")
    return requested


def _per_token_keys(mm: dict | None, length: int) -> list[str]:
    """Processor outputs with one value per token (shape (1, T)), e.g. mm_token_type_ids."""
    if not mm:
        return []
    return [k for k, v in mm.items() if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == (1, length)]


# Model types whose processors batch images of different crop counts or sizes by zero padding, which the model then
# drops: LLaVA-NeXT pads the crop dimension of pixel_values with zero crops (each image's crop count follows from its
# image_sizes); Idefics3 / SmolVLM pad a sample's images (its crops) with all-zero images and height / width with
# zeros (0 in pixel_attention_mask), and skip all-zero images.
_ZERO_PADDED_IMAGE_BATCHES = frozenset({"llava_next", "idefics3", "smolvlm"})


def _zero_padded_cat(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors concatenated along dim 0, every other dim zero-padded at its end to the largest size."""
    shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    out = values[0].new_zeros((sum(v.shape[0] for v in values), *shape))
    start = 0
    for v in values:
        out[(slice(start, start + v.shape[0]), *(slice(0, n) for n in v.shape[1:]))] = v
        start += v.shape[0]
    return out


def collate_image_inputs(
    mms: Sequence[dict | None], lengths: Sequence[int], T: int, *, left: bool, model_type: str
) -> dict[str, Any]:
    """The processor outputs of a batch of rows (one dict per row, None for a row without image; `lengths`: each
    row's token count) as the processor itself batches them, for rows padded to T tokens on the left or the right:

    - per-token outputs (shape (1, T_row), e.g. mm_token_type_ids) padded with zeros (text) to (B, T);
    - per-image tensors concatenated in row order along dim 0; where their other dims differ (anyres crop counts,
      image splitting), zero-padded at the end first, as the processors of _ZERO_PADDED_IMAGE_BATCHES do (their
      models drop the padding); for other model types a difference is an error naming the input;
    - other values (lists) listed in row order.
    """
    B = len(mms)
    present = [(i, m) for i, m in enumerate(mms) if m]
    keys: list[str] = []
    for _, m in present:
        keys.extend(k for k in m if k not in keys)
    batch: dict[str, Any] = {}
    for k in keys:
        vals = [(i, m.get(k)) for i, m in present]
        if any(v is None for _, v in vals):
            raise ValueError(f"image inputs of one batch differ: {k!r} is missing for some rows")
        if all(k in _per_token_keys(mms[i], lengths[i]) for i, _ in vals):
            padded = torch.zeros((B, T), dtype=vals[0][1].dtype)
            for i, v in vals:
                n = v.shape[1]
                if left:
                    padded[i, T - n :] = v[0]
                else:
                    padded[i, :n] = v[0]
            batch[k] = padded
        elif isinstance(vals[0][1], torch.Tensor):
            tensors = [v for _, v in vals]
            if len({(v.dim(), *v.shape[1:]) for v in tensors}) == 1:
                batch[k] = torch.cat(tensors, dim=0)
            elif model_type in _ZERO_PADDED_IMAGE_BATCHES and len({v.dim() for v in tensors}) == 1:
                batch[k] = _zero_padded_cat(tensors)
            else:
                shapes = sorted({tuple(v.shape) for v in tensors})
                raise ValueError(
                    f"image input {k!r} has shapes {shapes} within one batch, and how model type {model_type!r} "
                    "batches such inputs is not known (zero padding is known for "
                    f"{sorted(_ZERO_PADDED_IMAGE_BATCHES)}); run with batch size 1"
                )
        else:
            batch[k] = [v for _, v in vals]
    return batch


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[len(a) - 1 - i] == b[len(b) - 1 - i]:
        i += 1
    return i


class _PerRowSampler:
    """A transformers LogitsProcessor that samples every row with its own generator and returns one-hot scores
    (0 at the sampled token, -inf elsewhere), so greedy decoding emits exactly the sampled tokens.

    HF's order: repetition penalty (over the row's prompt and generated tokens, padding excluded), temperature,
    top-k, top-p. The draw is a full-vocabulary Exp(1) vector per row and step: a row's tokens depend only on its own
    logits and seed, never on the batch around it.
    """

    def __init__(self, seeds: Sequence[int], starts: Sequence[int], decoding: DecodingConfig, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.starts = torch.tensor(list(starts), dtype=torch.long, device=device)
        self.decoding = decoding

    def warp(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """float32 logits after repetition penalty, temperature, top-k and top-p (-inf where filtered)."""
        d = self.decoding
        B, V = scores.shape
        logits = scores.float().clone()
        if d.repetition_penalty != 1.0:
            T = input_ids.shape[1]
            valid = torch.arange(T, device=input_ids.device)[None, :] >= self.starts[:, None]
            idx = torch.where(valid, input_ids, torch.full_like(input_ids, V))
            seen = torch.zeros((B, V + 1), dtype=torch.bool, device=logits.device)
            seen.scatter_(1, idx, True)
            seen = seen[:, :V]
            penalized = torch.where(logits < 0, logits * d.repetition_penalty, logits / d.repetition_penalty)
            logits = torch.where(seen, penalized, logits)
        logits = logits / d.temperature
        if 0 < d.top_k < V:
            kth = torch.topk(logits, d.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if d.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - d.top_p)
            remove[:, -1] = False  # keep at least the most likely token
            logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
        return logits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        V = scores.shape[1]
        probs = self.warp(input_ids, scores).softmax(dim=-1)
        race = torch.stack(
            [torch.empty(V, dtype=torch.float32, device=probs.device).exponential_(generator=g)
             for g in self.generators]
        )
        tokens = torch.argmax(probs / race, dim=-1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens[:, None], 0.0)
        return out


class HFEngine:
    """The Engine protocol on transformers.

    Args:
        model_path: a local model folder (or a hub id when local_files_only=False).
        device: "cpu" (default), "cuda", "cuda:1", ... or a torch.device.
        dtype: torch dtype or its name; default float32 on CPU, bfloat16 on GPU; "auto" takes the checkpoint's.
        batch_size: rows per forward (sampling rows are requests x n; yes/no rows are questions).
        trust_remote_code: passed through to transformers (never on by default).
        local_files_only: default True: nothing is downloaded unless the caller opts in.
        share_prefix: yes/no with the per-image shared prefix (KV cache computed once per image); False runs every
            full prompt (the baseline). Models outside LLaVA / Llama / Qwen2 / Qwen3 always take the plain path.
        model_name: name recorded in provenance (default: the folder name).
        attn_implementation: passed to from_pretrained when given (e.g. "sdpa", "eager").
        allow_pickle_weights: load a folder whose weights are pickle files (.bin); off: safetensors only.
        chat_template: a Jinja file or the template text, used instead of the folder's chat template (required for
            checkpoints that ship none, e.g. PaliGemma).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        local_files_only: bool = True,
        share_prefix: bool = True,
        model_name: str | None = None,
        attn_implementation: str | None = None,
        allow_pickle_weights: bool = False,
        chat_template: str | None = None,
    ):
        from transformers import AutoConfig

        from .layout import check_model_folder

        check_model_folder(model_path, local_files_only=bool(local_files_only),
                           allow_pickle_weights=bool(allow_pickle_weights))

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = os.fspath(model_path)
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        self.share_prefix = bool(share_prefix)
        self.model_name = model_name or os.path.basename(self.model_path.rstrip("/\\")) or self.model_path
        load = {"trust_remote_code": bool(trust_remote_code), "local_files_only": bool(local_files_only)}

        self.config = AutoConfig.from_pretrained(self.model_path, **load)
        self.prompts = ChatPrompts.load(self.model_path, model_name=self.model_name, chat_template=chat_template,
                                        **load)
        self.processor, self.tokenizer = self.prompts.processor, self.prompts.tokenizer
        self.multimodal = self.prompts.multimodal
        # safetensors only, unless the user vouches for the folder's pickle weights
        model_kwargs: dict[str, Any] = dict(load, dtype=self.dtype, use_safetensors=None if allow_pickle_weights
                                            else True)
        attn_implementation = _attention_implementation(self.config, attn_implementation, self.model_path)
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        if self.multimodal:
            from transformers import AutoModelForImageTextToText

            self.model = AutoModelForImageTextToText.from_pretrained(self.model_path, **model_kwargs)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, **model_kwargs)
        self.model.to(self.device).eval()
        if self.dtype == "auto":
            self.dtype = next(self.model.parameters()).dtype

        tok = self.tokenizer
        self._image_token_id = getattr(self.config, "image_token_id", None)
        if self._image_token_id is None:
            self._image_token_id = getattr(self.config, "image_token_index", None)
        gen_cfg = getattr(self.model, "generation_config", None)
        gen_eos = getattr(gen_cfg, "eos_token_id", None)
        # One end-of-turn token for every stage (ChatPrompts.end_of_turn_id, as the chat template closes an assistant
        # turn): scoring appends it after a response; generation stops at it and at the generation config's eos ids.
        self.end_token_id = self.prompts.end_of_turn_id(gen_eos)
        self._eos_ids = self.prompts.stop_ids(gen_eos)
        pad = tok.pad_token_id
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        self._pad_id = int(pad) if pad is not None else self._eos_ids[0]
        # image / video placeholders are never generated (see ChatPrompts.placeholder_tokens)
        self._placeholder_ids = sorted(int(tok.convert_tokens_to_ids(t)) for t in self.prompts.placeholder_tokens())
        # generate() fills unset values from model.generation_config: keep only the token ids, so that no sampling
        # setting, penalty or token suppression of the checkpoint leaks into the engine's own decoding.
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id if getattr(gen_cfg, "bos_token_id", None) is None else gen_cfg.bos_token_id,
            eos_token_id=list(self._eos_ids),
            pad_token_id=self._pad_id,
        )

        model_type = getattr(self.config, "model_type", "")
        self._model_type = model_type
        text_cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        text_type = getattr(text_cfg, "model_type", model_type)
        self._positions_1d = model_type in _PREFIX_SHARING_MODEL_TYPES and text_type in _PREFIX_SHARING_TEXT_TYPES
        from .lm_head import head_transform

        self._head_scale, self._softcap = head_transform(self.config)
        backbone = getattr(self.model, "model", None)
        self._backbone = backbone if isinstance(backbone, torch.nn.Module) else self.model.base_model
        params = inspect.signature(self._backbone.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._warned_no_sharing = False

    # ------------------------------------------------------------------ prompts
    def render(self, text: str, *, image: bool) -> str:
        """The chat prompt of one user turn (image first, then text) with the generation prompt."""
        return self.prompts.render(text, image=image)

    def _add_special(self, text: str) -> bool:
        return self.prompts.add_special_tokens(text)

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=self._add_special(text))["input_ids"])

    def _process(self, text: str, image) -> dict[str, Any]:
        return self.processor(
            text=[text], images=[image], return_tensors="pt", add_special_tokens=self._add_special(text)
        )

    def _encode_group(
        self, texts: Sequence[str], image
    ) -> tuple[list[list[int]], list[dict[str, torch.Tensor] | None]]:
        """Token ids and image inputs of rendered prompts that all carry the same (decoded) image.

        The image goes through the processor once: the image-token expansion found for the first prompt is spliced
        into the plain tokenization of the others (checked; where the splice does not apply, or the processor returns
        per-token inputs such as mm_token_type_ids, each prompt is processed in full). Rows share one image-input
        dict when spliced."""
        if image is None:
            return [self._tokenize(t) for t in texts], [None] * len(texts)
        first = self._process(texts[0], image)
        ids0 = first["input_ids"][0].tolist()
        mm = _image_inputs(first)
        ids, mms = [ids0], [mm]
        if len(texts) == 1:
            return ids, mms
        per_token = bool(_per_token_keys(mm, len(ids0)))
        plain0 = self._tokenize(texts[0])
        p = _lcp(ids0, plain0)
        s = _common_suffix(ids0[p:], plain0[p:])
        placeholder = plain0[p : len(plain0) - s]
        expansion = ids0[p : len(ids0) - s]
        head = plain0[:p]
        img = self._image_token_id
        n_img = ids0.count(img) if img is not None else None
        for text in texts[1:]:
            spliced = None
            if not per_token:
                plain = self._tokenize(text)
                if plain[:p] == head and plain[p : p + len(placeholder)] == placeholder:
                    spliced = head + expansion + plain[p + len(placeholder) :]
                    if n_img is not None and spliced.count(img) != n_img:
                        spliced = None
            if spliced is None:
                enc = self._process(text, image)
                ids.append(enc["input_ids"][0].tolist())
                mms.append(_image_inputs(enc))
            else:
                ids.append(spliced)
                mms.append(mm)
        return ids, mms

    def _move(self, batch: dict[str, Any]) -> dict[str, Any]:
        moved = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)
            moved[k] = v
        return moved

    def _collate_left(self, rows: Sequence[list[int]], mms: Sequence[dict | None]):
        """Left-padded input ids, attention mask, position ids (1-D models) and the rows' image inputs, collated as
        the processor batches them (collate_image_inputs)."""
        T = max(len(r) for r in rows)
        B = len(rows)
        ids = torch.full((B, T), self._pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r) :] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._positions_1d:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        batch.update(collate_image_inputs(mms, [len(r) for r in rows], T, left=True, model_type=self._model_type))
        return self._move(batch)

    # ------------------------------------------------------------------ sampling
    def _encode_requests(self, requests: Sequence[SampleRequest]) -> list[tuple[list[int], dict | None]]:
        """(prompt ids, image inputs) per request: the chat prompt of its text, with its image when it has one."""
        encoded = []
        for req in requests:
            image = load_image(req.image) if req.image is not None else None
            ids, mms = self._encode_group([self.render(req.prompt, image=image is not None)], image)
            encoded.append((ids[0], mms[0]))
        return encoded

    def sample(
        self, requests: Sequence[SampleRequest], n: int, decoding: DecodingConfig, *, run_seed: int
    ) -> list[list[Sample]]:
        """n candidates per request (outer list in request order, inner by candidate index)."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not isinstance(decoding, DecodingConfig):
            raise TypeError(f"decoding must be a DecodingConfig, got {type(decoding).__name__}")
        requests = list(requests)
        encoded = self._encode_requests(requests)
        rows = [(r, j) for r in range(len(requests)) for j in range(int(n))]
        rows.sort(key=lambda rj: len(encoded[rj[0]][0]))  # less padding; results do not depend on the batch
        results: list[list[Sample | None]] = [[None] * int(n) for _ in requests]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            seeds = [candidate_seed(run_seed, requests[r].request_id, j) for r, j in chunk]
            texts, counts, reasons = self._generate_rows(
                [encoded[r][0] for r, _ in chunk], [encoded[r][1] for r, _ in chunk], decoding.max_new_tokens,
                seeds=seeds, decoding=decoding,
            )
            for (r, j), seed, text, num, reason in zip(chunk, seeds, texts, counts, reasons):
                results[r][j] = Sample(requests[r].request_id, j, seed, text, num, reason)
        return results  # type: ignore[return-value]

    def greedy(self, requests: Sequence[SampleRequest], *, max_new_tokens: int) -> list[Sample]:
        """One greedy answer per request (image + prompt), in request order (index 0, seed -1)."""
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        requests = list(requests)
        encoded = self._encode_requests(requests)
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i][0]))
        out: list[Sample | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            texts, counts, reasons = self._generate_rows(
                [encoded[i][0] for i in chunk], [encoded[i][1] for i in chunk], max_new_tokens
            )
            for i, text, num, reason in zip(chunk, texts, counts, reasons):
                out[i] = Sample(requests[i].request_id, 0, -1, text, num, reason)
        return out  # type: ignore[return-value]

    def _generate_rows(self, rows, mms, max_new_tokens: int, *, seeds=None, decoding=None):
        from transformers import GenerationConfig, LogitsProcessorList

        batch = self._collate_left(rows, mms)
        batch.pop("position_ids", None)  # generate derives positions from the attention mask
        T = batch["input_ids"].shape[1]
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=int(max_new_tokens),
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
            # neutral values, so that nothing a checkpoint's generation config sets reshapes the logits
            temperature=1.0,
            top_k=50,
            top_p=1.0,
            typical_p=1.0,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            encoder_no_repeat_ngram_size=0,
            min_length=0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            suppress_tokens=self._placeholder_ids or None,
        )
        processors = LogitsProcessorList()
        if seeds is not None:
            starts = [T - len(r) for r in rows]
            processors.append(_PerRowSampler(seeds, starts, decoding, self.device))
        with torch.inference_mode():
            out = self.model.generate(**batch, generation_config=config, logits_processor=processors)
        new = out[:, T:].cpu()
        eos = torch.tensor(self._eos_ids)
        texts, counts, reasons = [], [], []
        for row in new:
            hits = torch.isin(row, eos).nonzero()
            if len(hits):
                count, reason = int(hits[0]) + 1, "stop"
            else:
                count, reason = int(row.numel()), "length"
            texts.append(decode_sample(self.tokenizer, row[:count].tolist(), stopped=reason == "stop"))
            counts.append(count)
            reasons.append(reason)
        return texts, counts, reasons

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy text-only chat completions, in prompt order."""
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompts = list(prompts)
        ids = [self._tokenize(self.render(p, image=False)) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            texts, _, _ = self._generate_rows([ids[i] for i in chunk], [None] * len(chunk), max_new_tokens)
            for i, text in zip(chunk, texts):
                out[i] = text.strip()
        return out

    # ------------------------------------------------------------------ yes / no
    def token_sets(self, yes_words: Sequence[str] = YES_WORDS, no_words: Sequence[str] = NO_WORDS):
        """(yes ids, no ids) for this tokenizer (cached)."""
        return self.prompts.yes_no_ids(yes_words, no_words)

    def yes_no(
        self,
        requests: Sequence[YesNoRequest],
        *,
        yes_words: Sequence[str] = YES_WORDS,
        no_words: Sequence[str] = NO_WORDS,
        share_prefix: bool | None = None,
    ) -> list[YesNoResult]:
        """Full-vocabulary log P(yes-set), log P(no-set) at the first generated position, in request order."""
        from .. import yes_no_logprobs

        requests = list(requests)
        if not requests:
            return []
        yes_ids, no_ids = self.token_sets(yes_words, no_words)
        share = self.share_prefix if share_prefix is None else bool(share_prefix)
        if share and not self._positions_1d:
            if not self._warned_no_sharing:
                warnings.warn(
                    f"{self.model_name}: prefix sharing is implemented for {sorted(_PREFIX_SHARING_MODEL_TYPES)} "
                    f"models; model type {self.config.model_type!r} takes the plain path",
                    stacklevel=2,
                )
                self._warned_no_sharing = True
            share = False

        # Group by image, decode each image once, and tokenize (image processed once per group).
        groups: dict[Any, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(_image_key(req.image), []).append(i)
        ids: list[list[int]] = [[] for _ in requests]
        mms: list[dict | None] = [None] * len(requests)
        group_list = []
        for key, members in groups.items():
            image = load_image(requests[members[0]].image) if key is not None else None
            texts = [self.render(requests[i].question + YES_NO_SUFFIX, image=image is not None) for i in members]
            enc, enc_mms = self._encode_group(texts, image)
            for i, e, m in zip(members, enc, enc_mms):
                ids[i], mms[i] = e, m
            group_list.append(members)

        logits: list[torch.Tensor | None] = [None] * len(requests)
        plain_rows = list(range(len(requests)))
        if share:
            plain_rows = self._yes_no_shared(group_list, ids, mms, logits)
        for start in range(0, len(plain_rows), self.batch_size):
            chunk = plain_rows[start : start + self.batch_size]
            out = self._last_logits_plain([ids[i] for i in chunk], [mms[i] for i in chunk])
            for i, row in zip(chunk, out):
                logits[i] = row
        stacked = torch.stack(logits)  # (B, V)
        yn = yes_no_logprobs(stacked, yes_ids, no_ids)
        ly, ln = yn.logp_yes.tolist(), yn.logp_no.tolist()
        return [YesNoResult(req.request_id, float(a), float(b)) for req, a, b in zip(requests, ly, ln)]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) last hidden states -> (B, V) logits (the LM head on the last position only)."""
        from .lm_head import LMHead

        return LMHead(None, None, self._head_scale, self._softcap).transform(self.model.get_output_embeddings()(hidden))

    def _backbone_call(self, **kwargs):
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self._backbone(**kwargs, return_dict=True)

    def _last_logits_plain(self, rows, mms) -> torch.Tensor:
        batch = self._collate_left(rows, mms)
        with torch.inference_mode():
            out = self._backbone_call(**batch, use_cache=False)
            return self._head(out.last_hidden_state[:, -1, :])

    def _yes_no_shared(self, groups, ids, mms, logits) -> list[int]:
        """Prefix-shared path; fills `logits` and returns the rows that must take the plain path."""
        from transformers import DynamicCache

        img = self._image_token_id
        fallback: list[int] = []
        ready = []  # (longest usable prefix, shortest prefix holding every image token, members)
        for members in groups:
            seqs = [ids[i] for i in members]
            cut = min(len(s) for s in seqs) - 1  # at least one suffix token per row
            for s in seqs[1:]:
                cut = min(cut, _lcp(seqs[0], s))
            need = 1  # the prefix must hold every image token: the suffix pass is text only
            if img is not None:
                for s in seqs:
                    if img in s:
                        need = max(need, len(s) - s[::-1].index(img))
            if cut >= need and not any(_per_token_keys(mms[i], len(ids[i])) for i in members):
                ready.append((cut, need, members))
            else:
                fallback.extend(members)
        # Groups run their prefixes as one batch cut to one common length (no padding): sorted by usable prefix,
        # a group joins the current chunk when the chunk's cut still holds all of its image tokens.
        ready.sort(key=lambda cnm: cnm[0])
        chunks: list[tuple[int, list[list[int]]]] = []
        for cut, need, members in ready:
            if chunks and need <= chunks[-1][0] and len(chunks[-1][1]) < self.batch_size:
                chunks[-1][1].append(members)
            else:
                chunks.append((cut, [members]))
        for cut, chunk in chunks:
            prefix_rows = [ids[m[0]][:cut] for m in chunk]
            prefix_mms = [mms[m[0]] for m in chunk]
            batch = self._collate_left(prefix_rows, prefix_mms)  # equal lengths: no padding
            with torch.inference_mode():
                out = self._backbone_call(**batch, use_cache=True)
            cache = getattr(out, "cache", None)
            if cache is None:
                cache = out.past_key_values
            layers = [(layer.keys, layer.values) for layer in cache.layers]
            rows = [(g, i) for g, members in enumerate(chunk) for i in members]
            for r0 in range(0, len(rows), self.batch_size):
                sub = rows[r0 : r0 + self.batch_size]
                suffixes = [ids[i][cut:] for _, i in sub]
                S = max(len(s) for s in suffixes)
                inp = torch.full((len(sub), S), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(sub), cut + S), dtype=torch.long)
                mask[:, :cut] = 1
                for k, s in enumerate(suffixes):
                    inp[k, : len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[k, cut : cut + len(s)] = 1
                pos = torch.arange(cut, cut + S, dtype=torch.long)[None, :].expand(len(sub), S)
                groups_of_rows = [g for g, _ in sub]
                g0 = groups_of_rows[0]
                if all(g == g0 for g in groups_of_rows):  # one image: a broadcast view, copied once by the cache
                    pick = lambda t, g0=g0: t[g0 : g0 + 1].expand(len(sub), *t.shape[1:])  # noqa: E731
                else:
                    index = torch.tensor(groups_of_rows, dtype=torch.long, device=self.device)
                    pick = lambda t, index=index: t.index_select(0, index)  # noqa: E731
                sub_cache = DynamicCache()
                for layer_idx, (k, v) in enumerate(layers):
                    sub_cache.update(pick(k), pick(v), layer_idx)
                last = torch.tensor([len(s) - 1 for s in suffixes], dtype=torch.long, device=self.device)
                with torch.inference_mode():
                    o = self._backbone_call(
                        input_ids=inp.to(self.device),
                        attention_mask=mask.to(self.device),
                        position_ids=pos.to(self.device),
                        cache=sub_cache,
                        use_cache=True,
                    )
                    hidden = o.last_hidden_state[torch.arange(len(sub), device=self.device), last]
                    head = self._head(hidden)
                for (_, i), row in zip(sub, head):
                    logits[i] = row
            del cache, layers
        return sorted(fallback)
