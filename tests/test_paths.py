"""Where the lab keeps its files, and which model folders a shared server may open."""

from __future__ import annotations

import pytest

from core.paths import check_model_path


def test_model_paths_are_limited_only_on_a_shared_server(tmp_path, monkeypatch):
    inside, outside = tmp_path / "models" / "mine", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    monkeypatch.delenv("SPEECH_LAB_MODEL_ROOTS", raising=False)
    check_model_path(str(outside))  # one user on their own machine: any folder
    monkeypatch.setenv("SPEECH_LAB_MODEL_ROOTS", str(tmp_path / "models"))
    check_model_path(str(inside))
    check_model_path("whisper-tiny.en")  # bundled names and hub ids are not paths
    check_model_path("openai/whisper-tiny")
    for refused in (
        str(outside),
        "/etc",
        str(tmp_path / "models" / ".." / "elsewhere"),
        str(outside / "nope"),
    ):
        with pytest.raises(ValueError, match="model folders must be inside .*SPEECH_LAB_MODEL_ROOTS"):
            check_model_path(refused)
