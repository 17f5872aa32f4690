"""The CTC family end to end through the lab's public API: a tiny random wav2vec2-CTC is loaded from a
Hugging Face folder, compressed by every built-in technique, saved and reloaded bit for bit, evaluated
and swept into a results store. Nothing here names a wav2vec2 module attribute: what works on this
model works through `SpeechModel` and the family protocol alone."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import LETTERS, VOCAB, save_tiny_wav2vec2

from core.compress.recipe import Recipe, apply_recipe
from core.data import load_dataset, load_waves
from core.io.folders import load_model, save_model, weights_bytes
from core.measure.evaluate import evaluate
from core.measure.store import Store, model_identity
from core.measure.sweep import SweepSettings, grid_recipes, run_sweep
from core.models import SpeechModel

FAST = SweepSettings(latency_runs=0)

RECIPES = {
    "prune unstructured": {"steps": [{"prune": {"sparsity": 0.5}}]},
    "prune heads": {"steps": [{"prune": {"sparsity": 0.5, "structure": "heads"}}]},
    "prune neurons": {"steps": [{"prune": {"sparsity": 0.5, "structure": "neurons"}}]},
    "quantize 4-bit group": {"steps": [{"quantize": {"bits": 4, "granularity": "group", "group_size": 16}}]},
    "quantize 8-bit channel": {"steps": [{"quantize": {"bits": 8, "granularity": "channel"}}]},
    "quantize int8 dynamic": {"steps": [{"quantize": {"bits": 8, "backend": "int8_dynamic"}}]},
    "quantize conv": {"steps": [{"quantize": {"bits": 8, "groups": ["conv", "encoder.ffn"]}}]},
    "low rank": {"steps": [{"low_rank": {"rank_fraction": 0.5}}]},
    "all three": {
        "steps": [
            {"prune": {"sparsity": 0.5, "structure": "heads"}},
            {"low_rank": {"energy": 0.9}},
            {"quantize": {"bits": 4, "granularity": "group", "group_size": 16}},
        ]
    },
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dataset(folder: Path, n: int = 3):
    """n half-second sine clips with made-up transcripts in the model's letters, as a manifest CSV."""
    folder.mkdir(parents=True)
    lines = ["path,text"]
    t = np.arange(8000) / 16000
    for i in range(n):
        sf.write(
            folder / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32), 16000
        )
        lines.append(f"clip{i}.wav,{LETTERS[i : i + 3]} {LETTERS[i + 3 : i + 5]}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(folder / "manifest.csv")


@pytest.fixture(scope="module")
def ctc(tmp_path_factory) -> SpeechModel:
    folder = tmp_path_factory.mktemp("ctc") / "w2v"
    save_tiny_wav2vec2(folder)
    return load_model(folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("ctc-data") / "data")


@pytest.fixture(scope="module")
def waves(dataset):
    return load_waves(dataset)


def logits(model: SpeechModel, waves: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(model.features(waves[:1]))


def test_loaded_as_a_ctc_model_with_encoder_groups(ctc):
    assert ctc.kind == "ctc" and not ctc.family.GENERATIVE
    groups = {layer.group for layer in ctc.layers()}
    assert groups == {"conv", "encoder.attention", "encoder.ffn"}  # no decoder, the CTC head stays dense
    with pytest.raises(ValueError, match="needs a model with a decoder"):
        ctc.token_room()


def test_greedy_ctc_decoding_keeps_a_letter_repeated_across_a_blank(ctc):
    """Frames "a a <blank> a | b b </s> c": runs merge, the blank splits two a's, | is a space."""
    a, b, c, blank, space, end = VOCAB["a"], VOCAB["b"], VOCAB["c"], VOCAB["<pad>"], VOCAB["|"], VOCAB["</s>"]
    assert ctc.decode([a, a, blank, a, space, b, b, end, c]) == "aa bc"
    assert ctc.decode([blank, blank]) == ""


@pytest.mark.parametrize("name", list(RECIPES))
def test_compressed_model_saves_and_reloads_identically(ctc, waves, tmp_path, name):
    recipe = Recipe.from_json(RECIPES[name])
    variant, reports = apply_recipe(ctc, recipe)
    assert reports and variant.kind == "ctc" and variant.name.endswith(recipe.describe())
    assert not torch.equal(logits(variant, waves), logits(ctc, waves))  # the recipe did change the model
    assert ctc.transcribe(waves[:1])  # the base model is left as it was

    size = save_model(variant, tmp_path / "saved", extra_meta={"recipe": recipe.to_json()})
    loaded = load_model(tmp_path / "saved")
    assert loaded.kind == "ctc" and loaded.name == variant.name and size > weights_bytes(tmp_path / "saved")
    assert loaded.source["meta"]["recipe"] == RECIPES[name]
    assert torch.equal(logits(loaded, waves), logits(variant, waves))
    assert loaded.transcribe(waves) == variant.transcribe(waves)
    assert loaded.num_parameters() == variant.num_parameters()


def test_structured_pruning_and_low_rank_shrink_the_saved_model(ctc, tmp_path):
    save_model(ctc, tmp_path / "base")
    base = weights_bytes(tmp_path / "base")
    for name in ("prune heads", "prune neurons", "low rank", "quantize 4-bit group"):
        variant, _ = apply_recipe(ctc, Recipe.from_json(RECIPES[name]))
        save_model(variant, tmp_path / name)
        assert weights_bytes(tmp_path / name) < base, name
    heads, _ = apply_recipe(ctc, Recipe.from_json(RECIPES["prune heads"]))
    assert heads.num_parameters() < ctc.num_parameters()


def test_pruning_the_convolutions_zeroes_every_one(ctc, waves, tmp_path):
    """The positional convolution is weight-normed in Hugging Face's module; pruned, it must hold zeros
    (an edit of a computed weight would be lost) and keep them through save and load."""
    recipe = Recipe.from_json({"steps": [{"prune": {"sparsity": 0.5, "groups": ["conv"]}}]})
    variant, reports = apply_recipe(ctc, recipe)
    assert len(reports) == len(ctc.layers(("conv",))) == 3
    save_model(variant, tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    for model in (variant, loaded):
        for layer in model.layers(("conv",)):
            weight = model.module.get_submodule(layer.name).weight
            assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01), layer.name
    assert torch.equal(logits(loaded, waves), logits(variant, waves))


def test_gptq_calibrates_through_the_ctc_front_end(ctc, dataset, waves):
    manifest = str(dataset.utterances[0].path.parent / "manifest.csv")
    recipe = Recipe.from_json(
        {
            "steps": [
                {"quantize": {"bits": 4, "gptq": True, "calibration": manifest, "calibration_windows": 1}}
            ]
        }
    )
    variant, reports = apply_recipe(ctc, recipe)
    assert reports and all(r.note.endswith("gptq") for r in reports)
    assert isinstance(variant.transcribe(waves[:1])[0], str)


def test_evaluate_scores_sizes_and_times_a_ctc_model(ctc, dataset, waves, tmp_path):
    result = evaluate(ctc, dataset, waves=waves, latency_runs=1)
    assert result.scores.n_utterances == len(dataset) == 3 and len(result.scores.rows) == 3
    assert result.scores.wer >= 0 and result.parameters == ctc.num_parameters() and result.size_bytes > 0
    assert result.latency is not None and result.latency.runs == 1
    assert all(set(row["hypothesis"]) <= set(LETTERS + " ") for row in result.to_dict()["rows"])

    variant, _ = apply_recipe(ctc, Recipe.from_json(RECIPES["quantize 4-bit group"]))
    save_model(variant, tmp_path / "saved")
    measured = [
        evaluate(m, dataset, waves=waves, latency_runs=0, packed=True).to_dict()
        for m in (variant, load_model(tmp_path / "saved"))
    ]
    assert measured[0]["n_utterances"] == 3 and measured[0]["size_bytes"] < result.size_bytes
    assert [measured[1][k] for k in ("wer", "cer", "size_bytes", "rows")] == [
        measured[0][k] for k in ("wer", "cer", "size_bytes", "rows")
    ]


def test_sweep_stores_ctc_points_and_serves_them_again(ctc, dataset, waves, tmp_path, monkeypatch):
    recipes = grid_recipes({"prune.sparsity": [0, 0.5], "quantize.bits": [16, 8]})
    store = Store(tmp_path / "results.sqlite")
    points = list(run_sweep(ctc, dataset, recipes, store, FAST, waves=waves))
    assert len(points) == len(store) == 4
    assert all(p.model_id == model_identity(ctc) and p.key in store for p in points)
    assert {p.label for p in points} == {r.describe() for r in recipes}
    base = next(p for p in points if p.recipe == {"steps": []})
    assert all(p.size_bytes < base.size_bytes for p in points if p is not base)

    def no_work(*args, **kwargs):
        raise AssertionError("a stored point was measured again")

    monkeypatch.setattr(Recipe, "apply", no_work)
    monkeypatch.setattr(SpeechModel, "transcribe", no_work)
    again = list(run_sweep(ctc, dataset, recipes, store, FAST, waves=waves))
    assert [(p.key, p.wer, p.size_bytes) for p in again] == [(p.key, p.wer, p.size_bytes) for p in points]
