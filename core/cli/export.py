"""`export`: stored points as CSV / JSON (core/cli/points.py), or a (compressed) model in a deployment
runtime's own format (core/deploy): `--format ct2` (CTranslate2), `onnx` (ONNX Runtime), `ggml`
(whisper.cpp), `hf` (a plain float Hugging Face transformers checkpoint). The folder holds what that
runtime loads, a README.txt with the loading snippet, and speech_lab_export.json, so
`python -m core evaluate --model FOLDER` measures it in that runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.common import add_model_arg, load
from core.cli.points import add_points_args, run_export

POINT_FORMATS = ("csv", "json")
MODEL_FORMATS = ("ct2", "onnx", "ggml", "hf")  # the names of core.deploy.runtime.MODULES (tested)


def run(args: argparse.Namespace) -> None:
    if args.format in POINT_FORMATS:
        if args.recipe is not None:
            raise ValueError(
                f"--recipe applies to a model format ({'|'.join(MODEL_FORMATS)}); --format {args.format} "
                "exports the stored points"
            )
        run_export(args)
        return
    from core.compress.recipe import Recipe  # lazy: --help
    from core.deploy.runtime import README_FILE, detect, export_facts, record_origin, runtime  # lazy: --help

    if args.out is None:
        raise ValueError(f"export --format {args.format} needs --out FOLDER")
    made_for = detect(args.model)
    if made_for is not None:
        origin = (export_facts(args.model).get("origin") or {}).get("model", "the lab model it came from")
        raise ValueError(
            f"{args.model} is already exported (for {runtime(made_for).title}); export from the lab model it "
            f"was made from instead: --model {origin}"
        )
    target = runtime(args.format)
    folder = target.export(load(args.model, args.recipe), args.out)
    record_origin(folder, args.model, Recipe.load(args.recipe).to_json() if args.recipe else None)
    size = sum(f.stat().st_size for f in target.model_files(folder))
    print(
        f"wrote {folder}: {size:,} bytes ({size / 1e6:.2f} MB) that {target.title} loads; "
        f"how to load it: {folder / README_FILE}; measure it there: "
        f"python -m core evaluate --model {folder}"
    )


def add_command(commands) -> None:
    p = commands.add_parser(
        "export",
        help="stored points as CSV or JSON, or a (compressed) model for CTranslate2, ONNX Runtime, "
        "whisper.cpp or Hugging Face transformers (--format ct2|onnx|ggml|hf)",
    )
    p.add_argument(
        "--format",
        choices=POINT_FORMATS + MODEL_FORMATS,
        default="csv",
        help="csv | json: the stored points; ct2 | onnx | ggml: the model as a CTranslate2, ONNX Runtime "
        "or whisper.cpp folder; hf: as a Hugging Face checkpoint that from_pretrained loads (float weights: "
        "codes dequantized, low-rank pairs multiplied back)",
    )
    p.add_argument(
        "--out", type=Path, help="output file for points (default: stdout), output folder for a model"
    )
    add_points_args(p)
    add_model_arg(p, "with a model format: the model to export (a compressed folder exports as compressed)")
    p.add_argument(
        "--recipe", type=Path, default=None, help="with a model format: a recipe JSON applied first"
    )
    p.set_defaults(run=run)
