"""Low-rank factorization: exact ranks, kept energy, the dense-skip rule, errors, and the tiny Whisper."""

import pytest
import torch
from torch import nn

from core.compress.lowrank import (
    LowRankConfig,
    LowRankLinear,
    choose_rank,
    energy_rank,
    low_rank,
    saves_parameters,
    singular_values,
)
from core.io import artifact

pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    """An encoder with a square attention projection and a wide feed-forward pair."""

    def __init__(self, d: int = 24, ffn: int = 96, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.ModuleDict(
            {
                "self_attn": nn.ModuleDict({"q_proj": nn.Linear(d, d)}),
                "fc1": nn.Linear(d, ffn),
                "fc2": nn.Linear(ffn, d),
            }
        )


def decaying(out_features: int, in_features: int, seed: int = 0) -> nn.Linear:
    """A Linear whose spectrum decays geometrically, like trained weights."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_features, out_features, generator=g))
    v, _ = torch.linalg.qr(torch.randn(in_features, in_features, generator=g))
    k = min(out_features, in_features)
    s = 0.8 ** torch.arange(k, dtype=torch.float32)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(u[:, :k] * s @ v[:, :k].T)
    return linear


def holder(linear: nn.Linear, name: str = "fc1") -> nn.Module:
    model = nn.Module()
    model.encoder = nn.Module()
    setattr(model.encoder, name, linear)
    return model


def test_exact_rank_and_factor_shapes():
    model = Toy()
    factored, reports = low_rank(model, LowRankConfig(rank=5))
    for name, (out_f, in_f) in {
        "encoder.self_attn.q_proj": (24, 24),
        "encoder.fc1": (96, 24),
        "encoder.fc2": (24, 96),
    }.items():
        pair = factored.get_submodule(name)
        assert isinstance(pair, LowRankLinear) and pair.rank == 5
        assert pair.first.weight.shape == (5, in_f) and pair.first.bias is None
        assert pair.second.weight.shape == (out_f, 5) and pair.second.bias.shape == (out_f,)
        assert torch.linalg.matrix_rank(pair.dense_weight()) == 5
        assert torch.equal(pair.second.bias, model.get_submodule(name).bias)
    assert [(r.rank, r.params_before, r.params_after) for r in reports] == [
        (5, 576, 5 * 48),
        (5, 2304, 5 * 120),
        (5, 2304, 5 * 120),
    ]
    assert all(
        r.technique == "low_rank" and r.group == "encoder." + ("attention" if "attn" in r.name else "ffn")
        for r in reports
    )


def test_rank_fraction_rounds_on_the_smaller_side():
    _, reports = low_rank(Toy(), LowRankConfig(rank_fraction=0.25))
    assert [r.rank for r in reports] == [6, 6, 6]  # round(0.25 * 24)
    _, reports = low_rank(Toy(), LowRankConfig(rank_fraction=0.01))
    assert [r.rank for r in reports] == [1, 1, 1]


def test_energy_keeps_at_least_the_requested_fraction_with_the_smallest_rank():
    linear = decaying(40, 60)
    s = torch.linalg.svdvals(linear.weight.detach().double())
    power = s.square().cumsum(0) / s.square().sum()
    for energy in (0.5, 0.9, 0.95, 0.99, 0.999999, 1.0):
        r = energy_rank(s, energy)
        assert power[r - 1] >= energy - 1e-12
        assert r == 1 or power[r - 2] < energy
        factored, reports = low_rank(holder(linear), LowRankConfig(energy=energy))
        if saves_parameters(40, 60, r):
            assert factored.encoder.fc1.rank == r == reports[0].rank
            assert reports[0].rel_error == pytest.approx(
                float((1 - power[r - 1]).clamp(min=0).sqrt()), abs=1e-5
            )
        else:
            assert factored.encoder.fc1 is not linear and type(factored.encoder.fc1) is nn.Linear


def test_dense_skip_boundary_for_384_square():
    linear = nn.Linear(384, 384)
    assert not saves_parameters(384, 384, 192) and saves_parameters(384, 384, 191)
    kept, reports = low_rank(holder(linear, "fc2"), LowRankConfig(rank=192))
    assert type(kept.encoder.fc2) is nn.Linear and torch.equal(kept.encoder.fc2.weight, linear.weight)
    (report,) = reports
    assert report.rank is None and report.params_after == report.params_before == 384 * 384
    assert report.rel_error == 0.0 and report.note.startswith("left dense") and "192" in report.note
    factored, (report,) = low_rank(holder(linear, "fc2"), LowRankConfig(rank=191))
    assert isinstance(factored.encoder.fc2, LowRankLinear)
    assert report.rank == 191 and report.params_after == 191 * 768 < 384 * 384


def test_error_decreases_with_rank_and_full_rank_is_exact():
    linear = decaying(32, 48)
    errors = []
    for rank in (1, 2, 4, 8, 16, 32):
        pair = LowRankLinear.from_linear(linear, rank)
        errors.append(torch.dist(pair.dense_weight(), linear.weight.detach()) / linear.weight.detach().norm())
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-5
    x = torch.randn(3, 7, 48)
    torch.testing.assert_close(LowRankLinear.from_linear(linear, 32)(x), linear(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rank must be in"):
        LowRankLinear.from_linear(linear, 33)


def test_layout_round_trip_and_state_dict_names():
    pair = LowRankLinear.from_linear(decaying(10, 20), 3)
    assert pair.layout() == {"in": 20, "out": 10, "rank": 3, "bias": True}
    empty = LowRankLinear.from_layout(pair.layout())
    assert {k: v.shape for k, v in empty.state_dict().items()} == {
        k: v.shape for k, v in pair.state_dict().items()
    }
    assert list(pair.state_dict()) == ["first.weight", "second.weight", "second.bias"]
    assert LowRankLinear.layout_kind == "low_rank_linear"


def test_singular_values_for_the_spectrum_plot():
    model = Toy()
    s = singular_values(model, "encoder.fc1")
    assert s.dtype == torch.float64 and s.shape == (24,) and bool((s[:-1] >= s[1:]).all())
    torch.testing.assert_close(s, torch.linalg.svdvals(model.encoder.fc1.weight.detach().double()))
    factored, _ = low_rank(model, LowRankConfig(rank=4))
    spectrum = singular_values(factored, "encoder.fc1")
    torch.testing.assert_close(spectrum[:4], s[:4], atol=1e-5, rtol=1e-5)
    assert float(spectrum[4:].abs().max()) < 1e-5
    assert choose_rank(s, LowRankConfig(rank=500)) == 24


def test_tiny_whisper_untouched_runs_and_skips_factored_layers(tiny_whisper):
    state = {k: v.clone() for k, v in tiny_whisper.state_dict().items()}
    factored, reports = low_rank(tiny_whisper, LowRankConfig(rank_fraction=0.25, groups=["encoder.ffn"]))
    assert all(torch.equal(tiny_whisper.state_dict()[k], v) for k, v in state.items())
    assert all(type(layer.fc1) is nn.Linear for layer in tiny_whisper.model.encoder.layers)
    assert [r.name for r in reports] == [
        f"model.encoder.layers.{i}.{fc}" for i in (0, 1) for fc in ("fc1", "fc2")
    ]
    assert all(
        isinstance(layer.fc1, LowRankLinear) and layer.fc1.rank == 8
        for layer in factored.model.encoder.layers
    )
    assert factored.proj_out.weight is factored.model.decoder.embed_tokens.weight
    assert sum(p.numel() for p in factored.parameters()) < sum(p.numel() for p in tiny_whisper.parameters())
    features, ids = torch.randn(1, 80, 3000), torch.tensor([[117, 3, 17]])
    with torch.inference_mode():
        assert factored(input_features=features, decoder_input_ids=ids).logits.shape == (1, 3, 120)
    again, reports = low_rank(factored, LowRankConfig(rank=2, groups=("encoder.ffn",)))
    assert all("already a factor" in r.note for r in reports) and len(reports) == 8
    assert all(layer.fc1.rank == 8 for layer in again.model.encoder.layers)


def test_low_rank_model_saves_and_loads(tiny_whisper, tmp_path):
    factored, _ = low_rank(tiny_whisper, LowRankConfig(energy=0.5))
    artifact.save_weights(factored, tmp_path)
    torch.manual_seed(5)
    loaded = artifact.load_weights(type(tiny_whisper)(tiny_whisper.config).eval(), tmp_path)
    shapes = {k: v.shape for k, v in factored.state_dict().items()}
    assert {k: v.shape for k, v in loaded.state_dict().items()} == shapes
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in factored.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of low_rank.rank_fraction, low_rank.rank or low_rank.energy"),
        ({"rank": 4, "energy": 0.9}, "exactly one of"),
        ({"rank": 0}, "low_rank.rank must be an integer >= 1, got 0"),
        ({"rank": 4.0}, "low_rank.rank must be an integer"),
        ({"rank": True}, "low_rank.rank"),
        ({"rank_fraction": 0.0}, r"low_rank.rank_fraction must be a number in \(0, 1\], got 0.0"),
        ({"rank_fraction": 1.5}, "low_rank.rank_fraction"),
        ({"energy": 0}, "low_rank.energy"),
        ({"energy": "0.9"}, "low_rank.energy"),
        ({"energy": 0.9, "groups": ("embedding",)}, "low_rank.groups .*embedding and conv groups cannot"),
        ({"energy": 0.9, "groups": ("encoder.ffn", "conv")}, "low_rank.groups"),
        ({"energy": 0.9, "groups": "encoder.ffn"}, "low_rank.groups must be a list"),
    ],
)
def test_invalid_configs_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LowRankConfig(**kwargs)
