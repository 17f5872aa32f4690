"""`transcribe` on a WAV file cut short: a warning naming the file on stderr, and the audio that is there
transcribed (issue #17)."""

from pathlib import Path

from core.audio import SAMPLE_RATE
from core.cli import main

HELLO = Path(__file__).resolve().parents[2] / "assets" / "samples" / "hello.wav"


class SecondsModel:
    """Stands in for the model (the warning is the CLI's): "N seconds" for each wave."""

    def transcribe(self, waves):
        return [f"{len(w) / SAMPLE_RATE:.2f} seconds" for w in waves]


def test_transcribe_warns_when_a_wav_file_is_truncated(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("core.cli.transcribe.load_or_deployed", lambda *args: SecondsModel())
    data = HELLO.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])  # the header still declares the whole clip
    assert main(["transcribe", str(cut), str(HELLO)]) == 0
    printed = capsys.readouterr()
    warnings = [line for line in printed.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, printed.err  # the whole file gets none
    assert warnings[0].startswith(f"warning: {cut}: the file is truncated: its header declares ")
    assert "missing); using the audio that is there" in warnings[0]
    half, whole = (float(line.split()[0]) for line in printed.out.splitlines())
    assert abs(half - whole / 2) < 0.01  # what is there is transcribed
