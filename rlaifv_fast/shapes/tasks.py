"""The text side of the shapes world: the prompts and answers the models are trained on and asked.

The formats are exactly the pipeline's: descriptions are answers to DESCRIBE_PROMPT; yes/no questions are what the
rule divider makes of a description's sentences ("There is a red circle." -> "Is there a red circle?") followed by the
engines' YES_NO_SUFFIX, answered "yes" / "no".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..pipeline.divide import HOLISTIC_QUESTION
from ..engines.base import YES_NO_SUFFIX
from .world import Obj, Scene, ShapesWorldConfig, _article

DESCRIBE_PROMPT = "Describe the image."
COLOUR_PROMPT = "What colour is there?"
SHAPE_PROMPT = "What shape is there?"
# words of these formats beyond the tiny tokenizer's base list
EXTRA_WORDS = ("accurate",)


def claim(obj: Obj) -> str:
    colour, shape = obj
    return f"There is {_article(colour)} {colour} {shape}."


def description_text(objects: Sequence[Obj]) -> str:
    """A description in the models' answer format: one sentence per object."""
    return " ".join(claim(o) for o in objects)


def polar_prompt(obj: Obj) -> str:
    colour, shape = obj
    return f"Is there {_article(colour)} {colour} {shape}?{YES_NO_SUFFIX}"


def holistic_prompt(description: str) -> str:
    """The no-divide-and-conquer ablation's one question per answer."""
    return f"{HOLISTIC_QUESTION} {description}{YES_NO_SUFFIX}"


def reference_objects(scene: Scene) -> list[Obj]:
    return [(o.colour, o.shape) for o in scene.left_to_right()]


def polar_examples(
    scene: Scene, rng: np.random.Generator, n: int, config: ShapesWorldConfig, hard_fraction: float = 0.5
) -> list[tuple[str, str]]:
    """n balanced (prompt, "yes"/"no") pairs; half the no's are hard negatives (share a colour or a shape), and
    absent co-occurrence partners of present triggers are always among the no's when they apply."""
    truth = scene.truth()
    present = sorted(truth)
    absent = [v for v in config.vocabulary() if v not in truth]
    partners = sorted({config.cooccurrence[o] for o in present if o in config.cooccurrence} - truth)
    hard = [v for v in absent if any(v[0] == p[0] or v[1] == p[1] for p in present)]
    n_yes = n // 2
    n_no = n - n_yes
    yes = [present[int(i)] for i in rng.integers(0, len(present), size=n_yes)]
    no: list[Obj] = list(partners[:n_no])
    while len(no) < n_no:
        pool = hard if (hard and rng.random() < hard_fraction) else absent
        no.append(pool[int(rng.integers(0, len(pool)))])
    qa = [(polar_prompt(o), "yes") for o in yes] + [(polar_prompt(o), "no") for o in no]
    return [qa[int(i)] for i in rng.permutation(len(qa))]


def holistic_examples(
    scene: Scene, rng: np.random.Generator, config: ShapesWorldConfig
) -> list[tuple[str, str]]:
    """One accurate and one inaccurate description (an absent object added, or a present one swapped for an
    absent one), each asked holistically."""
    ref = reference_objects(scene)
    absent = [v for v in config.vocabulary() if v not in scene.truth()]
    wrong = list(ref)
    extra = absent[int(rng.integers(0, len(absent)))]
    if len(wrong) > 1 and rng.random() < 0.5:
        wrong[int(rng.integers(0, len(wrong)))] = extra
    else:
        wrong.insert(int(rng.integers(0, len(wrong) + 1)), extra)
    return [
        (holistic_prompt(description_text(ref)), "yes"),
        (holistic_prompt(description_text(wrong)), "no"),
    ]


def retrieval_examples(scene: Scene) -> list[tuple[str, str]]:
    """The warm-up that gets polar QA off its plateau (shapes-world-notes.md): on a single-object image, name its
    colour and its shape."""
    if len(scene.objects) != 1:
        raise ValueError("retrieval examples need a single-object scene")
    o = scene.objects[0]
    return [(COLOUR_PROMPT, o.colour), (SHAPE_PROMPT, o.shape)]
