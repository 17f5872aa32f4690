"""Speech models behind one interface (core.models.base.SpeechModel); one module per family.

Adding a family: one module implementing core.models.base.Family, listed in FAMILIES. The functions
here find a module's family and ask it about its layers, so compression techniques work on any
family's `nn.Module` without naming its attributes.
"""

from __future__ import annotations

from torch import nn

from core.models import ctc, whisper
from core.models.base import (
    BASE_MODEL,
    DEFAULT_GROUPS,
    DEFAULT_MODEL,
    GROUPS,
    META_FILE,
    AttentionBlock,
    EncoderCache,
    Family,
    FeedForwardBlock,
    LayerInfo,
    SpeechModel,
)
from core.models.base import compressible_layers as _compressible_layers

FAMILIES: tuple[Family, ...] = (whisper, ctc)

__all__ = [
    "BASE_MODEL",
    "DEFAULT_GROUPS",
    "DEFAULT_MODEL",
    "FAMILIES",
    "GROUPS",
    "META_FILE",
    "AttentionBlock",
    "EncoderCache",
    "Family",
    "FeedForwardBlock",
    "LayerInfo",
    "SpeechModel",
    "attention_blocks",
    "compressible_layers",
    "family_named",
    "family_of",
    "ffn_blocks",
]


def family_of(module: nn.Module) -> Family:
    """The family that knows this module's layout. A module no family claims (a custom wrapper, a test's
    toy model) is read by Hugging Face's common layer names, as Whisper spells them."""
    for family in FAMILIES:
        if family.handles(module):
            return family
    return whisper


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.NAME == name:
            return family
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(f.NAME for f in FAMILIES)}")


def compressible_layers(module: nn.Module, groups: tuple[str, ...] | None = None) -> list[LayerInfo]:
    """Every compressible layer of `module` (optionally only those in `groups`), in module order."""
    return _compressible_layers(module, groups, family_of(module))


def attention_blocks(module: nn.Module) -> list[AttentionBlock]:
    return family_of(module).attention_blocks(module)


def ffn_blocks(module: nn.Module) -> list[FeedForwardBlock]:
    return family_of(module).ffn_blocks(module)
