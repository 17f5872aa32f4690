"""`export --format hf` on the command line: combinations that make no sense are refused with one line
(exit 2) before anything is written."""

from __future__ import annotations

import json

import pytest
from conftest import random_tiny_en

from core.cli import main
from core.io.folders import save_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    save_model(random_tiny_en("tiny-random", layers=1), folder)
    return folder


def recipe(folder, steps):
    path = folder / "recipe.json"
    path.write_text(json.dumps({"steps": steps}))
    return str(path)


def test_export_hf_refuses_bad_combinations(tiny_folder, tmp_path, capsys):
    model = ["--model", str(tiny_folder)]
    assert main(["export", "--format", "hf", *model]) == 2
    assert "export --format hf needs --out FOLDER" in capsys.readouterr().err
    # a points format takes no recipe
    assert main(["export", "--format", "csv", "--recipe", recipe(tmp_path, [{"quantize": {"bits": 8}}])]) == 2
    assert "--recipe applies to a model format (ct2|onnx|ggml|hf)" in capsys.readouterr().err
    # short context: transformers' encoder takes the whole window; refused, nothing written
    short = recipe(tmp_path, [{"short_context": {"floor_seconds": 2}}])
    out = tmp_path / "short"
    assert main(["export", "--format", "hf", *model, "--recipe", short, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "cannot be written exactly as a Hugging Face transformers checkpoint" in err and "3000 frames" in err
    )
    assert not out.exists()
    # an exported folder is not exported again: the lab model it came from is
    hf = tmp_path / "hf"
    assert main(["export", "--format", "hf", *model, "--out", str(hf)]) == 0
    assert "Hugging Face transformers 5.24 loads" in capsys.readouterr().out
    assert main(["export", "--format", "onnx", "--model", str(hf), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert (
        "is already exported (for Hugging Face transformers 5.24)" in err and f"--model {tiny_folder}" in err
    )
