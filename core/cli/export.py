"""`export`: stored points as CSV / JSON (core/cli/points.py), or a (compressed) model in a runtime's own
format for deployment: `--format ct2` writes a CTranslate2 Whisper folder (core/deploy/ct2.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.common import add_model_arg, load
from core.cli.points import add_points_args, run_export

POINT_FORMATS = ("csv", "json")
MODEL_FORMATS = ("ct2",)


def run(args: argparse.Namespace) -> None:
    if args.format in POINT_FORMATS:
        run_export(args)
        return
    from core.deploy.ct2 import export_ct2  # lazy: --help

    if args.out is None:
        raise ValueError(f"export --format {args.format} needs --out FOLDER")
    folder = export_ct2(load(args.model, args.recipe), args.out)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(
        f"wrote {folder}: {size:,} bytes ({size / 1e6:.2f} MB), a CTranslate2 Whisper model; "
        f"load it with ctranslate2.models.Whisper({str(folder)!r}) (see {folder / 'README.txt'})"
    )


def add_command(commands) -> None:
    p = commands.add_parser(
        "export", help="stored points as CSV or JSON, or a (compressed) model for CTranslate2 (--format ct2)"
    )
    p.add_argument(
        "--format",
        choices=POINT_FORMATS + MODEL_FORMATS,
        default="csv",
        help="csv | json: the stored points; ct2: the model as a CTranslate2 folder",
    )
    p.add_argument(
        "--out", type=Path, help="output file for points (default: stdout), output folder for a model"
    )
    add_points_args(p)
    add_model_arg(p, "with --format ct2: the model to export (a compressed folder exports as compressed)")
    p.add_argument("--recipe", type=Path, default=None, help="with --format ct2: a recipe JSON applied first")
    p.set_defaults(run=run)
