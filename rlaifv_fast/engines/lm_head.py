"""The LM head of a model, described once: weight, bias, logit scale, final-logit soft-capping. The engines, the
training paths and the TRL integration read a model's head through `LMHead.of`, so no two of them can disagree on
what a model's logits are:

    logits = softcap * tanh(scale * (h W^T + b) / softcap)      (without soft-capping: scale * (h W^T + b))

`scale` is the config's logit multiplier under whichever name the family uses (logit_scale: Cohere;
output_multiplier / lm_head_multiplier; 1 / logits_scaling: Granite); `softcap` is final_logit_softcapping (Gemma 2
and 3). The same lookup as TRL's own fused head.
"""

from __future__ import annotations

import dataclasses

import torch


# Model types whose forward applies no final-logit soft-capping even where their text config declares one:
# transformers' Gemma3ForConditionalGeneration and PaliGemmaForConditionalGeneration return lm_head(h) as is
# (PaliGemma 2's Gemma 2 text config declares 30; Gemma2ForCausalLM / Gemma3ForCausalLM on such a text config do
# cap). The logits are the model's own, so a declared cap is not applied for these.
_FORWARD_IGNORES_SOFTCAP = frozenset({"gemma3", "paligemma"})


def head_transform(config) -> tuple[float, float | None]:
    """(logit scale, final-logit soft-capping or None) of a model config (its text config for a VLM), as the
    model's forward applies them."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text, "final_logit_softcapping", None)
    if getattr(config, "model_type", None) in _FORWARD_IGNORES_SOFTCAP:
        softcap = None
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    if scale is None:
        scale = getattr(text, "lm_head_multiplier", None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scaling = text.logits_scaling
        scale = scaling if getattr(text, "model_type", "") == "hyperclovax" else 1 / scaling
    return (1.0 if scale is None else float(scale)), (None if not softcap else float(softcap))


@dataclasses.dataclass(frozen=True)
class LMHead:
    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model) -> LMHead:
        head = model.get_output_embeddings()
        scale, softcap = head_transform(model.config)
        return cls(head.weight, getattr(head, "bias", None), scale, softcap)

    @property
    def plain(self) -> bool:
        """Logits are exactly h W^T + b (no scale, no soft-capping)."""
        return self.scale == 1.0 and self.softcap is None

    def op_kwargs(self) -> dict[str, float | None]:
        """The head transform as the lm_head-fused ops take it (rlaifv_fast.linear_sequence_logps and the others):
        {"logit_scale": ..., "softcap": ...}, so every caller passes the same thing."""
        return {"logit_scale": self.scale, "softcap": self.softcap}

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """The scale and the soft-capping on raw head outputs."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(torch.nn.functional.linear(hidden, self.weight, self.bias))

    def describe(self) -> str:
        return f"logit scale {self.scale}, final-logit soft-capping {self.softcap}"
