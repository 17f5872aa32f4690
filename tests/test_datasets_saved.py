"""The user's own sets: recorded clips saved as a dataset, zips imported, listed, loaded by name, removed."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import soundfile as sf

from core.audio import SAMPLE_RATE, load_audio
from core.data import (
    delete_dataset,
    import_dataset_zip,
    known_datasets,
    load_dataset,
    recording_prompts,
    save_dataset,
    user_datasets_dir,
)
from core.metrics import normalize


@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_LAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def wav_bytes(wave: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_saved_set_loads_by_name_with_its_audio_texts_and_speaker():
    clips = [(tone(1.0), "  The birch canoe  slid. "), (tone(1.5, 330), "Read verse out loud.")]
    dataset = save_dataset("my-voice", clips, speaker="me")
    assert dataset == load_dataset("my-voice")
    assert dataset.name == "my-voice"
    assert [u.text for u in dataset.utterances] == ["The birch canoe slid.", "Read verse out loud."]
    assert {u.speaker for u in dataset.utterances} == {"me"}
    assert [len(load_audio(u.path)) for u in dataset.utterances] == [SAMPLE_RATE, int(1.5 * SAMPLE_RATE)]
    np.testing.assert_allclose(load_audio(dataset.utterances[0].path), clips[0][0], atol=1e-4)
    assert [d.name for d in known_datasets()] == ["quick", "full", "my-voice"]
    assert known_datasets()[2].description == "2 clips, yours"


def test_saving_refuses_bad_names_empty_texts_and_overwrites_unless_asked():
    with pytest.raises(ValueError, match="cannot name a dataset"):
        save_dataset("../escape", [(tone(1), "hi")])
    with pytest.raises(ValueError, match="cannot name a dataset"):
        save_dataset("quick", [(tone(1), "hi")])
    with pytest.raises(ValueError, match="clip 2 has no transcript"):
        save_dataset("mine", [(tone(1), "hi"), (tone(1), " ")])
    with pytest.raises(ValueError, match="at least one clip"):
        save_dataset("mine", [])
    assert not (user_datasets_dir() / "mine").exists()  # nothing half-written
    save_dataset("mine", [(tone(1), "first")])
    with pytest.raises(ValueError, match="exists already"):
        save_dataset("mine", [(tone(1), "second")])
    assert load_dataset("mine").utterances[0].text == "first"  # the old set is kept
    save_dataset("mine", [(tone(1), "second"), (tone(1), "third")], replace=True)
    assert [u.text for u in load_dataset("mine").utterances] == ["second", "third"]
    assert sorted(p.name for p in user_datasets_dir().iterdir()) == ["mine"]  # no temporary folders left


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_import_zip_of_audio_and_transcripts_under_one_top_folder():
    data = zipped(
        {
            "recordings/a.wav": wav_bytes(tone(1.0)),
            "recordings/a.txt": b"hello there",
            "recordings/sub/b.wav": wav_bytes(tone(0.5)),
            "recordings/sub/b.txt": b"general kenobi",
        }
    )
    dataset = import_dataset_zip("imported", data)
    assert [(u.id, u.text) for u in dataset.utterances] == [("a", "hello there"), ("sub/b", "general kenobi")]
    assert (user_datasets_dir() / "imported" / "manifest.csv").is_file()


def test_import_zip_with_a_manifest_and_refusals():
    manifest = b"path,text\nclips/one.wav,one two three\n"
    dataset = import_dataset_zip(
        "with-manifest", zipped({"manifest.csv": manifest, "clips/one.wav": wav_bytes(tone(1))})
    )
    assert [u.text for u in dataset.utterances] == ["one two three"]
    with pytest.raises(ValueError, match="not a zip"):
        import_dataset_zip("bad", b"plain bytes")
    with pytest.raises(ValueError, match="outside the dataset"):
        import_dataset_zip("slip", zipped({"../evil.txt": b"x", "a.wav": wav_bytes(tone(1)), "a.txt": b"a"}))
    with pytest.raises(ValueError, match="no .txt transcript"):
        import_dataset_zip("untranscribed", zipped({"a.wav": wav_bytes(tone(1))}))
    assert [d.name for d in known_datasets()][2:] == ["with-manifest"]
    assert not (user_datasets_dir().parent / "evil.txt").exists()


def test_delete_and_unknown_names():
    save_dataset("gone", [(tone(1), "bye")])
    delete_dataset("gone")
    with pytest.raises(ValueError, match="no such bundled set, saved set or path"):
        load_dataset("gone")
    with pytest.raises(ValueError, match="no saved dataset"):
        delete_dataset("gone")


def test_prompts_are_new_sentences():
    prompts = recording_prompts()
    assert len(prompts) == 30 and len(set(prompts)) == 30
    bundled = {normalize(u.text) for name in ("quick", "full") for u in load_dataset(name).utterances}
    assert not bundled & {normalize(p) for p in prompts}


def test_a_folder_elsewhere_is_saved_by_reference_with_its_ids(tmp_path):
    from core.data import link_dataset

    chapter = tmp_path / "LibriSpeech" / "test-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for number in range(2):
        sf.write(chapter / f"84-121123-000{number}.flac", tone(1.0, 200 + 100 * number), SAMPLE_RATE)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS\n"
    )
    source = load_dataset(tmp_path / "LibriSpeech" / "test-clean")
    linked = link_dataset("libri", tmp_path / "LibriSpeech" / "test-clean")
    assert [(u.id, u.text) for u in linked.utterances] == [(u.id, u.text) for u in source.utterances]
    assert linked.fingerprint() == source.fingerprint()  # the same points in the results store
    assert not list((user_datasets_dir() / "libri").glob("*.flac"))  # listed, not copied
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(ValueError, match="no utterances found"):
        link_dataset("empty", tmp_path / "nothing-here")
    assert not (user_datasets_dir() / "empty").exists()
