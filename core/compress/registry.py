"""The technique registry: every compression technique the lab knows, by step name.

The built-in techniques are listed here explicitly (no import side effects). A plug-in registers its
own `Technique` record with `register`; from then on recipes accept its step, sweeps and sensitivity
offer its knobs and levels, and saved models with its layers load (see core.compress.technique).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from core.compress import context, lowrank, prune, quant
from core.compress.technique import Technique

BUILTIN_KINDS = ("linear", "embedding", "conv1d", "layer_norm")  # plain torch layers core.io.artifact records
TECHNIQUES: dict[str, Technique] = {
    t.name: t for t in (context.TECHNIQUE, prune.TECHNIQUE, lowrank.TECHNIQUE, quant.TECHNIQUE)
}


def register(technique: Technique) -> Technique:
    """Make a technique usable everywhere; ValueError if its name or a layout kind of its layers is taken."""
    if not isinstance(technique, Technique):
        raise ValueError(f"register needs a core.compress.technique.Technique, got {technique!r}")
    if technique.name in TECHNIQUES and TECHNIQUES[technique.name] is not technique:
        raise ValueError(f"technique {technique.name!r} is already registered")
    kinds = layer_classes()
    for cls in technique.modules:
        taken = kinds.get(cls.layout_kind)
        if cls.layout_kind in BUILTIN_KINDS or (taken is not None and taken is not cls):
            owner = f"{taken.__module__}.{taken.__qualname__}" if taken else "a builtin torch layer"
            raise ValueError(
                f"layout kind {cls.layout_kind!r} of {cls.__qualname__} is already taken by {owner}"
            )
    TECHNIQUES[technique.name] = technique
    return technique


def unregister(name: str) -> None:
    TECHNIQUES.pop(name, None)


@contextmanager
def registered(technique: Technique) -> Iterator[Technique]:
    """`technique` registered for the duration of a with-block (tests, notebooks)."""
    register(technique)
    try:
        yield technique
    finally:
        unregister(technique.name)


def technique(name, where: str = "recipe") -> Technique:
    """The technique named `name`; ValueError naming the allowed steps otherwise."""
    if not isinstance(name, str) or name not in TECHNIQUES:
        raise ValueError(f"{where}: unknown step {name!r}; allowed steps: {', '.join(TECHNIQUES)}")
    return TECHNIQUES[name]


def in_order() -> list[Technique]:
    """The techniques in the order a sweep applies them (by `position`)."""
    return sorted(TECHNIQUES.values(), key=lambda t: t.position)


def layer_classes() -> dict[str, type[nn.Module]]:
    """layout_kind -> layer class, over every registered technique (what core.io.artifact can load)."""
    return {cls.layout_kind: cls for t in TECHNIQUES.values() for cls in t.modules}
