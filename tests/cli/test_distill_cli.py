"""`python -m core distill` with a validation split, early stopping and `--then` (quantize after training),
on a tiny random teacher."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import random_tiny_en

from core.io.folders import load_model, save_model
from core.measure.store import Store, model_identity
from core.train.distill import make_student


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory):
    """Four 12 s tones with transcripts, two voices named in a manifest (a `voice` column)."""
    folder = tmp_path_factory.mktemp("train")
    t = np.arange(12 * 16000) / 16000
    rows = ["path,text,voice"]
    for i, text in enumerate(["the cat sat", "a dog ran far", "birds sing", "rain falls down"]):
        tone = (0.3 * np.sin(2 * math.pi * (200 + 90 * i) * t)).astype(np.float32)
        sf.write(folder / f"u{i}.wav", tone, 16000)
        rows.append(f"u{i}.wav,{text},voice-{i % 2}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    save_model(random_tiny_en("tiny-teacher", layers=4), folder)
    return folder


def distill_args(teacher_dir, speech_folder, out, *extra: str) -> list[str]:
    return [
        "--threads",
        "1",
        "distill",
        "--teacher",
        str(teacher_dir),
        "--student-decoder-layers",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--dataset",
        str(speech_folder),
        "--eval-dataset",
        str(speech_folder),
        "--out",
        str(out),
        "--latency-runs",
        "0",
        *extra,
    ]


def test_then_quantizes_the_student_and_its_point_has_the_quantized_size(
    speech_folder, teacher_dir, tmp_path, capsys
):
    from core.cli import main

    recipe, store, out = tmp_path / "int8.json", tmp_path / "points.sqlite", tmp_path / "student"
    recipe.write_text(json.dumps({"steps": [{"quantize": {"bits": 8}}]}))
    code = main(
        distill_args(
            teacher_dir, speech_folder, out, "--steps", "2", "--then", str(recipe), "--store", str(store)
        )
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "after training: 8-bit" in printed
    # the default split holds out one of the two voices: validated before and after, never on the report set
    assert "validate step     0" in printed and "validate step     2" in printed
    assert "(report set)" in printed and "kept the student of step" in printed
    meta = json.loads((out / "speech_lab.json").read_text())
    assert meta["recipe"] == {"steps": [{"quantize": {"bits": 8}}]}
    assert meta["distill"]["student"]["then"] == {"steps": [{"quantize": {"bits": 8}}]}
    assert meta["distill"]["config"]["held_out"] == 0.2 and len(meta["distill"]["validation"]) == 2
    assert meta["distill"]["kept_step"] in (0, 2)
    teacher = load_model(teacher_dir)
    (point,) = Store(store).points(model_identity(teacher))
    assert point.is_student and point.recipe == {"steps": [{"quantize": {"bits": 8}}]}
    assert "8-bit" in point.label and point.label.startswith("distilled 1-layer decoder (2 steps)")
    assert ("· kept step 0 ·" in point.label) == (meta["distill"]["kept_step"] == 0)  # an earlier student
    float_bytes = 4 * make_student(teacher, 1).num_parameters()
    assert point.size_bytes < 0.5 * float_bytes  # measured after quantization, not the float student
    student = load_model(out)
    assert len(student.module.model.decoder.layers) == 1


def test_held_out_patience_and_their_refusals(speech_folder, teacher_dir, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "student"
    args = ["--steps", "6", "--eval-every", "1", "--held-out", "1", "--patience", "1", "--lr", "3e-3"]
    assert main(distill_args(teacher_dir, speech_folder, out, *args, "--no-store")) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "speech_lab.json").read_text())["distill"]
    assert meta["config"]["held_out"] == 1 and meta["config"]["patience"] == 1
    steps = [row[0] for row in meta["validation"]]
    assert steps == list(range(len(steps))) and meta["kept_step"] in steps
    assert meta["stopped_early"] and f"stopped early at step {meta['steps_trained']} of 6" in printed
    # patience 1: training stops at the first validation that is not better
    assert meta["steps_trained"] == meta["kept_step"] + 1
    assert "iterate" in printed and "next: " in printed  # the verdict, decided on the held-out voice

    assert (
        main(distill_args(teacher_dir, speech_folder, tmp_path / "x", "--steps", "4", "--patience", "2")) == 2
    )
    assert "patience" in capsys.readouterr().err  # early stopping needs validations during training
    assert (
        main(distill_args(teacher_dir, speech_folder, tmp_path / "y", "--steps", "4", "--held-out", "2")) == 2
    )
    assert "leaves none to train on" in capsys.readouterr().err  # both voices held out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"short_context": {}}]}))
    assert (
        main(distill_args(teacher_dir, speech_folder, tmp_path / "z", "--steps", "4", "--then", str(bad)))
        == 2
    )
    assert "short context is trained" in capsys.readouterr().err
