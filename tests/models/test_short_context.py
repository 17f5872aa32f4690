"""Short-context Whisper: the encoder on the clip's frames only, the technique that turns it on, and
what a folder remembers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_tiny_en

from core.compress.context import ShortContextConfig
from core.compress.recipe import Recipe, apply_recipe
from core.io.folders import load_model, save_model
from core.models import whisper


def layer_inputs(module, features) -> torch.Tensor:
    """What the first encoder layer receives: the convolutions' output plus the positions."""
    seen = []
    hook = module.model.encoder.layers[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.inference_mode():
        whisper.encode(module, features)
    hook.remove()
    return seen[0]


def test_full_window_encoding_is_hugging_face_s(tiny_whisper):
    features = torch.randn(2, 80, 3000)
    with torch.inference_mode():
        expected = tiny_whisper.model.encoder(features).last_hidden_state
        assert torch.equal(whisper.encode(tiny_whisper, features), expected)


def test_kept_frames_see_the_same_front_end_and_positions(tiny_whisper):
    features = torch.randn(1, 80, 3000)
    full, short = layer_inputs(tiny_whisper, features), layer_inputs(tiny_whisper, features[..., :400])
    assert short.shape == (1, 200, 32)
    # the convolutions (kernel 3, padding 1, then stride 2) only look past the cut at the last position
    assert torch.allclose(short[:, :199], full[:, :199], atol=1e-6)
    assert not torch.allclose(short[:, 199], full[:, 199], atol=1e-6)
    # the positions are the table's first rows: what the front end gives plus position i
    encoder = tiny_whisper.model.encoder
    with torch.inference_mode():
        front = torch.nn.functional.gelu(
            encoder.conv2(torch.nn.functional.gelu(encoder.conv1(features[..., :400])))
        )
        assert torch.allclose(short[0], front[0].T + encoder.embed_positions.weight[:200], atol=1e-6)
    with pytest.raises(ValueError, match="at most 3000 frames"):
        whisper.encode(tiny_whisper, torch.randn(1, 80, 3002))


@pytest.mark.parametrize(
    ("policy", "seconds", "frames"),
    [
        (None, 3.2, 3000),
        ({"floor_seconds": 1.0, "step_seconds": 1.0}, 3.2, 400),
        ({"floor_seconds": 1.0, "step_seconds": 1.0}, 3.0, 300),
        ({"floor_seconds": 1.0, "step_seconds": 1.0}, 0.2, 100),
        ({"floor_seconds": 5.0, "step_seconds": 1.0}, 3.2, 500),
        ({"floor_seconds": 1.0, "step_seconds": 0.5}, 3.2, 350),
        ({"floor_seconds": 1.0, "step_seconds": 1.0}, 29.5, 3000),
        ({"floor_seconds": 30.0, "step_seconds": 1.0}, 2.0, 3000),
    ],
)
def test_context_frames(policy, seconds, frames):
    assert whisper.context_frames(policy, seconds) == frames


def test_the_technique_marks_a_copy_and_the_folder_remembers_it(tmp_path):
    model = random_tiny_en("tiny", layers=1)
    recipe = Recipe.from_json({"steps": [{"short_context": {"floor_seconds": 2}}, {"quantize": {"bits": 8}}]})
    assert recipe.describe() == "short context ≥2 s · 8-bit channel"
    short, reports = apply_recipe(model, recipe)
    assert whisper.short_context(model.module) is None  # the original is untouched
    assert whisper.short_context(short.module) == {"floor_seconds": 2, "step_seconds": 1.0}
    assert all(r.technique == "quantize" for r in reports)
    wave = np.zeros(16000 * 3, dtype=np.float32)
    assert short.encoder_input([wave]).shape[-1] == 300 and model.encoder_input([wave]).shape[-1] == 3000

    save_model(short, tmp_path / "short", {"base_model": model.name, "recipe": recipe.to_json()})
    loaded = load_model(tmp_path / "short")
    assert whisper.short_context(loaded.module) == {"floor_seconds": 2, "step_seconds": 1.0}
    assert loaded.transcribe([wave]) == short.transcribe([wave])


def test_bad_settings_and_models_are_refused():
    for bad in (
        {"floor_seconds": 0},
        {"floor_seconds": 31},
        {"step_seconds": 0.013},
        {"floor_seconds": True},
    ):
        with pytest.raises(ValueError, match="short_context"):
            Recipe.from_json({"steps": [{"short_context": bad}]})
    assert ShortContextConfig(step_seconds=0.02).step_seconds == 0.02
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from core.compress.context import short_context

    ctc = Wav2Vec2ForCTC(
        Wav2Vec2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
            conv_dim=(8,),
            conv_kernel=(10,),
            conv_stride=(5,),
            vocab_size=8,
        )
    )
    with pytest.raises(ValueError, match="already sees only the clip"):
        short_context(ctc, ShortContextConfig())
