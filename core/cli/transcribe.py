"""`transcribe`: one transcript per audio file (an exported folder transcribes in its runtime)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.common import add_model_arg, load_or_deployed


def run(args: argparse.Namespace) -> None:
    from core.audio import load_audio  # lazy: --help

    model = load_or_deployed(args.model, args.recipe, args.threads)
    for path in args.audio:
        print(model.transcribe([load_audio(path)])[0])


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
