"""Which compressions really run faster on this CPU? fp32 against each speed path, same clips, one run.

Usage: python bench/latency.py [--dataset full] [--threads 2] [--clips 24] [--models DIR ...] [--short]
--models adds saved model folders (e.g. students from `python -m core distill`) as rows; --short keeps
only fp32 and int8 of the recipes.
Prints, per recipe: WER on the dataset, artifact size, median ms per clip and the speed-up against
fp32 measured in this same run, next to the theoretical speed-up from weight FLOPs per token.
Unstructured sparsity and fake-quantized weights compute in dense fp32, so they are expected at ~1.0x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from core.data import load_dataset  # noqa: E402
from core.data import load_waves  # noqa: E402
from core.measure.evaluate import model_size_bytes  # noqa: E402
from core.compress.cost import linear_macs  # noqa: E402
from core.metrics import score  # noqa: E402
from core.io.folders import load_model  # noqa: E402
from core.compress.recipe import apply_recipe, Recipe  # noqa: E402

RECIPES = {
    "fp32 (baseline)": {"steps": []},
    "int8 dynamic, all Linear + output projection": {"steps": [{"quantize": {"bits": 8, "backend": "int8_dynamic"}}]},
    "4-bit channel RTN (fake-quantized: dense compute)": {"steps": [{"quantize": {"bits": 4}}]},
    "unstructured 50% (dense compute)": {"steps": [{"prune": {"sparsity": 0.5}}]},
    "FFN neurons pruned 50% (structured)": {"steps": [{"prune": {"sparsity": 0.5, "structure": "neurons",
                                                                  "groups": ["encoder.ffn", "decoder.ffn"]}}]},
    "SVD rank 25% (factorized)": {"steps": [{"low_rank": {"rank_fraction": 0.25}}]},
    "FFN neurons 20% + int8 dynamic": {"steps": [
        {"prune": {"sparsity": 0.2, "structure": "neurons", "groups": ["encoder.ffn", "decoder.ffn"]}},
        {"quantize": {"bits": 8, "backend": "int8_dynamic"}}]},
    "FFN neurons 30% + int8 dynamic": {"steps": [
        {"prune": {"sparsity": 0.3, "structure": "neurons", "groups": ["encoder.ffn", "decoder.ffn"]}},
        {"quantize": {"bits": 8, "backend": "int8_dynamic"}}]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=24, help="clips timed per recipe (WER uses all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--models", type=Path, nargs="*", default=[], help="model folders to time as extra rows")
    parser.add_argument("--short", action="store_true", help="of the recipes, only fp32 and int8 dynamic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model()
    dataset = load_dataset(args.dataset)
    waves = load_waves(dataset)
    refs = [u.text for u in dataset.utterances]
    print(f"{dataset.name}: {len(waves)} clips (timing {args.clips}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'recipe':50s} {'WER %':>6s} {'MB':>6s} {'ms/clip':>8s} {'speed-up':>8s} {'dense-FLOP ratio':>16s}")
    rows, base_ms, base_flops = [], None, linear_macs(base.module)
    recipes = list(RECIPES.items())[: 2 if args.short else None]
    variants = [(label, spec, lambda spec=spec: apply_recipe(base, Recipe.from_json(spec))[0]
                 if spec["steps"] else base) for label, spec in recipes]
    variants += [(f"folder {folder}", {"model": str(folder)}, lambda folder=folder: load_model(folder))
                 for folder in args.models]
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
        rows.append({"recipe": label, "spec": spec, "wer": wer, "size_bytes": size, "median_ms": median,
                     "speedup": base_ms / median, "theoretical_speedup": theory})
        print(f"{label:50s} {100 * wer:6.2f} {size / 1e6:6.1f} {median:8.0f} {base_ms / median:7.2f}x {theory:15.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
