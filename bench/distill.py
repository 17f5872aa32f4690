"""Distillation and recovery fine-tuning on the bundled data: wall time, WER before/after on `full`.

Usage (from the repository root): python -m bench.distill [--threads 2] [--steps 200] [--demo]
         [--recovery RECIPE.json ...] [--append FILE]

  --demo       a 2-layer-decoder student of tiny.en (distil-whisper initialisation) trained on the
               `train` split; the whole run (data synthesis excluded, teacher caching included) is timed
  --recovery   for each recipe: the compressed model's WER, then recovery fine-tuning, then WER again
WER is measured on `full` (never trained on) both ways: packed 30 s windows (what training reports) and
one clip per window (what `python -m core evaluate` reports). Latency: the fixed clip, 5 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from core.compress.recipe import Recipe, apply_recipe
from core.data import (
    load_dataset,
    load_waves,
)
from core.io.folders import load_model
from core.measure.evaluate import evaluate, machine_facts, measure_latency
from core.train.distill import DistillConfig, StudentSpec, distill, format_progress


def wers(model, full, waves) -> tuple[float, float]:
    """(packed, one clip per window) WER on full."""
    packed = evaluate(model, full, waves=waves, latency_runs=0, packed=True).scores.wer
    single = evaluate(model, full, waves=waves, latency_runs=0).scores.wer
    return packed, single


def run(teacher, spec: StudentSpec, config: DistillConfig, train, full, full_waves) -> dict:
    """Build the student, measure it, train it (timed), apply the post-training steps, measure again."""
    start = time.perf_counter()
    student, after = spec.build(teacher)
    before = wers(apply_recipe(student, after)[0], full, full_waves)
    train_start = time.perf_counter()
    for progress in distill(student, teacher, train, config):
        if progress.stage != "train" or progress.step % 20 == 0 or progress.step == config.steps:
            print(format_progress(progress), file=sys.stderr, flush=True)
    trained = time.perf_counter() - train_start
    final = apply_recipe(student, after)[0]
    result = {
        "label": spec.describe(config.steps),
        "before": before,
        "after": wers(final, full, full_waves),
        "train_s": trained,
        "total_s": time.perf_counter() - start,
        "latency_ms": measure_latency(final).median_ms,
        "params": final.num_parameters(),
    }
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet model loading (read on first import)
    parser = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--demo", action="store_true")
    parser.add_argument("--recovery", type=Path, nargs="*", default=[])
    parser.add_argument("--append", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    teacher, train, full = load_model(), load_dataset("train"), load_dataset("full")
    full_waves = load_waves(full)
    base = wers(teacher, full, full_waves)
    base_latency = measure_latency(teacher).median_ms
    config = DistillConfig(steps=args.steps, learning_rate=args.lr)
    results = []
    if args.demo:
        results.append(run(teacher, StudentSpec(decoder_layers=2), config, train, full, full_waves))
    for path in args.recovery:
        results.append(
            run(teacher, StudentSpec(recipe=Recipe.load(path).to_json()), config, train, full, full_waves)
        )
    facts = machine_facts()
    lines = [
        "",
        f"### Distillation (bench/distill.py, issue #6), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{facts['cpu']}, torch.set_num_threads({args.threads}), torch {facts['torch']}; "
        "teacher tiny.en; train "
        f"split {len(train)} utterances; {config.steps} steps of {config.batch_size} windows, lr "
        f"{config.learning_rate:g}, T {config.temperature:g}, α {config.alpha:g}, seed {config.seed}. WER on "
        f"`full` ({len(full)} clips, never trained on), packed windows / one clip per window. Load average "
        f"before/after: {load:.1f} / {os.getloadavg()[0]:.1f}.",
        "",
        "| model | WER before (packed / single) | WER after (packed / single) | train time | latency "
        "| parameters |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| tiny.en teacher | {100 * base[0]:.2f}% / {100 * base[1]:.2f}% | | | {base_latency:.0f} ms | "
        f"{teacher.num_parameters() / 1e6:.1f} M |",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {100 * r['before'][0]:.2f}% / {100 * r['before'][1]:.2f}% | "
            f"{100 * r['after'][0]:.2f}% / {100 * r['after'][1]:.2f}% | {r['train_s']:.0f} s "
            f"(whole run {r['total_s']:.0f} s) | {r['latency_ms']:.0f} ms | {r['params'] / 1e6:.1f} M |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
