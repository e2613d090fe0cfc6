"""A synthetic world of coloured shapes with exactly known ground truth.

Images hold 1-4 distinct (colour, shape) objects at random, non-overlapping positions. Reference descriptions list the
objects left to right ("there is a red circle . there is a blue square ."). The *biased* SFT descriptions add a
systematic language prior: when a trigger object is present and its co-occurring partner is absent, the description
also names the absent partner with probability ``hallucination_rate``. That is the hallucination RLAIF-V should fix.

Every random choice is drawn from a ``numpy.random.Generator``; a scene depends only on (seed, split, index), so any
scene can be regenerated alone and the train and held-out splits use disjoint seed streams.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 70, 240),
    "yellow": (240, 230, 30),
    "purple": (160, 40, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (30, 220, 230),
}
SHAPES = ("circle", "square", "triangle")
SPLITS = {"train": 0, "heldout": 1}
MIN_VISIBLE_SIZE = 8  # pixels; smaller objects are not reliably perceivable at this resolution

Obj = tuple[str, str]  # (colour, shape)


class SceneObject(NamedTuple):
    colour: str
    shape: str
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive; always square (width == height)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    image_size: int
    grid: int = 0  # cells per side of a grid layout; 0 for free placement

    def truth(self) -> set[Obj]:
        """The exact set of (colour, shape) objects in the image."""
        return {(o.colour, o.shape) for o in self.objects}

    def left_to_right(self) -> list[SceneObject]:
        """Description order: left to right by centre; in a grid layout, cell by cell in reading order (rows top to
        bottom, cells left to right), so the order never hangs on a pixel of jitter."""
        if self.grid:
            cell = self.image_size // self.grid
            return sorted(self.objects, key=lambda o: (o.bbox[1] // cell, o.bbox[0] // cell))
        return sorted(self.objects, key=lambda o: (o.bbox[0] + o.bbox[2], o.bbox[1] + o.bbox[3], o.colour, o.shape))


def _default_rules() -> dict[Obj, Obj]:
    return {("red", "circle"): ("blue", "square"), ("green", "triangle"): ("yellow", "circle")}


@dataclass(frozen=True)
class ShapesWorldConfig:
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = SHAPES
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 14  # object side length in pixels, inclusive range
    max_size: int = 22
    background: tuple[int, int, int] = (0, 0, 0)
    # "free": anywhere, non-overlapping; "grid": at most one object per cell of a grid x grid layout, jittered inside
    # its cell (with the vision patch equal to the cell, each image token sees one object: easy perception)
    layout: str = "free"
    grid: int = 2
    jitter: int | None = None  # grid layout: max offset in pixels from the cell's centre (None: anywhere in the cell)
    seed: int = 0
    n_train: int = 4000
    n_heldout: int = 200
    # present object -> absent object that the biased SFT descriptions also mention
    cooccurrence: dict[Obj, Obj] = field(default_factory=_default_rules)
    hallucination_rate: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))
        object.__setattr__(
            self, "cooccurrence", {tuple(k): tuple(v) for k, v in dict(self.cooccurrence).items()}
        )
        for c in self.colours:
            if c not in PALETTE:
                raise ValueError(f"unknown colour {c!r}; known: {sorted(PALETTE)}")
        for s in self.shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown shape {s!r}; known: {list(SHAPES)}")
        if len(set(self.colours)) != len(self.colours) or len(set(self.shapes)) != len(self.shapes):
            raise ValueError("colours and shapes must not repeat")
        if self.background in {PALETTE[c] for c in self.colours}:
            raise ValueError("background colour equals an object colour")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.max_objects > len(self.colours) * len(self.shapes):
            raise ValueError("max_objects exceeds the number of distinct (colour, shape) objects")
        if not MIN_VISIBLE_SIZE <= self.min_size <= self.max_size:
            raise ValueError(f"need {MIN_VISIBLE_SIZE} <= min_size <= max_size")
        if self.layout not in ("free", "grid"):
            raise ValueError(f"layout must be 'free' or 'grid', got {self.layout!r}")
        if self.layout == "grid":
            if self.grid < 1 or self.image_size % self.grid:
                raise ValueError(f"grid ({self.grid}) must be >= 1 and divide image_size ({self.image_size})")
            if self.max_objects > self.grid**2:
                raise ValueError(f"max_objects ({self.max_objects}) exceeds the {self.grid ** 2} grid cells")
            if self.jitter is not None and self.jitter < 0:
                raise ValueError(f"jitter must be >= 0 (or None), got {self.jitter}")
            if self.max_size > self.image_size // self.grid:
                raise ValueError(f"max_size ({self.max_size}) exceeds the grid cell ({self.image_size // self.grid})")
        elif self.max_objects * (self.max_size + 2) ** 2 > 0.6 * self.image_size**2 or self.max_size > self.image_size:
            raise ValueError("objects too large for the image: non-overlapping placement would be unreliable")
        if not 0.0 <= self.hallucination_rate <= 1.0:
            raise ValueError("hallucination_rate must be in [0, 1]")
        if self.n_train < 0 or self.n_heldout < 0:
            raise ValueError("split sizes must be >= 0")
        vocab = set(self.vocabulary())
        for trig, target in self.cooccurrence.items():
            if trig not in vocab or target not in vocab:
                raise ValueError(f"co-occurrence rule {trig} -> {target} uses objects outside the vocabulary")
            if trig == target:
                raise ValueError(f"co-occurrence rule {trig} -> {target} maps an object to itself")

    def vocabulary(self) -> list[Obj]:
        return [(c, s) for c in self.colours for s in self.shapes]


@functools.lru_cache(maxsize=1)
def _default_config() -> "ShapesWorldConfig":
    return ShapesWorldConfig()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 2) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _sample_grid_scene(config: ShapesWorldConfig, rng: np.random.Generator) -> Scene:
    vocab = config.vocabulary()
    cell = config.image_size // config.grid
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    picks = rng.choice(len(vocab), size=n, replace=False)
    cells = rng.choice(config.grid**2, size=n, replace=False)
    objects = []
    for p, c in zip(picks, cells):
        colour, shape = vocab[int(p)]
        size = int(rng.integers(config.min_size, config.max_size + 1))
        lo, hi = 0, cell - size
        if config.jitter is not None:
            mid = (cell - size) // 2
            lo, hi = max(0, mid - config.jitter), min(cell - size, mid + config.jitter)
        x0 = int(c) % config.grid * cell + int(rng.integers(lo, hi + 1))
        y0 = int(c) // config.grid * cell + int(rng.integers(lo, hi + 1))
        objects.append(SceneObject(colour, shape, (x0, y0, x0 + size, y0 + size)))
    return Scene(objects=tuple(objects), image_size=config.image_size, grid=config.grid)


def sample_scene(config: ShapesWorldConfig, rng: np.random.Generator) -> Scene:
    """One random scene: distinct (colour, shape) objects, random sizes, non-overlapping positions (one per grid
    cell with layout "grid")."""
    if config.layout == "grid":
        return _sample_grid_scene(config, rng)
    vocab = config.vocabulary()
    while True:
        n = int(rng.integers(config.min_objects, config.max_objects + 1))
        picks = rng.choice(len(vocab), size=n, replace=False)
        objects: list[SceneObject] = []
        for p in picks:
            colour, shape = vocab[int(p)]
            for _ in range(200):
                size = int(rng.integers(config.min_size, config.max_size + 1))
                x0 = int(rng.integers(0, config.image_size - size + 1))
                y0 = int(rng.integers(0, config.image_size - size + 1))
                bbox = (x0, y0, x0 + size, y0 + size)
                if not any(_overlaps(bbox, o.bbox) for o in objects):
                    objects.append(SceneObject(colour, shape, bbox))
                    break
            else:
                break  # could not place this object: resample the whole scene
        if len(objects) == n:
            return Scene(objects=tuple(objects), image_size=config.image_size)


def scene_rng(config: ShapesWorldConfig, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence([int(config.seed), SPLITS[split], int(index)]))


def make_scene(config: ShapesWorldConfig, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split``: depends only on (config, seed, split, index)."""
    return sample_scene(config, scene_rng(config, split, index))


def make_split(config: ShapesWorldConfig, split: str) -> list[Scene]:
    """The ``n_train`` or ``n_heldout`` scenes of a split (seed streams differ per split, so splits are disjoint)."""
    n = {"train": config.n_train, "heldout": config.n_heldout}.get(split)
    if n is None:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return [make_scene(config, split, i) for i in range(n)]


def render(scene: Scene, config: ShapesWorldConfig | None = None) -> Image.Image:
    """Draw the scene (no anti-aliasing: every object pixel has exactly its palette colour)."""
    background = config.background if config is not None else ShapesWorldConfig.background
    img = Image.new("RGB", (scene.image_size, scene.image_size), tuple(background))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        fill = PALETTE[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return img


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def sentence(colour: str, shape: str) -> str:
    return f"there is {_article(colour)} {colour} {shape} ."


def describe(scene: Scene) -> str:
    """The reference description: one sentence per object, left to right."""
    return " ".join(sentence(o.colour, o.shape) for o in scene.left_to_right())


def biased_objects(scene: Scene, rng: np.random.Generator, config: ShapesWorldConfig) -> list[Obj]:
    """The reference objects in description order plus, per applicable co-occurrence rule (trigger present, partner
    absent), the absent partner right after its trigger with probability ``config.hallucination_rate``.

    Exactly one draw per distinct absent partner, so the rate is controlled exactly per (scene, partner)."""
    truth = scene.truth()
    out: list[Obj] = []
    decided: set[Obj] = set()
    for o in scene.left_to_right():
        out.append((o.colour, o.shape))
        target = config.cooccurrence.get((o.colour, o.shape))
        if target is None or target in truth or target in decided:
            continue
        decided.add(target)
        if rng.random() < config.hallucination_rate:
            out.append(target)
    return out


def biased_description(scene: Scene, rng: np.random.Generator, config: ShapesWorldConfig) -> str:
    """The reference description with the co-occurrence hallucinations of ``biased_objects``."""
    return " ".join(sentence(*o) for o in biased_objects(scene, rng, config))


def question(colour: str, shape: str) -> str:
    return f"is there {_article(colour)} {colour} {shape} in the image ?"


def polar_questions(
    scene: Scene,
    rng: np.random.Generator,
    n: int,
    config: ShapesWorldConfig | None = None,
    hard_fraction: float = 0.5,
) -> list[tuple[str, str]]:
    """``n`` (question, "yes"/"no") pairs: ``n // 2`` yes and ``n - n // 2`` no (an odd extra is a coin flip).

    Yes questions cycle through the present objects in random order. Of the no questions, ``hard_fraction`` (rounded)
    are hard negatives: absent objects sharing a colour or shape with a present object; the rest are any absent object.
    Hard negatives fall back to any absent object when none exist. The returned list is shuffled."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError("hard_fraction must be in [0, 1]")
    cfg = config if config is not None else _default_config()
    truth = scene.truth()
    present = sorted(truth)
    absent = [v for v in cfg.vocabulary() if v not in truth]
    if not absent:
        raise ValueError("every object of the vocabulary is present: no negative questions possible")
    hard = [v for v in absent if any(v[0] == p[0] or v[1] == p[1] for p in present)]
    n_yes = n // 2
    if n % 2 and rng.random() < 0.5:
        n_yes += 1
    n_no = n - n_yes
    n_hard = int(round(n_no * hard_fraction))

    def cycle(pool: Sequence[Obj], k: int) -> list[Obj]:
        out: list[Obj] = []
        while len(out) < k:
            out.extend(pool[int(i)] for i in rng.permutation(len(pool)))
        return out[:k]

    yes = cycle(present, n_yes)
    no = cycle(hard if hard else absent, n_hard) + cycle(absent, n_no - n_hard)
    qa = [(question(*o), "yes") for o in yes] + [(question(*o), "no") for o in no]
    return [qa[int(i)] for i in rng.permutation(len(qa))]


_WORD = re.compile(r"[a-z]+")


def mentioned_objects(text: str, config: ShapesWorldConfig | None = None) -> list[Obj]:
    """(colour, shape) mentions in model text, in order, duplicates kept.

    A mention is a vocabulary colour immediately followed by a vocabulary shape (singular or plural), ignoring case,
    punctuation and articles: "A Red circle!", "two blue squares", "an orange triangle"."""
    cfg = config if config is not None else _default_config()
    colours = set(cfg.colours)
    shape_forms: dict[str, str] = {}
    for s in cfg.shapes:
        for form in (s, s + "s", s + "es"):
            shape_forms[form] = s
    words = _WORD.findall(text.lower())
    out: list[Obj] = []
    for a, b in zip(words, words[1:]):
        if a in colours and b in shape_forms:
            out.append((a, shape_forms[b]))
    return out
