"""`sweep`: evaluate a grid of recipes (cached in the results store, resumable) and mark the Pareto front."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli.common import (
    absolute,
    add_run_args,
    context,
    executor,
    format_points,
    measuring,
    progress,
    settings,
    submit_job,
)


def run(args: argparse.Namespace) -> None:
    from core.measure.store import canonical_json  # lazy: --help
    from core.measure.sweep import grid_recipes, load_grid, run_sweep  # lazy: --help

    recipes = grid_recipes(load_grid(args.grid), args.sample, args.seed)
    total = len({canonical_json(r.to_json()) for r in recipes})
    if args.background:
        from core.jobs.kinds import SweepJob  # lazy: --help

        recipes_json = tuple(r.to_json() for r in recipes)
        job = SweepJob(absolute(args.model), absolute(args.dataset), recipes_json, measuring(args))
        return submit_job(args, job)
    model, dataset, store = context(args)
    start, points = time.perf_counter(), []
    try:
        for point in run_sweep(model, dataset, recipes, store, settings(args), executor=executor(args)):
            points.append(point)
            cached = sum(p.cached for p in points)
            print(
                progress(len(points), total, cached, time.perf_counter() - start, point.label),
                end="",
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(points)} of {total} points are in {store.path}; run the same command "
            "again to compute the rest",
            file=sys.stderr,
        )
    print(file=sys.stderr)
    print(format_points(sorted(points, key=lambda p: (p.wer, p.size_bytes or 0))))
    print(
        f"{len(points)} points ({sum(p.cached for p in points)} from {store.path}) "
        f"in {time.perf_counter() - start:.1f} s"
    )


def add_command(commands) -> None:
    p = commands.add_parser("sweep", help="evaluate a grid of recipes (cached, resumable)")
    p.add_argument("--grid", type=Path, required=True, help='GRID.json, e.g. {"quantize.bits": [16, 8, 4]}')
    p.add_argument("--sample", type=int, help="evaluate only this many grid points, drawn at random")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    add_run_args(p)
    p.set_defaults(run=run)
