"""Live-loop speed of sweeps: cached point, new point, a 27-point grid and its rerun, naive vs fast mode.

Usage (from the repository root): python -m bench.sweep [--dataset quick] [--threads 2] [--skip-naive]
         [--budget [--search-on train] [--signal wer|divergence] [--measured] [--quantize-only]]
         [--append bench/RESULTS.md]

Both modes run the same 27 recipes on the same model and clips, each into a fresh temporary store:
  naive  one clip per 30 s window, latency = 5 runs after a warm-up (what `evaluate` does)
  fast   clips packed into 30 s windows, latency = 2 runs (the evaluation is the warm-up),
         encoder outputs reused when a recipe leaves the encoder unchanged (exact)
WER of both modes is printed so any accuracy difference is visible. `--budget` adds the budget-search
check: per-group greedy recipe vs the best uniform recipe of no larger size, measured on quick and full
(`--measured`: the greedy measures each move on the sensitivity set instead of adding up the table).
`--budget --signal divergence`: the table holds each group's KL divergence from the base model under
several quantizers (core.measure.sensitivity.divergence_plan), the plan is the exact allocation
(allocate, its 3 best candidates measured together), and the uniform recipes include every one of those
quantizers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from core.compress.recipe import Recipe
from core.data import load_dataset
from core.io.folders import load_model
from core.measure.divergence import run_divergence
from core.measure.evaluate import machine_facts
from core.measure.sensitivity import (
    QUANT_VARIANTS,
    VARIANT_BITS,
    allocate,
    budget_search,
    divergence_plan,
    run_sensitivity,
    sensitivity_plan,
    technique_levels,
)
from core.measure.store import Store
from core.measure.sweep import NAIVE, SweepSettings, grid_recipes, run_sweep

ROOT = Path(__file__).resolve().parent.parent  # the repository root: `python -m core` runs from there

GRID = {
    "prune.sparsity": [0, 0.25, 0.5],
    "low_rank.rank_fraction": [1.0, 0.75, 0.5],
    "quantize.bits": [16, 8, 4],
}
MODES = {"fast": SweepSettings(), "naive": NAIVE}


def bench_modes(model, dataset, recipes, modes: dict, folder: Path) -> list[dict]:
    """First run of the grid with the modes interleaved point by point (so both see the same machine
    load), then per mode the second run and single cached points; each mode has its own fresh store."""
    stores = {name: Store(folder / f"{name}.sqlite") for name in modes}
    runs = {
        name: run_sweep(model, dataset, recipes, stores[name], settings) for name, settings in modes.items()
    }
    first = {name: [] for name in modes}
    spent = {name: [] for name in modes}
    for index in range(len(recipes)):
        for name, run in runs.items():
            start = time.perf_counter()
            first[name].append(next(run))
            spent[name].append(time.perf_counter() - start)
        print(f"\r[grid] {index + 1}/{len(recipes)} points per mode", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    results = []
    for name, settings in modes.items():
        start = time.perf_counter()
        second = list(run_sweep(model, dataset, recipes, stores[name], settings))
        second_s = time.perf_counter() - start
        assert all(p.cached for p in second) and not any(p.cached for p in first[name])
        cached = []
        for recipe in recipes[:5]:
            start = time.perf_counter()
            assert next(run_sweep(model, dataset, [recipe], stores[name], settings)).cached
            cached.append(time.perf_counter() - start)
        points = first[name]
        results.append(
            {
                "name": name,
                "first_s": sum(spent[name]),
                "second_s": second_s,
                "cached_s": statistics.median(cached),
                "point_median_s": statistics.median(spent[name]),
                "point_max_s": max(spent[name]),
                "apply_s": statistics.median(p.timings["apply"] for p in points),
                "evaluate_s": statistics.median(p.timings["evaluate"] for p in points),
                "latency_s": statistics.median(p.timings["latency"] for p in points),
                "spent": spent[name],
                "points": {p.label: p for p in points},
                "store": stores[name].path,
            }
        )
    return results


def cli_rerun(store: Path, grid_file: Path, dataset: str, threads: int) -> float:
    """Wall time of the CLI rerunning a fully stored grid in a fresh process (imports + model load
    included)."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "--threads",
            str(threads),
            "sweep",
            "--grid",
            str(grid_file),
            "--dataset",
            dataset,
            "--store",
            str(store),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def report(results: list[dict], dataset, args, cli_s: float | None, load: tuple) -> str:
    facts = machine_facts()
    lines = [
        "## Sweeps at speed (bench/sweep.py, issue #4)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {facts['cpu']}, {torch.get_num_threads()} torch "
        f"threads (torch.set_num_threads({args.threads})), torch {facts['torch']}, Python {facts['python']}; "
        f"dataset `{dataset.name}` ({len(dataset)} clips); grid {GRID} = 27 recipes. "
        f"Load average before/after: {load[0]:.1f} / {load[1]:.1f} (the machine is shared with other "
        "developers' processes, so absolute times are noisy).",
        "",
        "| figure | goal | " + " | ".join(r["name"] for r in results) + " |",
        "| --- | --- | " + " | ".join("---" for _ in results) + " |",
    ]
    rows = [
        ("cached point (in process)", "≤ 0.3 s", lambda r: f"{r['cached_s']:.3f} s"),
        ("new point, median of the grid", "≤ 3 s", lambda r: f"{r['point_median_s']:.2f} s"),
        ("new point, slowest of the grid", "", lambda r: f"{r['point_max_s']:.2f} s"),
        ("  of which apply recipe (median)", "", lambda r: f"{r['apply_s']:.2f} s"),
        ("  of which transcribe + score + size (median)", "", lambda r: f"{r['evaluate_s']:.2f} s"),
        ("  of which latency runs (median)", "", lambda r: f"{r['latency_s']:.2f} s"),
        ("27-point grid, first run (sum of its points)", "≤ 2 min", lambda r: f"{r['first_s']:.1f} s"),
        ("27-point grid, second run (in process)", "≤ 2 s", lambda r: f"{r['second_s']:.2f} s"),
    ]
    for label, goal, cell in rows:
        lines.append(f"| {label} | {goal} | " + " | ".join(cell(r) for r in results) + " |")
    if cli_s is not None:
        cells = " | ".join(f"{cli_s:.1f} s" if r["name"] == "fast" else "" for r in results)
        lines.append(
            f"| 27-point grid, second run via `python -m core sweep` (new process: imports + model "
            f"load) | | {cells} |"
        )
    labels = list(results[0]["points"])
    lines += [
        "",
        "WER per recipe in each mode (same recipes, same clips; size is the same in both modes):",
        "",
        "| recipe | size MB | " + " | ".join(f"WER {r['name']}" for r in results) + " |",
        "| --- | --- | " + " | ".join("---" for _ in results) + " |",
    ]
    for label in labels:
        cells = " | ".join(f"{100 * r['points'][label].wer:.2f}%" for r in results)
        lines.append(f"| {label} | {results[0]['points'][label].size_bytes / 1e6:.1f} | {cells} |")
    if len(results) == 2:
        a = [results[0]["points"][k].wer for k in labels]
        b = [results[1]["points"][k].wer for k in labels]
        rank = lambda xs: [sorted(xs).index(x) for x in xs]
        ra, rb = rank(a), rank(b)
        n = len(a)
        rho = 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))
        ratios = [n / f for f, n in zip(results[0]["spent"], results[1]["spent"])]
        lines += [
            "",
            f"Per recipe, {results[1]['name']} time / {results[0]['name']} time: median "
            f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x); "
            "the modes ran alternately, point by point, so both saw the same machine load.",
        ]
        lines += [
            "",
            f"Mean |WER naive − WER fast| over the grid: "
            f"{100 * statistics.mean(abs(x - y) for x, y in zip(a, b)):.2f} points; "
            f"rank correlation (Spearman, ties by order) {rho:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def uniform_recipes(quant_variants: bool = False) -> dict[str, Recipe]:
    """Every technique at every sensitivity level on all the groups it applies to (the same groups the
    sensitivity probes cover), e.g. "quantize 4 everywhere"; `quant_variants` adds each of QUANT_VARIANTS
    at VARIANT_BITS everywhere (the quantizers a divergence allocation may mix)."""
    groups: dict[str, list[str]] = {}
    for probe in sensitivity_plan():
        groups.setdefault(probe.technique, [])
        if probe.group not in groups[probe.technique]:
            groups[probe.technique].append(probe.group)
    settings = [
        (technique, {}, knob, level)
        for technique, (knob, levels) in technique_levels().items()
        for level in levels
    ]
    if quant_variants:
        settings += [
            ("quantize", variant, "bits", bits) for variant in QUANT_VARIANTS for bits in VARIANT_BITS
        ]
    recipes = {}
    for technique, options, knob, level in settings:
        config = {**options, knob: level, "groups": groups[technique]}
        recipe = Recipe.from_json({"steps": [{technique: config}]})
        recipes[recipe.describe()] = recipe
    return recipes


TRAIN_SUBSET = 60  # utterances of the train split searched on with --search-on train (~620 words)


def search_dataset(name: str):
    """The set sensitivity and measured moves run on: quick, full, or the start of the train split
    (sentences never in quick or full, so choices made on it are checked on data they never saw)."""
    if name != "train":
        return load_dataset(name)
    train = load_dataset("train")
    return dataclasses.replace(
        train, name=f"train[:{TRAIN_SUBSET}]", utterances=train.utterances[:TRAIN_SUBSET]
    )


def bench_budget(
    model,
    store: Store,
    settings: SweepSettings,
    search_on: str = "quick",
    measured: bool = False,
    quantize_only: bool = False,
    signal: str = "wer",
) -> str:
    """Sensitivity on `search_on`, then for budgets at the sizes of uniform recipes: per-group recipe
    vs the best uniform recipe no larger than it (the lowest WER on full), both measured on quick and full.
    signal "wer": the greedy over ΔWER (`measured`: it checks each move on the search set;
    `quantize_only`: probe bit widths only, the uniform recipes still include pruning and low rank).
    signal "divergence": the exact allocation over divergence_plan's quantizers, its 3 best candidates
    measured on the search set; the search set's divergence of every recipe is printed too."""
    quick, full, search_set = load_dataset("quick"), load_dataset("full"), search_dataset(search_on)
    by_divergence = signal == "divergence"
    if by_divergence:
        plan = divergence_plan()
    else:
        levels = technique_levels()
        plan = sensitivity_plan(levels={"quantize": levels["quantize"]} if quantize_only else levels)
    start = time.perf_counter()
    table = []
    for row in run_sensitivity(model, search_set, store, plan, settings=settings, signal=signal):
        table.append(row)
        print(
            f"\r[sensitivity] {len(table)} rows, {time.perf_counter() - start:.0f} s", end="", file=sys.stderr
        )
    print(file=sys.stderr)
    sensitivity_s = time.perf_counter() - start
    reference: dict = {}
    kl = lambda recipe: next(run_divergence(model, search_set, [recipe], store, reference=reference))  # noqa: E731
    per_clip = dataclasses.replace(settings, packed=False)

    def wer(recipe) -> dict:
        """WER points on quick and full (packed windows, as sweeps measure) and on full one clip at a time (as
        `evaluate` measures: a decoding failure costs one clip, not the whole 30 s window it was packed
        in)."""
        points = {ds.name: next(run_sweep(model, ds, [recipe], store, settings)) for ds in (quick, full)}
        return {**points, "full per clip": next(run_sweep(model, full, [recipe], store, per_clip))}

    uniform, uniform_points = uniform_recipes(quant_variants=by_divergence), {}
    for index, (name, recipe) in enumerate(uniform.items()):
        print(f"\r[uniform] {index + 1}: {name}", end=" " * 20, file=sys.stderr, flush=True)
        uniform_points[name] = wer(recipe)
    print(file=sys.stderr)
    baseline = wer(Recipe())
    flags = (
        f"--search-on {search_on} --signal {signal}{' --measured' if measured else ''}"
        f"{' --quantize-only' if quantize_only else ''}"
    )
    what = "KL divergence from the uncompressed model" if by_divergence else "ΔWER"
    kl_header = f" KL {search_set.name} |" if by_divergence else ""
    lines = [
        "",
        f"### Budget search vs uniform recipes (bench/sweep.py --budget {flags})",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {torch.get_num_threads()} torch threads. "
        f"Sensitivity table ({what}): {len(table) - 1} probes on {search_set.name} ({sensitivity_s:.0f} s, "
        f"packed mode, {settings.latency_runs} latency runs). Uncompressed: "
        f"{baseline['quick'].size_bytes / 1e6:.1f} MB, WER quick {100 * baseline['quick'].wer:.2f}%, "
        f"full {100 * baseline['full'].wer:.2f}% (packed), "
        f"{100 * baseline['full per clip'].wer:.2f}% (per clip). "
        "The best uniform recipe is the one with the lowest per-clip WER on full among those no larger than "
        "the budget.",
        "",
        f"| budget (MB) | recipe | size MB |{kl_header} WER quick | WER full | WER full per clip |",
        "| --- | --- | --- |" + (" --- |" if by_divergence else "") + " --- | --- | --- |",
    ]
    budgets = sorted(
        {
            m["quick"].size_bytes
            for m in uniform_points.values()
            if m["quick"].size_bytes < baseline["quick"].size_bytes
        },
        reverse=True,
    )
    if by_divergence:
        measure = lambda recipe: kl(recipe)["divergence"]  # noqa: E731
    else:
        measure = lambda recipe: next(run_sweep(model, search_set, [recipe], store, settings)).wer  # noqa: E731
    wins = {"full": 0, "full per clip": 0}
    for budget in budgets:
        fits = [(name, m) for name, m in uniform_points.items() if m["quick"].size_bytes <= budget]
        best_name, best = min(fits, key=lambda item: item[1]["full per clip"].wer)
        try:
            if by_divergence:
                chosen = allocate(table, max_bytes=budget, measure=measure)
            else:
                chosen = budget_search(table, max_bytes=budget, measure=measure if measured else None)
        except ValueError as exc:
            lines.append(f"| {budget / 1e6:.2f} | per group: {exc} | |" + " |" * (4 + by_divergence))
            continue
        points = wer(chosen.recipe)
        for name in wins:  # each measure against the uniform recipe that is best by that same measure
            wins[name] += points[name].wer < min(m[name].wer for _, m in fits)
        rows = (
            (f"best uniform: {best_name}", uniform[best_name], best),
            (f"per group: {chosen.recipe.describe()}", chosen.recipe, points),
        )
        for label, recipe, measured_points in rows:
            kl_cell = f" {kl(recipe)['divergence']:.4f} |" if by_divergence else ""
            lines.append(
                f"| {budget / 1e6:.2f} | {label} | {measured_points['quick'].size_bytes / 1e6:.2f} |"
                f"{kl_cell} {100 * measured_points['quick'].wer:.2f}% | "
                f"{100 * measured_points['full'].wer:.2f}% | "
                f"{100 * measured_points['full per clip'].wer:.2f}% |"
            )
    lines += [
        "",
        f"Per-group recipe below the best uniform one (best by the same measure): on full per clip at "
        f"{wins['full per clip']} of {len(budgets)} budgets, on full packed at {wins['full']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet model loading (read on first import)
    parser = argparse.ArgumentParser(
        prog="python -m bench.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="quick")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-naive", action="store_true", help="only the fast mode")
    parser.add_argument("--append", type=Path, help="append the markdown report to this file")
    parser.add_argument("--budget", action="store_true", help="run the budget-search check instead")
    parser.add_argument("--store", type=Path, help="results store for --budget (default: a temporary one)")
    parser.add_argument(
        "--search-on",
        choices=("quick", "full", "train"),
        default="quick",
        help=f"--budget: where sensitivity and --measured moves are measured (train: its first "
        f"{TRAIN_SUBSET} utterances, never in quick or full)",
    )
    parser.add_argument("--measured", action="store_true", help="--budget: measure each greedy move")
    parser.add_argument("--quantize-only", action="store_true", help="--budget: probe bit widths only")
    parser.add_argument(
        "--signal",
        choices=("wer", "divergence"),
        default="wer",
        help="--budget: search on a ΔWER table (greedy) or a divergence table (exact allocation)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model, dataset = load_model(), load_dataset(args.dataset)
    if args.budget:
        with tempfile.TemporaryDirectory() as folder:
            text = bench_budget(
                model,
                Store(args.store or Path(folder) / "budget.sqlite"),
                SweepSettings(latency_runs=0),
                args.search_on,
                args.measured,
                args.quantize_only,
                args.signal,
            )
        text += f"\nLoad average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}.\n"
        print(text)
        if args.append:
            with open(args.append, "a") as f:
                f.write(text)
        return
    recipes = grid_recipes(GRID)
    assert len(recipes) == 27, len(recipes)
    modes = {name: settings for name, settings in MODES.items() if not (name == "naive" and args.skip_naive)}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        results = bench_modes(model, dataset, recipes, modes, folder)
        grid_file = folder / "grid.json"
        grid_file.write_text(__import__("json").dumps(GRID))
        fast = next(r for r in results if r["name"] == "fast")
        cli_s = cli_rerun(fast["store"], grid_file, args.dataset, args.threads)
    text = report(results, dataset, args, cli_s, (load_before, os.getloadavg()[0]))
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
