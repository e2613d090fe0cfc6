"""TRL's `DPOTrainer` with its label log-probs computed by `rlaifv_fast.sequence_logps`.

Supported TRL versions: exactly those in `SUPPORTED_TRL_VERSIONS` (1.16.0). Importing this module, or patching, with
any other installed TRL raises `ImportError` naming them, because the code below mirrors that release line by line.

Where TRL 1.16.0 computes DPO log-probs
---------------------------------------
`DPOTrainer.__init__` (trl/trainer/dpo_trainer.py, lines 954-962) calls `add_fused_lm_head(model, outputs=...)`
(trl/trainer/utils.py, lines 1548-1698) on the policy (and the reference model). That replaces `model.forward` with
a closure which, called with `fused_lm_head=True` (`DPOTrainer._compute_loss`, `compute_ref_log_probs` and the
reference precomputation all do), runs the backbone, shifts the labels, and turns hidden states into per-token label
log-probs with `ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py): projection through the LM head and
log-softmax at the label, plus the metric fields `entropy`, `mean_logits`, `is_top1` and, for WPO weighting,
`log_sum_sq_probs`. `_compute_loss` sums `log_probs[:, -seq_len:]` per sequence (or its LD-DPO split), and the IPO
and `sigmoid_norm` losses divide those sums by the completion length themselves; the `sft` loss uses the per-token
values. There is no `concatenated_forward` / `get_batch_logps` / `selective_log_softmax` on that path any more.

What the patch replaces
-----------------------
Only that fused head: `add_fused_logps_lm_head` is a copy of TRL 1.16.0's `add_fused_lm_head` (same signature, same
`FusedCausalLMOutput`, same shift, masking by `labels != -100`, temperature, logit scale and soft-capping, loss and MoE
aux loss) in which the single `_ChunkedLogProbFunction.apply(...)` call is replaced by

    logits = hidden[mask] @ W.T (+ b)                        # only the scored positions, (N, V)
    per_token = sequence_logps(logits[None], labels[mask][None], shift=False, temperature=temperature,
                               return_per_token=True, inplace_backward=True).per_token[0]

and the metric fields are computed from the same logits without gradient, in row chunks of bounded size. The per-token
log-probs are scattered back to `(B, T-1)` with zeros at masked positions exactly as TRL does, so everything downstream
(sums, LD-DPO, IPO/`sigmoid_norm` normalisation, `sft`, WPO weights, metrics) is TRL's own unchanged code. The logits
buffer is created and consumed only here, so the backward writes its gradient over it (`inplace_backward=True`):
the step holds one `(N, V)` buffer, where TRL's kernel on CPU (its torch fallback, no Triton) holds several `(N, V)`
fp32 temporaries per token chunk.

Differences from TRL's head, all outside what `DPOTrainer` uses: `entropy` carries no gradient (DPO only logs it,
detached); the scored positions are always compacted (TRL compacts only on Triton devices; the outputs are identical);
DeepSpeed ZeRO-3 is refused (`maybe_gather_lm_head_ctx` cannot keep the gathered head alive for autograd's saved
tensors); on GPU with Triton, TRL's tiles bound the head's memory by 4096 tokens x 32768 vocabulary entries while this
path holds all N scored tokens' logits (one buffer, reused for the gradient).

Use
---
    from rlaifv_fast.integrations.trl import FusedLogpsDPOTrainer
    trainer = FusedLogpsDPOTrainer(model=model, args=dpo_config, train_dataset=ds, processing_class=tokenizer)

or patch what you already have: `patch_dpo_trainer(trainer)` (an instance, already constructed by TRL: its models'
heads are replaced in place; reference log-probs TRL already precomputed at init are kept) or
`patch_dpo_trainer(SomeDPOTrainerSubclass)` (returns a subclass whose `__init__` builds with our head from the start).
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
import types
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from ..engines.lm_head import head_transform
from ..ops.sequence_logps import sequence_logps

SUPPORTED_TRL_VERSIONS: tuple[str, ...] = ("1.16.0",)

# Rows of (rows, V) fp32 temporaries the no-grad metric pass may hold at once: rows = max(1, _METRIC_CHUNK // V).
_METRIC_CHUNK = 1 << 22


def trl_version() -> str | None:
    """The installed TRL version, or None when TRL is not installed."""
    try:
        return importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_trl_version() -> str:
    """Return the installed TRL version; raise ImportError if TRL is absent or not one of SUPPORTED_TRL_VERSIONS."""
    found = trl_version()
    if found is None:
        raise ImportError(
            "rlaifv_fast.integrations.trl needs TRL: pip install trl=="
            + SUPPORTED_TRL_VERSIONS[-1]
            + f" (supported versions: {', '.join(SUPPORTED_TRL_VERSIONS)})"
        )
    if found not in SUPPORTED_TRL_VERSIONS:
        raise ImportError(
            f"rlaifv_fast.integrations.trl supports TRL {', '.join(SUPPORTED_TRL_VERSIONS)} only (it mirrors that "
            f"release's DPOTrainer fused LM head), but TRL {found} is installed; install trl=="
            f"{SUPPORTED_TRL_VERSIONS[-1]}"
        )
    return found


check_trl_version()

import transformers  # noqa: E402
import trl.trainer.dpo_trainer as _trl_dpo  # noqa: E402
from packaging.version import Version  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from trl import DPOTrainer  # noqa: E402
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx  # noqa: E402

_MARK = "_rlaifv_fast_fused_logps"
_DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
_OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _refuse_zero3() -> None:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "rlaifv_fast's fused DPO log-probs do not support DeepSpeed ZeRO-3 (the sharded lm_head would have to "
            "stay gathered until the backward); use TRL's own DPOTrainer there"
        )


@torch.no_grad()
def _metric_fields(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, outputs: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """TRL 1.16.0's optional per-token fields (ChunkedLogProbFunction.forward, trl/kernels/chunked_logprob.py) from
    (N, V) logits already scaled and soft-capped, without gradient, `_METRIC_CHUNK` logits at a time."""
    wanted = [name for name in _OPTIONAL_OUTPUTS if name in outputs]
    N, V = logits.shape
    out = {
        name: torch.empty(N, device=logits.device, dtype=torch.bool if name == "is_top1" else torch.float32)
        for name in wanted
    }
    if not wanted or N == 0:
        return out
    rows = max(1, _METRIC_CHUNK // max(V, 1))
    inv_t = 1.0 / temperature
    for start in range(0, N, rows):
        end = min(start + rows, N)
        z = logits[start:end].float() * inv_t
        log_z = torch.logsumexp(z, dim=-1)
        if "entropy" in out:
            # H = log Z - sum_v p_v z_v
            out["entropy"][start:end] = log_z - (torch.softmax(z, dim=-1) * z).sum(-1)
        if "log_sum_sq_probs" in out:
            # log sum_v p_v^2 = logsumexp(2 z) - 2 log Z
            out["log_sum_sq_probs"][start:end] = torch.logsumexp(2 * z, dim=-1) - 2 * log_z
        if "mean_logits" in out:
            out["mean_logits"][start:end] = z.sum(-1) / V
        if "is_top1" in out:
            # TRL: target >= max and target > max of the entries before it, i.e. argmax (first maximum) == target
            out["is_top1"][start:end] = z.argmax(-1) == targets[start:end]
        del z
    return out


def add_fused_logps_lm_head(
    model,
    temperature: float = 1.0,
    cast_lm_head_to_fp32: bool = False,
    outputs: tuple[str, ...] = ("log_probs",),
) -> None:
    """TRL 1.16.0's `add_fused_lm_head` (trl/trainer/utils.py, lines 1548-1698) with the label log-probs computed by
    `rlaifv_fast.sequence_logps`: `model(..., labels=labels, fused_lm_head=True)` returns TRL's
    `FusedCausalLMOutput`; without `fused_lm_head` the call goes to the forward the model had before (generation is
    unchanged). Applying it twice to one model is a no-op. Same arguments as TRL's function."""
    check_trl_version()
    _refuse_zero3()
    if getattr(model, _MARK, False):
        return
    previous_forward = model.forward
    text_config = model.config.get_text_config()
    # --- from here to `_fused_forward`: TRL 1.16.0 trl/trainer/utils.py lines 1575-1595
    # (logic unchanged, comments dropped) ---
    # the lookup of TRL's lines 1575-1585, shared with the engines and the trainer
    logit_scale, final_logit_softcapping = head_transform(model.config)
    backbone_attr = "base_model"
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        backbone_attr = "model"
    if temperature <= 0:
        raise ValueError("temperature must be positive")

    @functools.wraps(type(model).forward)
    def _fused_forward(
        self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs
    ):
        if not fused_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            if shift_labels is not None:
                kwargs["shift_labels"] = shift_labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return previous_forward(*args, **kwargs)

        # --- TRL 1.16.0 trl/trainer/utils.py lines 1610-1639 (logic unchanged, comments dropped) ---
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        backbone_outputs = getattr(self, backbone_attr)(*args, **kwargs)
        if shift_labels is None:
            hidden_states = backbone_outputs.last_hidden_state[:, :-1]
            labels = labels[:, 1:]
        else:
            hidden_states = backbone_outputs.last_hidden_state
            labels = shift_labels
        lm_head = self.get_output_embeddings()
        hidden_states = hidden_states.to(lm_head.weight.device)
        labels = labels.to(lm_head.weight.device)
        mask = labels != -100
        autocast_ctx = nullcontext()
        if cast_lm_head_to_fp32:
            hidden_states = hidden_states.float()
            autocast_ctx = torch.autocast(hidden_states.device.type, enabled=False)
        weight, bias = lm_head.weight, lm_head.bias
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
            if bias is not None:
                bias = bias.full_tensor()

        # --- replaces TRL 1.16.0 trl/trainer/utils.py lines 1640-1661 (`_ChunkedLogProbFunction.apply` and the
        # scatter back): the scored positions' logits, then rlaifv_fast's fused label log-probs ---
        with autocast_ctx, maybe_gather_lm_head_ctx(weight, bias):
            device_type = hidden_states.device.type
            compute_dtype = (
                torch.get_autocast_dtype(device_type)
                if torch.is_autocast_enabled(device_type)
                else hidden_states.dtype
            )
            targets = labels[mask]
            logits = F.linear(
                hidden_states[mask].to(compute_dtype),
                weight.to(compute_dtype),
                None if bias is None else bias.to(compute_dtype),
            )
            if logit_scale != 1.0:
                logits = logits * logit_scale
            if final_logit_softcapping is not None:
                logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
            # `logits` is a fresh buffer nothing else saves: the backward may write the gradient over it
            token_logps = sequence_logps(
                logits.unsqueeze(0),
                targets.unsqueeze(0),
                shift=False,
                temperature=temperature,
                return_per_token=True,
                inplace_backward=True,
            ).per_token[0]
            fields = _metric_fields(logits, targets, temperature, outputs)
        # `masked_scatter` keeps the output connected to the model even when no label is valid (as TRL)
        log_probs = token_logps.new_zeros(mask.shape).masked_scatter(mask, token_logps)
        entropy, log_sum_sq_probs, mean_logits, is_top1 = (
            fields[name].new_zeros(mask.shape).masked_scatter(mask, fields[name]) if name in fields else None
            for name in _OPTIONAL_OUTPUTS
        )

        # --- TRL 1.16.0 trl/trainer/utils.py lines 1662-1697 (logic unchanged, comments dropped) ---
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        aux_loss = None
        if kwargs.get("output_router_logits"):
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            if Version(transformers.__version__) < Version("5.0.0"):
                num_experts = self.num_experts
                num_experts_per_tok = self.num_experts_per_tok
            else:
                if text_config.model_type == "gpt_oss" and Version("5.0.0") <= Version(
                    transformers.__version__
                ) < Version("5.6.0"):
                    num_experts = self.num_experts
                else:
                    num_experts = text_config.num_experts
                num_experts_per_tok = text_config.num_experts_per_tok
            aux_loss = load_balancing_loss_func(
                backbone_outputs.router_logits, num_experts, num_experts_per_tok, kwargs.get("attention_mask")
            )
            loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss

        return FusedCausalLMOutput(
            loss=loss,
            log_probs=log_probs,
            entropy=entropy,
            log_sum_sq_probs=log_sum_sq_probs,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=mask,
            aux_loss=aux_loss,
        )

    model.forward = types.MethodType(_fused_forward, model)
    setattr(model, _MARK, True)


_swap_lock = threading.RLock()


@contextmanager
def _fused_head_during_init():
    """Make `DPOTrainer.__init__` (which calls the module-level name `add_fused_lm_head`, TRL 1.16.0
    trl/trainer/dpo_trainer.py lines 960-962) install our head, for the duration of one constructor call."""
    with _swap_lock:
        original = _trl_dpo.add_fused_lm_head
        _trl_dpo.add_fused_lm_head = add_fused_logps_lm_head
        try:
            yield
        finally:
            _trl_dpo.add_fused_lm_head = original


class _FusedLogpsMixin:
    def __init__(self, *args, **kwargs):
        check_trl_version()
        _refuse_zero3()
        with _fused_head_during_init():
            super().__init__(*args, **kwargs)


class FusedLogpsDPOTrainer(_FusedLogpsMixin, DPOTrainer):
    """TRL's `DPOTrainer` (1.16.0) whose policy and reference log-probs come from `rlaifv_fast.sequence_logps`;
    same constructor, config and results (to float rounding). See the module docstring."""


def patch_dpo_trainer(trainer_or_class):
    """Make a TRL `DPOTrainer` compute its log-probs with `rlaifv_fast.sequence_logps`.

    - a `DPOTrainer` instance: its policy (the base model under PEFT) and reference model get our fused head in place
      (their forward, already wrapped by TRL, is wrapped again; generation still reaches the original forward);
      returns the instance. Reference log-probs TRL precomputed at init (`precompute_ref_log_probs=True`) are kept.
    - a `DPOTrainer` subclass: returns a subclass of it whose instances are built with our head from the start.

    Raises ImportError for an unsupported TRL version and TypeError for anything that is not a DPOTrainer.
    """
    check_trl_version()
    if isinstance(trainer_or_class, type):
        if not issubclass(trainer_or_class, DPOTrainer):
            raise TypeError(f"patch_dpo_trainer expects a trl.DPOTrainer subclass, got {trainer_or_class!r}")
        if issubclass(trainer_or_class, _FusedLogpsMixin):
            return trainer_or_class
        return type(
            f"FusedLogps{trainer_or_class.__name__}",
            (_FusedLogpsMixin, trainer_or_class),
            {"__module__": __name__, "__doc__": trainer_or_class.__doc__},
        )
    if not isinstance(trainer_or_class, DPOTrainer):
        raise TypeError(f"patch_dpo_trainer expects a trl.DPOTrainer or subclass, got {type(trainer_or_class)!r}")
    trainer = trainer_or_class
    # TRL 1.16.0 trl/trainer/dpo_trainer.py lines 957-962
    outputs = _DPO_OUTPUTS + (("log_sum_sq_probs",) if trainer.use_weighting else ())
    model = trainer.model
    is_peft = _trl_dpo.is_peft_model(model)
    add_fused_logps_lm_head(model.get_base_model() if is_peft else model, outputs=outputs)
    if trainer.ref_model is not None:
        add_fused_logps_lm_head(trainer.ref_model)
    return trainer


__all__ = [
    "SUPPORTED_TRL_VERSIONS",
    "FusedLogpsDPOTrainer",
    "add_fused_logps_lm_head",
    "check_trl_version",
    "patch_dpo_trainer",
    "trl_version",
]
