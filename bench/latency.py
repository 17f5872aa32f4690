"""Which compressions really run faster on this CPU? fp32 against each speed path, same clips, one run.

Usage (from the repository root): python -m bench.latency [--dataset full] [--threads 2] [--clips 24]
         [--models DIR ...] [--short] [--interleaved [--rounds 21]]
--models adds saved model folders (e.g. students from `python -m core distill`) as rows; --short keeps
only fp32 and int8 of the recipes.
Prints, per recipe: WER on the dataset, artifact size, median ms per clip and the speed-up against
fp32 measured in this same run, next to the theoretical speed-up from weight FLOPs per token.
Unstructured sparsity and fake-quantized weights compute in dense fp32, so they are expected at ~1.0x.
--interleaved prints only int8 dynamic against fp32, timed alternately (order flipped each time) so that
drift in clock speed or machine load hits both alike: a whisper-sized Linear (384 -> 1536 on 1500 frames,
--rounds times) and the whole model clip by clip (--clips). Per side: median and min-max ms, then the
fp32/int8 ratio of the medians and the thread count. This is where "int8 is faster" is measured; unit
tests make no timing claims.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.compress.cost import linear_macs
from core.compress.quant import Int8DynamicLinear, QuantConfig
from core.compress.recipe import Recipe, apply_recipe
from core.data import (
    load_dataset,
    load_waves,
)
from core.io.folders import load_model
from core.measure.evaluate import model_size_bytes
from core.metrics import score

RECIPES = {
    "fp32 (baseline)": {"steps": []},
    "int8 dynamic, all Linear + output projection": {
        "steps": [{"quantize": {"bits": 8, "backend": "int8_dynamic"}}]
    },
    "4-bit channel RTN (fake-quantized: dense compute)": {"steps": [{"quantize": {"bits": 4}}]},
    "unstructured 50% (dense compute)": {"steps": [{"prune": {"sparsity": 0.5}}]},
    "FFN neurons pruned 50% (structured)": {
        "steps": [
            {"prune": {"sparsity": 0.5, "structure": "neurons", "groups": ["encoder.ffn", "decoder.ffn"]}}
        ]
    },
    "SVD rank 25% (factorized)": {"steps": [{"low_rank": {"rank_fraction": 0.25}}]},
    "FFN neurons 20% + int8 dynamic": {
        "steps": [
            {"prune": {"sparsity": 0.2, "structure": "neurons", "groups": ["encoder.ffn", "decoder.ffn"]}},
            {"quantize": {"bits": 8, "backend": "int8_dynamic"}},
        ]
    },
    "FFN neurons 30% + int8 dynamic": {
        "steps": [
            {"prune": {"sparsity": 0.3, "structure": "neurons", "groups": ["encoder.ffn", "decoder.ffn"]}},
            {"quantize": {"bits": 8, "backend": "int8_dynamic"}},
        ]
    },
}


def interleaved(runs: dict[str, Callable], inputs: list) -> dict[str, list[float]]:
    """Milliseconds per call of each run on every input, the runs taking turns (order flipped per input)."""
    names = list(runs)
    times = {name: [] for name in names}
    for index, item in enumerate(inputs):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name](item)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def print_comparison(title: str, times: dict[str, list[float]]) -> None:
    """Median and min-max per run, then the fp32/int8 ratio of the medians; no verdict, just numbers."""
    print(f"{title} ({torch.get_num_threads()} threads)")
    for name, values in times.items():
        print(
            f"  {name:12s} median {statistics.median(values):9.2f} ms   "
            f"min-max {min(values):.2f}-{max(values):.2f} ms   ({len(values)} runs)"
        )
    ratio = statistics.median(times["fp32"]) / statistics.median(times["int8 dynamic"])
    print(f"  fp32 / int8 dynamic (medians): {ratio:.2f}x")


def compare_int8(base, waves, clips: int, rounds: int) -> None:
    """int8 dynamic against fp32, interleaved: one whisper-sized Linear, then the whole model per clip."""
    torch.manual_seed(0)
    linear = nn.Linear(384, 1536)
    int8 = Int8DynamicLinear.from_float(linear, QuantConfig(backend="int8_dynamic"))
    x = torch.randn(1500, 384)
    with torch.inference_mode():
        linear(x)  # warm-up
        int8(x)
        layer = interleaved({"fp32": linear, "int8 dynamic": int8}, [x] * rounds)
    print_comparison("Linear 384 -> 1536 on 1500 frames", layer)
    int8_recipe = Recipe.from_json(RECIPES["int8 dynamic, all Linear + output projection"])
    quantized = apply_recipe(base, int8_recipe)[0]
    base.transcribe([waves[0]])  # warm-up
    quantized.transcribe([waves[0]])
    runs = {
        "fp32": lambda wave: base.transcribe([wave]),
        "int8 dynamic": lambda wave: quantized.transcribe([wave]),
    }
    model = interleaved(runs, waves[:clips])
    print_comparison(f"whole model, {len(model['fp32'])} clips one at a time", model)


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet model loading (read on first import)
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--dataset", default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=24, help="clips timed per recipe (WER uses all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--models", type=Path, nargs="*", default=[], help="model folders to time as extra rows"
    )
    parser.add_argument("--short", action="store_true", help="of the recipes, only fp32 and int8 dynamic")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="only int8 dynamic against fp32, timed alternately (a Linear, then per clip)",
    )
    parser.add_argument("--rounds", type=int, default=21, help="Linear calls per side with --interleaved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model()
    dataset = load_dataset(args.dataset)
    waves = load_waves(dataset)
    refs = [u.text for u in dataset.utterances]
    print(
        f"{dataset.name}: {len(waves)} clips (timing {args.clips}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.interleaved:
        compare_int8(base, waves, args.clips, args.rounds)
        return
    print(
        f"{'recipe':50s} {'WER %':>6s} {'MB':>6s} {'ms/clip':>8s} {'speed-up':>8s} {'dense-FLOP ratio':>16s}"
    )
    rows, base_ms, base_flops = [], None, linear_macs(base.module)
    recipes = list(RECIPES.items())[: 2 if args.short else None]
    variants = [
        (
            label,
            spec,
            lambda spec=spec: apply_recipe(base, Recipe.from_json(spec))[0] if spec["steps"] else base,
        )
        for label, spec in recipes
    ]
    variants += [
        (f"folder {folder}", {"model": str(folder)}, lambda folder=folder: load_model(folder))
        for folder in args.models
    ]
    for label, spec, build in variants:
        model = build()
        model.transcribe([waves[0]])  # warm-up
        times = []
        for wave in waves[: args.clips]:
            start = time.perf_counter()
            model.transcribe([wave])
            times.append((time.perf_counter() - start) * 1000)
        hyps = [model.transcribe([w])[0] for w in waves]
        wer = score(refs, hyps).wer
        median = statistics.median(times)
        base_ms = base_ms or median
        theory = base_flops / max(linear_macs(model.module), 1)
        size = model_size_bytes(model)
        rows.append(
            {
                "recipe": label,
                "spec": spec,
                "wer": wer,
                "size_bytes": size,
                "median_ms": median,
                "speedup": base_ms / median,
                "theoretical_speedup": theory,
            }
        )
        print(
            f"{label:50s} {100 * wer:6.2f} {size / 1e6:6.1f} {median:8.0f} "
            f"{base_ms / median:7.2f}x {theory:15.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
