"""A folder the lab writes cannot be mistaken for a Hugging Face checkpoint: transformers' `from_pretrained`
raises (it used to return a randomly initialised model with a warning), the folder says what it is, and
artifacts written before the weights file was renamed still load in the lab."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import random_tiny_en, save_tiny_wav2vec2

from core.compress.recipe import Recipe, apply_recipe
from core.io.artifact import LAYOUT_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE
from core.io.folders import HF_MARK, README_FILE, load_model, save_model, weights_bytes
from core.models.ct2 import bundled_whisper_folder

INT4 = {"steps": [{"quantize": {"bits": 4, "granularity": "group", "group_size": 32}}]}
WAVE = (0.3 * np.sin(np.arange(16000 * 2) / 16000 * 2 * np.pi * 300)).astype(np.float32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A 4-bit random Whisper with tiny.en's vocabulary, saved as the lab saves it."""
    folder = tmp_path_factory.mktemp("artifact") / "tiny-int4"
    model, _ = apply_recipe(random_tiny_en("tiny-random", layers=1), Recipe.from_json(INT4))
    save_model(model, folder, {"recipe": INT4})
    return folder


def test_from_pretrained_raises_on_a_lab_artifact_naming_the_lab(artifact):
    from transformers import AutoModelForSpeechSeq2Seq, WhisperForConditionalGeneration, pipeline

    assert (artifact / WEIGHTS_FILE).is_file() and not (artifact / LEGACY_WEIGHTS_FILE).exists()
    for load in (
        WhisperForConditionalGeneration.from_pretrained,
        AutoModelForSpeechSeq2Seq.from_pretrained,
        lambda folder: pipeline("automatic-speech-recognition", model=str(folder)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # it raises: no model comes back with a warning
            with pytest.raises(
                ValueError, match=r"Speech Compression Lab model, NOT a transformers checkpoint"
            ):
                load(artifact)
    message = json.loads((artifact / "config.json").read_text())[HF_MARK]
    assert "python -m core export --format hf --model FOLDER --out OUT" in message
    readme = (artifact / README_FILE).read_text()
    assert "not a Hugging Face transformers checkpoint" in readme and "export --format hf" in readme
    assert "--model FOLDER" in readme and json.dumps(INT4) in readme


def test_without_the_config_mark_the_renamed_weights_still_stop_transformers(artifact, tmp_path):
    """transformers versions that ignore `transformers_weights`, or a config passed in by hand: no
    model.safetensors to read, so from_pretrained raises OSError instead of building a random model."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig.from_pretrained(artifact)
    delattr(config, HF_MARK)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        WhisperForConditionalGeneration.from_pretrained(artifact, config=config)


def test_a_wav2vec2_artifact_is_refused_by_transformers_too(tmp_path):
    from transformers import Wav2Vec2ForCTC

    save_tiny_wav2vec2(tmp_path / "hf")
    model, _ = apply_recipe(load_model(tmp_path / "hf"), Recipe.from_json(INT4))
    save_model(model, tmp_path / "lab")
    with pytest.raises(ValueError, match="NOT a transformers checkpoint"):
        Wav2Vec2ForCTC.from_pretrained(tmp_path / "lab")
    assert load_model(tmp_path / "lab").transcribe([WAVE]) == model.transcribe([WAVE])


def test_the_lab_loads_its_artifact_and_drops_the_mark(artifact, tmp_path):
    loaded = load_model(artifact)
    assert not hasattr(loaded.module.config, HF_MARK)
    assert weights_bytes(artifact) == sum((artifact / f).stat().st_size for f in (WEIGHTS_FILE, LAYOUT_FILE))
    save_model(loaded, tmp_path / "again")  # written again: marked again, loads the same
    assert HF_MARK in json.loads((tmp_path / "again" / "config.json").read_text())
    assert load_model(tmp_path / "again").transcribe([WAVE]) == loaded.transcribe([WAVE])


def test_an_artifact_written_before_the_rename_still_loads(artifact, tmp_path):
    """Old layout: model.safetensors + layout.json, no mark in config.json, no README."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    (old / WEIGHTS_FILE).rename(old / LEGACY_WEIGHTS_FILE)
    (old / README_FILE).unlink()
    config = json.loads((old / "config.json").read_text())
    del config[HF_MARK]
    (old / "config.json").write_text(json.dumps(config))
    new, legacy = load_model(artifact), load_model(old)
    for (name, a), (_, b) in zip(new.module.state_dict().items(), legacy.module.state_dict().items()):
        assert torch.equal(a, b), name
    assert legacy.transcribe([WAVE]) == new.transcribe([WAVE])
    assert weights_bytes(old) == weights_bytes(artifact)
    # saved over again: the old weights file goes, the new one is read
    save_model(legacy, old)
    assert not (old / LEGACY_WEIGHTS_FILE).exists() and (old / WEIGHTS_FILE).is_file()
    assert load_model(old).transcribe([WAVE]) == new.transcribe([WAVE])


def test_a_plain_converted_folder_is_still_a_transformers_checkpoint():
    """The bundled model's cache (model.safetensors with standard names, no layout.json) is a genuine
    checkpoint: transformers loads every weight of it."""
    from transformers import WhisperForConditionalGeneration

    folder = bundled_whisper_folder()
    assert not (folder / LAYOUT_FILE).exists()
    module, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    lab = load_model()
    for name, tensor in lab.module.state_dict().items():
        assert torch.equal(tensor, module.state_dict()[name]), name


def test_known_models_list_the_bundled_model_and_trained_students_newest_first(tmp_path):
    import os

    from core.io.folders import known_models
    from core.models import DEFAULT_MODEL, META_FILE

    for age, name in enumerate(["short-context-1", "student-2dec-2"]):
        folder = tmp_path / "students" / name
        folder.mkdir(parents=True)
        (folder / META_FILE).write_text("{}")
        os.utime(folder, (1000 + age, 1000 + age))
    (tmp_path / "students" / "half-written").mkdir()  # no speech_lab.json yet: not offered
    found = known_models(tmp_path)
    assert found[0] == (DEFAULT_MODEL, "bundled Whisper tiny.en")
    students = [name for name, what in found if what.startswith("trained student")]
    assert students == [
        str(tmp_path / "students" / "student-2dec-2"),
        str(tmp_path / "students" / "short-context-1"),
    ]


def test_known_models_also_list_transformers_exports_and_cached_hub_speech_models(tmp_path):
    from core.io.folders import EXPORT_FILE, known_models

    for name, fmt in (("tiny-8bit-hf", "hf"), ("tiny-8bit-ct2", "ct2")):
        folder = tmp_path / "data" / "exports" / name
        folder.mkdir(parents=True)
        (folder / EXPORT_FILE).write_text(json.dumps({"format": fmt}))
    hub = tmp_path / "hub"
    for hub_id, model_type in (("openai/whisper-small", "whisper"), ("bert/base", "bert")):
        snapshot = hub / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps({"model_type": model_type}))
    found = dict(known_models(tmp_path / "data", hub))
    assert (
        found[str(tmp_path / "data" / "exports" / "tiny-8bit-hf")]
        == "exported for transformers: tiny-8bit-hf"
    )
    assert str(tmp_path / "data" / "exports" / "tiny-8bit-ct2") not in found  # runs in CTranslate2 only
    assert found["openai/whisper-small"] == "Hugging Face cache: openai/whisper-small"
    assert "bert/base" not in found  # not a speech model
