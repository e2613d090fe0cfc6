"""TRL's `DPOTrainer` with its per-token log-probs computed by the lm_head-fused op `rlaifv_fast.linear_sequence_logps`.

Supported TRL versions
----------------------
`SUPPORTED_TRL` (">=1.15.0,<1.17"): the releases whose `DPOTrainer` scores its log-probs through the fused-LM-head
hook `trl.trainer.utils.add_fused_lm_head` and the `fused_lm_head=True` forward. On PyPI that is 1.15.0 and 1.16.0
(both tested); 1.14.x and older compute log-probs from full logits in `concatenated_forward` and have no such hook.
Importing this module, or patching, with any other TRL raises `ImportError` naming the range. Between 1.15.0 and
1.16.0 the hook differs only in the positions it scores on devices without Triton (1.16.0 scores every position
there, 1.15.0 runs its Triton kernels only and so does not run on a CPU at all), not in its outputs.

Where TRL computes DPO log-probs
--------------------------------
`DPOTrainer.__init__` calls the module-level `add_fused_lm_head(model, outputs=...)` on the policy (the base model
under PEFT) and on the reference model. That replaces `model.forward` with a closure which, called with
`fused_lm_head=True` (`_compute_loss`, `compute_ref_log_probs` and the reference precomputation all do), runs the
backbone, shifts the labels, and turns the hidden states of the scored positions (label != -100) into per-token label
log-probs with `trl.kernels.ChunkedLogProbFunction`: the LM head projection in (4096 tokens x 32768 vocabulary)
tiles, logit scale, final-logit soft-capping and temperature, online log-sum-exp in fp32, plus the metric fields
`entropy`, `mean_logits`, `is_top1` and, for WPO weighting (`use_weighting`), `log_sum_sq_probs`. Everything
downstream (sums of `log_probs[:, -seq_len:]`, LD-DPO, the IPO / `sigmoid_norm` length normalisation, `sft`, WPO
weights, the logged metrics) reads that output.

What the patch replaces
-----------------------
Only that fused head: `add_fused_logps_lm_head` is TRL's `add_fused_lm_head` (same signature, same
`FusedCausalLMOutput`, same shift, masking by `labels != -100`, pre-shifted `shift_labels`, temperature,
`cast_lm_head_to_fp32`, loss and MoE aux loss) in which `ChunkedLogProbFunction` is replaced by

    head = LMHead.of(model)                                    # weight, bias, logit scale, soft-capping
    per_token = linear_sequence_logps(hidden[mask], head.weight, labels[mask], bias=head.bias,
                                      temperature=temperature, logit_scale=..., softcap=...).per_token

(forward and fused backward: gradients of the hidden states, the weight and the bias, from a saved per-token lse)
and a no-grad pass for the metric fields asked for (`_metric_fields`: the same projection in bounded blocks of rows x
vocabulary slices, merged online as TRL's kernel does). The per-token values are scattered back to `(B, T-1)` with
zeros at masked positions exactly as TRL does, so everything downstream is TRL's own unchanged code. The head's logit
scale and final-logit soft-capping come from `LMHead.of(model)` (`engines/lm_head.py`: the lookup TRL itself does)
and go to the op as `LMHead.op_kwargs()` (logit_scale=, softcap=), in the order TRL applies them:
z = softcap * tanh(scale * (h W^T + b) / softcap) / temperature.

The dtype is TRL's: the projection runs in the autocast dtype when autocast is on (DPOConfig's default on CPU:
`bf16=True`), else in the hidden states' dtype (fp32 with `cast_lm_head_to_fp32`). The op accumulates in fp32; on the
CPU path it also keeps the logits in fp32 where TRL rounds them to bf16 first, so under bf16 autocast the log-probs
differ from TRL's by that rounding (ours are the closer ones).

Memory and compute
------------------
The `(N, V)` logits of the N scored tokens never exist, forward or backward. The op holds bounded logits blocks
(CPU: `rlaifv_fast.ops.linear_chunked.CHUNK_BYTES`, 4 MiB; CUDA: Triton tiles) and per-token fp32 vectors; the metric
pass holds two reused blocks of at most `_METRIC_CELLS` values each (1M on the CPU, 4 MiB each in fp32; 16M
elsewhere), plus the block's projection in bf16/fp16 under autocast. Beyond that the step holds what TRL's holds: the
`(N, H)` gathered hidden rows and the gradients, and on the CPU path for a bf16/fp16 head one fp32 copy of the
weight (the op computes in fp32 there). On a CPU this is far less than TRL's torch fallback, which keeps a
(min(N, 4096), min(V, 32768)) tile and several fp32 temporaries of that size (1.3 GiB for 960 tokens x 32k vocabulary
in the tests, ours 26 MiB). On CUDA, TRL's Triton path folds its tiles in-kernel too; there the two are comparable
(not measured here). The price is compute: DPOTrainer always asks for `entropy`, so the metric pass is one more no-grad
projection of the scored tokens (five head matmuls per policy step where TRL's kernel does four).

Differences from TRL's head, all outside what `DPOTrainer` uses: `entropy` carries no gradient (DPO only logs it,
detached); the scored positions are always compacted (as TRL 1.15 everywhere and 1.16 on Triton devices; the outputs
are identical). DeepSpeed ZeRO-3 is refused (ValueError): TRL's autograd function re-enters
`maybe_gather_lm_head_ctx` in its backward to re-gather the partitioned head, but `linear_sequence_logps` saves the
weight for a backward that runs after the gather has ended, when the partitioned parameter is empty, and offers no
hook to gather it again. FSDP2 (DTensor) heads are gathered with `full_tensor()` as TRL does.

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
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from ..engines.lm_head import LMHead
from ..ops.linear_logps import linear_sequence_logps

SUPPORTED_TRL = ">=1.15.0,<1.17"
"""The TRL releases whose DPOTrainer this module patches (see the module docstring)."""

# Values of the (rows, vocabulary slice) block the no-grad metric pass holds at once (fp32: 4 bytes each), on the CPU
# and on other devices; slices are at least _METRIC_MIN_SLICE wide (or V).
_METRIC_CELLS = {"cpu": 1 << 20}
_METRIC_CELLS_DEFAULT = 1 << 24
_METRIC_MIN_SLICE = 256

def trl_version() -> str | None:
    """The installed TRL version, or None when TRL is not installed."""
    try:
        return importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return None


def _in_range(version: str) -> bool:
    """Whether a version string is a release (not a pre- or dev release) within SUPPORTED_TRL."""
    try:
        return SpecifierSet(SUPPORTED_TRL).contains(Version(version), prereleases=False)
    except InvalidVersion:
        return False


def check_trl_version() -> str:
    """Return the installed TRL version; raise ImportError if TRL is absent or outside SUPPORTED_TRL."""
    found = trl_version()
    if found is None:
        raise ImportError(f"rlaifv_fast.integrations.trl needs TRL: pip install 'trl{SUPPORTED_TRL}'")
    if not _in_range(found):
        raise ImportError(
            f"rlaifv_fast.integrations.trl supports TRL {SUPPORTED_TRL} (the releases whose DPOTrainer scores "
            f"log-probs through the fused LM head add_fused_lm_head, which it replaces), but TRL {found} is "
            f"installed; pip install 'trl{SUPPORTED_TRL}'"
        )
    return found


check_trl_version()

import transformers  # noqa: E402
import trl.trainer.dpo_trainer as _trl_dpo  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from trl import DPOTrainer  # noqa: E402
from trl.trainer.utils import FusedCausalLMOutput  # noqa: E402

_MARK = "_rlaifv_fast_fused_logps"
_DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
_OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


_ZERO3_REFUSAL = (
    "rlaifv_fast's fused DPO log-probs do not support DeepSpeed ZeRO-3: linear_sequence_logps's backward reads the "
    "lm_head weight after ZeRO-3 has partitioned it again; use TRL's own DPOTrainer there"
)


def _refuse_zero3() -> None:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(_ZERO3_REFUSAL)


def _metric_blocks(n: int, V: int, device: torch.device) -> tuple[int, int]:
    """(rows, vocabulary columns) of one metric-pass block: rows * columns <= the device's bound."""
    cells = _METRIC_CELLS.get(device.type, _METRIC_CELLS_DEFAULT)
    cols = min(V, max(_METRIC_MIN_SLICE, cells // max(n, 1)))
    rows = max(1, min(n, cells // cols))
    return rows, cols


@torch.no_grad()
def _metric_fields(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    head: LMHead,
    temperature: float,
    outputs: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    """TRL's optional per-token fields (`ChunkedLogProbFunction`: entropy, log sum_v p_v^2, mean logit, whether the
    label is the first maximum) of z = head.transform(hidden @ weight.T + bias) / temperature, without gradient.

    The projection runs in hidden's dtype (TRL's compute dtype) one (rows, slice) block at a time into a reused
    buffer of at most `_metric_blocks` values; the statistics, in fp32 (fp64 for fp64 inputs), are merged over the
    slices online as TRL's kernel does, but kept relative to the running maximum m: per row s = sum_v e_v,
    a = sum_v e_v (z_v - m), q = sum_v e_v^2 with e_v = exp(z_v - m), so that entropy = log s - a / s never subtracts
    two large numbers. Row sums are matrix-vector products over the buffer (no temporaries)."""
    wanted = [name for name in _OPTIONAL_OUTPUTS if name in outputs]
    if not wanted:
        return {}
    N, V = hidden.shape[0], weight.shape[0]
    device = hidden.device
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    run_max = torch.full((N,), float("-inf"), device=device, dtype=acc)
    sum_exp = torch.zeros((N,), device=device, dtype=acc)
    rel_sum = torch.zeros_like(sum_exp)  # a: sum_v e_v (z_v - m)
    sq_sum = torch.zeros_like(sum_exp)  # q: sum_v e_v^2
    z_sum = torch.zeros_like(sum_exp)  # sum_v z_v
    best = torch.full((N,), float("-inf"), device=device, dtype=acc)  # is_top1: the first maximum and its column
    best_at = torch.zeros((N,), device=device, dtype=torch.long)
    rows, cols = _metric_blocks(N, V, device)
    z_buf = torch.empty((rows * cols,), device=device, dtype=acc)
    e_buf = torch.empty_like(z_buf)
    ones = torch.ones((cols,), device=device, dtype=acc)
    inv_t = 1.0 / temperature
    for r0 in range(0, N, rows):
        r = slice(r0, min(r0 + rows, N))
        h = hidden[r]
        n = h.shape[0]
        for v0 in range(0, V, cols):
            v1 = min(v0 + cols, V)
            c = v1 - v0
            z = z_buf[: n * c].view(n, c)
            e = e_buf[: n * c].view(n, c)
            # as TRL: the projection in the compute dtype, then scale, soft-capping and temperature in fp32
            w, b = weight[v0:v1], None if bias is None else bias[v0:v1]
            if h.dtype == acc:
                torch.mm(h, w.t(), out=z)
                if b is not None:
                    z.add_(b)
            else:
                z.copy_(F.linear(h, w, b))
            if not head.plain:
                z.copy_(head.transform(z))
            if inv_t != 1.0:
                z.mul_(inv_t)
            if "mean_logits" in wanted:
                z_sum[r] += z @ ones[:c]
            if "is_top1" in wanted:
                block_max, block_at = z.max(-1)  # the first maximum of the block
                later = block_max > best[r]  # a tie with an earlier column keeps that column
                best[r] = torch.where(later, block_max, best[r])
                best_at[r] = torch.where(later, block_at + v0, best_at[r])
            else:
                block_max = z.amax(-1)
            old_max, old_sum = run_max[r], sum_exp[r]
            new_max = torch.maximum(old_max, block_max)
            rescale = torch.exp(old_max - new_max)
            d = z.sub_(new_max.unsqueeze(-1))  # z - m', in place
            torch.exp(d, out=e)
            block_sum = e @ ones[:c]
            if "entropy" in wanted:
                # a' = r (a + (m - m') s) + sum e (z - m'); nothing carried before the first block (s = 0)
                carry = torch.where(old_sum > 0, rescale * (rel_sum[r] + (old_max - new_max) * old_sum), 0.0)
                rel_sum[r] = carry + d.mul_(e) @ ones[:c]
            if "log_sum_sq_probs" in wanted:
                sq_sum[r] = sq_sum[r] * rescale * rescale + e.mul_(e) @ ones[:c]
            sum_exp[r] = old_sum * rescale + block_sum
            run_max[r] = new_max
    log_s = torch.log(sum_exp)
    fields = {
        "entropy": lambda: (log_s - rel_sum / sum_exp).float(),
        "log_sum_sq_probs": lambda: (torch.log(sq_sum) - 2 * log_s).float(),
        "mean_logits": lambda: (z_sum / V).float(),
        "is_top1": lambda: best_at == targets,
    }
    return {name: fields[name]() for name in wanted}


def add_fused_logps_lm_head(
    model,
    temperature: float = 1.0,
    cast_lm_head_to_fp32: bool = False,
    outputs: tuple[str, ...] = ("log_probs",),
) -> None:
    """TRL's `add_fused_lm_head` with the label log-probs computed by `rlaifv_fast.linear_sequence_logps`:
    `model(..., labels=labels, fused_lm_head=True)` returns TRL's `FusedCausalLMOutput`; without `fused_lm_head` the
    call goes to the forward the model had before (generation is unchanged). Applying it twice to one model is a
    no-op. Same arguments as TRL's function. Raises ValueError under DeepSpeed ZeRO-3."""
    check_trl_version()
    _refuse_zero3()
    if getattr(model, _MARK, False):
        return
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    unknown = set(outputs) - {"log_probs", *_OPTIONAL_OUTPUTS}
    if unknown:
        raise ValueError(f"outputs: unknown per-token fields {sorted(unknown)}; known: log_probs, {_OPTIONAL_OUTPUTS}")
    previous_forward = model.forward
    text_config = model.config.get_text_config()
    # --- as TRL's add_fused_lm_head (transformers < 5 names a VLM's language backbone `model`) ---
    backbone_attr = "base_model"
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        backbone_attr = "model"

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

        # --- TRL's _fused_forward up to the kernel call (logic unchanged, comments dropped) ---
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
        head = LMHead.of(self)  # looked up on each call: FSDP and PEFT replace the head after patching
        hidden_states = hidden_states.to(head.weight.device)
        labels = labels.to(head.weight.device)
        mask = labels != -100
        autocast_ctx = nullcontext()
        if cast_lm_head_to_fp32:
            hidden_states = hidden_states.float()
            autocast_ctx = torch.autocast(hidden_states.device.type, enabled=False)
        weight, bias = head.weight, head.bias
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
            if bias is not None:
                bias = bias.full_tensor()
        if hasattr(weight, "ds_id"):  # partitioned by DeepSpeed ZeRO-3 after patching
            raise ValueError(_ZERO3_REFUSAL)

        # --- replaces ChunkedLogProbFunction and the scatter back: rlaifv_fast's lm_head-fused label log-probs of the
        # scored positions, the metric fields in a no-grad pass ---
        with autocast_ctx:
            device_type = hidden_states.device.type
            compute_dtype = (
                torch.get_autocast_dtype(device_type)
                if torch.is_autocast_enabled(device_type)
                else hidden_states.dtype
            )
            h = hidden_states[mask].to(compute_dtype)
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(compute_dtype)
            targets = labels[mask]
            with torch.autocast(device_type, enabled=False):  # the dtypes are set: the op's matmuls stay in them
                token_logps = linear_sequence_logps(
                    h, w, targets, bias=b, temperature=temperature, return_per_token=True, **head.op_kwargs()
                ).per_token
                fields = _metric_fields(h, w, b, targets, head, temperature, outputs)
        # `masked_scatter` keeps the output connected to the model even when no label is valid (as TRL)
        log_probs = token_logps.new_zeros(mask.shape).masked_scatter(mask, token_logps)
        entropy, log_sum_sq_probs, mean_logits, is_top1 = (
            fields[name].new_zeros(mask.shape).masked_scatter(mask, fields[name]) if name in fields else None
            for name in _OPTIONAL_OUTPUTS
        )

        # --- TRL's _fused_forward from the loss on (logic unchanged, comments dropped) ---
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
    """Make `DPOTrainer.__init__` (which calls the module-level name `add_fused_lm_head` of
    trl/trainer/dpo_trainer.py) install our head, for the duration of one constructor call."""
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
    """TRL's `DPOTrainer` (SUPPORTED_TRL) whose policy and reference log-probs come from
    `rlaifv_fast.linear_sequence_logps`; same constructor, config and results (to float rounding). See the module
    docstring."""


def patch_dpo_trainer(trainer_or_class):
    """Make a TRL `DPOTrainer` compute its log-probs with `rlaifv_fast.linear_sequence_logps`.

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
    # the outputs DPOTrainer.__init__ asks add_fused_lm_head for
    outputs = _DPO_OUTPUTS + (("log_sum_sq_probs",) if trainer.use_weighting else ())
    model = trainer.model
    is_peft = _trl_dpo.is_peft_model(model)
    add_fused_logps_lm_head(model.get_base_model() if is_peft else model, outputs=outputs)
    if trainer.ref_model is not None:
        add_fused_logps_lm_head(trainer.ref_model)
    return trainer


__all__ = [
    "SUPPORTED_TRL",
    "FusedLogpsDPOTrainer",
    "add_fused_logps_lm_head",
    "check_trl_version",
    "patch_dpo_trainer",
    "trl_version",
]
