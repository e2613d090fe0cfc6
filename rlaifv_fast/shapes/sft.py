"""Supervised training of the shapes-world models from scratch: the SFT policy (biased descriptions + polar QA) and
the separate labeler (reference descriptions + polar QA + holistic accuracy questions).

    python -m rlaifv_fast.shapes.sft --role policy  --out models/policy  --threads 1
    python -m rlaifv_fast.shapes.sft --role labeler --out models/labeler --threads 1 --seed 1 --steps 2500

The shipped checkpoints (rlaifv_fast/shapes/checkpoints/) were made by exactly these commands (about 7 minutes each
on one CPU core); each folder's sft_report.json holds its full config and held-out QA curve.

What makes it work on a CPU in minutes (shapes-world-notes.md has the failures that led here):
- easy perception: a 2x2 grid layout and a CLIP patch equal to the grid cell, so each of the 4 image tokens sees one
  object; the errors left are the language prior's, the kind RLAIF-V fixes;
- a pretrained vision tower, as every real VLM has: `vision_pretrain_steps` of supervised per-cell object
  classification (a linear head on each patch token, discarded after). Trained only through the language model,
  the tower learned colours but not shapes in 3,000 steps (descriptions named the wrong shape 40% of the time and
  polar QA answered by colour alone); with direct supervision it recognises every cell's object in ~100 steps;
- a curriculum against the polar-QA plateau: the first `warmup_steps` draw only single-object images with
  first-order retrieval questions ("What colour is there?" -> "red", "What shape is there?" -> "circle") besides
  descriptions and polar questions; afterwards the single-object share decays to `single_share_final`.

Every example is (image, prompt, answer) encoded exactly as the pipeline scores it (scoring.py: the chat prompt, the
answer tokenized separately, EOS appended; loss on answer + EOS only). The model is a standard LLaVA (CLIP tower +
Llama) with a word-level tokenizer, built offline by rlaifv_fast.testing.build_tiny_llava.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..pipeline.store import atomic_dir, write_json
from . import tasks
from .world import ShapesWorldConfig, biased_objects, make_scene, render

ROLES = ("policy", "labeler")


def demo_world(**overrides) -> ShapesWorldConfig:
    """The demo's world: 2x2 grid of 32-pixel cells, 4 colours x 3 shapes of side 22-28 within 2 pixels of their
    cell's centre, 1-4 objects in random cells, four co-occurrence rules at rate 0.7."""
    base = dict(
        layout="grid",
        grid=2,
        image_size=64,
        min_size=22,
        max_size=28,
        jitter=2,  # near the cell centre: with the patch equal to the cell, shapes stay apart in pixel space
        n_train=4000,
        n_heldout=200,
        cooccurrence={
            ("red", "circle"): ("blue", "square"),
            ("green", "triangle"): ("yellow", "circle"),
            ("blue", "circle"): ("green", "square"),
            ("yellow", "triangle"): ("red", "square"),
        },
        hallucination_rate=0.7,
    )
    base.update(overrides)
    return ShapesWorldConfig(**base)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    role: str = "policy"
    out_dir: str = "shapes-sft"
    world: ShapesWorldConfig = dataclasses.field(default_factory=demo_world)
    # model (build_tiny_llava): the vision patch equals the grid cell
    hidden_size: int = 128
    text_layers: int = 3
    vision_layers: int = 3
    head_dim: int = 32
    # data
    polar_per_image: int = 4
    holistic_fraction: float = 0.25  # labeler: images that also get a holistic accurate/inaccurate question pair
    n_single: int = 1000  # single-object scenes for the curriculum
    # optimisation
    vision_pretrain_steps: int = 300
    steps: int = 2000
    batch_size: int = 48
    lr: float = 1e-3
    warmup_steps: int = 400  # curriculum phase: single-object images only
    single_share_final: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 250
    threads: int | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")


@dataclasses.dataclass
class _Pool:
    """Encoded examples: token ids, labels (answer + EOS), and the index of their image's pixel values."""

    ids: list[list[int]] = dataclasses.field(default_factory=list)
    labels: list[list[int]] = dataclasses.field(default_factory=list)
    image: list[int] = dataclasses.field(default_factory=list)

    def add(self, ids: list[int], labels: list[int], image: int) -> None:
        self.ids.append(ids)
        self.labels.append(labels)
        self.image.append(image)

    def __len__(self) -> int:
        return len(self.ids)


class _Encoder:
    """Prompt ids from the model's own processor (cached per prompt: the 4 image tokens are the same for every image)
    and answer ids tokenized separately with EOS appended, as scoring.encode_triples does."""

    def __init__(self, engine):
        from PIL import Image

        from ..pipeline.scoring import eos_token_id

        self.engine = engine
        self.blank = Image.new("RGB", (8, 8))
        self.eos = eos_token_id(engine)
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        ids = self._prompts.get(text)
        if ids is None:
            ids, _ = self.engine._encode_group([self.engine.render(text, image=True)], self.blank)
            ids = self._prompts[text] = ids[0]
        return ids

    def example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        p = self.prompt(prompt)
        a = self.engine.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.eos]
        return p + a, [-100] * len(p) + a


def _pixels(engine, scenes, world: ShapesWorldConfig) -> torch.Tensor:
    out = []
    for i in range(0, len(scenes), 256):
        images = [render(s, world) for s in scenes[i : i + 256]]
        out.append(engine.processor.image_processor(images, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


def build_pools(config: SFTConfig, engine) -> tuple[_Pool, _Pool, torch.Tensor]:
    """(main pool over the train split, single-object curriculum pool, pixel values of all their images)."""
    world = config.world
    single_world = dataclasses.replace(world, min_objects=1, max_objects=1, seed=world.seed + 7919)
    rng = np.random.default_rng([config.seed, ROLES.index(config.role)])
    enc = _Encoder(engine)
    scenes = [make_scene(world, "train", i) for i in range(world.n_train)]
    singles = [make_scene(single_world, "train", i) for i in range(config.n_single)]
    main, single = _Pool(), _Pool()
    for i, scene in enumerate(scenes):
        objs = biased_objects(scene, rng, world) if config.role == "policy" else tasks.reference_objects(scene)
        examples = [(tasks.DESCRIBE_PROMPT, tasks.description_text(objs))]
        examples += tasks.polar_examples(scene, rng, config.polar_per_image, world)
        if config.role == "labeler" and rng.random() < config.holistic_fraction:
            examples += tasks.holistic_examples(scene, rng, world)
        for prompt, answer in examples:
            main.add(*enc.example(prompt, answer), i)
    for j, scene in enumerate(singles):
        examples = [(tasks.DESCRIBE_PROMPT, tasks.description_text(tasks.reference_objects(scene)))]
        examples += tasks.retrieval_examples(scene)
        examples += tasks.polar_examples(scene, rng, 2, world)
        for prompt, answer in examples:
            single.add(*enc.example(prompt, answer), len(scenes) + j)
    return main, single, _pixels(engine, scenes + singles, world)


def _collate(pool: _Pool, idx, pixels: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(pool.ids[i]) for i in idx)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), T), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(pool.ids[i])
        ids[r, :n] = torch.tensor(pool.ids[i])
        labels[r, :n] = torch.tensor(pool.labels[i])
        mask[r, :n] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": pixels[torch.tensor([pool.image[i] for i in idx])],
    }


def _loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from ..ops import sequence_logps

    labels = batch["labels"]
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    lp = sequence_logps(out.logits, labels, shift=True)
    return -lp.logps.sum() / lp.counts.sum().clamp_min(1)


def pretrain_vision(model, scenes, pixels: torch.Tensor, world: ShapesWorldConfig, config: SFTConfig,
                    *, progress: bool = True) -> float:
    """Supervised per-cell object recognition for the CLIP tower (label: the cell's (colour, shape), or empty) through
    a temporary linear head on the patch tokens of the layer the projector reads. Returns the last batch accuracy."""
    if world.layout != "grid":
        raise ValueError("vision pretraining needs the grid layout (one object per patch)")
    vocab = world.vocabulary()
    cell = world.image_size // world.grid
    labels = torch.full((len(scenes), world.grid**2), len(vocab), dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            labels[i, (o.bbox[1] // cell) * world.grid + o.bbox[0] // cell] = vocab.index((o.colour, o.shape))
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    head = torch.nn.Linear(tower.config.hidden_size, len(vocab) + 1)
    opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed + 1)
    acc = 0.0
    for _ in tqdm(range(config.vision_pretrain_steps), desc="vision pretraining", disable=not progress):
        idx = torch.randint(len(scenes), (config.batch_size,), generator=g)
        tokens = tower(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[layer][:, 1:]
        logits = head(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float((logits.argmax(-1) == labels[idx]).float().mean())
    return acc


def single_share(config: SFTConfig, step: int) -> float:
    """Curriculum: 1.0 during warmup, then a linear decay to single_share_final over the next warmup_steps."""
    if step < config.warmup_steps:
        return 1.0
    t = min(1.0, (step - config.warmup_steps) / max(1, config.warmup_steps))
    return 1.0 + t * (config.single_share_final - 1.0)


def _lr_factor(config: SFTConfig, step: int) -> float:
    warm = 50
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, config.steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def train_sft(config: SFTConfig, *, progress: bool = True) -> dict:
    """Build the model, train it, evaluate it on the held-out split, save it (safetensors) to config.out_dir."""
    from ..engines.hf import HFEngine
    from ..testing import build_tiny_llava
    from .evaluate import evaluate_qa

    if config.threads:
        torch.set_num_threads(int(config.threads))
    out = Path(config.out_dir)
    world = config.world
    cell = world.image_size // world.grid if world.layout == "grid" else 16
    with atomic_dir(out) as tmp:
        build_tiny_llava(
            tmp, seed=config.seed, words=tasks.EXTRA_WORDS, image_size=world.image_size, patch_size=cell,
            hidden_size=config.hidden_size, num_hidden_layers=config.text_layers, head_dim=config.head_dim,
            vision_layers=config.vision_layers, vision_feature_layer=-1, initializer_range=0.02,
        )
        engine = HFEngine(tmp, batch_size=64)
        t0 = time.time()
        main, single, pixels = build_pools(config, engine)
        model = engine.model
        model.train()
        vision_acc = None
        if config.vision_pretrain_steps:
            scenes = [make_scene(world, "train", i) for i in range(world.n_train)]
            vision_acc = pretrain_vision(model, scenes, pixels[: len(scenes)], world, config, progress=progress)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(config, s))
        g = torch.Generator().manual_seed(config.seed)
        history = []
        pad = engine._pad_id
        bar = tqdm(range(config.steps), desc=f"sft {config.role}", disable=not progress)
        running = None
        for step in bar:
            n_single = int(round(config.batch_size * single_share(config, step)))
            parts = []
            if n_single:
                parts.append((single, torch.randint(len(single), (n_single,), generator=g).tolist()))
            if config.batch_size - n_single:
                parts.append((main, torch.randint(len(main), (config.batch_size - n_single,), generator=g).tolist()))
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for pool, idx in parts:
                loss = _loss(model, _collate(pool, idx, pixels, pad)) * (len(idx) / config.batch_size)
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            opt.step()
            sched.step()
            running = total if running is None else 0.95 * running + 0.05 * total
            bar.set_postfix(loss=f"{running:.3f}")
            if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
                model.eval()
                qa = evaluate_qa(engine, world, n_images=100, progress=False)
                model.train()
                history.append({"step": step + 1, "loss": running, "qa_accuracy": qa["accuracy"],
                                "qa_yes_rate": qa["yes_rate"], "seconds": round(time.time() - t0, 1)})
                bar.write(json.dumps(history[-1]))
        model.eval()
        model.save_pretrained(tmp, safe_serialization=True)
        report = {"config": _jsonable(config), "history": history, "vision_pretrain_accuracy": vision_acc, "train_seconds": round(time.time() - t0, 1),
                  "parameters": sum(p.numel() for p in model.parameters())}
        write_json(Path(tmp) / "sft_report.json", report)
    return report


def _jsonable(config: SFTConfig) -> dict:
    d = dataclasses.asdict(config)
    d["world"]["cooccurrence"] = [[list(k), list(v)] for k, v in config.world.cooccurrence.items()]
    return d


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=ROLES, required=True)
    ap.add_argument("--out", required=True)
    for f in dataclasses.fields(SFTConfig):
        if f.name in ("role", "out_dir", "world"):
            continue
        kind = int if f.type in ("int", "int | None") else float
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = ap.parse_args(argv)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(SFTConfig)
          if f.name not in ("role", "out_dir", "world") and getattr(args, f.name) is not None}
    report = train_sft(SFTConfig(role=args.role, out_dir=args.out, **kw))
    print(json.dumps(report["history"][-1] if report["history"] else {}, indent=1))


if __name__ == "__main__":
    main()
