"""What every technique reports per layer, and the one module-swap walk they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from core.models import LayerInfo, compressible_layers


@dataclass(frozen=True)
class LayerReport:
    """What one compression step did to one layer; every technique reports in this shape."""

    name: str
    group: str
    technique: str  # "prune", "quantize", "low_rank", ...
    params_before: int
    params_after: int
    sparsity: float | None = None  # fraction of weights that are zero after the step
    bits: int | None = None
    rank: int | None = None
    rel_error: float | None = None  # ||W - W'||_F / ||W||_F
    note: str = ""  # e.g. "left dense: factorization would not save parameters"


def relative_error(before, after) -> float:
    """Frobenius-norm relative error between two weight tensors (0 means identical)."""
    denom = before.float().norm().item()
    return (before.float() - after.float()).norm().item() / denom if denom else 0.0


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at path `name` of `model`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def swap_layers(
    model: nn.Module,
    groups: tuple[str, ...],
    replace: Callable[[LayerInfo, nn.Module], tuple[nn.Module | None, LayerReport]],
) -> list[LayerReport]:
    """The module-swap walk every technique shares: for each compressible layer of `groups`, in module order,
    `replace(info, layer)` gives a new module (None: keep the layer) and a report.
    `model` changes in place."""
    reports = []
    for info in compressible_layers(model, groups):
        new, report = replace(info, model.get_submodule(info.name))
        if new is not None:
            set_module(model, info.name, new)
        reports.append(report)
    return reports
