"""The runtime interface: an exported folder says which runtime runs it, is evaluated inside that runtime
(CLI `evaluate --model FOLDER [--parity]`), and its points join the results store beside the lab's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, random_tiny_en

from core.audio import load_audio
from core.cli import main
from core.compress.recipe import Recipe
from core.data import load_dataset
from core.deploy.runtime import (
    EXPORT_FILE,
    MODULES,
    by_windows,
    detect,
    load_deployed,
    runtime,
)
from core.io.folders import save_model
from core.measure.deployment import measure_deployed
from core.measure.evaluate import evaluate
from core.measure.store import Store
from core.measure.sweep import SweepSettings, run_sweep
from core.models import DEFAULT_GROUPS

INT8 = {"steps": [{"quantize": {"bits": 8}}]}
FAST = SweepSettings(latency_runs=1)


@pytest.fixture(scope="module")
def tiny():
    return random_tiny_en("tiny-random", layers=2, d_model=64)


def sine_dataset(folder, n: int = 3):
    """n 12-second tones (packed two to a 30 s window) with made-up transcripts, as a manifest CSV."""
    folder.mkdir(parents=True)
    t = np.arange(16000 * 12) / 16000
    lines = ["path,text"]
    for i in range(n):
        sf.write(
            folder / f"tone{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t)).astype(np.float32), 16000
        )
        lines.append(f"tone{i}.wav,a tone number {i}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(folder / "manifest.csv")


def test_cli_formats_are_the_runtimes():
    from core.cli.export import MODEL_FORMATS

    assert set(MODEL_FORMATS) == set(MODULES)
    with pytest.raises(ValueError, match="unknown runtime 'tflite'; known: ct2, onnx, ggml, hf"):
        runtime("tflite")


def test_by_windows_transcribes_like_the_lab_short_clips_whole_long_ones_in_overlapping_windows():
    """A runtime's window function goes through the lab's own long-audio path: a clip of up to 30 s is one
    window as it is; a longer one is cut into overlapping windows whose words are joined once."""
    from core.models.base import LONG_WINDOW_SECONDS, transcribe_in_windows

    seen = []

    def window_text(window):
        seen.append(len(window))
        return "one two three four five six seven eight"  # every window agrees with its neighbour

    short = by_windows(window_text)([np.zeros(8000, np.float32)])
    assert seen == [8000] and short == ["one two three four five six seven eight"]
    seen.clear()
    wave = np.zeros(16000 * 65, np.float32)
    texts = by_windows(window_text)([wave])
    assert seen and max(seen) == 16000 * LONG_WINDOW_SECONDS and len(seen) >= 3
    lab = transcribe_in_windows([wave], lambda windows: [window_text(w) for w in windows])
    assert texts == lab  # the very same joining as the lab's


def test_detect_reads_the_export_facts(tmp_path):
    assert detect(tmp_path) is None  # a folder the lab loads itself
    assert detect(tmp_path / "missing") is None
    (tmp_path / EXPORT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        detect(tmp_path)
    (tmp_path / EXPORT_FILE).write_text(json.dumps({"format": "tflite"}))
    with pytest.raises(ValueError, match="names no known runtime"):
        detect(tmp_path)
    (tmp_path / EXPORT_FILE).unlink()
    with pytest.raises(ValueError, match="is not a folder exported by"):
        load_deployed(tmp_path, 1)


def test_bundled_int8_export_transcribes_hello_in_ctranslate2_as_a_user_would(tmp_path, capsys):
    folder = tmp_path / "ct2"
    assert (
        main(["export", "--format", "ct2", "--out", str(folder), "--recipe", str(recipe_file(tmp_path))]) == 0
    )
    assert detect(folder) == "ct2"
    facts = json.loads((folder / EXPORT_FILE).read_text())
    assert facts["origin"] == {"model": "whisper-tiny.en", "recipe": Recipe.from_json(INT8).to_json()}
    deployed = load_deployed(folder, 1)
    wave = load_audio(REPO / "assets" / "samples" / "hello.wav")
    assert deployed.transcribe([wave]) == [(REPO / "assets" / "samples" / "hello.txt").read_text().strip()]
    assert deployed.threads == 1 and {f.name for f in deployed.files} == {
        "model.bin",
        "config.json",
        "vocabulary.json",
    }
    assert deployed.size_bytes() == sum(f.stat().st_size for f in deployed.files) > 40e6
    capsys.readouterr()
    assert (
        main(
            [
                "--threads",
                "1",
                "transcribe",
                str(REPO / "assets" / "samples" / "hello.wav"),
                "--model",
                str(folder),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == deployed.transcribe([wave])[0]


def recipe_file(folder):
    path = folder / "recipe.json"
    path.write_text(json.dumps(INT8))
    return path


def test_cli_evaluates_an_exported_folder_in_its_runtime_with_parity(tiny, tmp_path, capsys):
    save_model(tiny, tmp_path / "tiny")
    out = tmp_path / "ct2"
    sine_dataset(tmp_path / "data")
    argv = ["export", "--model", str(tmp_path / "tiny"), "--format", "ct2", "--out", str(out)]
    assert main(argv + ["--recipe", str(recipe_file(tmp_path))]) == 0
    capsys.readouterr()
    report = tmp_path / "result.json"
    argv = [
        "--threads",
        "1",
        "evaluate",
        "--model",
        str(out),
        "--dataset",
        str(tmp_path / "data" / "manifest.csv"),
    ]
    assert main(argv + ["--parity", "--latency-runs", "1", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "(measured in ct2)" in printed and "bytes of the files ct2 loads" in printed
    assert "WER difference" in printed and "transcripts differ" in printed
    result = json.loads(report.read_text())
    assert result["runtime"] == "ct2" and result["latency"]["threads"] == 1
    assert [(b["bucket"], b["clips"]) for b in result["by_length"]] == [("10–30 s", 3)]  # the 12 s tones
    assert "10–30 s   WER" in printed
    assert result["parity"]["lab"]["runtime"] == "lab"
    # an exported model runs as exported; a lab model has nothing to compare with
    assert main(argv + ["--recipe", str(recipe_file(tmp_path))]) == 2
    assert "runs as exported, without --recipe" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "tiny"), "--parity"]) == 2


def test_runtime_points_are_stored_beside_the_labs_under_their_own_key(tiny, tmp_path, one_thread):
    dataset = sine_dataset(tmp_path / "data")
    recipe = Recipe.from_json(INT8)
    with Store(tmp_path / "results.sqlite") as store:
        lab = next(run_sweep(tiny, dataset, [INT8], store, FAST))
        stages = []
        point = measure_deployed(
            tiny,
            recipe,
            "ct2",
            dataset,
            store,
            tmp_path / "out",
            FAST,
            progress=lambda s, f: stages.append(s),
        )
        assert stages[0] == "export" and "transcribe" in stages and stages[-1] == "latency"
        assert point.runtime == "ct2" and lab.runtime == "lab" and point.key != lab.key
        assert point.recipe == lab.recipe and point.label == lab.label
        assert point.settings["runtime_version"] == "4.8.5" and point.latency.threads == 1
        direct = evaluate(load_deployed(tmp_path / "out", 1), dataset, latency_runs=0, packed=True)
        assert point.wer == direct.scores.wer and point.size_bytes == direct.size_bytes
        assert {p.runtime for p in store.points()} == {"lab", "ct2"}
        facts = json.loads((tmp_path / "out" / EXPORT_FILE).read_text())
        assert facts["origin"] == {"model": "tiny-random", "recipe": recipe.to_json()}
        # measured once: asked again it comes from the store, and a deleted folder is written again
        again = measure_deployed(tiny, recipe, "ct2", dataset, store, tmp_path / "again", FAST)
        assert again.cached and again.key == point.key and (tmp_path / "again" / "model.bin").is_file()
        with pytest.raises(ValueError, match="4-bit codes"):
            measure_deployed(
                tiny,
                Recipe.from_json({"steps": [{"quantize": {"bits": 4}}]}),
                "ct2",
                dataset,
                store,
                tmp_path / "x",
            )
        assert len(store) == 2


def test_a_trained_student_deploys_from_its_folder(tiny, tmp_path, one_thread):
    from core.measure.sweep import record_student
    from core.models.whisper import smaller

    dataset = sine_dataset(tmp_path / "data")
    student = tiny.with_module(smaller(tiny.module, [1], [0, 1]), name="one-layer student")
    save_model(student, tmp_path / "student")
    facts = {"folder": str(tmp_path / "student"), "spec": {"decoder_layers": 1}, "config": {}}
    with Store(tmp_path / "results.sqlite") as store:
        trained = record_student(tiny, student, dataset, store, facts, Recipe(), "student 1 dec", FAST)
        point = measure_deployed(
            tiny, Recipe(), "onnx", dataset, store, tmp_path / "onnx", FAST, student=trained
        )
        assert point.is_student and point.student == facts and point.label == "student 1 dec"
        assert point.runtime == "onnx" and point.key != trained.key
        lab = evaluate(student, dataset, latency_runs=0, packed=True)
        assert point.rows == lab.to_dict()["rows"]  # float weights through the lab's greedy loop: the same
        assert json.loads((tmp_path / "onnx" / EXPORT_FILE).read_text())["origin"]["model"] == facts["folder"]


@pytest.mark.parametrize(
    "fmt, recipe",
    [
        ("onnx", {"steps": [{"quantize": {"bits": 4, "granularity": "group", "group_size": 32}}]}),
        (
            "ggml",
            {
                "steps": [
                    {
                        "quantize": {
                            "bits": 16,
                            "groups": [*DEFAULT_GROUPS, "embedding", "conv"],
                        }
                    }
                ]
            },
        ),
    ],
)
def test_cli_exports_and_transcribes_in_each_runtime(tiny, tmp_path, capsys, fmt, recipe):
    save_model(tiny, tmp_path / "tiny")
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / fmt
    argv = ["export", "--model", str(tmp_path / "tiny"), "--format", fmt, "--out", str(out)]
    assert main(argv + ["--recipe", str(tmp_path / "recipe.json")]) == 0
    assert f"that {runtime(fmt).title} loads" in capsys.readouterr().out
    assert detect(out) == fmt and (out / "README.txt").is_file()
    clip = tmp_path / "tone.wav"
    sf.write(clip, (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300)).astype(np.float32), 16000)
    assert main(["--threads", "1", "transcribe", str(clip), "--model", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == load_deployed(out, 1).transcribe([sf.read(clip, dtype="float32")[0]])[0]
    # not holdable: refused by name, nothing written
    (tmp_path / "bad.json").write_text(json.dumps({"steps": [{"quantize": {"bits": 3}}]}))
    bad = ["export", "--model", str(tmp_path / "tiny"), "--format", fmt, "--out", str(tmp_path / "bad")]
    assert main(bad + ["--recipe", str(tmp_path / "bad.json")]) == 2
    assert "cannot be written exactly" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_short_context_model_runs_short_in_every_runtime(tiny, tmp_path, monkeypatch):
    """The export facts carry the policy; each runtime's loader cuts the encoder input to the clip
    (whisper.cpp through audio_ctx), and ONNX Runtime's float transcript is the lab's."""
    import importlib

    from core.compress.recipe import apply_recipe

    short, _ = apply_recipe(tiny, Recipe.from_json({"steps": [{"short_context": {"floor_seconds": 2}}]}))
    wave = (0.3 * np.sin(np.arange(int(16000 * 2.5)) / 16000 * 2 * np.pi * 300)).astype(np.float32)
    recipes = {
        "ct2": Recipe(),
        "onnx": Recipe(),
        "ggml": Recipe.from_json({"steps": [{"quantize": {"bits": 16}}]}),
    }
    for fmt, recipe in recipes.items():
        module = importlib.import_module(MODULES[fmt])
        model, _ = apply_recipe(short, recipe)
        runtime(fmt).export(model, tmp_path / fmt)
        facts = json.loads((tmp_path / fmt / EXPORT_FILE).read_text())
        assert facts["short_context"] == {"floor_seconds": 2, "step_seconds": 1.0}
        seen = []

        def spy(facts, window, seen=seen, original=module.context_frames):
            seen.append(original(facts, window))
            return seen[-1]

        monkeypatch.setattr(module, "context_frames", spy)
        text = load_deployed(tmp_path / fmt, 1).transcribe([wave])[0]
        assert seen == [300], fmt
        if fmt == "onnx":
            assert text == short.transcribe([wave])[0]
        if fmt == "ggml":
            assert module.audio_ctx(facts, wave) == 150 and module.audio_ctx({}, wave) == 0
