"""Divergence from the base model: zero for itself, growing with compression, a close lower bound of the
full-vocabulary KL, cached in the store, refused for models it cannot teacher-force."""

import pytest
import torch
import torch.nn.functional as F
from test_sweep import Counter, tiny_dataset, tiny_speech_model

from core.compress.recipe import Recipe, apply_recipe
from core.measure.divergence import TOP_K, dataset_windows, divergence, reference_outputs, run_divergence
from core.measure.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def sharpened(module):
    """The random tiny Whisper with logits x 8: peaked next-token distributions, like a trained model's."""
    with torch.no_grad():
        module.model.decoder.layer_norm.weight.mul_(8)
        module.model.decoder.layer_norm.bias.mul_(8)
    return module


def quantized(model, bits: int, groups=None):
    config = {"bits": bits, **({"groups": groups} if groups else {})}
    return apply_recipe(model, Recipe.from_json({"steps": [{"quantize": config}]}))[0]


@pytest.fixture
def setup(tiny_whisper, tmp_path):
    model, dataset = tiny_speech_model(sharpened(tiny_whisper)), tiny_dataset(tmp_path / "data")
    return model, dataset, reference_outputs(model, dataset_windows(dataset))


def test_zero_for_the_base_model_and_growing_as_bits_go_down(setup):
    model, _, reference = setup
    assert reference.tokens == sum(len(i) for i in reference.top_index) > 0
    assert divergence(model, reference) == pytest.approx(0.0, abs=1e-6)
    values = [divergence(quantized(model, bits), reference) for bits in (8, 4, 2)]
    assert 0 < values[0] < values[1] < values[2], values


def test_decoder_only_variant_reuses_the_base_encoder_and_matches_a_fresh_pass(setup):
    model, _, reference = setup
    variant = quantized(model, 3, ["decoder.ffn"])
    reused = divergence(variant, reference)
    fresh = divergence(variant, reference.__class__(**{**vars(reference), "encoder_id": "other"}))
    assert reused > 0 and reused == pytest.approx(fresh, rel=1e-4)


def test_coarsened_kl_is_a_close_lower_bound_of_the_full_kl(tiny_whisper, tmp_path, monkeypatch):
    """With fewer kept tokens than the vocabulary, the top-k + rest KL is at most the full KL (merging
    outcomes never increases KL) and, for peaked distributions like a trained model's, misses little of it."""
    import core.measure.divergence

    model, dataset = tiny_speech_model(sharpened(tiny_whisper)), tiny_dataset(tmp_path / "data")
    windows = dataset_windows(dataset)
    full_reference = reference_outputs(model, windows)  # TOP_K (128) >= vocabulary (120): nothing merged
    assert TOP_K >= full_reference.top_index[0].shape[-1]
    monkeypatch.setattr(core.measure.divergence, "TOP_K", 40)
    coarse_reference = reference_outputs(model, windows)
    assert coarse_reference.top_index[0].shape[-1] == 40
    variant = quantized(model, 3)
    full, coarse = divergence(variant, full_reference), divergence(variant, coarse_reference)
    # the full KL computed here independently, from the decoders' logits
    with torch.inference_mode():
        total = _full_kl(model, variant, full_reference)
    assert full == pytest.approx(total / full_reference.tokens, rel=1e-3)
    assert 0 < coarse <= full * (1 + 1e-5) and coarse > 0.5 * full, (coarse, full)


def _full_kl(model, variant, reference) -> float:
    """Summed KL(base || variant) over the reference's positions, over the whole vocabulary."""
    total = 0.0
    for feats, ids in zip(reference.features, reference.inputs):
        sides = []
        for m in (model, variant):
            states = m.module.model.encoder(feats).last_hidden_state
            hidden = m.module.model.decoder(input_ids=ids, encoder_hidden_states=states).last_hidden_state
            sides.append(F.log_softmax(m.module.proj_out(hidden[0, reference.first :]), -1))
        total += F.kl_div(sides[1], sides[0], log_target=True, reduction="sum").item()
    return total


def test_measurements_are_stored_and_not_recomputed(setup, tmp_path, monkeypatch):
    import core.measure.divergence

    model, dataset, _ = setup
    store = Store(tmp_path / "results.sqlite")
    recipes = [
        Recipe(),
        Recipe.from_json({"steps": [{"quantize": {"bits": 4}}]}),
        Recipe.from_json({"steps": [{"quantize": {"bits": 4}}]}),
    ]  # the same twice: measured once
    first = list(run_divergence(model, dataset, recipes, store))
    assert len(first) == 2 and not any(p["cached"] for p in first)
    assert first[0]["divergence"] == pytest.approx(0.0, abs=1e-6) and first[1]["divergence"] > 0
    assert first[1]["size_bytes"] < first[0]["size_bytes"] and first[1]["label"] == "4-bit channel"
    counter, references = Counter(monkeypatch), []
    monkeypatch.setattr(core.measure.divergence, "reference_outputs", lambda *a: references.append(1))
    again = list(run_divergence(model, dataset, recipes, Store(tmp_path / "results.sqlite")))  # a new process
    assert counter.apply == 0 and references == [] and all(p["cached"] for p in again)
    assert [p["divergence"] for p in again] == [p["divergence"] for p in first]
    assert store.get_measure(first[1]["key"])["divergence"] == first[1]["divergence"]


def test_only_whisper_models_can_be_measured(setup):
    import dataclasses

    model, dataset, _ = setup
    from core.models import ctc as ctc_family

    ctc = dataclasses.replace(model, family=ctc_family)
    with pytest.raises(ValueError, match="needs a model with a decoder"):
        reference_outputs(ctc, dataset_windows(dataset))
