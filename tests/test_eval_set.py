"""The committed evaluation set (assets/eval) and browser demo clip (assets/samples) are usable as shipped.

Regenerate them with `python tools/make_eval_set.py`; these tests only read the committed files
(no espeak-ng or flite needed).
"""

from __future__ import annotations

import csv
import importlib.util
import re
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


def test_generator_matches_committed_texts_and_train_pool_is_disjoint(rows):
    """The script's sentence lists are what is committed, and its train grammar never repeats them."""
    spec = importlib.util.spec_from_file_location("make_eval_set", REPO / "tools" / "make_eval_set.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_eval_set", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert [(r["path"], r["text"], r["split"]) for r in rows] == [
        (f"audio/{item.uid}.flac", item.text, item.split) for item in module.eval_items()
    ]
    train = module.train_sentences(1000)
    assert len({_words(t) for t in train}) == 1000
    assert not {_words(t) for t in train} & {_words(r["text"]) for r in rows}


def test_core_data_loads_bundled_splits():
    assert len(data.load_dataset("quick")) == 16
    assert len(data.load_dataset("full")) >= 64
