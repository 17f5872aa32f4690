"""Low-rank factorization: replace a Linear's weight W (out x in) by its truncated SVD, two thinner Linears.

W ~ U_r S_r V_r^T is stored as `first` (in -> r, no bias, weight sqrt(S_r) V_r^T) followed by `second`
(r -> out, weight U_r sqrt(S_r), the original bias). S is split evenly between the factors so both have
comparable magnitudes, which is kinder to quantizing them afterwards. The SVD runs in float64 (exact
enough that the kept energy and the rank choice do not depend on rounding; tiny.en's largest matrix,
384 x 1536, takes milliseconds); the factors are cast back to the layer's dtype.

A rank-r pair holds r*(m+n) weights against m*n dense, so it only saves parameters when
r < m*n/(m+n) (for 384 x 384 that is r < 192). Layers whose chosen rank would not save are left dense
and reported with a note. Only attention and feed-forward Linears are factorized: the token
embedding (tied to the output projection) and the conv front-end are refused.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from core.compress.report import LayerReport, relative_error, swap_layers
from core.compress.technique import Technique, groups_suffix, percent
from core.models import DEFAULT_GROUPS

LOW_RANK_GROUPS = DEFAULT_GROUPS  # the embedding and the conv front-end are not factorized


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LowRankConfig:
    """The rank per layer (exactly one of rank_fraction, rank, energy) and which layer groups to factorize."""

    rank_fraction: float | None = None  # r = round(fraction x min(out, in)), at least 1; in (0, 1]
    rank: int | None = None  # the same r for every layer (capped at min(out, in)); >= 1
    energy: float | None = None  # smallest r keeping this fraction of sum(sigma^2); in (0, 1]
    groups: tuple[str, ...] = DEFAULT_GROUPS

    def __post_init__(self):
        given = [k for k in ("rank_fraction", "rank", "energy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "low_rank needs exactly one of low_rank.rank_fraction, low_rank.rank or "
                f"low_rank.energy, got {given or 'none'}"
            )
        for key in ("rank_fraction", "energy"):
            value = getattr(self, key)
            if value is not None:
                if not _is_number(value) or not 0 < value <= 1:
                    raise ValueError(f"low_rank.{key} must be a number in (0, 1], got {value!r}")
                object.__setattr__(self, key, float(value))
        if self.rank is not None and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1
        ):
            raise ValueError(f"low_rank.rank must be an integer >= 1, got {self.rank!r}")
        if (
            isinstance(self.groups, str)
            or not isinstance(self.groups, (tuple, list))
            or not all(isinstance(g, str) for g in self.groups)
        ):
            raise ValueError(
                f"low_rank.groups must be a list of group names from {list(LOW_RANK_GROUPS)}, "
                f"got {self.groups!r}"
            )
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.groups or any(g not in LOW_RANK_GROUPS for g in self.groups):
            raise ValueError(
                f"low_rank.groups must be a non-empty subset of {list(LOW_RANK_GROUPS)} (the "
                f"embedding and conv groups cannot be factorized), got {list(self.groups)}"
            )


class LowRankLinear(nn.Module):
    """y = second(first(x)): a rank-r factorization of a Linear (first: in -> r, no bias;
    second: r -> out)."""

    layout_kind = "low_rank_linear"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank, self.has_bias = in_features, out_features, rank, bias
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, rank: int, svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    ) -> LowRankLinear:
        """The rank-`rank` truncated SVD of `linear`; `svd` = torch.linalg.svd(W, full_matrices=False)
        reuses one."""
        weight = linear.weight.detach()
        u, s, vh = svd if svd is not None else torch.linalg.svd(weight.double(), full_matrices=False)
        if not 1 <= rank <= s.numel():
            raise ValueError(
                f"rank must be in [1, {s.numel()}] for a {tuple(weight.shape)} weight, got {rank}"
            )
        root = s[:rank].sqrt()
        module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        module.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            module.first.weight.copy_(root[:, None] * vh[:rank])
            module.second.weight.copy_(u[:, :rank] * root)
            if linear.bias is not None:
                module.second.bias.copy_(linear.bias.detach())
        return module

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this pair computes: second.weight @ first.weight."""
        return self.second.weight.detach() @ self.first.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def layout(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "rank": self.rank, "bias": self.has_bias}

    @classmethod
    def from_layout(cls, layout: dict) -> LowRankLinear:
        return cls(layout["in"], layout["out"], layout["rank"], layout["bias"])

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, bias={self.has_bias}"


# ----------------------------------------------------------------------------- choosing ranks


def saves_parameters(out_features: int, in_features: int, rank: int) -> bool:
    """True if a rank-`rank` pair, rank*(out+in) weights, is smaller than the dense out*in."""
    return rank * (out_features + in_features) < out_features * in_features


def energy_rank(singular: torch.Tensor, energy: float) -> int:
    """The smallest r whose top singular values keep at least `energy` of sum(sigma^2)."""
    power = singular.double().square().cumsum(0)
    total = float(power[-1]) if power.numel() else 0.0
    if total == 0.0:
        return 1
    r = int(torch.searchsorted(power, torch.tensor([energy * total], dtype=torch.float64))[0]) + 1
    return min(r, singular.numel())


def choose_rank(singular: torch.Tensor, config: LowRankConfig) -> int:
    """The rank `config` asks for, given a layer's singular values (descending)."""
    return _shape_rank(singular.numel(), config) or energy_rank(singular, config.energy)


def _shape_rank(full: int, config: LowRankConfig) -> int | None:
    """The rank from the layer's full rank alone (rank, rank_fraction), or None if it needs the spectrum
    (energy)."""
    if config.rank is not None:
        return min(config.rank, full)
    if config.rank_fraction is not None:
        return max(1, min(full, round(config.rank_fraction * full)))
    return None


def singular_values(model: nn.Module, layer_name: str) -> torch.Tensor:
    """Singular values (float64, descending) of one layer's weight, for spectrum plots;
    a LowRankLinear's product."""
    module = model.get_submodule(layer_name)
    weight = module.dense_weight() if isinstance(module, LowRankLinear) else module.weight.detach()
    return torch.linalg.svdvals(weight.reshape(weight.shape[0], -1).double())


# ----------------------------------------------------------------------------- the verb


def low_rank(model: nn.Module, config: LowRankConfig) -> tuple[nn.Module, list[LayerReport]]:
    """A copy of `model` whose selected Linears are truncated-SVD pairs (LowRankLinear);
    the input is untouched."""
    model = copy.deepcopy(model)

    def factorize(info, linear: nn.Module) -> tuple[nn.Module | None, LayerReport]:
        parent = info.name.rpartition(".")[0]
        if parent and isinstance(model.get_submodule(parent), LowRankLinear):
            return None, LayerReport(
                name=info.name,
                group=info.group,
                technique="low_rank",
                params_before=info.params,
                params_after=info.params,
                note="left as is: already a factor of a low-rank pair",
            )
        m, n = linear.out_features, linear.in_features
        svd = None
        rank = _shape_rank(min(m, n), config)
        if rank is None or saves_parameters(m, n, rank):  # no SVD for a layer that stays dense anyway
            svd = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
            rank = choose_rank(svd[1], config)
        if not saves_parameters(m, n, rank):
            return None, LayerReport(
                name=info.name,
                group=info.group,
                technique="low_rank",
                params_before=m * n,
                params_after=m * n,
                rel_error=0.0,
                note=f"left dense: rank {rank} would need {rank * (m + n):,} >= {m * n:,} weights "
                f"(saves only below rank {math.ceil(m * n / (m + n))})",
            )
        pair = LowRankLinear.from_linear(linear, rank, svd)
        return pair, LayerReport(
            name=info.name,
            group=info.group,
            technique="low_rank",
            params_before=m * n,
            params_after=rank * (m + n),
            rank=rank,
            rel_error=relative_error(linear.weight, pair.dense_weight()),
        )

    return model, swap_layers(model, config.groups, factorize)


def describe(config: LowRankConfig) -> str:
    if config.energy is not None:
        label = f"SVD {percent(config.energy)} energy"
    elif config.rank_fraction is not None:
        label = f"SVD rank {percent(config.rank_fraction)}"
    else:
        label = f"SVD rank {config.rank}"
    return label + groups_suffix(config)


TECHNIQUE = Technique(
    name="low_rank",
    config=LowRankConfig,
    apply=low_rank,
    describe=describe,
    knobs=("rank_fraction", "rank", "energy"),
    off={"energy": (1.0,), "rank_fraction": (1.0,), "rank": ()},
    levels=("rank_fraction", (0.75, 0.5, 0.25)),
    position=20,
    modules=(LowRankLinear,),
)
