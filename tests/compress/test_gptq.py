"""GPTQ: error compensation beats round-to-nearest on the layer's output, keeps the stored format, keeps
pruned zeros, and runs through recipes with calibration data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.compress.gptq import gptq_codes, input_hessians
from core.compress.quant import QuantConfig, QuantLinear, dequantize_tensor, quantize, quantize_tensor
from core.compress.recipe import Recipe


def correlated_inputs(rows: int = 512, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """Inputs whose features are correlated (as real activations are): what GPTQ exploits."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.3 + torch.eye(cols)
    return torch.randn(rows, cols, generator=g) @ mix


def output_error(weight: torch.Tensor, restored: torch.Tensor, x: torch.Tensor) -> float:
    return ((x @ (weight - restored).T).square().sum() / (x @ weight.T).square().sum()).item()


@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_gptq_beats_round_to_nearest_on_the_layer_output(granularity):
    torch.manual_seed(1)
    weight = torch.randn(48, 160)  # more columns than one GPTQ block (128)
    x = correlated_inputs(cols=160)
    hessian = 2 * x.T @ x / x.shape[0]
    config = QuantConfig(bits=3, granularity=granularity, group_size=16, symmetric=False)
    rtn = dequantize_tensor(*quantize_tensor(weight, config), 3, granularity, 16)
    gptq = dequantize_tensor(*quantize_tensor(weight, config, hessian), 3, granularity, 16)
    assert output_error(weight, gptq, x) < 0.7 * output_error(weight, rtn, x)
    # same scales and zero points (the stored format does not change), only the codes differ
    assert torch.equal(quantize_tensor(weight, config)[1], quantize_tensor(weight, config, hessian)[1])


def test_gptq_with_identity_hessian_is_round_to_nearest():
    """With uncorrelated unit inputs there is nothing to compensate: every code equals round-to-nearest's
    (the damping only scales H, which GPTQ's update does not depend on)."""
    weight = torch.randn(8, 32)
    config = QuantConfig(bits=4, granularity="channel")
    codes, _, _ = quantize_tensor(weight, config)
    assert torch.equal(quantize_tensor(weight, config, torch.eye(32))[0], codes)


def test_gptq_keeps_pruned_weights_zero_and_handles_dead_inputs():
    weight = torch.randn(16, 32)
    weight[:, ::3] = 0.0
    x = correlated_inputs(256, 32)
    x[:, 5] = 0.0  # an input never active in calibration
    hessian = 2 * x.T @ x / x.shape[0]
    config = QuantConfig(bits=4, granularity="group", group_size=8, symmetric=False)
    restored = dequantize_tensor(*quantize_tensor(weight, config, hessian), 4, "group", 8)
    assert torch.all(restored[:, ::3] == 0)
    assert torch.all(restored[:, 5] == 0)
    assert torch.isfinite(restored).all()


def test_gptq_refuses_a_hessian_of_the_wrong_size():
    scale, zero = torch.ones(4, 1, 1), torch.full((4, 1, 1), 8.0)
    with pytest.raises(ValueError, match="needs a 8x8 Hessian"):
        gptq_codes(torch.randn(4, 8), torch.eye(4), scale, zero, 4, None)


def test_input_hessians_collects_every_linear_input():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [{"input": torch.randn(4, 6)}, {"input": torch.randn(2, 6)}]
    hessians = input_hessians(model, batches)
    x = torch.cat([b["input"] for b in batches])
    assert set(hessians) == {"0", "2"}
    torch.testing.assert_close(hessians["0"], 2 * x.T @ x / 6)
    assert hessians["2"].shape == (5, 5)
    assert not model[0]._forward_pre_hooks  # hooks removed


class TinyTied(nn.Module):
    """An encoder Linear, a token embedding and an output projection tied to it, as Whisper has."""

    def __init__(self):
        super().__init__()
        self.encoder_fc1 = nn.Linear(8, 8)
        self.embed_tokens = nn.Embedding(20, 8)
        self.proj_out = nn.Linear(8, 20, bias=False)
        self.proj_out.weight = self.embed_tokens.weight

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.encoder_fc1(input))


def test_recipe_gptq_calibrates_linear_layers_and_needs_data():
    torch.manual_seed(0)
    model = TinyTied()
    recipe = Recipe.from_json(
        {
            "steps": [
                {
                    "quantize": {
                        "bits": 3,
                        "gptq": True,
                        "calibration_windows": 2,
                        "groups": ["encoder.ffn", "embedding"],
                    }
                }
            ]
        }
    )
    asked = []

    def calibration(dataset: str, windows: int) -> list[dict]:
        asked.append((dataset, windows))
        return [{"input": correlated_inputs(64, 8, seed=i)} for i in range(windows)]

    with pytest.raises(ValueError, match="gptq needs calibration data"):
        recipe.apply(model)
    quantized, reports = recipe.apply(model, calibration)
    assert asked == [("train", 2)]
    assert reports[0].note.endswith("gptq")
    assert "rounded to nearest (gptq is for Linear layers)" in reports[1].note  # the tied table
    assert isinstance(quantized.encoder_fc1, QuantLinear)
    assert quantized.proj_out.weight is quantized.embed_tokens.weight  # the tie is kept
    assert recipe.describe() == "3-bit channel gptq [enc.ffn, emb]"
    # plain round-to-nearest differs from the calibrated codes
    plain, _ = quantize(model, QuantConfig(bits=3, groups=("encoder.ffn",)))
    assert not torch.equal(plain.encoder_fc1.codes, quantized.encoder_fc1.codes)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gptq": "yes"}, "quantize.gptq must be true or false"),
        ({"calibration_windows": 0}, "calibration_windows must be a positive integer"),
        ({"calibration": ""}, "quantize.calibration must be a dataset name or path"),
    ],
)
def test_invalid_gptq_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json({"steps": [{"quantize": {"bits": 4, **options}}]})


def test_gptq_with_outlier_columns_keeps_them_exact():
    torch.manual_seed(2)
    linear = nn.Linear(64, 24)
    with torch.no_grad():
        linear.weight[:, 5] *= 15
    x = correlated_inputs(cols=64)
    hessian = 2 * x.T @ x / x.shape[0]
    config = QuantConfig(bits=3, granularity="channel", symmetric=False, gptq=True)
    plain = QuantLinear.from_float(linear, config, hessian)
    kept = QuantLinear.from_float(
        linear,
        QuantConfig(bits=3, granularity="channel", symmetric=False, gptq=True, outlier_columns=1),
        hessian,
    )
    assert torch.equal(kept.weight[:, 5], linear.weight[:, 5].half().float())
    assert output_error(linear.weight, kept.weight, x) < 0.5 * output_error(linear.weight, plain.weight, x)
