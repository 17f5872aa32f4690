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


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--model, --dataset, --store, --latency-runs, --naive: shared by sweep, sensitivity and budget."""
    add_model_arg(parser, "base model (see `evaluate --help`)")
    parser.add_argument("--dataset", default="quick", help="quick | full | a dataset path (see `evaluate`)")
    add_store_arg(parser)
    parser.add_argument("--latency-runs", type=int, default=2, help="timed latency runs per point (0 = none)")
    parser.add_argument(
        "--naive",
        action="store_true",
        help="measure like `evaluate`: one clip per window, 5 latency runs (separate cache)",
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


def context(args: argparse.Namespace):
    """(model, dataset, store) named by the common arguments."""
    from core.data import load_dataset  # lazy: --help
    from core.measure.store import Store  # lazy: --help

    return load(args.model), load_dataset(args.dataset), Store(args.store)


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
