"""Short context: the encoder sees only the clip's frames instead of a whole 30 s window.

Whisper pads every clip to 30 s (3000 log-mel frames) and its encoder attends over all of it, so on a 3 s
command 90% of the encoder's work is silence. In short-context mode the encoder gets the clip's frames
only (rounded up to a whole number of `step_seconds`, at least `floor_seconds`), with the position table
sliced to match: the encoder's cost falls with the clip. The weights do not change, so the size does not
either; the mode is recorded on the model (config.json) and every runtime the lab exports to follows it.

A stock model in this mode repeats itself at the end of its transcript (it was trained on 30 s windows
that end in silence); a student distilled from the full-context teacher in this mode stops looping
(`python -m core distill --short-context`, core.train.distill). Applied alone, the step shows the loss.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from torch import nn

from core.compress.technique import Technique
from core.models import family_of

FULL_SECONDS = 30.0


@dataclass(frozen=True)
class ShortContextConfig:
    """How many frames the encoder gets for a clip: its length rounded up to a whole number of
    `step_seconds`, at least `floor_seconds` (30: the full window, i.e. off)."""

    floor_seconds: float = 1.0
    step_seconds: float = 1.0

    def __post_init__(self):
        for name in ("floor_seconds", "step_seconds"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value <= FULL_SECONDS
            ):
                raise ValueError(
                    f"short_context.{name} = {value!r} is out of range; allowed: (0, 30] seconds"
                )
        if abs(self.step_seconds * 50 - round(self.step_seconds * 50)) > 1e-6:
            raise ValueError(
                f"short_context.step_seconds = {self.step_seconds!r}: must be a multiple of 0.02 s "
                "(two log-mel frames: the encoder's convolutions halve the frame count)"
            )


def short_context(module: nn.Module, config: ShortContextConfig) -> tuple[nn.Module, list]:
    """A copy of `module` that runs in short-context mode; no layer changes, so no layer reports."""
    family = family_of(module)
    if not hasattr(family, "set_short_context"):
        raise ValueError(
            f"short_context applies to models with a fixed audio window (Whisper); a {family.NAME} model "
            "already sees only the clip"
        )
    module = copy.deepcopy(module)
    family.set_short_context(module, asdict(config))
    return module, []


def describe(config: ShortContextConfig) -> str:
    if config.floor_seconds >= FULL_SECONDS:
        return "full context"
    return f"short context ≥{config.floor_seconds:g} s"


TECHNIQUE = Technique(
    name="short_context",
    config=ShortContextConfig,
    apply=short_context,
    describe=describe,
    knobs=("floor_seconds",),
    off={"floor_seconds": (FULL_SECONDS,)},
    position=5,
    keeps_float=True,
    needs_float=False,
)
