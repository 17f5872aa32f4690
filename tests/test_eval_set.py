"""The committed evaluation set (assets/eval) and browser demo clip (assets/samples) are usable as shipped,
and the generator's training speech never uses an evaluation voice.

Regenerate them with `python tools/make_eval_set.py`; these tests read the committed files (no espeak-ng
or flite needed), except the train-synthesis tests, which need the espeakng-loader wheel (or, for the
program path, espeak-ng) and skip without it.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core import data

REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = REPO / "assets" / "eval"
MANIFEST = EVAL_DIR / "manifest.csv"
SAMPLES_DIR = REPO / "assets" / "samples"
SIZE_LIMIT = 6_000_000  # bytes


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with open(MANIFEST, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "text", "split", "voice"]
        return list(reader)


@pytest.fixture(scope="module")
def tool():
    """tools/make_eval_set.py as a module."""
    spec = importlib.util.spec_from_file_location("make_eval_set", REPO / "tools" / "make_eval_set.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_eval_set", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


def test_manifest_shape(rows):
    assert len(rows) >= 80
    assert all(row["text"].strip() and row["voice"].strip() for row in rows)
    assert {row["split"] for row in rows} == {"quick", "full"}
    splits = Counter(row["split"] for row in rows)
    assert splits["quick"] == 16
    assert splits["full"] >= 64
    assert len({row["voice"] for row in rows}) >= 4


def test_quick_is_balanced_over_voices(rows):
    per_voice = Counter(row["voice"] for row in rows if row["split"] == "quick")
    assert len(per_voice) >= 4
    assert max(per_voice.values()) - min(per_voice.values()) <= 1


def test_splits_are_disjoint(rows):
    quick = [row for row in rows if row["split"] == "quick"]
    full = [row for row in rows if row["split"] == "full"]
    assert not {r["path"] for r in quick} & {r["path"] for r in full}
    assert not {_words(r["text"]) for r in quick} & {_words(r["text"]) for r in full}
    assert len({r["path"] for r in rows}) == len(rows)
    assert len({_words(r["text"]) for r in rows}) == len(rows)


def test_every_file_is_16khz_mono_and_audible(rows):
    for row in rows:
        path = EVAL_DIR / row["path"]
        assert not Path(row["path"]).is_absolute() and path.is_file(), row["path"]
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1), (
            row["path"]
        )
        samples, _ = sf.read(path, dtype="float64")
        duration = len(samples) / 16000
        assert 1.5 <= duration <= 8.0, (row["path"], duration)
        assert np.sqrt(np.mean(samples**2)) >= 0.01, f"{row['path']} is (nearly) silent"
        assert np.abs(samples).max() < 0.999, f"{row['path']} is clipped"


def test_no_stray_audio_files(rows):
    listed = {(EVAL_DIR / row["path"]).resolve() for row in rows}
    present = {p.resolve() for p in (EVAL_DIR / "audio").iterdir() if p.is_file()}
    assert present == listed


def test_total_size():
    total = sum(p.stat().st_size for p in EVAL_DIR.rglob("*") if p.is_file())
    assert total <= SIZE_LIMIT, f"assets/eval holds {total:,} bytes"


def test_demo_clip():
    wav = SAMPLES_DIR / "hello.wav"
    info = sf.info(wav)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
    assert 2.0 <= info.duration <= 4.0
    samples, _ = sf.read(wav, dtype="float64")
    assert np.sqrt(np.mean(samples**2)) >= 0.01
    assert (SAMPLES_DIR / "hello.txt").read_text(encoding="utf-8").strip()


def test_generator_matches_committed_texts_and_train_pool_is_disjoint(rows, tool):
    """The script's sentence lists are what is committed, and its train grammar never repeats them."""
    assert [(r["path"], r["text"], r["split"], r["voice"]) for r in rows] == [
        (f"audio/{item.uid}.flac", item.text, item.split, item.voice.label) for item in tool.eval_items()
    ]
    train = tool.train_sentences(1000)
    assert len({_words(t) for t in train}) == 1000
    assert not {_words(t) for t in train} & {_words(r["text"]) for r in rows}


def test_train_voices_are_not_evaluation_voices(rows, tool):
    """A model trained on `train` must be scored on voices it has not heard: a shared voice flatters it."""
    train = [voice.label for voice in tool.TRAIN_VOICES]
    assert len(set(train)) == len(train) >= 14
    assert all(voice.engine == "espeak-ng" for voice in tool.TRAIN_VOICES)  # the wheel alone makes them
    assert not set(train) & {voice.label for voice in tool.EVAL_VOICES}
    assert not set(train) & {row["voice"] for row in rows}


def test_train_items_vary_rate_and_pitch_per_utterance(tool):
    items = tool.train_items(480, 0, tool.TRAIN_VOICES)
    assert items == tool.train_items(480, 0, tool.TRAIN_VOICES)  # seeded
    assert [(i.rate, i.pitch) for i in items] != [
        (i.rate, i.pitch) for i in tool.train_items(480, 1, tool.TRAIN_VOICES)
    ]
    lo_rate, hi_rate = tool.TRAIN_RATE_WPM
    lo_pitch, hi_pitch = tool.TRAIN_PITCH
    assert all(lo_rate <= i.rate <= hi_rate and lo_pitch <= i.pitch <= hi_pitch for i in items)
    assert (hi_rate - lo_rate, hi_pitch - lo_pitch) >= (50, 30)
    per_voice = Counter(i.voice for i in items)
    assert set(per_voice) == set(tool.TRAIN_VOICES) and max(per_voice.values()) - min(per_voice.values()) <= 1
    for voice in tool.TRAIN_VOICES:  # each voice is heard at many speeds and pitches
        mine = [i for i in items if i.voice == voice]
        assert len({i.rate for i in mine}) >= 10 and len({i.pitch for i in mine}) >= 10
    assert all((i.rate, i.pitch) == (tool.ESPEAK_RATE_WPM, tool.ESPEAK_PITCH) for i in tool.eval_items())


def _median_f0(samples: np.ndarray, rate_hz: int) -> float:
    """Median pitch (Hz) of the loud 40 ms frames, from the autocorrelation peak between 60 and 400 Hz."""
    frame, found = int(0.04 * rate_hz), []
    for start in range(0, len(samples) - frame, frame // 2):
        x = samples[start : start + frame] - samples[start : start + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.05 * np.abs(samples).max():
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lag = rate_hz // 400 + int(np.argmax(ac[rate_hz // 400 : rate_hz // 60]))
        if ac[lag] > 0.4 * ac[0]:
            found.append(rate_hz / lag)
    return float(np.median(found))


@pytest.mark.parametrize("backend", ["library", "binary"])
def test_espeak_backends_honour_rate_pitch_and_check_voices(tool, backend):
    """The wheel and the espeak-ng program both speak at the asked rate and pitch, and both report a voice
    they lack instead of quietly speaking another."""
    if backend == "library":
        pytest.importorskip("espeakng_loader")
    elif shutil.which("espeak-ng") is None:
        pytest.skip("the espeak-ng program is not installed")
    synth = tool.Synthesizer(backend)
    try:
        assert synth.missing_voices(tool.TRAIN_VOICES + tool.EVAL_VOICES) == []
        typos = (tool.Voice("espeak-ng", "en-us+m99"), tool.Voice("espeak-ng", "en-xx"))
        assert synth.missing_voices(typos) == ["espeak-ng:en-us+m99", "espeak-ng:en-xx"]
        text, voice = "Please pack the spoons before the bus comes.", tool.TRAIN_VOICES[0]
        slow_low = synth(text, voice, 130, 30)
        fast_high = synth(text, voice, 200, 70)
        slow_high = synth(text, voice, 130, 70)
    finally:
        synth.close()
    seconds = lambda clip: len(tool.condition(*clip)) / tool.SAMPLE_RATE
    assert seconds(slow_low) > 1.3 * seconds(fast_high)
    assert abs(seconds(slow_high) - seconds(slow_low)) < 0.1 * seconds(slow_low)
    assert _median_f0(*slow_high) > 1.25 * _median_f0(*slow_low)


def test_small_synthesized_train_set(tool, rows, tmp_path):
    """--count 12 through the wheel: training voices only, none of them in quick/full, each utterance
    spoken as its item says (voice, and with it the item's own rate and pitch)."""
    pytest.importorskip("espeakng_loader")
    out = tmp_path / "train"
    assert tool.main(["--split", "train", "--count", "12", "--out", str(out), "--espeak", "library"]) == 0
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        train = list(csv.DictReader(f))
    items = tool.train_items(12, 0, tool.TRAIN_VOICES)
    assert [(r["path"], r["text"], r["split"], r["voice"]) for r in train] == [
        (f"audio/{i.uid}.flac", i.text, "train", i.voice.label) for i in items
    ]
    voices = {row["voice"] for row in train}
    assert len(voices) == 12 and not voices & {row["voice"] for row in rows}
    assert len({i.rate for i in items}) >= 6 and len({i.pitch for i in items}) >= 6
    assert not {_words(row["text"]) for row in train} & {_words(row["text"]) for row in rows}


def test_core_data_loads_bundled_splits():
    assert len(data.load_dataset("quick")) == 16
    assert len(data.load_dataset("full")) >= 64
