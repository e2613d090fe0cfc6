"""The synthetic shapes world as a benchmark (`--benchmark shapes`): held-out images with exact ground truth, so the
loop's evaluation and checkpoint selection run end to end offline. Two splits:

- descriptions: "Describe the image." on the held-out images, scored with exact CHAIR (response level over answers
  naming an object, object level, recall, mean length, repetition);
- polar: balanced "Is there a <colour> <shape>?" questions (half the no's hard negatives, absent co-occurrence
  partners always asked), scored by P(yes) vs P(no): accuracy, yes_ratio.

The world is the demo's, or the one a shipped SFT model was trained on (`data`: a model folder with
sft_report.json).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import BenchmarkScores, EvalItem, safe_div
from .chair import chair_scores


class ShapesBenchmark:
    name = "shapes"

    def __init__(self, data: str | None = None, *, n_images: int = 200, questions_per_image: int = 4, seed: int = 0):
        from ..shapes import tasks
        from ..shapes.demo import _world_of
        from ..shapes.evaluate import heldout
        from ..shapes.sft import demo_world
        from ..shapes.world import render

        self.world = _world_of(data) if data else demo_world()
        rng = np.random.default_rng([seed, 17])
        self._items: list[EvalItem] = []
        suffix = tasks.YES_NO_SUFFIX
        for i, scene in enumerate(heldout(self.world, n_images)):
            image = render(scene, self.world)
            truth = sorted(list(o) for o in scene.truth())
            self._items.append(EvalItem(f"shapes-{i}", "descriptions", "generate", tasks.DESCRIBE_PROMPT, image,
                                        {"truth": truth}))
            for k, (prompt, answer) in enumerate(tasks.polar_examples(scene, rng, questions_per_image, self.world)):
                self._items.append(EvalItem(f"shapes-{i}-q{k}", "polar", "yes_no", prompt[: -len(suffix)], image,
                                            {"label": answer}))

    def items(self) -> list[EvalItem]:
        return list(self._items)

    def score(self, records: Sequence[dict]) -> BenchmarkScores:
        from ..shapes.world import mentioned_objects

        known = {i.id for i in self._items}
        unknown = [r["id"] for r in records if r["id"] not in known]
        if unknown:
            raise ValueError(f"shapes: records {unknown[:3]} are not items of this world")
        desc = [r for r in records if r["split"] == "descriptions"]
        polar = [r for r in records if r["split"] == "polar"]
        rows = {}
        if desc:
            scores = chair_scores([r["answer"] for r in desc], [{tuple(o) for o in r["meta"]["truth"]} for r in desc],
                                  lambda text: mentioned_objects(text, self.world))
            rows["descriptions"] = {k: getattr(scores, k) for k in ("response_level", "object_level", "recall",
                                                                   "mean_length_words", "repetition", "n_answers")}
        if polar:
            said = [r["logp_yes"] > r["logp_no"] for r in polar]
            truth = [r["meta"]["label"] == "yes" for r in polar]
            rows["polar"] = {"accuracy": safe_div(sum(a == b for a, b in zip(said, truth)), len(polar)),
                             "yes_ratio": safe_div(sum(said), len(polar)), "n": len(polar)}
        return BenchmarkScores(self.name, rows, notes={"world": "exact ground truth (synthetic)"})
