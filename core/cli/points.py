"""`pareto` and `export --format csv|json`: read the stored points back (the non-dominated ones, or all as
CSV / JSON). The `export` command itself lives in core/cli/export.py, which also exports models."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from core.cli.common import add_store_arg, format_points
from core.pareto import front_order


def _stored(args: argparse.Namespace) -> list:
    from core.measure.store import Store  # lazy: --help

    points = Store(args.store).points()
    return [p for p in points if args.dataset is None or p.dataset == args.dataset]


def run_pareto(args: argparse.Namespace) -> None:
    """The non-dominated stored points, per (model, dataset, settings)."""
    from core.measure.store import canonical_json  # lazy: --help

    groups: dict[tuple, list] = {}
    for point in _stored(args):
        if args.x == "size" or point.latency_ms is not None:
            groups.setdefault(
                (point.model, point.dataset, point.dataset_fingerprint, canonical_json(point.settings)), []
            ).append(point)
    if not groups:
        print(
            "no stored points"
            + (f" on dataset {args.dataset}" if args.dataset else "")
            + (" with latency" if args.x == "latency" else "")
        )
    for (model, dataset, _, settings), points in groups.items():
        x = [p.size_bytes if args.x == "size" else p.latency_ms for p in points]
        order = front_order(np.array([[xi, p.wer] for xi, p in zip(x, points)], dtype=float))
        print(
            f"{model} on {dataset}, settings {settings}: {len(order)} of {len(points)} points on the front "
            f"(WER vs {args.x})"
        )
        print(format_points([points[i] for i in order], args.x))


def run_export(args: argparse.Namespace) -> None:
    """Stored points as CSV or JSON, to a file or stdout."""
    from core.measure.store import export_points  # lazy: --help

    text = export_points(_stored(args), args.format)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def add_points_args(parser: argparse.ArgumentParser) -> None:
    """--store and --dataset: which stored points (shared with `export`)."""
    add_store_arg(parser)
    parser.add_argument("--dataset", default=None, help="only points measured on this dataset (by name)")


def add_command(commands) -> None:
    p = commands.add_parser("pareto", help="the non-dominated stored points")
    add_points_args(p)
    p.add_argument("--x", choices=("size", "latency"), default="size", help="objective besides WER")
    p.set_defaults(run=run_pareto)
