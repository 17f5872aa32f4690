"""`datasets`: import a zip of recordings as a named set, list it, evaluate on it by name, delete it."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from core.__main__ import main
from core.data import load_dataset


@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_LAB_DATA", str(tmp_path / "data"))


def test_import_list_evaluate_by_name_and_delete(tmp_path, capsys):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, utterance in enumerate(load_dataset("quick").utterances[:2]):
            archive.writestr(f"mine/clip{number}.flac", utterance.path.read_bytes())
            archive.writestr(f"mine/clip{number}.txt", utterance.text)
    source = tmp_path / "mine.zip"
    source.write_bytes(buffer.getvalue())

    assert main(["datasets", "import", str(source), "--name", "my-voice"]) == 0
    assert "saved 2 clips as 'my-voice'" in capsys.readouterr().out
    assert main(["datasets", "import", str(source), "--name", "my-voice"]) == 2  # no silent overwrite
    assert "exists already" in capsys.readouterr().err
    assert main(["datasets"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["my-voice", "2", "clips,", "yours"]

    out = tmp_path / "result.json"
    assert main(["evaluate", "--dataset", "my-voice", "--latency-runs", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "my-voice" and result["n_utterances"] == 2
    assert result["wer"] < 0.4  # tiny.en on two clear sentences

    assert main(["datasets", "delete", "my-voice"]) == 0
    assert main(["evaluate", "--dataset", "my-voice"]) == 2
    assert "no such bundled set, saved set or path" in capsys.readouterr().err
