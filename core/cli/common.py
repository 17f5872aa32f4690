"""What several commands share: the options naming a model, dataset and store, and progress lines.

Command modules import the engine inside their command functions: building the parser (and so
`python -m core --help`) then stays free of torch. Those imports carry the comment "# lazy: --help".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.pareto import pareto_front

DEFAULT_MODEL = (
    "whisper-tiny.en"  # the same name as core.models.DEFAULT_MODEL (tested), without importing torch
)


def add_model_arg(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=help_text or f"'{DEFAULT_MODEL}' (bundled), a model/artifact folder, or a Hugging Face id",
    )


def add_store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", type=Path, default=None, help="results database (default: the user data folder)"
    )


def add_run_args(parser: argparse.ArgumentParser, background: bool = True) -> None:
    """--model, --dataset, --store, --latency-runs, --naive, --executor/--address/--workers, --background:
    shared by sweep, sensitivity and budget."""
    add_model_arg(parser, "base model (see `evaluate --help`)")
    parser.add_argument(
        "--dataset",
        default="quick",
        help="quick | full | a saved set (`datasets`) | a dataset path (see `evaluate`)",
    )
    add_store_arg(parser)
    parser.add_argument("--latency-runs", type=int, default=2, help="timed latency runs per point (0 = none)")
    parser.add_argument(
        "--naive",
        action="store_true",
        help="measure like `evaluate`: one clip per window, 5 latency runs (separate cache)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where points are measured: here (default) or on a Ray cluster (see README)",
    )
    parser.add_argument(
        "--address",
        help="with --executor ray: the cluster (e.g. ray://head:10001 or auto; default: a private one)",
    )
    parser.add_argument("--workers", type=int, default=1, help="with --executor ray: points measured at once")
    if background:
        parser.add_argument(
            "--background",
            action="store_true",
            help="submit as a background job and return (follow it: `jobs wait ID`, or the Jobs page)",
        )


def load(model: str, recipe: Path | None = None):
    """The model named on the command line, with a recipe file applied when one is given."""
    from core.compress.recipe import Recipe, apply_recipe  # lazy: --help
    from core.io.folders import load_model  # lazy: --help

    loaded = load_model(model)
    return apply_recipe(loaded, Recipe.load(recipe))[0] if recipe else loaded


def load_or_deployed(model: str, recipe: Path | None, threads: int | None):
    """The model named on the command line (see `load`), or, for a folder written by `export --format ...`,
    that folder running in its runtime on `threads` threads (torch's count when None)."""
    from core.deploy.runtime import detect, load_deployed  # lazy: --help

    if not detect(model):
        return load(model, recipe)
    if recipe:
        raise ValueError(f"{model} is an exported model: it runs as exported, without --recipe")
    import torch  # lazy: --help

    return load_deployed(model, threads or torch.get_num_threads())


def settings(args: argparse.Namespace):
    """The SweepSettings named by --naive / --latency-runs."""
    from core.measure.sweep import NAIVE, SweepSettings  # lazy: --help

    return NAIVE if args.naive else SweepSettings(latency_runs=args.latency_runs)


def executor(args: argparse.Namespace):
    """The point Executor named by --executor / --address / --workers."""
    from core.measure.executors import Executor  # lazy: --help

    return Executor(args.executor, args.address, args.workers)


def measuring(args: argparse.Namespace):
    """How a background job named by these arguments measures (core.jobs.kinds.Measuring)."""
    import torch  # lazy: --help

    from core.jobs.kinds import Measuring  # lazy: --help

    executor(args)  # refuses a bad combination now, not in the worker
    chosen = settings(args)
    return Measuring(
        chosen.packed, chosen.latency_runs, torch.get_num_threads(), args.executor, args.address, args.workers
    )


def absolute(name: str) -> str:
    """A model or dataset name as a job spec holds it: a path made absolute (the worker runs elsewhere),
    any other name (and a saved dataset's name, which load_dataset reads first) as it is."""
    from core.data import saved_stamp  # lazy: --help

    return str(Path(name).resolve()) if Path(name).exists() and not saved_stamp(name) else name


def submit_job(args: argparse.Namespace, job) -> None:
    """Submit a job spec to the store's board, print its id and how to follow it."""
    from core.jobs.board import JobBoard  # lazy: --help
    from core.jobs.worker import submit  # lazy: --help

    row = submit(JobBoard(args.store), job)
    print(f"job {row.id} {row.state}: {row.label}")
    print(f"follow it: python -m core jobs wait {row.id}   (or the dashboard's Jobs page)")


def context(args: argparse.Namespace):
    """(model, dataset, store) named by the common arguments, for a command that writes points: the store
    is opened first and must be writable (ValueError, one line, before any model is loaded)."""
    store = writable_store(args.store)
    from core.data import load_dataset  # lazy: --help

    return load(args.model), load_dataset(args.dataset), store


def writable_store(path: Path | None):
    """The results store at `path` (default: the user data folder), checked to take a point now: a missing
    folder, a file that is no store, or one that cannot be written is a ValueError before any work."""
    from core.measure.store import Store  # lazy: --help

    return Store(path, writable=True)


def progress(done: int, total: int, cached: int, seconds: float, label: str = "") -> str:
    """One progress-bar line (for stderr): bar, counts, elapsed time, the last point's recipe."""
    width = 24
    filled = int(width * done / max(total, 1))
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({cached} cached) "
        f"{seconds:5.1f} s  {label[:60]:60s}"
    )


def format_points(points: list, x: str = "size") -> str:
    """A table of points in the given order; '*' marks the Pareto front of (WER, size or latency)."""
    value = (lambda p: p.size_bytes) if x == "size" else (lambda p: p.latency_ms)
    objectives = np.array([[p.wer, np.nan if value(p) is None else value(p)] for p in points], dtype=float)
    front = pareto_front(objectives.reshape(-1, 2))
    lines = [f"  {'WER':>7s} {'size MB':>8s} {'lat ms':>7s} {'time s':>7s}  recipe"]
    for index, p in enumerate(points):
        latency = f"{p.latency_ms:7.0f}" if p.latency_ms is not None else f"{'-':>7s}"
        spent = "cached" if p.cached else f"{p.timings.get('total', 0):.1f}"
        lines.append(
            f"{'*' if front[index] else ' '} {100 * p.wer:6.2f}% {(p.size_bytes or 0) / 1e6:8.2f} "
            f"{latency} {spent:>7s}  {p.label}"
        )
    return "\n".join(lines)
