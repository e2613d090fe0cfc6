"""Train: DPO on the reference-annotated pairs, the stage contract around trainer.train_dpo.

One process, or many under `accelerate launch` / `torchrun` (DDP, FSDP, DeepSpeed through accelerate's config); the
loop launches it with the `train` launcher of its config. An input with no pairs trains nothing: the report says so
and `final_dir` stays unset, so the loop carries the policy over (or fails, as configured).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..contract import IterationContext, StageReport, require
from ..sharding import Part
from .config import LOGPS_PATHS, LORA_TARGETS, LogpsPath, LoRAConfig, TrainConfig
from .trainer import VISION_MODULE_NAMES, TrainResult, train_dpo

NAME = "train"
HELP = ("DPO-train the policy on the reference-annotated pairs (one forward over [chosen; rejected], reference "
        "log-probs from the parquet); multi-process under accelerate launch or torchrun")
DATA_PARALLEL = False  # accelerate splits every global batch itself
Config = TrainConfig


def engines(config: TrainConfig) -> dict:
    return {}


def load(config: TrainConfig, part: Part) -> str:
    require(config, "pairs", "model", "output_dir")
    return config.pairs


def out_path(config: TrainConfig) -> Path:
    return Path(config.output_dir)


def bind(config: TrainConfig, ctx: IterationContext) -> TrainConfig:
    return dataclasses.replace(config, pairs=str(ctx.folder / "pairs.ref.parquet"), model=ctx.policy,
                               output_dir=str(ctx.folder / "train"), resume=True)


def run(pairs: str, out, config: TrainConfig, *, engines=None, progress: bool = True) -> StageReport:
    import pyarrow.parquet as pq

    rows = pq.read_metadata(pairs).num_rows
    if rows == 0:
        return StageReport(NAME, total=0, notes={"steps": 0, "final_dir": None, "note": "no preference pairs"})
    config = dataclasses.replace(config, output_dir=str(out))
    result = train_dpo(pairs, config.model, config)
    return StageReport(NAME, total=rows, written=result.steps, notes={
        "final_dir": str(result.final_dir), "steps": result.steps, "truncated": result.truncated,
        "resumed_from": result.resumed_from, "last_metrics": result.metrics[-1] if result.metrics else None,
    })


__all__ = ["LOGPS_PATHS", "LORA_TARGETS", "VISION_MODULE_NAMES", "LoRAConfig", "LogpsPath", "TrainConfig",
           "TrainResult", "train_dpo"]
