"""core.audio: decoding, resampling, clear errors, the speech heuristic and 30 s windows."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.audio import (
    SAMPLE_RATE,
    AudioError,
    TruncatedAudioWarning,
    decode_audio,
    is_probably_speech,
    load_audio,
    wav_truncation,
)

SHARED_AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"


def chirp(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """A 200-2000 Hz sweep at half scale, frames x channels."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * (200 * t + 900 * t**2 / seconds))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def speech_like(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 150 Hz voice with harmonics, switched on and off like syllables three times a second."""
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    return (0.2 * voice * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)).astype(np.float32)


@pytest.mark.parametrize(
    "name, rate, channels, fmt",
    [
        ("stereo44k.wav", 44100, 2, None),
        ("narrow8k.wav", 8000, 1, None),
        ("clip.flac", 22050, 1, None),
        ("clip.ogg", 48000, 2, "OGG"),
        ("clip.mp3", 16000, 1, "MP3"),
    ],
)
def test_load_audio_gives_16k_mono_float32(tmp_path, name, rate, channels, fmt):
    if fmt and fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    path = tmp_path / name
    sf.write(path, chirp(1.5, rate, channels), rate)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 1.5 * SAMPLE_RATE) <= 0.02 * SAMPLE_RATE  # MP3/OGG may pad a frame
    assert 0.3 < np.abs(wave).max() < 0.8


def test_stereo_is_downmixed_by_averaging(tmp_path):
    left = np.full(1600, 0.5, dtype=np.float32)
    sf.write(tmp_path / "lr.wav", np.stack([left, -0.5 * left], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "lr.wav"), 0.125, atol=1e-6)


def test_decode_audio_matches_load_audio(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, chirp(1.0, 44100, 2), 44100)
    np.testing.assert_array_equal(decode_audio(path.read_bytes(), "clip.wav"), load_audio(path))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_text("just some words, not audio"), "could not be decoded"),
        (lambda p: p.write_bytes(bytes(range(256)) * 40), "could not be decoded"),
        (lambda p: sf.write(p, np.zeros(16000, np.float32), SAMPLE_RATE), "is silent"),
        (lambda p: sf.write(p, np.zeros((0, 1), np.float32), SAMPLE_RATE), "zero length"),
        (
            lambda p: sf.write(
                p, np.array([0.1, np.nan, 0.2] * 100, np.float32), SAMPLE_RATE, subtype="FLOAT"
            ),
            "NaN",
        ),
    ],
    ids=["missing", "empty", "text-renamed-wav", "garbage-bytes", "silent", "zero-length", "nan"],
)
def test_load_audio_errors_name_the_file_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    assert "bad.wav" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupt_header_is_an_audio_error(tmp_path):
    path = tmp_path / "clip.flac"
    sf.write(path, chirp(1.0, SAMPLE_RATE), SAMPLE_RATE)
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64
    with pytest.raises(AudioError, match="clip.flac: could not be decoded"):
        decode_audio(bytes(data), "clip.flac")


def test_decode_audio_errors_name_the_recording():
    with pytest.raises(AudioError, match="^recording: is empty"):
        decode_audio(b"")
    with pytest.raises(AudioError, match="^upload.ogg: could not be decoded"):
        decode_audio(b"OggS not really", "upload.ogg")


def test_audio_error_keeps_source_and_reason_and_pickles():
    err = AudioError("a.wav", "is silent")
    again = pickle.loads(pickle.dumps(err))
    assert (again.source, again.reason, str(again)) == ("a.wav", "is silent", "a.wav: is silent")


def test_is_probably_speech_on_synthetic_signals():
    rng = np.random.default_rng(0)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    assert is_probably_speech(speech_like(3.0))
    assert not is_probably_speech((0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32))
    assert not is_probably_speech((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    bursts = 0.2 * rng.standard_normal(len(t)) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    assert not is_probably_speech(bursts.astype(np.float32))
    assert not is_probably_speech(np.zeros(SAMPLE_RATE, np.float32))
    assert not is_probably_speech(np.zeros(0, np.float32))


def test_is_probably_speech_on_real_speech():
    path = SHARED_AUDIO / "jfk.flac"
    if not path.is_file():
        pytest.skip(f"real speech sample {path} is not present")
    wave = load_audio(path)
    assert is_probably_speech(wave)
    noise = np.random.default_rng(1).standard_normal(len(wave)).astype(np.float32) * 0.05
    assert not is_probably_speech(noise)


def test_a_header_decides_nothing_it_should_not(tmp_path, monkeypatch):
    """A header claiming 1 Hz (which would be resampled to hours) or audio over the length limit is refused
    before decoding; the limit is configurable."""
    import io
    import struct

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[24:32] = struct.pack("<II", 1, 2)  # sample rate 1 Hz, byte rate 2
    with pytest.raises(AudioError, match="evil.wav: its header claims 1 Hz; accepted: 4,000–384,000 Hz"):
        decode_audio(bytes(data), "evil.wav")
    path = tmp_path / "long.wav"
    sf.write(path, 0.1 * np.ones(3 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    monkeypatch.setenv("SPEECH_LAB_MAX_AUDIO_SECONDS", "2")
    with pytest.raises(
        AudioError, match="is 0.1 minutes long; the limit is 0.0 .set SPEECH_LAB_MAX_AUDIO_SECONDS"
    ):
        load_audio(path)
    monkeypatch.setenv("SPEECH_LAB_MAX_AUDIO_SECONDS", "4")
    assert load_audio(path).shape == (3 * SAMPLE_RATE,)


# ----------------------------------------------------------------------------- truncated WAV files


def test_a_truncated_wav_file_warns_and_keeps_the_audio_that_is_there(tmp_path):
    path = tmp_path / "meeting.wav"
    sf.write(path, chirp(2.0, 16000), 16000, subtype="PCM_16")  # 64,000 bytes of samples
    data = path.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:-16000])  # the last 0.5 s gone, the header unchanged
    with pytest.warns(TruncatedAudioWarning) as caught:
        wave = load_audio(tmp_path / "cut.wav")
    message = str(caught[0].message)
    assert str(tmp_path / "cut.wav") in message
    assert (
        "declares 2.0 s" in message and "holds 1.5 s" in message and "0.5 s, 16,000 bytes missing" in message
    )
    assert len(wave) == 1.5 * SAMPLE_RATE  # still decoded: a warning, not an error
    with pytest.warns(TruncatedAudioWarning, match="upload.wav: the file is truncated"):
        assert len(decode_audio(data[:-16000], "upload.wav")) == 1.5 * SAMPLE_RATE
    assert wav_truncation(tmp_path / "cut.wav") == (2.0, 1.5, 16000)


def test_complete_and_open_ended_files_do_not_warn(tmp_path, recwarn):
    sf.write(tmp_path / "whole.wav", chirp(1.0, 22050, 2), 22050)
    sf.write(tmp_path / "whole.flac", chirp(1.0, 16000), 16000)
    data = bytearray((tmp_path / "whole.wav").read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"  # a stream written before its length was known
    (tmp_path / "stream.wav").write_bytes(bytes(data))
    for name in ("whole.wav", "whole.flac", "stream.wav"):
        load_audio(tmp_path / name)
        assert wav_truncation(tmp_path / name) is None
    decode_audio((tmp_path / "whole.wav").read_bytes())
    assert not [w for w in recwarn if issubclass(w.category, TruncatedAudioWarning)]
