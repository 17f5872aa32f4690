"""A sweep on a local Ray cluster with 1 worker against 2 workers: wall time, and the same points.

Usage (from the repository root): python -m bench.ray_sweep [--dataset quick] [--rounds 2] [--cpus 2]
         [--append bench/RESULTS.md]

Starts a private Ray cluster on this machine with `--cpus` CPUs, then measures the same grid of recipes
(8 points of the default model: pruning x 4-/8-bit quantization) into a fresh temporary store per run,
alternating 1-worker and 2-worker runs round by round so machine noise hits both alike. Each worker runs
torch on one thread, so 2 workers fill 2 cores; latency is not measured (`latency_runs=0`): parallel
workers on one machine time each other, and this bench is about throughput. Every run must give the
very points (keys, WER, size) of the first one: printed as a check.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from core.data import load_dataset, load_waves
from core.io.folders import load_model
from core.measure.evaluate import machine_facts
from core.measure.executors import Executor
from core.measure.store import Store
from core.measure.sweep import SweepSettings, grid_recipes, run_sweep
from core.models import DEFAULT_MODEL

GRID = {"prune.sparsity": [0, 0.2, 0.4, 0.6], "quantize.bits": [8, 4], "quantize.granularity": "group"}
SETTINGS = SweepSettings(latency_runs=0)


def timed_sweep(model, dataset, waves, recipes, workers: int) -> tuple[float, dict]:
    """Seconds for the whole sweep on `workers` Ray workers (fresh store), and its points by key."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "results.sqlite")
        start = time.perf_counter()
        points = list(
            run_sweep(
                model, dataset, recipes, store, SETTINGS, waves, executor=Executor("ray", workers=workers)
            )
        )
        seconds = time.perf_counter() - start
    return seconds, {p.key: (round(p.wer, 6), p.size_bytes) for p in points}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="quick")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--append", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()

    torch.set_num_threads(1)  # each worker reserves as many CPUs as the driver's torch threads
    model, dataset = load_model(DEFAULT_MODEL), load_dataset(args.dataset)
    waves, recipes = load_waves(dataset), grid_recipes(GRID)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    times: dict[int, list[float]] = {1: [], 2: []}
    reference = None
    try:
        for round_ in range(args.rounds):
            for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                seconds, points = timed_sweep(model, dataset, waves, recipes, workers)
                reference = reference or points
                same = points == reference
                times[workers].append(seconds)
                print(
                    f"round {round_ + 1}, {workers} worker(s): {seconds:6.1f} s, same points: {same}",
                    flush=True,
                )
                if not same:
                    raise SystemExit("the points differ between runs: the executor is not exact")
    finally:
        ray.shutdown()
    facts = machine_facts()
    one, two = statistics.median(times[1]), statistics.median(times[2])
    lines = [
        f"{len(recipes)} points of {DEFAULT_MODEL} on `{args.dataset}` (packed windows, no latency), "
        f"private Ray cluster of {args.cpus} CPUs, 1 torch thread per worker; {facts.get('cpu', '?')}, "
        f"load average {facts.get('load_average', '?')} at the end; {args.rounds} rounds, alternating.",
        "",
        "| workers | median s | min–max s | points/min |",
        "|---|---|---|---|",
    ]
    for workers, median in ((1, one), (2, two)):
        spread = f"{min(times[workers]):.1f}–{max(times[workers]):.1f}"
        lines.append(f"| {workers} | {median:.1f} | {spread} | {60 * len(recipes) / median:.1f} |")
    lines += ["", f"2 workers: {one / two:.2f}× the throughput of 1, the same {len(reference)} points."]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with args.append.open("a") as out:
            out.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
