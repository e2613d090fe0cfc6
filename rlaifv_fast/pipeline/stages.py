"""The one table of stages: the CLI makes a command of each, and the loop runs LOOP_STAGES of it per iteration."""

from __future__ import annotations

from ..eval import stage as evaluate
from . import bon, feedback, generate, pairs, ref_logps, train
from .contract import Stage

STAGES: dict[str, Stage] = {
    s.name: s for s in map(Stage, (generate, feedback, pairs, ref_logps, train, bon, evaluate))
}
LOOP_STAGES: tuple[str, ...] = ("generate", "feedback", "pairs", "reflogps", "train")
