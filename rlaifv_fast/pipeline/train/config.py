"""The options of DPO training (the paper's defaults), declared once for train_dpo, the `train` command and
the loop's `train` section."""

from __future__ import annotations

import dataclasses
import enum

from ...ops import DPOConfig, DPOLossType
from ...options import Options, option
from ..contract import TemplateOptions

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LogpsPath(str, enum.Enum):
    """logits: the model's logits from the first response position, then sequence_logps. lm_head_chunked: the last
    hidden states, then linear_sequence_logps (the LM head fused with the log-probs in bounded tiles), so the full
    (2P, T, V) logits never exist."""

    LOGITS = "logits"
    LM_HEAD_CHUNKED = "lm_head_chunked"


LOGPS_PATHS = tuple(p.value for p in LogpsPath)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig(Options):
    """LoRA adapters on the language model's linear layers (the paper's LoRA variant: r 64, alpha 16, lr 1e-5)."""

    r: int = option(64, ge=1, help="adapter rank")
    alpha: int = option(16, gt=0, help="adapter scale numerator (scale = alpha / r)")
    dropout: float = option(0.0, ge=0, lt=1, help="adapter dropout")
    target_modules: tuple[str, ...] = option(LORA_TARGETS, help="last names of the language-model linear layers to "
                                             "adapt (vision modules are never adapted)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(TemplateOptions):
    """Options of train_dpo; global batch = per_device_batch_size x gradient_accumulation_steps x processes."""

    pairs: str | None = option(None, io=True, help="pairs parquet with reference log-probs (pairs.ref.parquet from "
                               "`reflogps`)")
    model: str | None = option(None, io=True, help="policy model folder to train (the model the reference "
                               "log-probs came from)")
    output_dir: str = option("dpo-output", io=True, help="folder for metrics.jsonl, checkpoint-<step>/ and final/")
    beta: float = option(0.1, gt=0, finite=True, help="DPO beta, the KL strength")
    loss_type: DPOLossType = option(DPOLossType.SIGMOID, help="DPO loss (ipo uses length-normalised log-probs)")
    label_smoothing: float = option(0.0, ge=0, lt=0.5, help="label smoothing eps of sigmoid / robust (cDPO / rDPO)")
    sft_weight: float = option(0.0, ge=0, finite=True, help="RLAIF-V's w_sft: weight of the SFT term "
                               "mean(-log pi(chosen)); 0 disables")
    lr: float | None = option(None, gt=0, finite=True, help="peak learning rate (none: 5e-7, or 1e-5 with LoRA)")
    warmup_ratio: float = option(0.05, ge=0, lt=1, help="fraction of the steps with linear warmup before the cosine "
                                 "decay to 0")
    weight_decay: float = option(0.01, ge=0, finite=True, help="AdamW weight decay (not on biases and norms)")
    adam_betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas")
    adam_eps: float = option(1e-8, gt=0, help="AdamW eps")
    max_grad_norm: float | None = option(1.0, gt=0, finite=True, help="gradient clipping norm (none disables)")
    epochs: int = option(1, ge=1, help="passes over the pairs")
    max_steps: int | None = option(None, ge=1, help="optimiser steps; overrides epochs")
    per_device_batch_size: int = option(1, ge=1, help="pairs per process and micro-step (2x sequences per forward)")
    gradient_accumulation_steps: int = option(1, ge=1, help="micro-steps per optimiser step")
    max_length: int = option(2048, ge=1, help="tokens per sequence; longer answers lose response tokens from the "
                             "right, never prompt or image tokens")
    bf16: bool = option(False, help="bfloat16 autocast (GPU)")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward (less memory, ~30%% "
                                          "more compute)")
    logps_path: LogpsPath = option(LogpsPath.LOGITS, help="log-probs from the model's logits, or from its hidden "
                                   "states through the fused LM-head op (the full logits never exist)")
    freeze_vision_tower: bool = option(True, help="keep the vision encoder frozen")
    lora: LoRAConfig | None = option(None, help="train LoRA adapters on the language model instead of all weights "
                                     "(needs peft); final/ holds the merged model")
    trust_remote_code: bool = option(False, help="pass trust_remote_code to transformers")
    seed: int = option(0, help="seed of the data order and initialisation")
    save_every: int = option(0, ge=0, identity=False, help="checkpoint every N optimiser steps (0: only the last step's)")
    save_total_limit: int | None = option(None, ge=1, identity=False, help="keep only the newest N checkpoints (none keeps all)")
    log_every: int = option(1, ge=1, identity=False, help="log metrics every N optimiser steps")
    report_to: tuple[str, ...] = option((), identity=False, help="accelerate trackers (tensorboard, wandb, ...)")
    resume: bool = option(False, io=True, identity=False, help="continue from the newest checkpoint in output_dir (model, optimizer, "
                          "scheduler, RNG)")

    def __post_init__(self):
        super().__post_init__()
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        self.dpo  # validates the loss settings together (label smoothing only for sigmoid / robust)

    @property
    def dpo(self) -> DPOConfig:
        return DPOConfig(beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                         sft_weight=self.sft_weight)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 1e-5 if self.lora is not None else 5e-7
