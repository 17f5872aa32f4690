"""Recipes: JSON in and out, clear errors, labels, and applying steps in order to a copy of the model."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from core.compress.lowrank import LowRankConfig, LowRankLinear
from core.compress.prune import PruneConfig
from core.compress.recipe import Recipe
from core.compress.registry import registered
from core.compress.report import LayerReport
from core.compress.technique import Technique

FULL = {
    "steps": [
        {"prune": {"sparsity": 0.3, "scope": "global"}},
        {"low_rank": {"energy": 0.95}},
        {"quantize": {"bits": 4, "granularity": "group", "group_size": 16}},
    ]
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "obj",
    [
        FULL,
        {"steps": []},
        {"steps": [{"prune": {"threshold": 0.01}}]},
        {"steps": [{"low_rank": {"rank_fraction": 0.5}}]},
        {"steps": [{"quantize": {"bits": 8, "backend": "int8_dynamic"}}]},
        {"steps": [{"quantize": {"bits": 4, "granularity": "channel"}}]},
        {
            "steps": [
                {
                    "prune": {
                        "sparsity": 0.5,
                        "groups": ["encoder.ffn", "embedding"],
                        "structure": "unstructured",
                    }
                }
            ]
        },
        {"steps": [{"prune": {"sparsity": 0.25, "structure": "heads"}}, {"low_rank": {"rank": 8}}]},
    ],
)
def test_json_round_trip(obj):
    recipe = Recipe.from_json(obj)
    assert recipe.to_json() == obj and json.dumps(recipe.to_json()) == json.dumps(obj)
    assert Recipe.from_json(json.dumps(obj)).to_json() == obj
    assert Recipe.from_json(json.dumps(recipe.to_json())) == recipe
    assert Recipe.from_json(recipe.to_json()["steps"]) == recipe  # a bare step list


def test_configs_get_tuples_and_python_built_recipes_write_main_and_changed_fields():
    recipe = Recipe.from_json(
        {
            "steps": [
                {"prune": {"sparsity": 0.5, "groups": ["encoder.ffn"], "scope": "layer"}},
                {"quantize": {"bits": 8, "granularity": "channel"}},
            ]
        }
    )
    (name, config), (qname, qconfig) = recipe.steps
    assert name == "prune" and config == PruneConfig(sparsity=0.5, groups=("encoder.ffn",))
    assert qname == "quantize" and qconfig.bits == 8 and qconfig.granularity == "channel"
    built = Recipe((("prune", PruneConfig(sparsity=0.5, groups=("encoder.ffn",))), ("quantize", qconfig)))
    assert built == recipe and hash(built) == hash(recipe)  # equality is about configs, not spelling
    assert built.to_json() == {
        "steps": [{"prune": {"sparsity": 0.5, "groups": ["encoder.ffn"]}}, {"quantize": {"bits": 8}}]
    }
    assert Recipe.from_json(built.to_json()) == built
    assert Recipe((("prune", PruneConfig(threshold=0.1)),)).to_json() == {
        "steps": [{"prune": {"threshold": 0.1}}]
    }
    assert Recipe.from_json({"steps": [{"prune": {"sparsity": 0}}]}).to_json() == {
        "steps": [{"prune": {"sparsity": 0.0}}]
    }
    with pytest.raises(ValueError, match="Recipe.keys"):
        Recipe((("prune", PruneConfig(sparsity=0.5)),), keys=(("sparsity", "colour"),))


def test_load_and_save(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(FULL))
    recipe = Recipe.load(path)
    assert recipe == Recipe.from_json(FULL)
    recipe.save(tmp_path / "again.json")
    assert Recipe.load(tmp_path / "again.json") == recipe
    with pytest.raises(ValueError, match="not found"):
        Recipe.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{steps")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        Recipe.load(tmp_path / "bad.json")


def test_describe():
    assert (
        Recipe.from_json(
            {
                "steps": [
                    {"prune": {"sparsity": 0.3, "scope": "global"}},
                    {"low_rank": {"energy": 0.95}},
                    {"quantize": {"bits": 4, "granularity": "channel"}},
                ]
            }
        ).describe()
        == "prune 30% global · SVD 95% energy · 4-bit channel"
    )
    labels = {
        "prune 50%": {"prune": {"sparsity": 0.5}},
        "prune 12.5% heads": {"prune": {"sparsity": 0.125, "structure": "heads"}},
        "prune |w|<0.01": {"prune": {"threshold": 0.01}},
        "prune 50% [enc.ffn, dec.ffn]": {
            "prune": {"sparsity": 0.5, "groups": ["encoder.ffn", "decoder.ffn"]}
        },
        "SVD rank 50%": {"low_rank": {"rank_fraction": 0.5}},
        "SVD rank 64": {"low_rank": {"rank": 64}},
        "8-bit channel int8 dynamic": {"quantize": {"bits": 8, "backend": "int8_dynamic"}},
        "4-bit group 64": {"quantize": {"bits": 4, "granularity": "group"}},
        "fp16": {"quantize": {"bits": 16}},
    }
    for label, step in labels.items():
        assert Recipe.from_json([step]).describe() == label
    empty = Recipe.from_json({"steps": []})
    assert empty.is_empty and empty.describe() == "uncompressed" and not Recipe.from_json(FULL).is_empty


@pytest.mark.parametrize(
    "obj, message",
    [
        (
            {"steps": [{"prun": {"sparsity": 0.3}}]},
            "step 1: unknown step 'prun'; allowed steps: short_context, prune, low_rank, quantize",
        ),
        (
            {"steps": [{"prune": {"sparsity": 0.3}}, {"low_rank": {"engery": 0.9}}]},
            "step 2: unknown key low_rank.engery; allowed keys for low_rank: "
            "rank_fraction, rank, energy, groups",
        ),
        (
            {"steps": [{"prune": {"sparsity": 1.5}}]},
            r"step 1: prune.sparsity must be a number in \[0, 1\), got 1.5",
        ),
        ({"steps": [{"prune": {"sparsity": "a lot"}}]}, "prune.sparsity"),
        ({"steps": [{"prune": {"sparsity": 0.3, "groups": ["encoder.mlp"]}}]}, "prune.groups"),
        ({"steps": [{"low_rank": {"rank": 8.5}}]}, "low_rank.rank must be an integer"),
        ({"steps": [{"quantize": {"bits": 5.5}}]}, "quantize.bits"),
        ({"steps": [{"quantize": {"bits": 4, "granularity": "row"}}]}, "quantize.granularity"),
        (
            {"steps": [{"quantize": {"bits": 4, "colour": "red"}}]},
            "unknown key quantize.colour; allowed keys for quantize: bits",
        ),
        (
            {"steps": [{"prune": {"sparsity": 0.3}, "low_rank": {"rank": 4}}]},
            "step 1: expected one {name: settings}",
        ),
        ({"steps": ["prune"]}, "step 1: expected one"),
        ({"steps": [{"prune": 0.3}]}, "the value of 'prune' must be an object"),
        ({"steps": {"prune": {}}}, "steps must be a list"),
        ({"stepz": []}, 'expected {"steps": \\[...\\]}'),
        ("{not json", "not valid JSON"),
        ({"steps": [{"quantize": {"bits": 8}}, {"prune": {"sparsity": 0.3}}]}, "prune after quantize"),
        (
            {"steps": [{"low_rank": {"rank": 4}}, {"prune": {"sparsity": 0.3, "structure": "neurons"}}]},
            "before low_rank",
        ),
    ],
)
def test_errors_are_clear(obj, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(obj)


def test_recipe_checks_its_steps():
    with pytest.raises(ValueError, match="prune needs a PruneConfig, got LowRankConfig"):
        Recipe((("prune", LowRankConfig(rank=2)),))
    with pytest.raises(ValueError, match="unknown step"):
        Recipe((("distill", PruneConfig(sparsity=0.1)),))


def test_apply_runs_every_step_on_a_copy(tiny_whisper):
    state = {k: v.clone() for k, v in tiny_whisper.state_dict().items()}
    recipe = Recipe.from_json(
        {
            "steps": [
                {"prune": {"sparsity": 0.5, "structure": "neurons"}},
                {"prune": {"sparsity": 0.3, "scope": "global"}},
                {"low_rank": {"rank_fraction": 0.25, "groups": ["encoder.ffn"]}},
                {"quantize": {"bits": 8}},
            ]
        }
    )
    model, reports = recipe.apply(tiny_whisper)
    assert all(torch.equal(tiny_whisper.state_dict()[k], v) for k, v in state.items())
    techniques = [r.technique for r in reports]
    assert techniques == sorted(techniques, key=["prune", "low_rank", "quantize"].index)
    assert {"prune", "low_rank", "quantize"} == set(techniques)
    layer = model.model.encoder.layers[0]
    assert isinstance(layer.fc1, LowRankLinear) and layer.fc1.rank == 8 and layer.fc1.out_features == 64
    assert type(layer.fc1.first).__name__ == "QuantLinear"  # quantize reaches the factors
    features, ids = torch.randn(1, 80, 3000), torch.tensor([[117, 3, 17]])
    with torch.inference_mode():
        assert model(input_features=features, decoder_input_ids=ids).logits.shape == (1, 3, 120)
    copy, none = Recipe.from_json({"steps": []}).apply(tiny_whisper)
    assert none == [] and copy is not tiny_whisper
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in state.items())


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    factor: float = 2.0
    groups: tuple[str, ...] = ("encoder.ffn",)

    def __post_init__(self):
        if not isinstance(self.factor, (int, float)) or self.factor <= 0:
            raise ValueError(f"scale.factor must be a positive number, got {self.factor!r}")


def scale(model: nn.Module, config: ScaleConfig):
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        model.fc1.weight.mul_(config.factor)
    return model, [LayerReport("fc1", "encoder.ffn", "scale", 4, 4)]


def test_registered_steps_work_like_built_ins():
    record = Technique(
        name="scale", config=ScaleConfig, apply=scale, describe=lambda c: f"x{c.factor:g}", knobs=("factor",)
    )
    with registered(record):
        base = nn.Module()
        base.fc1 = nn.Linear(2, 2)
        recipe = Recipe.from_json([{"scale": {"factor": 3}}, {"scale": {"groups": ["decoder.ffn"]}}])
        assert recipe.to_json() == {
            "steps": [{"scale": {"factor": 3}}, {"scale": {"groups": ["decoder.ffn"]}}]
        }
        assert recipe.describe() == "x3 · x2"
        model, reports = recipe.apply(base)
        assert torch.allclose(model.fc1.weight, base.fc1.weight * 6) and len(reports) == 2
        with pytest.raises(ValueError, match="step 1: scale.factor must be a positive number"):
            Recipe.from_json([{"scale": {"factor": -1}}])
    with pytest.raises(ValueError, match="unknown step 'scale'"):
        Recipe.from_json([{"scale": {"factor": 3}}])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"steps": [{"quantize": {"bits": 4.0}}]}', "bits must be one of 2..8 or 16, got 4.0"),
        ('{"steps": [{"quantize": {"bits": 4, "bits": 8}}]}', r"key\(s\) \['bits'\] given twice"),
        (
            '{"steps": [{"quantize": {"granularity": "group", "group_size": 100000}}]}',
            "in 1..8192, got 100000",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"steps": [' + ", ".join(['{"prune": {"sparsity": 0.1}}'] * 33) + "]}", "at most 32"),
        (" " * 1_000_001, "a recipe is at most 1,000,000"),
        (
            '{"steps": [{"quantize": {"bits": 8}}, {"quantize": {"bits": 4}}]}',
            r"again \(step 1 already did\)",
        ),
    ],
)
def test_unbounded_or_ambiguous_recipes_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(text)
