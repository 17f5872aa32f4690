"""`compress`: apply a recipe and write the compressed model folder (it loads back with --model)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from core.cli.common import add_model_arg, load


def run(args: argparse.Namespace) -> None:
    from core.compress.recipe import Recipe, apply_recipe  # lazy: --help
    from core.io.folders import save_model, weights_bytes  # lazy: --help

    base = load(args.model)
    recipe = Recipe.load(args.recipe)
    model, reports = apply_recipe(base, recipe)
    size = save_model(
        model,
        args.out,
        {"recipe": recipe.to_json(), "base_model": base.name, "report": [asdict(r) for r in reports]},
    )
    print(format_reports(reports))
    weights = weights_bytes(args.out)
    print(
        f"wrote {args.out}: {size:,} bytes ({size / 1e6:.2f} MB): weights {weights / 1e6:.2f} MB (the size "
        f"every table compares), tokenizer + config {(size - weights) / 1e6:.2f} MB; "
        f"load it with --model {args.out}"
    )


def format_reports(reports) -> str:
    """One line per layer and step: what the compression did."""
    lines = [
        f"{'layer':48s} {'step':9s} {'params':>17s} {'sparsity':>8s} "
        f"{'bits':>4s} {'rank':>4s} {'rel.err':>7s}"
    ]
    for r in reports:
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        lines.append(
            f"{r.name:48s} {r.technique:9s} {r.params_before:>8,}→{r.params_after:<8,} "
            f"{fmt(r.sparsity, '8.2f'):>8s} {fmt(r.bits, 'd'):>4s} {fmt(r.rank, 'd'):>4s} "
            f"{fmt(r.rel_error, '7.3f'):>7s} {r.note}"
        )
    return "\n".join(lines)


def add_command(commands) -> None:
    p = commands.add_parser("compress", help="apply a recipe and write the compressed model folder")
    p.add_argument("--recipe", type=Path, required=True, help="recipe JSON (see README)")
    p.add_argument("--out", type=Path, required=True, help="output folder (loads back with --model OUT)")
    add_model_arg(p, "the model to compress")
    p.set_defaults(run=run)
