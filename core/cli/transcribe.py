"""`transcribe`: one transcript per audio file (an exported folder transcribes in its runtime)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from core.cli.common import add_model_arg, load_or_deployed


def run(args: argparse.Namespace) -> None:
    """Print one transcript per file; a file that does not sound like speech gets a warning on stderr (Whisper
    turns noise into words such as "You"), and so does a WAV file cut short of what its header declares (the
    audio that is there is transcribed). Audio over 30 s is transcribed whole, in overlapping windows."""
    from core.audio import TruncatedAudioWarning, is_probably_speech, load_audio  # lazy: --help

    model = load_or_deployed(args.model, args.recipe, args.threads)
    for path in args.audio:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedAudioWarning)
            wave = load_audio(path)
        for warning in caught:  # e.g. "a.wav: the file is truncated: ...": the file names itself
            print(f"warning: {warning.message}", file=sys.stderr)
        if not is_probably_speech(wave):
            print(f"warning: {path}: no speech detected; the transcript may be invented", file=sys.stderr)
        print(model.transcribe([wave])[0])


def add_command(commands) -> None:
    p = commands.add_parser("transcribe", help="print one transcript per audio file")
    p.add_argument("audio", nargs="+", type=Path)
    add_model_arg(
        p,
        "'whisper-tiny.en' (bundled), a model/artifact folder, a Hugging Face id, or a folder written by "
        "`export --format ct2|onnx|ggml` (run in that runtime)",
    )
    p.add_argument("--recipe", type=Path, help="compression recipe JSON applied to the model first")
    p.set_defaults(run=run)
