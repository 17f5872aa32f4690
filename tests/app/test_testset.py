"""Record a test set: two sentences from files become a saved dataset, chosen in the sidebar of every page,
and the model is evaluated on it (AppTest; the browser flow with a fake microphone is in test_browser.py)."""

from __future__ import annotations

from pathlib import Path

from core.data import load_dataset, user_datasets_dir
from tests.app.test_pages import page, problems, wait_for_job

EVAL = Path(__file__).resolve().parents[2] / "assets" / "eval"


def quick_clip(number: int) -> tuple[bytes, str]:
    utterance = load_dataset("quick").utterances[number]
    return utterance.path.read_bytes(), utterance.text


def test_two_sentences_from_files_become_a_dataset_evaluated_here_and_offered_everywhere():
    at = page("pages/testset.py")
    assert not problems(at), problems(at)
    at.text_input(key="testset_name").set_value("two-files")
    at.number_input(key="testset_count").set_value(2)
    at.run()
    save = next(b for b in at.button if b.label.startswith("Save"))
    assert save.label == "Save 0 of 2 sentences as a dataset" and save.disabled
    for number in range(2):
        audio, text = quick_clip(number)
        at.file_uploader(key=f"upload_{number}").set_value((f"q{number}.flac", audio, "audio/flac"))
        at.text_input(key=f"text_{number}").set_value(text)  # what the clip really says
    at.run()
    next(b for b in at.button if b.label.startswith("Save 2 of 2")).click()
    at.run()
    assert [s.value for s in at.success] == ["Saved 2 clips as `two-files`."], problems(at)
    saved = load_dataset("two-files")
    assert [u.text for u in saved.utterances] == [quick_clip(0)[1], quick_clip(1)[1]]
    assert (user_datasets_dir() / "two-files" / "clip001.wav").is_file()
    assert at.sidebar.selectbox(key="dataset_pick").value == "two-files"  # chosen for every page

    wait_for_job(at)  # the model evaluated on the new set, in the background
    assert not problems(at), problems(at)
    wer = next(m for m in at.metric if m.label == "WER")
    assert wer.value.endswith("%") and float(wer.value[:-1]) < 40  # tiny.en on two clear sentences
    assert "over 2 clips" in wer.help
    assert any("--dataset two-files" in c.value for c in at.code)

    at.switch_page("pages/home.py").run()  # another page measures on it too
    assert at.sidebar.selectbox(key="dataset_pick").value == "two-files"
    assert "two-files" in at.sidebar.selectbox(key="dataset_pick").options[2]


def test_bad_name_and_silent_recording_are_said_and_nothing_is_lost():
    at = page("pages/testset.py")
    at.text_input(key="testset_name").set_value("no/slashes")
    at.number_input(key="testset_count").set_value(1)
    at.run()
    audio, _ = quick_clip(2)
    at.file_uploader(key="upload_0").set_value(("q2.flac", audio, "audio/flac"))
    at.run()
    next(b for b in at.button if b.label.startswith("Save 1 of 1")).click()
    at.run()
    assert any("cannot name a dataset" in e.value for e in at.error)
    assert at.file_uploader(key="upload_0").value is not None  # the upload is still there to save again
    at.text_input(key="testset_name").set_value("fixed-name")
    at.run()
    next(b for b in at.button if b.label.startswith("Save 1 of 1")).click()
    at.run()
    assert [s.value for s in at.success] == ["Saved 1 clips as `fixed-name`."]


def test_a_folder_on_this_machine_is_imported_by_reference(tmp_path):
    for number in range(2):
        audio, text = quick_clip(number)
        (tmp_path / f"clip{number}.flac").write_bytes(audio)
        (tmp_path / f"clip{number}.txt").write_text(text)
    at = page("pages/testset.py")
    at.text_input(key="testset_name").set_value("from-folder")
    at.text_input(key="testset_folder").set_value(str(tmp_path))
    at.run()
    at.button(key="testset_import").click()
    at.run()
    assert [s.value for s in at.success] == ["Imported 2 clips as `from-folder`: pick it in the sidebar."]
    assert [u.path.parent for u in load_dataset("from-folder").utterances] == [tmp_path, tmp_path]
    at.text_input(key="testset_folder").set_value(str(tmp_path / "missing"))
    at.run()
    at.button(key="testset_import").click()
    at.run()
    assert any("no such bundled set, saved set or path" in e.value for e in at.error)
    assert len(load_dataset("from-folder")) == 2  # the saved set is kept


def test_the_sidebar_picker_sets_what_compress_measures_on():
    from core.audio import load_audio
    from core.data import save_dataset
    from core.measure.store import Store
    from ui.resources import LIVE

    clips = [load_dataset("quick").utterances[number] for number in (3, 4)]
    save_dataset("picked", [(load_audio(u.path), u.text) for u in clips])
    at = page("pages/compress.py")
    picker = at.sidebar.selectbox(key="dataset_pick")
    assert picker.options[:2] == ["quick · 16 synthetic sentences", "full · 80 synthetic sentences"]
    picker.set_value("picked").run()
    assert "`picked`" in at.caption[0].value
    wait_for_job(at)
    assert not problems(at), problems(at)
    assert at.metric[0].label == "WER"
    with Store() as store:
        measured = [p.label for p in store.points(settings=LIVE.key_json()) if p.dataset == "picked"]
    assert len(measured) == 2, measured  # the baseline and the 8-bit point, both on the picked set
    at.switch_page("pages/pareto.py").run()
    assert at.sidebar.selectbox(key="dataset_pick").value == "picked"
    assert "`picked`" in at.caption[0].value
