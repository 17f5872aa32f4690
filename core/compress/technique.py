"""What a compression technique is, for everything that lists, validates, sweeps or loads techniques.

A technique is a frozen config dataclass plus one function over an `nn.Module` (torchao's
`quantize_(model, config)` shape), described by one `Technique` record. Recipes validate and order
steps with it, sweeps read its knobs and their "off" values, sensitivity its levels, the artifact
loader the layer classes it writes, the Compress page its label. Registering the record
(core.compress.registry) is all a new technique needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

SHORT_GROUPS = {
    "encoder.attention": "enc.attn",
    "encoder.ffn": "enc.ffn",
    "decoder.attention": "dec.attn",
    "decoder.ffn": "dec.ffn",
    "embedding": "emb",
    "conv": "conv",
    "positions": "pos",
}


@dataclass(frozen=True)
class Technique:
    """One compression technique and everything the rest of the lab needs to know about it."""

    name: str  # the step name in recipes ("prune", "quantize", ...)
    config: type  # a frozen dataclass that validates itself in __post_init__
    apply: Callable  # apply(module, config[, calibration]) -> (a compressed copy, [LayerReport, ...])
    describe: Callable[[Any], str]  # a short label of a config, e.g. "4-bit group 64"
    knobs: tuple[str, ...]  # main config fields: a sweep grid turns the step on by setting one of them
    off: dict[str, tuple] = field(
        default_factory=dict
    )  # knob -> values that mean "this step is off" in a grid
    aliases: dict[tuple[str, Any], Any] = field(default_factory=dict)  # (knob, grid value) -> config value
    levels: tuple[str, tuple] | None = None  # sensitivity probes: (knob, values from mild to strong)
    position: int = 50  # where a sweep puts the step among the others (lower runs first)
    keeps_float: bool = True  # layers are still float Linear/Embedding/Conv after it
    needs_float: bool = (
        True  # it acts on float layers, so it must run before any step that does not keep them
    )
    check_order: Callable[[Any, tuple[str, ...]], str | None] | None = (
        None  # extra rule: (config, earlier step
    )
    # names) -> an error message, or None when the order is fine
    modules: tuple[type[nn.Module], ...] = ()  # layer classes it writes (layout_kind/layout()/from_layout())
    calibrated: bool = (
        False  # apply takes a third argument: calibration data (core.compress.gptq.Calibration)
    )

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.config):
            raise ValueError(
                f"technique {self.name!r}: the config class must be a dataclass, got {self.config!r}"
            )
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = [k for k in (*self.knobs, *self.off, *(self.levels or ())[:1]) if k not in fields]
        if not self.knobs or unknown:
            raise ValueError(
                f"technique {self.name!r}: knobs {list(self.knobs)} must be non-empty fields of "
                f"{self.config.__name__}; unknown: {unknown}"
            )
        for cls in self.modules:
            if (
                not isinstance(getattr(cls, "layout_kind", None), str)
                or not callable(getattr(cls, "layout", None))
                or not callable(getattr(cls, "from_layout", None))
            ):
                raise ValueError(
                    f"{cls.__name__} needs a str layout_kind, layout() and a from_layout() classmethod"
                )

    def run(self, module: nn.Module, config, calibration=None):
        """apply() with the calibration argument only for techniques that take one."""
        return self.apply(module, config, calibration) if self.calibrated else self.apply(module, config)


def conv1d_layout(conv) -> dict:
    """A 1-d convolution's constructor facts (nn.Conv1d or a layer with its attributes) for layout.json."""
    padding = conv.padding if isinstance(conv.padding, str) else conv.padding[0]
    return {
        "in": conv.in_channels,
        "out": conv.out_channels,
        "kernel": conv.kernel_size[0],
        "stride": conv.stride[0],
        "padding": padding,
        "dilation": conv.dilation[0],
        "groups": conv.groups,
        "bias": conv.bias is not None,
    }


def field_default(config_class: type, name: str):
    """A dataclass field's default (dataclasses.MISSING when it has none)."""
    for f in dataclasses.fields(config_class):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


def percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def groups_suffix(config) -> str:
    """ " [enc.ffn, dec.ffn]" when the config's groups are not its class's default, else ""."""
    groups = tuple(getattr(config, "groups", ()) or ())
    if not groups or groups == field_default(type(config), "groups"):
        return ""
    return f" [{', '.join(SHORT_GROUPS.get(g, g) for g in groups)}]"
