"""Short context against each runtime's stock int8 tiny.en: speed on short clips, WER by length and voice.

Usage (from the repository root): pip install -r requirements-bench.txt;
       python -m bench.short_context --student DIR [--student DIR ...] [--dataset full] [--threads 2]
              [--runtimes ct2,onnx,ggml]

Each --student is a folder written by `python -m core distill --short-context ...` (its steps and settings
chosen on `quick`, which is what `distill` evaluates on; never on --dataset). Per runtime, the variants are
the runtime's stock int8 tiny.en (full 30 s window), the stock model cut to short context without training
(to show the loop it falls into), and each student in int8 (the lab's recipe, written in the runtime's
format); in the lab (PyTorch) tiny.en and each student in float. All variants run on the same clips,
interleaved per clip (clip 1 through every variant in a rotating order, then clip 2, ...), so machine noise
hits them alike. Clips: every utterance of --dataset alone (≤ 10 s), then its utterances packed into 10–30 s
windows. Reported: WER, bytes the runtime loads, median ms per clip (min–max) and the speed-up against
stock int8 on the ≤ 10 s clips, transcripts that end in a loop, WER and time by clip length, WER by voice.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.runtimes import GROUP32, GROUPS, ct2_stock_int8, ggml_stock, interleaved, onnx_stock, quantize
from core.audio import SAMPLE_RATE
from core.compress.recipe import Recipe, apply_recipe
from core.data import ASSETS_DIR, load_dataset, load_waves, pack_utterances
from core.deploy.runtime import runtime
from core.io.folders import load_model
from core.measure.evaluate import machine_facts
from core.metrics import LENGTH_BUCKETS, by_length, score

INT8 = {  # the lab's 8-bit recipe per runtime, the layers its stock 8-bit quantizes
    "ct2": quantize([*GROUPS, "conv"], bits=8),  # CTranslate2's converter quantizes the convolutions too
    "onnx": quantize(GROUPS, bits=8),
    "ggml": quantize(GROUPS, bits=8, **GROUP32),  # q8_0
}
STOCK_SHORT = {"steps": [{"short_context": {}}]}


def stock_int8(name: str, model, folder: Path) -> None:
    """The runtime's own 8-bit tiny.en: CTranslate2's converter int8, ONNX Runtime's quantize_dynamic,
    whisper.cpp's q8_0."""
    if name == "ct2":
        ct2_stock_int8(model, folder)
    elif name == "onnx":
        onnx_stock(model, folder, "int8")
    else:
        ggml_stock(model, folder, "q8_0")


def voices(dataset) -> list[str]:
    """The synthetic voice of each utterance (the bundled manifest's `voice` column)."""
    with open(ASSETS_DIR / "eval" / "manifest.csv", newline="") as f:
        by_path = {(ASSETS_DIR / "eval" / row["path"]).resolve(): row["voice"] for row in csv.DictReader(f)}
    return [by_path.get(Path(u.path).resolve(), "?") for u in dataset.utterances]


def table(labels, texts, times, refs, seconds, short: int, stock: int | None) -> list[str]:
    """Rows of WER, loops, median ms on the short clips (speed against `stock`) and per-length buckets."""
    lines = []
    base = statistics.median(times[stock][:short]) if stock is not None else None
    for label, text, t in zip(labels, texts, times):
        scores = score(refs, text)
        median = statistics.median(t[:short])
        speed = f"{base / median:.2f}×" if base else "—"
        found = {b.bucket: b for b in by_length(scores.rows, seconds, t)}
        buckets = " | ".join(
            f"{100 * found[label].wer:.2f}% · {found[label].median_ms:.0f} ms" if label in found else "—"
            for label, *_ in LENGTH_BUCKETS[:3]
        )
        lines.append(
            f"| {label} | {100 * score(refs[:short], text[:short]).wer:.2f} | {scores.looped} | "
            f"{median:.0f} ({min(t[:short]):.0f}–{max(t[:short]):.0f}) | {speed} | {buckets} |"
        )
    return lines


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="python -m bench.short_context", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--student", type=Path, action="append", required=True, help="a short-context student"
    )
    parser.add_argument("--dataset", default="full", help="the set reported on (never used for choosing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", default="ct2,onnx,ggml")
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported folders here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_model()
    students = [load_model(folder) for folder in args.student]
    dataset = load_dataset(args.dataset)
    waves, refs = load_waves(dataset), [u.text for u in dataset.utterances]
    windows, joined, _ = pack_utterances(waves, refs, [u.id for u in dataset.utterances])
    clips, references = waves + windows, refs + joined
    seconds = [len(c) / SAMPLE_RATE for c in clips]
    short = len(waves)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-short-"))
    facts = machine_facts(args.threads)
    print(
        f"dataset {dataset.name}: {short} clips of {min(seconds[:short]):.1f}–{max(seconds[:short]):.1f} s "
        f"and {len(windows)} packed windows of {min(seconds[short:]):.1f}–{max(seconds[short:]):.1f} s; "
        f"{args.threads} threads, {facts['cpu']}, interleaved per clip; {time.strftime('%Y-%m-%d %H:%M')}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        "| variant | WER % (≤ 10 s) | loops | median ms per ≤ 10 s clip (min–max) | speed vs stock int8 | "
        + " | ".join(bucket for bucket, *_ in LENGTH_BUCKETS[:3])
        + " |"
    )
    rows_by_voice = {}
    for name in args.runtimes.split(","):
        folders = {
            "stock int8": root / f"{name}-stock",
            "stock in short context (untrained)": root / f"{name}-cut",
        }
        stock_int8(name, teacher, folders["stock int8"])
        cut = apply_recipe(
            teacher, Recipe.from_json({"steps": [*STOCK_SHORT["steps"], *INT8[name]["steps"]]})
        )[0]
        runtime(name).export(cut, folders["stock in short context (untrained)"])
        for folder, student in zip(args.student, students):
            out = root / f"{name}-{folder.name}"
            runtime(name).export(apply_recipe(student, Recipe.from_json(INT8[name]))[0], out)
            folders[f"{student.name} · int8"] = out
        deployed = [runtime(name).load(f, args.threads) for f in folders.values()]
        texts, times = interleaved(deployed, clips)
        print(f"\n{runtime(name).title}\n\n{header}\n|{'---|' * 8}")
        sizes = {label: d.size_bytes() / 1e6 for label, d in zip(folders, deployed)}
        print("\n".join(table(list(folders), texts, times, references, seconds, short, stock=0)))
        print(
            "\nsizes (MB, the files the runtime loads): "
            + ", ".join(f"{k} {v:.2f}" for k, v in sizes.items())
        )
        rows_by_voice[f"{name} stock int8"] = texts[0][:short]
        for label, text in list(zip(folders, texts))[2:]:
            rows_by_voice[f"{name} {label}"] = text[:short]

    lab = [teacher, *students]
    texts, times = interleaved(lab, clips)
    print(f"\nlab (PyTorch {torch.__version__}, float32)\n\n{header}\n|{'---|' * 8}")
    print("\n".join(table([m.name for m in lab], texts, times, references, seconds, short, stock=0)))
    for model, text in zip(lab, texts):
        rows_by_voice[f"lab {model.name}"] = text[:short]

    by_voice = voices(dataset)
    names = sorted(set(by_voice))
    print(
        "\nWER % by voice (≤ 10 s clips)\n\n| variant | "
        + " | ".join(names)
        + " |\n|"
        + "---|" * (len(names) + 1)
    )
    for label, text in rows_by_voice.items():
        cells = []
        for voice in names:
            chosen = [i for i, v in enumerate(by_voice) if v == voice]
            cells.append(f"{100 * score([refs[i] for i in chosen], [text[i] for i in chosen]).wer:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
