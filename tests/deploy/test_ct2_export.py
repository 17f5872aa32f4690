"""CTranslate2 export: the lab's int8 codes and scales land in model.bin as CTranslate2's own int8 weights,
CTranslate2 loads the folder and decodes what the lab decodes; recipes it cannot hold are refused."""

from __future__ import annotations

import json

import ctranslate2
import numpy as np
import pytest
import torch
from conftest import REPO, random_tiny_en

from core.audio import load_audio
from core.cli import main
from core.compress.recipe import Recipe, apply_recipe
from core.deploy.ct2 import export_ct2
from core.io.folders import load_model, save_model
from core.metrics import score
from core.models.ct2 import read_ct2

INT8 = {"steps": [{"quantize": {"bits": 8}}]}


def ct2_tokens(folder, model, features: torch.Tensor, compute_type: str = "default", max_length: int = 40):
    """Greedy tokens from CTranslate2 on the lab's features, with the lab's prompt and suppressed tokens."""
    whisper = ctranslate2.models.Whisper(str(folder), compute_type=compute_type)
    results = whisper.generate(
        ctranslate2.StorageView.from_array(features.numpy()),
        [list(model.decoding.prompt)] * features.shape[0],
        beam_size=1,
        max_length=max_length,
        suppress_tokens=list(model.decoding.suppress),
    )
    return [r.sequences_ids[0] for r in results]


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer Whisper (width 64) with tiny.en's vocabulary and decoding facts."""
    return random_tiny_en("tiny-random", layers=2, d_model=64)


def codes(layer) -> np.ndarray:
    return layer.unpacked_codes().numpy().astype(np.int16) - 128


def test_int8_codes_and_scales_are_the_labs_and_ct2_runs_them(tiny, tmp_path):
    model, _ = apply_recipe(tiny, Recipe.from_json(INT8))
    folder = export_ct2(model, tmp_path / "ct2")
    tensors, header = read_ct2(folder / "model.bin")
    layers = dict(model.module.named_modules())

    fc1 = layers["model.encoder.layers.0.fc1"]
    assert tensors["encoder/layer_0/ffn/linear_0/weight"].dtype == np.int8
    assert np.array_equal(tensors["encoder/layer_0/ffn/linear_0/weight"], codes(fc1))
    np.testing.assert_allclose(
        tensors["encoder/layer_0/ffn/linear_0/weight_scale"], 1 / fc1.scale.reshape(-1).numpy(), rtol=1e-6
    )
    # self-attention q, k, v are fused into one matrix, their scales with them
    attention = "model.decoder.layers.1.self_attn."
    fused = np.concatenate([codes(layers[attention + p]) for p in ("q_proj", "k_proj", "v_proj")])
    assert np.array_equal(tensors["decoder/layer_1/self_attention/linear_0/weight"], fused)
    scales = torch.cat([layers[attention + p].scale.reshape(-1) for p in ("q_proj", "k_proj", "v_proj")])
    np.testing.assert_allclose(
        tensors["decoder/layer_1/self_attention/linear_0/weight_scale"], 1 / scales.numpy(), rtol=1e-6
    )
    # the tied token table: int8 once, the output projection an alias of it
    assert np.array_equal(tensors["decoder/embeddings/weight"], codes(layers["model.decoder.embed_tokens"]))
    assert header["aliases"]["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert tensors["encoder/conv1/weight"].dtype == np.float32  # not in the recipe: float as it was
    assert {"tokenizer.json", "vocabulary.json", "config.json", "preprocessor_config.json", "README.txt"} <= {
        f.name for f in folder.iterdir()
    }

    rng = np.random.default_rng(0)
    features = model.features([rng.normal(0, 0.1, 16000 * 3).astype(np.float32) for _ in range(2)])
    # in float, CTranslate2 computes what the lab's forward computes from the same weights
    whisper = ctranslate2.models.Whisper(str(folder), compute_type="float32")
    states = np.array(whisper.encode(ctranslate2.StorageView.from_array(features.numpy())))
    with torch.no_grad():
        np.testing.assert_allclose(states, model.encode(features).numpy(), atol=2e-3)
    # and its int8 kernels decode the same greedy tokens (a random model repeats one token: the weak check;
    # the bundled model's transcript below is the strong one)
    with torch.no_grad():
        lab = model.greedy(model.encode(features), 30)
    for ours, theirs in zip(lab, ct2_tokens(folder, model, features)):
        assert ours and theirs[: len(ours)] == ours


@pytest.fixture(scope="module")
def tiny_en_int8():
    return apply_recipe(load_model("whisper-tiny.en"), Recipe.from_json(INT8))[0]


def test_bundled_int8_export_transcribes_hello_in_ctranslate2(tiny_en_int8, tmp_path):
    model = tiny_en_int8
    folder = export_ct2(model, tmp_path / "tiny-en-int8")
    wave = load_audio(REPO / "assets" / "samples" / "hello.wav")
    reference = (REPO / "assets" / "samples" / "hello.txt").read_text().strip()
    features = model.features([wave])
    tokens = ct2_tokens(folder, model, features, max_length=100)[0]
    assert score([reference], [model.decode(tokens)]).wer == 0
    with torch.no_grad():
        assert tokens == model.greedy(model.encode(features), 60)[0]  # the very tokens the lab decodes
    assert "ctranslate2.models.Whisper" in (folder / "README.txt").read_text()


@pytest.mark.parametrize(
    "step, says",
    [
        ({"quantize": {"bits": 4, "granularity": "group", "group_size": 32}}, "4-bit codes"),
        ({"quantize": {"bits": 8, "granularity": "group", "group_size": 32}}, "group scales"),
        ({"quantize": {"bits": 8, "symmetric": False}}, "asymmetric"),
        ({"low_rank": {"rank": 8}}, "LowRankLinear"),
        ({"prune": {"sparsity": 0.5, "structure": "heads"}}, "attention heads"),
    ],
)
def test_recipes_ctranslate2_cannot_hold_are_refused(tiny, tmp_path, step, says):
    model, _ = apply_recipe(tiny, Recipe.from_json({"steps": [step]}))
    with pytest.raises(ValueError, match=says) as error:
        export_ct2(model, tmp_path / "out")
    if "quantize" in step:
        assert "CTranslate2 stores int8 per output row: use quantize bits 8, granularity channel" in str(
            error.value
        )
    assert not (tmp_path / "out").exists()


def test_cli_export_writes_a_ct2_folder(tiny, tmp_path, capsys):
    save_model(tiny, tmp_path / "tiny")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(INT8))
    out = tmp_path / "ct2"
    argv = ["export", "--model", str(tmp_path / "tiny"), "--recipe", str(recipe), "--format", "ct2"]
    assert main(argv + ["--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "model.bin").exists() and (out / "tokenizer.json").exists()
    ctranslate2.models.Whisper(str(out))  # loads

    recipe.write_text(json.dumps({"steps": [{"quantize": {"bits": 4}}]}))
    assert main(argv + ["--out", str(tmp_path / "refused")]) == 2
    assert "CTranslate2 stores int8 per output row" in capsys.readouterr().err
