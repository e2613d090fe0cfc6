"""Held-out evaluation in the shapes world through the pipeline's own engine: exact CHAIR of greedy and sampled
descriptions (always with recall and length beside it), and polar-QA accuracy of a labeler."""

from __future__ import annotations

import numpy as np

from ..eval.chair import ChairScores, chair_scores
from ..engines.base import DecodingConfig, SampleRequest, YesNoRequest
from . import tasks
from .world import ShapesWorldConfig, make_scene, mentioned_objects, render


def heldout(world: ShapesWorldConfig, n_images: int | None = None):
    n = world.n_heldout if n_images is None else min(int(n_images), world.n_heldout)
    return [make_scene(world, "heldout", i) for i in range(n)]


def evaluate_qa(engine, world: ShapesWorldConfig, *, n_images: int | None = None, per_image: int = 4,
                seed: int = 0, progress: bool = False) -> dict:
    """Accuracy of the engine's strict yes/no verdicts on balanced polar questions about held-out images (half the
    no's hard negatives; absent co-occurrence partners of present triggers always asked). Also: yes rate, accuracy on
    the partner questions alone (the hallucinations the loop must catch)."""
    rng = np.random.default_rng([seed, 17])
    requests, truth, partner = [], [], []
    for i, scene in enumerate(heldout(world, n_images)):
        image = render(scene, world)
        partners = {world.cooccurrence[o] for o in scene.truth() if o in world.cooccurrence} - scene.truth()
        for k, (prompt, answer) in enumerate(tasks.polar_examples(scene, rng, per_image, world)):
            q = prompt[: -len(tasks.YES_NO_SUFFIX)]
            requests.append(YesNoRequest(f"{i}:{k}", q, image))
            truth.append(answer == "yes")
            partner.append(any(q == tasks.polar_prompt(p)[: -len(tasks.YES_NO_SUFFIX)] for p in partners))
    results = engine.yes_no(requests)
    said = np.array([r.accepted for r in results])
    truth, partner = np.array(truth), np.array(partner)
    correct = said == truth
    return {
        "accuracy": float(correct.mean()),
        "yes_rate": float(said.mean()),
        "partner_accuracy": float(correct[partner].mean()) if partner.any() else None,
        "n_questions": int(len(requests)),
    }


def evaluate_holistic(engine, world: ShapesWorldConfig, *, n_images: int | None = None, seed: int = 0) -> dict:
    """Accuracy of the engine's verdicts on whole descriptions ("Is this description of the image accurate? ..."):
    per held-out image one accurate description and one with an absent object added or swapped in."""
    rng = np.random.default_rng([seed, 23])
    requests, truth = [], []
    for i, scene in enumerate(heldout(world, n_images)):
        image = render(scene, world)
        for k, (prompt, answer) in enumerate(tasks.holistic_examples(scene, rng, world)):
            requests.append(YesNoRequest(f"{i}:{k}", prompt[: -len(tasks.YES_NO_SUFFIX)], image))
            truth.append(answer == "yes")
    said = np.array([r.accepted for r in engine.yes_no(requests)])
    return {"accuracy": float((said == np.array(truth)).mean()), "yes_rate": float(said.mean()),
            "n_questions": int(len(requests))}


def evaluate_descriptions(engine, world: ShapesWorldConfig, *, n_images: int | None = None, samples: int = 0,
                          temperature: float = 0.7, max_new_tokens: int = 40, run_seed: int = 0) -> dict:
    """CHAIR of greedy descriptions (and of `samples` sampled ones per image when > 0) of held-out images."""
    scenes = heldout(world, n_images)
    requests = [SampleRequest(f"heldout-{i}", tasks.DESCRIBE_PROMPT, render(s, world)) for i, s in enumerate(scenes)]
    truths = [s.truth() for s in scenes]
    parse = lambda text: mentioned_objects(text, world)  # noqa: E731
    greedy = engine.greedy(requests, max_new_tokens=max_new_tokens)
    out = {"greedy": chair_scores([g.text for g in greedy], truths, parse).as_dict(),
           "greedy_examples": [g.text for g in greedy[:5]]}
    if samples:
        decoding = DecodingConfig(temperature=temperature, max_new_tokens=max_new_tokens)
        sampled = engine.sample(requests, samples, decoding, run_seed=run_seed)
        texts = [c.text for cands in sampled for c in cands]
        out["sampled"] = chair_scores(texts, [t for t in truths for _ in range(samples)], parse).as_dict()
    return out


def relative_drop(before: ChairScores | dict, after: ChairScores | dict, key: str) -> float:
    b = before[key] if isinstance(before, dict) else getattr(before, key)
    a = after[key] if isinstance(after, dict) else getattr(after, key)
    return (b - a) / b if b else 0.0
