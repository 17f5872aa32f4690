"""`transcribe`: one transcript per audio file."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.common import add_model_arg, load


def run(args: argparse.Namespace) -> None:
    from core.audio import load_audio  # lazy: --help

    model = load(args.model, args.recipe)
    for path in args.audio:
        print(model.transcribe([load_audio(path)])[0])


def add_command(commands) -> None:
    p = commands.add_parser("transcribe", help="print one transcript per audio file")
    p.add_argument("audio", nargs="+", type=Path)
    add_model_arg(p)
    p.add_argument("--recipe", type=Path, help="compression recipe JSON applied to the model first")
    p.set_defaults(run=run)
