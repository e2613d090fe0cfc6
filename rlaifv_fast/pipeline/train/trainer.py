"""DPO training of a transformers VLM (or text-only causal LM) on the reference-annotated pairs.

Input: the parquet `rlaifv-fast reflogps` writes (image, question, chosen, rejected + ref_chosen_logp,
ref_rejected_logp, their *_mean, per-token lists). The reference model is never loaded: its log-probs come from the
parquet. Each micro-batch of P pairs is encoded exactly as the reference scored it (scoring.encode_triples: prompt
labels -100, response + EOS labelled) and its chosen and rejected answers go through the policy in ONE forward over
[chosen; rejected] (2P rows); the logits start at the shortest prompt (`logits_to_keep`), and

    pi = sequence_logps(logits, labels, shift=True)      sums (means for ipo)
    loss, rewards, accuracy, margin = dpo_loss(pi_c, pi_r, ref_c, ref_r)      + sft_weight * mean(-pi_c)

Sequences longer than max_length lose response tokens from the right (never prompt or image tokens); the reference
log-prob of a truncated answer is then the sum of its first tokens' cached log-probs, so policy and reference always
score the same tokens. Optimiser AdamW, cosine schedule with linear warmup, gradient clipping, all through
`accelerate` (DDP / FSDP / DeepSpeed by `accelerate launch --config_file rlaifv_fast/configs/accelerate/*.yaml`).

Output folder:
    metrics.jsonl            one record per log_every optimiser steps (main process)
    checkpoint-<step>/       weights (safetensors; the adapter only with LoRA) + processor + accelerate_state/
                             (model, optimizer, scheduler, RNG) + trainer_state.json; written to a temporary folder
                             and renamed, so a checkpoint is whole
    final/                   the trained model (LoRA merged into the weights) + processor, loadable by
                             from_pretrained and by the pipeline's engines
`resume=True` continues from the newest checkpoint: a run killed mid-training ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...ops import DPOConfig, DPOLossType, dpo_loss, sequence_logps
from ..scoring import EncodedResponse, Triple, collate, cut_per_token, encode_triples
from ..store import atomic_path, replace_dir
from ...engines.layout import write_hub_layout
from ...engines.lm_head import LMHead
from .config import LoRAConfig, TrainConfig

# Submodules of a VLM that encode images (frozen by default, never LoRA targets).
VISION_MODULE_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclasses.dataclass
class TrainResult:
    """final_dir: the trained model folder; steps: optimiser steps done (in total, resumed runs included);
    metrics: the records logged by this call; truncated: distinct sequences (chosen and rejected counted
    separately) cut to max_length in this call, over all processes; resumed_from: the checkpoint this call
    started from (None for a fresh run)."""

    final_dir: str
    steps: int
    metrics: list[dict[str, float]]
    truncated: int = 0
    resumed_from: str | None = None


# ----------------------------------------------------------------------------------------------------- the data
class _Pairs:
    """The pairs' text, images (undecoded) and reference log-probs; a micro-batch is encoded when it is trained on
    (image tensors of the whole set are never held in memory)."""

    def __init__(self, path: str | os.PathLike, engine, *, max_length: int, ipo: bool):
        import pyarrow.parquet as pq

        from ..ref_logps import _image

        self.path, self.engine, self.max_length, self.ipo = Path(path), engine, int(max_length), ipo
        table = pq.read_table(self.path)
        need = ["question", "chosen", "rejected", "ref_chosen_logp", "ref_rejected_logp"]
        if ipo:
            need += ["ref_chosen_logp_mean", "ref_rejected_logp_mean"]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise ValueError(f"{self.path}: columns {missing} are missing (run `rlaifv-fast reflogps` on the pairs "
                             "first)")
        if table.num_rows == 0:
            raise ValueError(f"{self.path}: no pairs")
        keep = [c for c in table.column_names if c in ("image", "question", "chosen", "rejected") or
                c.startswith("ref_") and c != "ref_model"]
        self.rows = table.select(keep).to_pylist()
        base = self.path.parent
        for row in self.rows:
            row["image"] = _image(row.get("image"), base)
        self.truncated: set[tuple[int, str]] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, index: Sequence[int]) -> tuple[list[EncodedResponse], list[float], list[float]]:
        """The [chosen; rejected] encodings of pairs `index` (truncated to max_length) and their reference
        log-probs (sums, or means for ipo) over exactly the tokens kept."""
        rows = [self.rows[i] for i in index]
        triples = [Triple(r["image"], r["question"], r["chosen"]) for r in rows]
        triples += [Triple(r["image"], r["question"], r["rejected"]) for r in rows]
        encoded = encode_triples(self.engine, triples)
        sides = ["chosen"] * len(rows) + ["rejected"] * len(rows)
        out, refs = [], []
        for i, row, side, enc in zip(list(index) * 2, rows * 2, sides, encoded):
            tokens = row.get(f"ref_{side}_token_logps")
            if tokens is not None and len(tokens) != enc.num_response_tokens:
                raise ValueError(
                    f"{self.path}: pair {i} {side}: the reference scored {len(tokens)} response tokens, this "
                    f"model's tokenizer gives {enc.num_response_tokens}; the policy and the reference must share "
                    "a tokenizer and chat template"
                )
            enc, cut = _truncate(enc, self.max_length)
            if cut:
                self.truncated.add((i, side))
                if tokens is None:
                    raise ValueError(
                        f"{self.path}: pair {i} {side} exceeds max_length={self.max_length} and the parquet has no "
                        f"ref_{side}_token_logps to score the truncated answer; raise max_length"
                    )
                kept = tokens[: enc.num_response_tokens]
                ref = sum(kept) / max(len(kept), 1) if self.ipo else sum(kept)
            else:
                ref = row[f"ref_{side}_logp_mean"] if self.ipo else row[f"ref_{side}_logp"]
            out.append(enc)
            refs.append(float(ref))
        P = len(rows)
        return out, refs[:P], refs[P:]


def _truncate(enc: EncodedResponse, max_length: int) -> tuple[EncodedResponse, bool]:
    """Cut response tokens from the right to fit max_length (at least one response token is kept: the prompt and
    the image tokens are never cut)."""
    if len(enc.input_ids) <= max_length:
        return enc, False
    keep = max(max_length, enc.prompt_len + 1)
    if keep >= len(enc.input_ids):
        return enc, False
    image_inputs = cut_per_token(enc.image_inputs, len(enc.input_ids), keep)
    return dataclasses.replace(enc, input_ids=enc.input_ids[:keep], labels=enc.labels[:keep],
                               image_inputs=image_inputs), True


# ---------------------------------------------------------------------------------------------------- the model
def _vision_prefixes(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in VISION_MODULE_NAMES]


def _in(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _apply_lora(model: torch.nn.Module, lora: LoRAConfig, vision: Sequence[str]) -> torch.nn.Module:
    try:
        import peft
    except ImportError:
        raise ImportError("TrainConfig.lora needs the `peft` package: pip install peft") from None
    targets = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora.target_modules
        and not _in(name, vision)
    ]
    if not targets:
        raise ValueError(f"LoRA: no linear layers named {list(lora.target_modules)} in the language model")
    config = peft.LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                             target_modules=targets, bias="none")
    return peft.get_peft_model(model, config)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)  # biases and norm weights: no weight decay
    if not decay and not no_decay:
        raise ValueError("no trainable parameters")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate,
                             betas=tuple(config.adam_betas), eps=config.adam_eps)


def _policy_logps(model, batch, *, ipo: bool, path: str = "logits") -> torch.Tensor:
    """Per-sequence log-probs of the [chosen; rejected] batch: one forward, logits from the shortest prompt on.

    path "logits": the model's logits (B, T', V) then sequence_logps. path "lm_head_chunked": the model returns its
    last hidden states (and one position of logits), and linear_sequence_logps applies the LM head (with the model's
    logit scale and final-logit soft-capping, engines.lm_head.LMHead) fused with the log-probs, so the (B, T', V)
    logits never exist, in the forward or the backward (which recomputes them in bounded tiles)."""
    T = batch.labels.shape[1]
    labels = batch.labels[:, batch.offset :]
    if path == "logits":
        out = model(**batch.inputs, use_cache=False, logits_to_keep=T - batch.offset)
        # The logits are read by nothing after the op: its backward may overwrite them with their gradient.
        return sequence_logps(out.logits, labels, shift=True, average=ipo, inplace_backward=True).logps
    # Through the (possibly DDP-wrapped) model's own forward, so distributed hooks see every parameter use.
    out = model(**batch.inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, batch.offset :]
    head = LMHead.of(_unwrap(model))
    from ...ops import linear_sequence_logps

    # the dtype F.linear would compute in: autocast's when it is on (bf16 training), else the weight's
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
    bias = head.bias.to(dtype) if head.bias is not None else None
    return linear_sequence_logps(hidden.to(dtype), head.weight.to(dtype), labels, bias=bias, shift=True,
                                 average=ipo, **head.op_kwargs()).logps


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


# ------------------------------------------------------------------------------------------------- checkpoints
def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _save_model(accelerator, model, processor, folder: Path, *, merge_lora: bool) -> None:
    """save_pretrained (safetensors) + the processor into `folder`, from every process (FSDP / ZeRO-3 gather the
    full state dict collectively), written by the main process."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        if merge_lora and hasattr(unwrapped, "merge_and_unload"):
            unwrapped = unwrapped.merge_and_unload()
            state_dict = None
        unwrapped.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        write_hub_layout(folder)  # loadable by vLLM as well as transformers
        processor.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------------- train
def train_dpo(
    pairs_parquet: str | os.PathLike,
    model_path: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    *,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """DPO-train the model at `model_path` on the reference-annotated pairs; returns TrainResult.

    Runs as one process, or under `accelerate launch` as many (each process reads the parquet and takes its shard
    of every global batch). `callback(step, metrics)` is called on every process after each optimiser step (and
    after that step's checkpoint); an exception it raises stops the run, which `resume=True` continues.

    Example:
        >>> result = train_dpo("run/pairs.ref.parquet", "./policy", TrainConfig(output_dir="run/dpo", epochs=2))
        >>> result.final_dir   # load with AutoModelForImageTextToText.from_pretrained
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
    from transformers import get_cosine_schedule_with_warmup

    from ...engines.hf import HFEngine

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    output_dir = Path(config.output_dir)
    # Several processes on a machine without CUDA (torchrun on CPUs): accelerate joins them over gloo only when told
    # to use the CPU; otherwise each would believe it is alone and write every file.
    cpu_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cpu_group,
        mixed_precision="bf16" if config.bf16 else None,
        gradient_accumulation_steps=int(config.gradient_accumulation_steps),
        log_with=list(config.report_to) or None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=int(config.seed)),
    )
    try:
        set_seed(int(config.seed))
        engine = HFEngine(model_path, device=accelerator.device, dtype=torch.float32,
                          trust_remote_code=config.trust_remote_code, chat_template=config.chat_template)
        model = engine.model
        processor = engine.processor if engine.processor is not None else engine.tokenizer
        vision = _vision_prefixes(model)
        if config.freeze_vision_tower:
            for name, p in model.named_parameters():
                if _in(name, vision):
                    p.requires_grad_(False)
        if config.gradient_checkpointing:
            model.config.use_cache = False
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora is not None:
            model = _apply_lora(model, config.lora, vision)
        model.train()

        ipo = DPOConfig(loss_type=config.loss_type).loss_type is DPOLossType.IPO
        data = _Pairs(pairs_parquet, engine, max_length=int(config.max_length), ipo=ipo)
        loader = torch.utils.data.DataLoader(
            list(range(len(data))), batch_size=int(config.per_device_batch_size), shuffle=True,
            collate_fn=lambda idx: torch.tensor(idx, dtype=torch.long),
        )
        optimizer = _optimizer(model, config)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        steps_per_epoch = math.ceil(len(loader) / int(config.gradient_accumulation_steps))
        total = int(config.max_steps) if config.max_steps is not None else steps_per_epoch * int(config.epochs)
        # the prepared scheduler steps once per process and optimiser step: its horizon counts those steps
        n = accelerator.num_processes
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total) * n, num_training_steps=total * n
        )
        scheduler = accelerator.prepare(scheduler)
        if config.report_to:
            accelerator.init_trackers("rlaifv_fast_dpo", config=_tracker_config(config))

        step, resumed_from = 0, None
        if config.resume:
            found = _checkpoints(output_dir)
            if found:
                step, ckpt = found[-1]
                accelerator.load_state(str(ckpt / "accelerate_state"))
                resumed_from = str(ckpt)
        accelerator.wait_for_everyone()

        logged: list[dict[str, float]] = []
        window: list[dict[str, torch.Tensor]] = []
        metrics_path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            _restart_metrics(metrics_path, step)
        dpo_config = config.dpo
        while step < total:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch)
            batches = loader
            if done_in_epoch:
                # a resumed run continues mid-epoch: the same shuffled order, minus the batches already trained on
                skip = done_in_epoch * int(config.gradient_accumulation_steps)
                batches = accelerator.skip_first_batches(loader, skip)
            micro: list[dict[str, torch.Tensor]] = []
            for index in batches:
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        rows = index.tolist()
                        encoded, ref_c, ref_r = data.encode(rows)
                        logps = _policy_logps(model, collate(engine, encoded), ipo=ipo, path=config.logps_path)
                    pi_c, pi_r = logps.float().chunk(2)
                    ref_c = torch.tensor(ref_c, dtype=pi_c.dtype, device=pi_c.device)
                    ref_r = torch.tensor(ref_r, dtype=pi_c.dtype, device=pi_c.device)
                    out = dpo_loss(pi_c, pi_r, ref_c, ref_r, config=dpo_config)
                    accelerator.backward(out.loss)
                    lr = optimizer.param_groups[0]["lr"]  # the rate this step applies
                    if accelerator.sync_gradients and config.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), float(config.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro.append({
                    "loss": out.loss.detach()[None],
                    "chosen": out.chosen_rewards, "rejected": out.rejected_rewards,
                    "logps_chosen": pi_c.detach(), "logps_rejected": pi_r.detach(),
                })
                if not accelerator.sync_gradients:
                    continue
                step += 1
                window.append(_gather(accelerator, micro))
                micro = []
                record = None
                if step % int(config.log_every) == 0 or step == total:
                    record = _summarise(window, step=step, epoch=epoch, lr=lr)
                    window = []
                    logged.append(record)
                    if accelerator.is_main_process:
                        with open(metrics_path, "a", encoding="utf-8") as f:
                            f.write(json.dumps(record) + "\n")
                    if config.report_to:
                        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                if step == total or (config.save_every and step % int(config.save_every) == 0):
                    _save_checkpoint(accelerator, model, processor, output_dir, step, config)
                if callback is not None:
                    callback(step, record or {"step": step, "lr": lr})
                if step >= total:
                    break

        final = output_dir / "final"
        tmp = output_dir / ".final.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        _save_model(accelerator, model, processor, tmp, merge_lora=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_dir(tmp, final)
        accelerator.wait_for_everyone()
        if config.report_to:
            accelerator.end_training()
        truncated = len(set(map(tuple, gather_object(sorted(data.truncated)))))
        return TrainResult(str(final), step, logged, truncated=truncated, resumed_from=resumed_from)
    finally:
        # let a later call in this process build an Accelerator with other settings (the process group stays)
        accelerator.free_memory()
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _restart_metrics(path: Path, step: int) -> None:
    """Keep the metric records of the steps up to `step` (the checkpoint a run resumes from; 0: a fresh run), so
    steps a killed run logged after its last checkpoint are not logged twice."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.endswith("\n")]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


def _gather(accelerator, micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The optimiser step's per-pair numbers and micro-batch losses from every process."""
    return {k: accelerator.gather(torch.cat([m[k].float() for m in micro])).cpu() for k in micro[0]}


def _summarise(window: list[dict[str, torch.Tensor]], *, step: int, epoch: int, lr: float) -> dict[str, float]:
    cat = {k: torch.cat([w[k] for w in window]) for k in window[0]}
    chosen, rejected = cat["chosen"], cat["rejected"]
    return {
        "step": step,
        "epoch": epoch,
        "loss": cat["loss"].mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracy": (chosen > rejected).float().mean().item(),
        "rewards/margin": (chosen - rejected).mean().item(),
        "logps/chosen": cat["logps_chosen"].mean().item(),
        "logps/rejected": cat["logps_rejected"].mean().item(),
        "lr": lr,
    }


def _tracker_config(config: TrainConfig) -> dict[str, Any]:
    flat = dataclasses.asdict(config)
    return {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v) for k, v in flat.items()}


def _save_checkpoint(accelerator, model, processor, output_dir: Path, step: int, config: TrainConfig) -> None:
    """output_dir/checkpoint-<step>: model + processor + accelerate state + trainer_state.json, built in a
    temporary folder and renamed into place (a crash leaves the previous checkpoints intact)."""
    target = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "accelerate_state"), safe_serialization=True)
    _save_model(accelerator, model, processor, tmp, merge_lora=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config": _tracker_config(config)},
                                                           indent=2) + "\n")
        replace_dir(tmp, target)
        if config.save_total_limit is not None:
            for _, old in _checkpoints(output_dir)[: -int(config.save_total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


__all__ = ["LoRAConfig", "TrainConfig", "TrainResult", "train_dpo"]
