"""`export --format hf`: the compressed model as a plain float Hugging Face checkpoint that transformers'
`from_pretrained` loads with nothing missing, computes what the lab's model does, and decodes as the lab
does through a plain `generate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, random_tiny_en, save_tiny_wav2vec2

from core.audio import load_audio
from core.cli import main
from core.compress.recipe import Recipe, apply_recipe
from core.deploy.hf import export_hf, inexpressible
from core.deploy.runtime import EXPORT_FILE, detect, load_deployed, runtime
from core.io.folders import load_model, save_model

RECIPES = {
    "float": {"steps": []},
    "4-bit groups, zero points": {
        "steps": [{"quantize": {"bits": 4, "granularity": "group", "group_size": 32, "symmetric": False}}]
    },
    "heads pruned": {"steps": [{"prune": {"sparsity": 0.5, "structure": "heads"}}]},
    "neurons + low rank + 8-bit embedding": {
        "steps": [
            {"prune": {"sparsity": 0.5, "structure": "neurons"}},
            {"low_rank": {"energy": 0.8}},
            {
                "quantize": {
                    "bits": 8,
                    "groups": ["encoder.attention", "decoder.ffn", "embedding", "positions"],
                }
            },
        ]
    },
    "int8 kernels, sparse": {
        "steps": [{"prune": {"sparsity": 0.6}}, {"quantize": {"bits": 8, "backend": "int8_dynamic"}}]
    },
}
WAVE = (0.3 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 300)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return random_tiny_en("tiny-random", layers=2, d_model=64)


def loads_completely(folder, cls):
    """transformers' model of the folder, after checking from_pretrained found every tensor."""
    module, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return module.eval()


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_hf_export_round_trip(tiny, tmp_path, recipe, one_thread):
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    model, _ = apply_recipe(tiny, Recipe.from_json(RECIPES[recipe]))
    assert inexpressible(model) == []
    folder = export_hf(model, tmp_path / "hf")
    assert detect(folder) == "hf" and not (folder / "speech_lab.json").exists()
    module = loads_completely(folder, WhisperForConditionalGeneration)
    # the same function: teacher-forced logits over the same features
    # (int8 kernels also round the activations, which transformers does not: their float twin, the same
    # codes on the fake backend, is what the export must compute)
    reference = model
    if "int8" in recipe:
        fake = json.loads(json.dumps(RECIPES[recipe]).replace("int8_dynamic", "fake"))
        reference, _ = apply_recipe(tiny, Recipe.from_json(fake))
    features = model.features([WAVE])
    prompt = torch.tensor([list(model.decoding.prompt) + [11, 262, 290]])
    with torch.no_grad():
        lab = reference.module(input_features=features, decoder_input_ids=prompt).logits
        hf = module(input_features=features, decoder_input_ids=prompt).logits
    assert torch.allclose(lab, hf, atol=1e-4), (lab - hf).abs().max()
    # the same decoding: a plain generate starts from the lab's prompt and follows its greedy tokens (the
    # lab also stops a loop early, so its tokens are a prefix of generate's)
    if "int8" not in recipe:
        processor = AutoProcessor.from_pretrained(folder)
        assert torch.equal(processor(WAVE, sampling_rate=16000, return_tensors="pt").input_features, features)
        with torch.no_grad():
            generated = module.generate(features, max_new_tokens=20)[0].tolist()
            greedy = model.greedy(model.encode(features), 20)[0]
        prompt = list(model.decoding.prompt)  # transformers 5.24 returns the new tokens only
        new = generated[len(prompt) :] if generated[: len(prompt)] == prompt else generated
        assert len(greedy) >= 3 and new[: len(greedy)] == greedy  # the same prompt, the same choices
        # the lab loading the folder as any Hugging Face checkpoint: the same transcript
        assert load_model(folder).transcribe([WAVE]) == model.transcribe([WAVE])


def test_bundled_int8_hf_export_transcribes_hello_in_transformers(tmp_path, capsys):
    """The real check: the bundled tiny.en, 8-bit, through `export --format hf`, then stock transformers."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    (tmp_path / "recipe.json").write_text(json.dumps({"steps": [{"quantize": {"bits": 8}}]}))
    folder = tmp_path / "tiny-int8-hf"
    argv = ["export", "--format", "hf", "--out", str(folder), "--recipe", str(tmp_path / "recipe.json")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"that {runtime('hf').title} loads" in printed
    expected = (REPO / "assets" / "samples" / "hello.txt").read_text().strip()
    wave = load_audio(REPO / "assets" / "samples" / "hello.wav")
    processor = AutoProcessor.from_pretrained(folder)
    module = loads_completely(folder, WhisperForConditionalGeneration)
    features = processor(wave, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        text = processor.batch_decode(module.generate(features), skip_special_tokens=True)[0]
    assert text.strip() == expected
    files = runtime("hf").model_files(folder)  # what the runtime record counts as the deployment's size
    assert {f.name for f in files} == {"model.safetensors", "config.json", "generation_config.json"}
    assert sum(f.stat().st_size for f in files) > 140e6  # float32: the export is for compatibility, not size
    facts = json.loads((folder / EXPORT_FILE).read_text())
    assert facts["origin"]["recipe"] == Recipe.from_json({"steps": [{"quantize": {"bits": 8}}]}).to_json()
    assert "from_pretrained" in (folder / "README.txt").read_text()


def test_a_ctc_model_exports_for_transformers(tmp_path, one_thread):
    from transformers import Wav2Vec2ForCTC

    save_tiny_wav2vec2(tmp_path / "w2v")
    recipe = {
        "steps": [
            {"prune": {"sparsity": 0.5, "structure": "neurons"}},
            {"quantize": {"bits": 4, "groups": ["encoder.attention", "encoder.ffn", "conv"]}},
        ]
    }
    model, _ = apply_recipe(load_model(tmp_path / "w2v"), Recipe.from_json(recipe))
    save_model(model, tmp_path / "lab")
    folder = export_hf(load_model(tmp_path / "lab"), tmp_path / "hf")
    module = loads_completely(folder, Wav2Vec2ForCTC)
    features = model.features([WAVE])
    with torch.no_grad():
        assert torch.allclose(module(features).logits, model.module(features).logits, atol=1e-5)
    assert load_deployed(folder, 1).transcribe([WAVE]) == model.transcribe([WAVE])


def test_short_context_is_refused_and_full_context_exports(tiny, tmp_path):
    short, _ = apply_recipe(tiny, Recipe.from_json({"steps": [{"short_context": {"floor_seconds": 2}}]}))
    problems = inexpressible(short)
    assert len(problems) == 1 and "3000 frames" in problems[0] and '"floor_seconds": 30' in problems[0]
    with pytest.raises(ValueError, match="cannot be written exactly as a Hugging Face"):
        export_hf(short, tmp_path / "short")
    assert not (tmp_path / "short").exists()
    full, _ = apply_recipe(short, Recipe.from_json({"steps": [{"short_context": {"floor_seconds": 30}}]}))
    folder = export_hf(full, tmp_path / "full")
    assert "short_context" not in json.loads((folder / "config.json").read_text())
    assert json.loads((folder / EXPORT_FILE).read_text())["short_context"] == {
        "floor_seconds": 30,
        "step_seconds": 1.0,
    }


def test_evaluate_runs_an_hf_export_in_transformers_with_parity(tiny, tmp_path, capsys):
    import soundfile as sf

    save_model(tiny, tmp_path / "tiny")
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "tone.wav", WAVE, 16000)
    (data / "manifest.csv").write_text("path,text\ntone.wav,a tone\n")
    out = tmp_path / "hf"
    assert main(["export", "--model", str(tmp_path / "tiny"), "--format", "hf", "--out", str(out)]) == 0
    capsys.readouterr()
    report = tmp_path / "result.json"
    argv = ["--threads", "1", "evaluate", "--model", str(out), "--dataset", str(data / "manifest.csv")]
    assert main(argv + ["--parity", "--latency-runs", "1", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "(measured in hf)" in printed
    result = json.loads(report.read_text())
    assert result["runtime"] == "hf" and result["parity"]["lab"]["runtime"] == "lab"


def test_a_multilingual_prompt_is_rebuilt_by_generate(tiny, tmp_path, one_thread):
    """A prompt with language and task tokens becomes generate's language / task settings (no language
    detection): its tokens are the lab's."""
    from dataclasses import replace

    from transformers import GenerationConfig, WhisperForConditionalGeneration

    vocabulary = tiny.tokenizer.get_vocab(with_added_tokens=True)
    prompt = tuple(
        vocabulary[t] for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
    )
    model = replace(tiny, decoding=replace(tiny.decoding, prompt=prompt))
    folder = export_hf(model, tmp_path / "hf")
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.is_multilingual and (generation.language, generation.task) == ("<|en|>", "transcribe")
    module = loads_completely(folder, WhisperForConditionalGeneration)
    features = model.features([WAVE])
    with torch.no_grad():
        generated = module.generate(features, max_new_tokens=20, return_dict_in_generate=True)
        greedy = model.greedy(model.encode(features), 20)[0]
    tokens = generated.sequences[0].tolist()
    new = tokens[len(prompt) :] if tokens[: len(prompt)] == list(prompt) else tokens
    assert len(greedy) >= 3 and new[: len(greedy)] == greedy
    odd = replace(tiny, decoding=replace(tiny.decoding, prompt=prompt[:2]))  # a language but no task
    assert any("decoding prompt" in p for p in inexpressible(odd))
