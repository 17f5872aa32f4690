"""Magnitude pruning: zero the smallest weights (unstructured) or cut whole heads / FFN neurons (structured).

Unstructured pruning zeroes weights in place of a copy and keeps every tensor dense; the size gain
comes later, when core.io.artifact stores mostly-zero tensors sparsely. Zeros are written as +0.0 (bit
pattern zero), which is what the sparse storage looks for.

Structured pruning physically removes units, so the model really gets smaller and faster. The model
family (core.models) says where its blocks are:
  * "neurons": feed-forward neurons j of up -> act -> down (row j of the up projection's weight and
    bias, column j of the down projection's weight); both become smaller nn.Linear layers.
  * "heads": attention heads h (rows h*head_dim:(h+1)*head_dim of the query/key/value projections and
    those columns of the output projection), which become smaller nn.Linear layers; the family records
    the new head count on the attention module (and in `layout_attrs`, so core.io.artifact rebuilds it).
Importance of a unit (lowest removed first): the L2 norm of all its weights together, biases excluded.
Per layer, round(sparsity x units) are removed, and at least one unit always stays.

A weight shared by two layers (a token embedding tied to the output projection) is one Parameter:
pruning it zeroes it in place, so both layers are pruned and the tie survives (copy.deepcopy keeps
shared parameters shared).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from core.compress.report import LayerReport
from core.compress.technique import Technique, groups_suffix, percent
from core.models import DEFAULT_GROUPS, GROUPS, attention_blocks, compressible_layers, ffn_blocks

SCOPES = ("layer", "global")
STRUCTURES = ("unstructured", "heads", "neurons")
STRUCTURED_GROUPS = {
    "heads": ("encoder.attention", "decoder.attention"),
    "neurons": ("encoder.ffn", "decoder.ffn"),
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PruneConfig:
    """What to prune: a target `sparsity` or a magnitude `threshold` (exactly one), where,
    and in what units."""

    sparsity: float | None = (
        None  # fraction of weights (or of heads/neurons, if structured) to remove, in [0, 1)
    )
    threshold: float | None = None  # remove weights with |w| < threshold (weight units); unstructured only
    scope: str = (
        "layer"  # "layer": each layer hits the sparsity; "global": one ranking over all selected layers
    )
    groups: tuple[str, ...] = DEFAULT_GROUPS
    structure: str = "unstructured"  # "unstructured" (zero weights), "heads" or "neurons" (remove units)

    def __post_init__(self):
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError(
                "prune needs exactly one of prune.sparsity or prune.threshold, got "
                f"sparsity={self.sparsity!r}, threshold={self.threshold!r}"
            )
        if self.sparsity is not None:
            if not _is_number(self.sparsity) or not 0 <= self.sparsity < 1:
                raise ValueError(f"prune.sparsity must be a number in [0, 1), got {self.sparsity!r}")
            object.__setattr__(self, "sparsity", float(self.sparsity))
        if self.threshold is not None:
            if not _is_number(self.threshold) or self.threshold < 0:
                raise ValueError(f"prune.threshold must be a finite number >= 0, got {self.threshold!r}")
            object.__setattr__(self, "threshold", float(self.threshold))
        if self.scope not in SCOPES:
            raise ValueError(f"prune.scope must be one of {list(SCOPES)}, got {self.scope!r}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"prune.structure must be one of {list(STRUCTURES)}, got {self.structure!r}")
        if (
            isinstance(self.groups, str)
            or not isinstance(self.groups, (tuple, list))
            or not all(isinstance(g, str) for g in self.groups)
        ):
            raise ValueError(
                f"prune.groups must be a list of group names from {list(GROUPS)}, got {self.groups!r}"
            )
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.groups or any(g not in GROUPS for g in self.groups):
            raise ValueError(
                f"prune.groups must be a non-empty subset of {list(GROUPS)}, got {list(self.groups)}"
            )
        if self.structure != "unstructured":
            self._check_structured()

    def _check_structured(self) -> None:
        where = f"prune.structure {self.structure!r}"
        if self.threshold is not None:
            raise ValueError(
                f"{where} needs prune.sparsity (the fraction of units to remove), not prune.threshold"
            )
        if self.scope != "layer":
            raise ValueError(
                f"{where} needs prune.scope 'layer' (units are ranked within each layer), got {self.scope!r}"
            )
        odd = [g for g in self.groups if g in ("embedding", "conv")]
        if odd:
            raise ValueError(
                f"{where} cannot remove units from {odd}; prune.groups may only hold "
                f"{list(DEFAULT_GROUPS)} (groups of the other kind are left as they are)"
            )
        if not set(self.groups) & set(STRUCTURED_GROUPS[self.structure]):
            raise ValueError(
                f"{where} needs one of {list(STRUCTURED_GROUPS[self.structure])} in prune.groups, "
                f"got {list(self.groups)}"
            )


# ----------------------------------------------------------------------------- magnitudes


def smallest_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask, True at exactly `k` of the smallest entries of a flat tensor (ties broken by position)."""
    n = values.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    cut = values.kthvalue(k).values
    mask = values < cut
    missing = k - int(mask.sum())
    if missing > 0:  # several values equal the cut: take the first ones
        ties = (values == cut).nonzero().flatten()[:missing]
        mask[ties] = True
    return mask


def _weights(model: nn.Module, groups: tuple[str, ...]) -> list[tuple[str, str, torch.Tensor]]:
    """(name, group, weight) of every selected layer; a weight shared by two layers is listed once."""
    seen, out = set(), []
    for info in compressible_layers(model, groups):
        weight = model.get_submodule(info.name).weight
        if id(weight) not in seen:
            seen.add(id(weight))
            out.append((info.name, info.group, weight))
    return out


def threshold_sparsity_curve(
    model: nn.Module,
    groups: tuple[str, ...] = DEFAULT_GROUPS,
    thresholds: list[float] | tuple[float, ...] = (),
) -> dict[str, list[float]]:
    """Per layer, the fraction of weights with |w| < t for each t: what a threshold prune would remove."""
    curve = {}
    for name, _, weight in _weights(model, tuple(groups)):
        magnitude = weight.detach().abs().flatten()
        points = torch.tensor(
            [float(t) for t in thresholds], dtype=magnitude.dtype
        )  # compared as prune compares
        ordered, order = points.sort()
        # bucket i holds ordered[i-1] <= |w| < ordered[i], so |w| < ordered[j] for buckets 0..j
        buckets = torch.bucketize(magnitude, ordered, right=True)
        below = torch.bincount(buckets, minlength=len(points) + 1).cumsum(0)[: len(points)]
        counts = torch.empty_like(below)
        counts[order] = below
        curve[name] = (counts.double() / max(1, magnitude.numel())).tolist()
    return curve


def threshold_for_sparsity(
    model: nn.Module, sparsity: float, groups: tuple[str, ...] = DEFAULT_GROUPS, layer: str | None = None
) -> float:
    """The threshold t whose |w| < t prune removes round(sparsity x n) weights (fewer only if |w| ties at t).

    Over all weights of `groups` (one global ranking), or of the one layer named `layer`."""
    if not _is_number(sparsity) or not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if layer is not None:
        values = model.get_submodule(layer).weight.detach().abs().flatten()
    else:
        values = torch.cat([w.detach().abs().flatten().float() for _, _, w in _weights(model, tuple(groups))])
    n = values.numel()
    k = round(sparsity * n)
    if n == 0 or k == 0:
        return 0.0
    if k >= n:
        top = values.max()
        return float(torch.nextafter(top, torch.full_like(top, math.inf)))  # next value of the weights' dtype
    return float(values.kthvalue(k + 1).values)


# ----------------------------------------------------------------------------- unstructured


def _prune_unstructured(model: nn.Module, config: PruneConfig) -> list[LayerReport]:
    layers = _weights(model, config.groups)
    magnitudes = [w.detach().abs().flatten() for _, _, w in layers]
    if config.threshold is not None:
        masks = [m < config.threshold for m in magnitudes]
    elif config.scope == "layer":
        masks = [smallest_mask(m, round(config.sparsity * m.numel())) for m in magnitudes]
    else:
        total = sum(m.numel() for m in magnitudes)
        flat = smallest_mask(torch.cat([m.float() for m in magnitudes]), round(config.sparsity * total))
        masks = list(flat.split([m.numel() for m in magnitudes]))
    tied = _tied_names(model)
    reports = []
    for (name, group, weight), magnitude, mask in zip(layers, magnitudes, masks):
        norm = float(magnitude.double().norm())
        removed = float(magnitude[mask].double().norm())
        with torch.no_grad():
            weight.masked_fill_(mask.view(weight.shape), 0.0)  # +0.0 (w * 0 would give -0.0 for w < 0)
        note = f"{', '.join(tied[id(weight)])} shares this weight (pruned too)" if id(weight) in tied else ""
        reports.append(
            LayerReport(
                name=name,
                group=group,
                technique="prune",
                params_before=weight.numel(),
                params_after=weight.numel(),
                sparsity=float((weight == 0).sum()) / max(1, weight.numel()),
                rel_error=removed / norm if norm else 0.0,
                note=note,
            )
        )
    return reports


def _tied_names(model: nn.Module) -> dict[int, list[str]]:
    """id(weight) -> names of the other modules holding the same weight Parameter (e.g. proj_out)."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight")
        if weight is not None:
            holders.setdefault(id(weight), []).append(name)
    return {key: names[1:] for key, names in holders.items() if len(names) > 1}


# ----------------------------------------------------------------------------- structured


def _plain_linear(module: nn.Module, where: str) -> nn.Linear:
    if type(module) is not nn.Linear:
        raise ValueError(
            f"structured pruning needs plain nn.Linear layers, but {where} is a "
            f"{type(module).__name__}; prune structurally before low_rank or quantize"
        )
    return module


def _sliced_linear(
    linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """A new nn.Linear keeping the output rows `rows` and input columns `cols` (None: all) of `linear`."""
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight[rows]
        bias = None if bias is None else bias[rows]
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def _units_to_keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Indices (ascending) of the units kept: all but the round(sparsity x n) lowest scores, at least one."""
    n = scores.numel()
    remove = min(round(sparsity * n), n - 1)
    dropped = smallest_mask(scores, remove)
    return (~dropped).nonzero().flatten()


def _removed_fraction(weight: torch.Tensor, kept: torch.Tensor, dim: int) -> float:
    """||removed part|| / ||W||: the relative error of removing all but `kept` along `dim`."""
    total = float(weight.detach().double().norm())
    kept_norm = float(weight.detach().index_select(dim, kept).double().norm())
    return math.sqrt(max(0.0, total**2 - kept_norm**2)) / total if total else 0.0


def _structured_report(
    name: str, group: str, before: nn.Linear, after: nn.Linear, rel_error: float, note: str
) -> LayerReport:
    return LayerReport(
        name=name,
        group=group,
        technique="prune",
        params_before=before.weight.numel(),
        params_after=after.weight.numel(),
        rel_error=rel_error,
        note=note,
    )


def _prune_neurons(model: nn.Module, config: PruneConfig) -> list[LayerReport]:
    reports = []
    blocks = ffn_blocks(model)
    for block in blocks:
        if block.group not in config.groups:
            continue
        owner = model.get_submodule(block.name)
        up = _plain_linear(getattr(owner, block.up), f"{block.name}.{block.up}")
        down = _plain_linear(getattr(owner, block.down), f"{block.name}.{block.down}")
        w1, w2 = up.weight.detach().double(), down.weight.detach().double()
        scores = (w1.square().sum(1) + w2.square().sum(0)).sqrt()
        kept = _units_to_keep(scores, config.sparsity)
        new_up, new_down = _sliced_linear(up, rows=kept), _sliced_linear(down, cols=kept)
        note = f"kept {kept.numel()} of {scores.numel()} neurons"
        for suffix, old, new, dim in ((block.up, up, new_up, 0), (block.down, down, new_down, 1)):
            error = _removed_fraction(old.weight, kept, dim)
            reports.append(_structured_report(f"{block.name}.{suffix}", block.group, old, new, error, note))
        if kept.numel() < scores.numel():
            setattr(owner, block.up, new_up)
            setattr(owner, block.down, new_down)
    if not blocks:
        raise ValueError("prune.structure 'neurons' found no feed-forward blocks in this model")
    return reports


def _prune_heads(model: nn.Module, config: PruneConfig) -> list[LayerReport]:
    reports = []
    blocks = attention_blocks(model)
    for block in blocks:
        if block.group not in config.groups:
            continue
        attn = model.get_submodule(block.name)
        inputs = (block.query, block.key, block.value)
        parts = (*inputs, block.out)
        linears = {p: _plain_linear(getattr(attn, p), f"{block.name}.{p}") for p in parts}
        heads, head_dim = block.heads, block.head_dim
        squares = sum(
            linears[p].weight.detach().double().square().sum(1).view(heads, head_dim).sum(1) for p in inputs
        )
        squares = squares + linears[block.out].weight.detach().double().square().sum(0).view(
            heads, head_dim
        ).sum(1)
        kept_heads = _units_to_keep(squares.sqrt(), config.sparsity)
        kept = (kept_heads[:, None] * head_dim + torch.arange(head_dim, device=kept_heads.device)).flatten()
        new = {p: _sliced_linear(linears[p], rows=kept) for p in inputs}
        new[block.out] = _sliced_linear(linears[block.out], cols=kept)
        note = f"kept {kept_heads.numel()} of {heads} heads (head_dim {head_dim}): {kept_heads.tolist()}"
        for p in parts:
            error = _removed_fraction(linears[p].weight, kept, 1 if p == block.out else 0)
            reports.append(
                _structured_report(f"{block.name}.{p}", block.group, linears[p], new[p], error, note)
            )
        if kept_heads.numel() < heads:
            for p in parts:
                setattr(attn, p, new[p])
            block.set_heads(attn, int(kept_heads.numel()))
    if not blocks:
        raise ValueError("prune.structure 'heads' found no attention modules in this model")
    return reports


# ----------------------------------------------------------------------------- the verb


def prune(model: nn.Module, config: PruneConfig) -> tuple[nn.Module, list[LayerReport]]:
    """A copy of `model` pruned as `config` says, with one report per touched layer;
    the input is left untouched."""
    model = copy.deepcopy(model)
    if config.structure == "neurons":
        return model, _prune_neurons(model, config)
    if config.structure == "heads":
        return model, _prune_heads(model, config)
    return model, _prune_unstructured(model, config)


def describe(config: PruneConfig) -> str:
    if config.threshold is not None:
        label = f"prune |w|<{config.threshold:g}"
    elif config.structure != "unstructured":
        label = f"prune {percent(config.sparsity)} {config.structure}"
    else:
        label = f"prune {percent(config.sparsity)}" + (" global" if config.scope == "global" else "")
    return label + groups_suffix(config)


def _check_order(config: PruneConfig, earlier: tuple[str, ...]) -> str | None:
    if config.structure != "unstructured" and "low_rank" in earlier:
        return f"prune with structure {config.structure!r} needs plain Linear layers; put it before low_rank"
    return None


TECHNIQUE = Technique(
    name="prune",
    config=PruneConfig,
    apply=prune,
    describe=describe,
    knobs=("sparsity", "threshold"),
    off={"sparsity": (0,), "threshold": (0,)},
    levels=("sparsity", (0.25, 0.5, 0.75)),
    position=10,
    check_order=_check_order,
)
