"""Pruning: exact sparsity per layer and globally, threshold semantics, the tie, and structured removal."""

import copy
import math

import pytest
import torch
from conftest import tiny_whisper_config
from torch import nn

from core.compress.prune import (
    PruneConfig,
    prune,
    smallest_mask,
    threshold_for_sparsity,
    threshold_sparsity_curve,
)
from core.io import artifact
from core.models import DEFAULT_GROUPS

pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    """Layer names the group rules understand: encoder/decoder x attention/ffn, odd sizes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.ModuleDict(
            {
                "self_attn": nn.ModuleDict({"q_proj": nn.Linear(12, 12)}),
                "fc1": nn.Linear(12, 37),
                "fc2": nn.Linear(37, 12),
            }
        )
        self.decoder = nn.ModuleDict({"fc1": nn.Linear(12, 29)})
        with torch.no_grad():
            self.decoder.fc1.weight.mul_(10)  # a different scale, so a global ranking is not per-layer


LAYERS = ("encoder.self_attn.q_proj", "encoder.fc1", "encoder.fc2", "decoder.fc1")


def weight(model, name):
    return model.get_submodule(name).weight


def zeros(tensor) -> int:
    """Count of exact +0.0 (bit pattern zero): what the sparse storage finds."""
    return int((tensor.detach().reshape(-1).view(torch.int32) == 0).sum())


def short_whisper(seed: int = 0):
    """tiny_whisper's architecture with a 100-frame window, so forward passes take milliseconds."""
    from transformers import WhisperForConditionalGeneration

    config = tiny_whisper_config()
    config.max_source_positions = 50
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(config).eval()


def run(model, ids=(117, 3, 17, 42, 99), **kwargs):
    frames = model.config.max_source_positions * 2
    features = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model(input_features=features, decoder_input_ids=torch.tensor([list(ids)]), **kwargs)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9])
def test_layer_scope_hits_the_sparsity_in_every_layer(sparsity):
    model = Toy()
    pruned, reports = prune(model, PruneConfig(sparsity=sparsity))
    assert [r.name for r in reports] == list(LAYERS)
    for name, report in zip(LAYERS, reports):
        w, before = weight(pruned, name).detach(), weight(model, name).detach()
        assert zeros(w) == round(sparsity * w.numel())
        assert report.sparsity == pytest.approx(zeros(w) / w.numel())
        kept, removed = before[w != 0].abs(), before[w == 0].abs()
        if removed.numel() and kept.numel():
            assert removed.max() <= kept.min()  # the smallest magnitudes went
        assert torch.equal(w[w != 0], before[w != 0])  # the rest is untouched
        expected = before[w == 0].norm() / before.norm()
        assert report.rel_error == pytest.approx(float(expected), rel=1e-5)
        assert report.params_before == report.params_after == w.numel() and report.technique == "prune"


def test_exact_count_with_tied_magnitudes():
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.fc1 = nn.Linear(10, 10)
    with torch.no_grad():
        model.encoder.fc1.weight.copy_(torch.arange(100).reshape(10, 10) % 4 - 1.5)  # only 2 magnitudes
    pruned, _ = prune(model, PruneConfig(sparsity=0.3, groups=("encoder.ffn",)))
    assert zeros(pruned.encoder.fc1.weight) == 30
    assert smallest_mask(torch.ones(7), 3).sum() == 3


def test_global_scope_ranks_all_layers_together():
    model = Toy()
    pruned, reports = prune(model, PruneConfig(sparsity=0.4, scope="global"))
    total = sum(weight(model, n).numel() for n in LAYERS)
    assert abs(sum(zeros(weight(pruned, n)) for n in LAYERS) - 0.4 * total) <= 1
    removed = torch.cat([weight(model, n)[weight(pruned, n) == 0].abs() for n in LAYERS])
    kept = torch.cat([weight(model, n)[weight(pruned, n) != 0].abs() for n in LAYERS])
    assert removed.max() <= kept.min()
    by_name = {r.name: r.sparsity for r in reports}
    assert by_name["decoder.fc1"] < 0.05 < by_name["encoder.fc1"]  # the 10x larger layer is barely touched


def test_threshold_removes_exactly_the_weights_below_it():
    model = Toy()
    threshold = float(weight(model, "encoder.fc1").detach().abs().median())
    pruned, reports = prune(model, PruneConfig(threshold=threshold, groups=("encoder.ffn",)))
    assert [r.name for r in reports] == ["encoder.fc1", "encoder.fc2"]
    for name in ("encoder.fc1", "encoder.fc2"):
        before, after = weight(model, name), weight(pruned, name)
        assert torch.equal(after == 0, before.abs() < threshold)  # |w| == threshold is kept
    assert torch.equal(weight(pruned, "decoder.fc1"), weight(model, "decoder.fc1"))  # not in groups
    none, _ = prune(model, PruneConfig(threshold=0.0))
    assert all(zeros(weight(none, n)) == 0 for n in LAYERS)


def test_zeros_are_positive_zero_for_sparse_storage():
    pruned, _ = prune(Toy(), PruneConfig(sparsity=0.5))
    w = weight(pruned, "encoder.fc1")
    assert zeros(w) == int((w == 0).sum()) == round(0.5 * w.numel())


def test_input_model_is_not_mutated(tiny_whisper):
    state = {k: v.clone() for k, v in tiny_whisper.state_dict().items()}
    for config in (
        PruneConfig(sparsity=0.5, groups=DEFAULT_GROUPS + ("embedding",)),
        PruneConfig(sparsity=0.5, structure="heads"),
        PruneConfig(sparsity=0.5, structure="neurons"),
    ):
        pruned, _ = prune(tiny_whisper, config)
        assert pruned is not tiny_whisper
        assert not {id(p) for p in pruned.parameters()} & {id(p) for p in tiny_whisper.parameters()}
    after = tiny_whisper.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert all(a.num_heads == 4 for a in attentions(tiny_whisper))
    assert tiny_whisper.model.encoder.layers[0].fc1.out_features == 128


def test_tied_embedding_prunes_the_output_projection_too(tiny_whisper):
    assert tiny_whisper.proj_out.weight is tiny_whisper.model.decoder.embed_tokens.weight
    padding_row = zeros(tiny_whisper.proj_out.weight)  # the pad token's row starts at zero
    pruned, reports = prune(tiny_whisper, PruneConfig(sparsity=0.25, groups=("embedding",)))
    table = pruned.model.decoder.embed_tokens.weight
    assert pruned.proj_out.weight is table  # still one Parameter
    assert zeros(table) == round(0.25 * table.numel())
    assert [r.name for r in reports] == ["model.decoder.embed_tokens"] and "proj_out" in reports[0].note
    assert zeros(tiny_whisper.proj_out.weight) == padding_row == 32


def test_conv_and_embedding_groups_prune_too(tiny_whisper):
    pruned, reports = prune(tiny_whisper, PruneConfig(sparsity=0.5, groups=("conv", "embedding")))
    assert [r.name for r in reports] == [
        "model.encoder.conv1",
        "model.encoder.conv2",
        "model.decoder.embed_tokens",
    ]
    for r in reports:
        w = pruned.get_submodule(r.name).weight
        assert zeros(w) == round(0.5 * w.numel()) and r.sparsity == pytest.approx(0.5, abs=1e-3)


def test_threshold_sparsity_curve_and_threshold_for_sparsity():
    model = Toy()
    thresholds = [0.0, 0.05, 0.1, 0.2, 1.0]
    curve = threshold_sparsity_curve(model, DEFAULT_GROUPS, thresholds)
    assert list(curve) == list(LAYERS)
    for name, values in curve.items():
        w = weight(model, name).abs()
        assert values == pytest.approx([float((w < t).float().mean()) for t in thresholds])
        assert values == sorted(values) and values[0] == 0.0
    shuffled = threshold_sparsity_curve(model, ("encoder.ffn",), [0.2, 0.0, 0.2, 0.05])
    assert shuffled["encoder.fc1"] == [curve["encoder.fc1"][i] for i in (3, 0, 3, 1)]
    for sparsity in (0.0, 0.3, 0.77):
        t = threshold_for_sparsity(model, sparsity)
        pruned, _ = prune(model, PruneConfig(threshold=t))
        total = sum(weight(model, n).numel() for n in LAYERS)
        assert sum(zeros(weight(pruned, n)) for n in LAYERS) == round(sparsity * total)
        t = threshold_for_sparsity(model, sparsity, layer="encoder.fc2")
        assert zeros(prune(model, PruneConfig(threshold=t))[0].encoder.fc2.weight) == round(
            sparsity * 37 * 12
        )
    t = threshold_for_sparsity(model, 1.0, layer="encoder.fc1")
    assert bool((weight(model, "encoder.fc1").abs() < t).all())


# ----------------------------------------------------------------------------- structured


def attentions(model):
    return [m for name, m in model.named_modules() if name.endswith(("self_attn", "encoder_attn"))]


def masked_copy(model, heads: dict | None = None, neurons: dict | None = None):
    """The unpruned model with removed units silenced (out_proj / fc2 columns zeroed): same function."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, kept in (heads or {}).items():
            attn = model.get_submodule(name)
            mask = torch.ones(attn.num_heads, dtype=torch.bool)
            mask[kept] = False
            attn.out_proj.weight[:, mask.repeat_interleave(attn.head_dim)] = 0
        for name, kept in (neurons or {}).items():
            fc2 = model.get_submodule(name).fc2
            mask = torch.ones(fc2.in_features, dtype=torch.bool)
            mask[kept] = False
            fc2.weight[:, mask] = 0
    return model


def head_norms(attn) -> torch.Tensor:
    d = attn.head_dim
    rows = sum(
        getattr(attn, p).weight.square().sum(1).view(-1, d).sum(1) for p in ("q_proj", "k_proj", "v_proj")
    )
    return (rows + attn.out_proj.weight.square().sum(0).view(-1, d).sum(1)).sqrt()


def test_head_pruning_removes_the_weakest_heads_and_matches_masking():
    model = short_whisper()
    pruned, reports = prune(model, PruneConfig(sparsity=0.5, structure="heads"))
    kept = {}
    for (name, attn), new in zip(
        [(n, m) for n, m in model.named_modules() if n.endswith("attn")], attentions(pruned)
    ):
        norms = head_norms(attn)
        kept[name] = sorted(norms.argsort(descending=True)[:2].tolist())
        assert new.num_heads == 2 and new.layout_attrs == {"num_heads": 2} and new.head_dim == 8
        assert new.embed_dim == 32 and new.scaling == attn.scaling
        assert (new.q_proj.out_features, new.k_proj.out_features, new.v_proj.out_features) == (16, 16, 16)
        assert (new.out_proj.in_features, new.out_proj.out_features) == (16, 32)
        assert new.k_proj.bias is None and new.q_proj.bias is not None
    assert len(kept) == 2 + 2 * 2  # encoder self-attention; decoder self- and cross-attention
    assert params(pruned) == params(model) - len(kept) * (
        4 * 16 * 32 + 2 * 16
    )  # q, k, v, out; q and v biases
    assert len(reports) == 4 * len(kept) and all(r.params_after == r.params_before // 2 for r in reports)
    assert all("kept 2 of 4 heads" in r.note for r in reports)
    out = run(pruned)
    assert out.logits.shape == (1, 5, 120)
    torch.testing.assert_close(out.logits, run(masked_copy(model, heads=kept)).logits, atol=1e-5, rtol=1e-5)


def test_head_pruned_decoder_runs_with_the_kv_cache():
    pruned, _ = prune(short_whisper(), PruneConfig(sparsity=0.7, structure="heads"))
    assert all(a.num_heads == 1 for a in attentions(pruned))  # round(2.8) = 3 of 4 removed
    full = run(pruned, use_cache=False).logits
    first = run(pruned, ids=(117, 3, 17, 42), use_cache=True)
    frames = pruned.config.max_source_positions * 2
    features = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        step = pruned(
            input_features=features,
            decoder_input_ids=torch.tensor([[99]]),
            past_key_values=first.past_key_values,
            use_cache=True,
        ).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_at_least_one_head_and_neuron_stays():
    model = short_whisper()
    heads, _ = prune(model, PruneConfig(sparsity=0.99, structure="heads", groups=("decoder.attention",)))
    assert [a.num_heads for a in attentions(heads)] == [4, 4, 1, 1, 1, 1]  # encoder attention not in groups
    neurons, reports = prune(model, PruneConfig(sparsity=0.999, structure="neurons"))
    assert all(layer.fc1.out_features == 1 for layer in neurons.model.encoder.layers)
    assert run(heads).logits.shape == run(neurons).logits.shape == (1, 5, 120)


def test_neuron_pruning_shrinks_the_ffn_and_matches_masking(tiny_whisper):
    model = tiny_whisper
    pruned, reports = prune(model, PruneConfig(sparsity=0.25, structure="neurons", groups=("encoder.ffn",)))
    kept = {}
    for i, (layer, new) in enumerate(zip(model.model.encoder.layers, pruned.model.encoder.layers)):
        norms = (layer.fc1.weight.square().sum(1) + layer.fc2.weight.square().sum(0)).sqrt()
        kept[f"model.encoder.layers.{i}"] = sorted(norms.argsort(descending=True)[:96].tolist())
        assert (new.fc1.in_features, new.fc1.out_features, new.fc2.in_features) == (32, 96, 96)
        assert new.fc1.bias.shape == (96,) and new.fc2.bias.shape == (32,)
    assert all(layer.fc1.out_features == 128 for layer in pruned.model.decoder.layers)
    assert params(pruned) == params(model) - 2 * 32 * (32 + 32 + 1)  # per layer: fc1 rows + bias, fc2 columns
    assert [r.name for r in reports] == [
        f"model.encoder.layers.{i}.{fc}" for i in (0, 1) for fc in ("fc1", "fc2")
    ]
    assert all(
        r.params_after == 96 * 32 and r.params_before == 128 * 32 and r.sparsity is None for r in reports
    )
    assert pruned.proj_out.weight is pruned.model.decoder.embed_tokens.weight
    features, ids = torch.randn(1, 80, 3000), torch.tensor([[117, 3, 17, 42]])
    with torch.inference_mode():
        out = pruned(input_features=features, decoder_input_ids=ids).logits
        ref = masked_copy(model, neurons=kept)(input_features=features, decoder_input_ids=ids).logits
    assert out.shape == (1, 4, 120)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_head_pruning_full_window_forward(tiny_whisper):
    pruned, _ = prune(tiny_whisper, PruneConfig(sparsity=0.25, structure="heads"))
    assert all(a.num_heads == 3 for a in attentions(pruned))
    assert params(pruned) < params(tiny_whisper)
    with torch.inference_mode():
        out = pruned(input_features=torch.randn(2, 80, 3000), decoder_input_ids=torch.tensor([[117, 3]] * 2))
    assert out.logits.shape == (2, 2, 120) and torch.isfinite(out.logits).all()


def test_structured_pruning_needs_plain_linears():
    from core.compress.lowrank import LowRankConfig, low_rank

    factored, _ = low_rank(short_whisper(), LowRankConfig(rank=2, groups=("encoder.ffn",)))
    with pytest.raises(ValueError, match="plain nn.Linear.*before low_rank"):
        prune(factored, PruneConfig(sparsity=0.5, structure="neurons"))


def test_structurally_pruned_model_saves_and_loads(tmp_path):
    model = short_whisper()
    pruned, _ = prune(model, PruneConfig(sparsity=0.5, structure="heads"))
    pruned, _ = prune(pruned, PruneConfig(sparsity=0.5, structure="neurons", groups=("decoder.ffn",)))
    pruned, _ = prune(pruned, PruneConfig(sparsity=0.5))
    artifact.save_weights(pruned, tmp_path)
    loaded = artifact.load_weights(short_whisper(seed=1), tmp_path)
    assert [a.num_heads for a in attentions(loaded)] == [2] * 6
    assert torch.equal(run(loaded).logits, run(pruned).logits)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({}, "prune.sparsity"),
        ({"sparsity": 0.5, "threshold": 0.1}, "prune.threshold"),
        ({"sparsity": 1.5}, r"prune.sparsity must be a number in \[0, 1\), got 1.5"),
        ({"sparsity": 1.0}, "prune.sparsity"),
        ({"sparsity": -0.1}, "prune.sparsity"),
        ({"sparsity": "0.3"}, "prune.sparsity"),
        ({"sparsity": True}, "prune.sparsity"),
        ({"sparsity": math.nan}, "prune.sparsity"),
        ({"threshold": -1.0}, "prune.threshold"),
        ({"sparsity": 0.3, "scope": "model"}, r"prune.scope must be one of \['layer', 'global'\]"),
        ({"sparsity": 0.3, "structure": "blocks"}, "prune.structure must be one of"),
        ({"sparsity": 0.3, "groups": ("encoder.mlp",)}, "prune.groups must be a non-empty subset"),
        ({"sparsity": 0.3, "groups": ()}, "prune.groups"),
        ({"sparsity": 0.3, "groups": "encoder.ffn"}, "prune.groups must be a list"),
        ({"threshold": 0.1, "structure": "heads"}, "needs prune.sparsity"),
        ({"sparsity": 0.3, "structure": "heads", "scope": "global"}, "prune.scope 'layer'"),
        ({"sparsity": 0.3, "structure": "neurons", "groups": ("encoder.attention",)}, "encoder.ffn"),
        ({"sparsity": 0.3, "structure": "heads", "groups": ("embedding", "encoder.attention")}, "embedding"),
    ],
)
def test_invalid_configs_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        PruneConfig(**kwargs)


def test_config_normalizes_values():
    config = PruneConfig(sparsity=0, groups=["encoder.ffn"])
    assert config.sparsity == 0.0 and isinstance(config.sparsity, float) and config.groups == ("encoder.ffn",)
    assert config == PruneConfig(sparsity=0.0, groups=("encoder.ffn",)) and hash(config)
