"""A new technique is one module and one registration: this file is that module, and the test shows that
its record alone makes it appear in recipe validation, the sweep grid, sensitivity and the artifact loader.

The example technique, "mantissa", stores Linear weights as fp16 with only the top `mantissa_bits` of the
10-bit fp16 mantissa kept (a crude low-precision float), in its own layer class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.compress.recipe import Recipe
from core.compress.registry import registered
from core.compress.report import LayerReport, relative_error, swap_layers
from core.compress.technique import Technique
from core.io.artifact import load_weights, save_weights
from core.measure.sensitivity import sensitivity_plan
from core.measure.sweep import grid_recipes
from core.models import DEFAULT_GROUPS


@dataclass(frozen=True)
class MantissaConfig:
    mantissa_bits: int = 7  # of fp16's 10
    groups: tuple[str, ...] = DEFAULT_GROUPS

    def __post_init__(self):
        if isinstance(self.mantissa_bits, bool) or self.mantissa_bits not in range(0, 11):
            raise ValueError(
                f"mantissa.mantissa_bits must be an integer from 0 to 10, got {self.mantissa_bits!r}"
            )
        object.__setattr__(self, "groups", tuple(self.groups))


class MantissaLinear(nn.Module):
    """A Linear whose weight is stored as truncated fp16."""

    layout_kind = "test_mantissa_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight.float(), self.bias)

    def layout(self) -> dict:
        return {"in": self.weight.shape[1], "out": self.weight.shape[0], "bias": self.bias is not None}

    @classmethod
    def from_layout(cls, layout: dict) -> MantissaLinear:
        return cls(layout["in"], layout["out"], layout["bias"])


def truncate(weight: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    bits = weight.detach().half().view(torch.int16)
    mask = ~((1 << (10 - mantissa_bits)) - 1)
    return (bits & mask).view(torch.float16)


def mantissa(model: nn.Module, config: MantissaConfig) -> tuple[nn.Module, list[LayerReport]]:
    model = copy.deepcopy(model)

    def replace(info, linear):
        new = MantissaLinear(linear.in_features, linear.out_features, linear.bias is not None)
        with torch.no_grad():
            new.weight.copy_(truncate(linear.weight, config.mantissa_bits))
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new, LayerReport(
            info.name,
            info.group,
            "mantissa",
            info.params,
            info.params,
            rel_error=relative_error(linear.weight, new.weight),
        )

    return model, swap_layers(model, config.groups, replace)


TECHNIQUE = Technique(
    name="mantissa",
    config=MantissaConfig,
    apply=mantissa,
    describe=lambda c: f"fp16 m{c.mantissa_bits}",
    knobs=("mantissa_bits",),
    off={"mantissa_bits": (10,)},
    levels=("mantissa_bits", (7, 4, 2)),
    position=25,
    keeps_float=False,
    modules=(MantissaLinear,),
)


def test_one_registration_reaches_recipes_sweeps_sensitivity_and_the_loader(tiny_whisper, tmp_path):
    step = {"steps": [{"mantissa": {"mantissa_bits": 4}}]}
    with pytest.raises(ValueError, match="unknown step 'mantissa'"):
        Recipe.from_json(step)

    with registered(TECHNIQUE):
        # recipe validation, labels and order rules
        recipe = Recipe.from_json(step)
        assert recipe.describe() == "fp16 m4"
        with pytest.raises(ValueError, match="mantissa_bits must be an integer"):
            Recipe.from_json({"steps": [{"mantissa": {"mantissa_bits": 12}}]})
        with pytest.raises(ValueError, match="mantissa after quantize has no float layers"):
            Recipe.from_json({"steps": [{"quantize": {"bits": 8}}, {"mantissa": {}}]})
        with pytest.raises(ValueError, match="prune after mantissa has no float layers"):
            Recipe.from_json({"steps": [{"mantissa": {}}, {"prune": {"sparsity": 0.5}}]})

        # the sweep grid: its knob, its off value, its place after low_rank
        grid = grid_recipes({"mantissa.mantissa_bits": [10, 4], "low_rank.energy": 0.9})
        assert [r.to_json() for r in grid] == [
            {"steps": [{"low_rank": {"energy": 0.9}}]},
            {"steps": [{"low_rank": {"energy": 0.9}}, {"mantissa": {"mantissa_bits": 4}}]},
        ]

        # sensitivity: its levels, per group it applies to
        probes = [p for p in sensitivity_plan(("encoder.ffn",)) if p.technique == "mantissa"]
        assert [(p.knob, p.level) for p in probes] == [
            ("mantissa_bits", 7),
            ("mantissa_bits", 4),
            ("mantissa_bits", 2),
        ]

        # the artifact loader: its layers save and load back to identical outputs
        compressed, reports = recipe.apply(tiny_whisper)
        assert {r.technique for r in reports} == {"mantissa"} and len(
            reports
        ) == 32  # every Linear of 2+2 layers
        save_weights(compressed, tmp_path)
        skeleton = copy.deepcopy(tiny_whisper)
        loaded = load_weights(skeleton, tmp_path)
        assert isinstance(loaded.model.encoder.layers[0].fc1, MantissaLinear)
        features, ids = torch.randn(1, 80, 3000), torch.tensor([[116, 5, 9]])
        with torch.no_grad():
            expected = compressed(input_features=features, decoder_input_ids=ids).logits
            assert torch.equal(loaded(input_features=features, decoder_input_ids=ids).logits, expected)

    with pytest.raises(ValueError, match="unknown kind 'test_mantissa_linear'"):
        load_weights(copy.deepcopy(tiny_whisper), tmp_path)
