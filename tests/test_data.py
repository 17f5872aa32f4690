"""core.data: every accepted dataset layout, the content fingerprint and the error messages."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.data import Dataset, Utterance, load_dataset

REPO = Path(__file__).resolve().parent.parent


def write_tone(path: Path, freq: float = 440.0, seconds: float = 0.2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return path


def write_manifest(path: Path, rows: list[dict], fields=("path", "text", "split", "voice")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def assets(tmp_path) -> Path:
    """A bundled-style assets folder: eval/manifest.csv with quick and full splits."""
    root = tmp_path / "assets"
    rows = []
    for i, split in enumerate(["quick", "quick", "full", "full", "full"]):
        write_tone(root / "eval" / "audio" / f"{split}_{i}.wav", 300 + 50 * i)
        rows.append(
            {"path": f"audio/{split}_{i}.wav", "text": f"Sentence {i}.", "split": split, "voice": "a"}
        )
    write_manifest(root / "eval" / "manifest.csv", rows)
    return root


def test_bundled_splits(assets):
    quick = load_dataset("quick", assets_dir=assets)
    assert quick.name == "quick" and len(quick) == 2
    assert [u.id for u in quick.utterances] == ["audio/quick_0", "audio/quick_1"]
    assert quick.utterances[0].text == "Sentence 0."
    assert quick.utterances[0].path == assets / "eval" / "audio" / "quick_0.wav"
    assert len(load_dataset("full", assets_dir=assets)) == 3


def test_bundled_split_absent_or_manifest_missing(assets, tmp_path):
    with pytest.raises(ValueError, match="'train' is not available.*train/manifest.csv not found"):
        load_dataset("train", assets_dir=assets)  # train has its own folder
    (assets / "train").mkdir()
    write_manifest(
        assets / "train" / "manifest.csv",
        [{"path": "../eval/audio/quick_0.wav", "text": "x", "split": "other", "voice": "v"}],
    )
    with pytest.raises(ValueError, match="'train' is empty.*splits present: other"):
        load_dataset("train", assets_dir=assets)
    with pytest.raises(ValueError, match="'quick' is not available.*manifest.csv not found"):
        load_dataset("quick", assets_dir=tmp_path / "nowhere")


def test_real_bundled_quick_set():
    manifest = REPO / "assets" / "eval" / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"bundled evaluation set not generated yet ({manifest} missing)")
    quick = load_dataset("quick")
    assert len(quick) > 0
    assert all(u.path.is_file() and u.text for u in quick.utterances)


def test_manifest_csv(tmp_path):
    write_tone(tmp_path / "clips" / "a.flac")
    write_tone(tmp_path / "clips" / "b.wav")
    manifest = write_manifest(
        tmp_path / "mine.csv",
        [
            {"path": "clips/a.flac", "text": " Hello there "},
            {"path": "clips/b.wav", "text": "General Kenobi"},
        ],
        fields=("path", "text"),
    )
    data = load_dataset(manifest)
    assert data.name == "mine"
    assert [(u.id, u.text) for u in data.utterances] == [
        ("clips/a", "Hello there"),
        ("clips/b", "General Kenobi"),
    ]
    assert load_dataset(str(manifest)) == data


def test_manifest_errors(tmp_path):
    write_tone(tmp_path / "a.wav")
    bad = write_manifest(
        tmp_path / "bad.csv", [{"file": "a.wav", "sentence": "x"}], fields=("file", "sentence")
    )
    with pytest.raises(ValueError, match="lacks column.*path, text"):
        load_dataset(bad)
    gone = write_manifest(
        tmp_path / "gone.csv", [{"path": "missing.wav", "text": "x"}], fields=("path", "text")
    )
    with pytest.raises(ValueError, match=r"gone.csv line 2: audio file .*missing.wav not found"):
        load_dataset(gone)
    empty = write_manifest(tmp_path / "empty.csv", [], fields=("path", "text"))
    with pytest.raises(ValueError, match="no utterances found"):
        load_dataset(empty)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a manifest .csv"):
        load_dataset(tmp_path / "notes.txt")


def test_librispeech_folder(tmp_path):
    root = tmp_path / "LibriSpeech" / "test-clean"
    chapter = root / "1089" / "134686"
    for uid in ("1089-134686-0000", "1089-134686-0001"):
        write_tone(chapter / f"{uid}.flac")
    (chapter / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW\n1089-134686-0001 STUFF IT INTO YOU\n\n"
    )
    data = load_dataset(root)
    assert data.name == "test-clean"
    assert [(u.id, u.text) for u in data.utterances] == [
        ("1089-134686-0000", "HE HOPED THERE WOULD BE STEW"),
        ("1089-134686-0001", "STUFF IT INTO YOU"),
    ]
    assert data.utterances[1].path == chapter / "1089-134686-0001.flac"


def test_librispeech_missing_audio(tmp_path):
    (tmp_path / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(ValueError, match=r"1-2-0000.flac not found"):
        load_dataset(tmp_path)


def test_audio_and_txt_folder(tmp_path):
    write_tone(tmp_path / "one.wav")
    write_tone(tmp_path / "sub" / "two.ogg")
    (tmp_path / "one.txt").write_text("first clip\n")
    (tmp_path / "sub" / "two.txt").write_text("second clip")
    (tmp_path / "README.txt").write_text("a stray text file is ignored")
    data = load_dataset(tmp_path)
    assert [(u.id, u.text) for u in data.utterances] == [("one", "first clip"), ("sub/two", "second clip")]


def test_folder_errors(tmp_path):
    write_tone(tmp_path / "one.wav")
    with pytest.raises(ValueError, match="no .txt transcript for one.wav"):
        load_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no utterances found; expected a bundled set"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*bundled set \\(quick, full, train\\)"):
        load_dataset("nope")


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    a = write_tone(tmp_path / "a.wav", 300)
    b = write_tone(tmp_path / "b.wav", 400)
    data = Dataset("x", (Utterance("a", a, "one"), Utterance("b", b, "two")))
    fp = data.fingerprint()
    assert len(fp) == 64 and fp == Dataset("renamed", data.utterances).fingerprint()
    assert Dataset("x", (Utterance("a", a, "one"), Utterance("b", b, "too"))).fingerprint() != fp
    assert Dataset("x", (Utterance("a", a, "one"), Utterance("c", b, "two"))).fingerprint() != fp
    write_tone(b, 500)
    assert data.fingerprint() != fp


def test_train_split_is_synthesized_once_and_disjoint_from_evaluation(tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("SPEECH_LAB_CACHE", str(tmp_path))
    train = load_dataset("train")
    words = lambda text: " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())
    held_out = {words(u.text) for name in ("quick", "full") for u in load_dataset(name).utterances}
    assert len(train) == 480 and not {words(u.text) for u in train.utterances} & held_out
    assert all(u.path.is_relative_to(tmp_path) for u in train.utterances)
    manifest = tmp_path / "train-v2-480" / "manifest.csv"  # versioned: never an older recipe's folder

    def voices(path: Path) -> set[str]:
        with open(path, newline="", encoding="utf-8") as f:
            return {row["voice"] for row in csv.DictReader(f)}

    assert len(voices(manifest)) >= 14
    assert not voices(manifest) & voices(REPO / "assets" / "eval" / "manifest.csv")  # unheard voices
    stamp = manifest.stat().st_mtime_ns
    assert load_dataset("train").fingerprint() == train.fingerprint()  # read back, not made again
    assert manifest.stat().st_mtime_ns == stamp


def test_training_clips_use_every_utterance_once_in_1_to_30_s_clips():
    from core.data import training_clips

    waves = [np.full(16000 * (1 + i % 5), 0.1, dtype=np.float32) for i in range(60)]
    texts = [f"word{i}" for i in range(60)]
    clips, transcripts = training_clips(waves, texts, seed=3)
    assert sorted(w for t in transcripts for w in t.split()) == sorted(texts)
    assert all(16000 <= len(c) <= 30 * 16000 for c in clips)
    assert any(len(t.split()) == 1 for t in transcripts) and any(len(t.split()) > 2 for t in transcripts)
    again, same = training_clips(waves, texts, seed=3)
    assert same == transcripts and all(np.array_equal(a, b) for a, b in zip(again, clips))
    assert training_clips(waves, texts, seed=4)[1] != transcripts
