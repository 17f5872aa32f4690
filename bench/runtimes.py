"""Runtimes side by side: tiny.en as each runtime's own tooling quantizes it, against the lab's exports.

Usage (from the repository root): pip install -r requirements-bench.txt;
       python -m bench.runtimes [--dataset full] [--choose quick] [--threads 2] [--runtimes ct2,onnx,ggml]

For each runtime, every variant is exported, loaded in that runtime with the same thread count, and run
on the same clips, interleaved per clip (clip 1 through every variant in a rotating order, then clip 2,
...), so machine noise hits all variants alike. Per variant: WER on --dataset, the bytes of the files the
runtime loads, and the median time per clip (min-max).

Stock variants are what the runtime's own tools make from the float model: CTranslate2's converter
quantization (int8), ONNX Runtime's `quantize_dynamic` (int8, per channel) and `MatMulNBitsQuantizer`
(4-bit, blocks of 32), whisper.cpp's reference quantizer (q8_0, q5_1, q4_0; ggml's rounding through
gguf's numpy port). Lab variants are the lab's recipes written in the runtime's format; for each slot the
recipe is CHOSEN on --choose (the lab's own packed evaluation; default `quick`) among a few candidates,
and REPORTED on --dataset (default `full`), which never takes part in choosing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core.audio import SAMPLE_RATE
from core.compress.recipe import Recipe, apply_recipe
from core.data import load_dataset, load_waves
from core.deploy.runtime import runtime
from core.io.folders import load_model
from core.measure.store import Store
from core.measure.sweep import SweepSettings, run_sweep
from core.metrics import by_length, score
from core.models import DEFAULT_GROUPS

GROUPS = [*DEFAULT_GROUPS, "embedding"]  # every matrix: whisper.cpp has one type for all of them


def quantize(groups=GROUPS, **config) -> dict:
    return {"steps": [{"quantize": {"groups": groups, **config}}]}


# Candidate lab recipes per slot (runtime, format): the first that the choice set scores best is reported.
F16 = quantize(GROUPS + ["conv"], bits=16)
GROUP32 = {"granularity": "group", "group_size": 32, "scale_dtype": "float16"}
SLOTS = {
    # CTranslate2's converter quantizes the convolutions too: so does the lab's recipe here (equal size)
    ("ct2", "int8"): [
        quantize(GROUPS + ["conv"], bits=8),
        quantize(GROUPS + ["conv"], bits=8, method="mse"),
    ],
    ("onnx", "int8"): [quantize(bits=8), quantize(bits=8, method="mse")],
    ("onnx", "int4"): [
        quantize(bits=4, **GROUP32, method="mse"),
        quantize(bits=4, **GROUP32, method="mse", symmetric=False),
        quantize(bits=4, **GROUP32, method="mse", gptq=True),
    ],
    # ONNX Runtime's 4-bit quantizer keeps the float token table for the lookup (only the logits MatMul is
    # 4-bit): the same layers, the lab's codes, for a comparison at about equal size
    ("onnx", "int4 linear"): [
        quantize(list(DEFAULT_GROUPS), bits=4, **GROUP32, method="mse"),
        quantize(list(DEFAULT_GROUPS), bits=4, **GROUP32, method="mse", symmetric=False),
    ],
    ("ggml", "q8_0"): [quantize(bits=8, **GROUP32), quantize(bits=8, **GROUP32, method="mse")],
    ("ggml", "q5_1"): [
        quantize(bits=5, **GROUP32, symmetric=False),
        quantize(bits=5, **GROUP32, symmetric=False, method="mse"),
    ],
    ("ggml", "q4_0"): [
        quantize(bits=4, **GROUP32, method="mse"),
        quantize(bits=4, **GROUP32, method="mse", gptq=True),
    ],
}


@dataclass
class Variant:
    runtime: str
    label: str  # "stock int8", "lab q4_0", ...
    origin: str  # the tool or the lab recipe that made it
    folder: Path


# ----------------------------------------------------------------------------- stock tooling


def ct2_stock_int8(model, folder: Path) -> str:
    """CTranslate2's own int8 (what `ct2-transformers-converter --quantization int8` writes)."""
    from core.deploy.ct2 import LabWhisperLoader, export_ct2

    export_ct2(model, folder)  # the folder's other files, then model.bin again with CTranslate2's rounding
    with torch.no_grad():
        spec = LabWhisperLoader(model.module, model.decoding)(model.module, model.tokenizer)
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(folder))
    return "CTranslate2 converter, quantization int8"


def onnx_stock(model, folder: Path, kind: str) -> str:
    """ONNX Runtime's own quantizers over the lab's float export: dynamic int8 per channel, or 4-bit
    MatMulNBits in blocks of 32 (symmetric)."""
    import onnx

    runtime("onnx").export(model, folder)
    for name in ("encoder.onnx", "decoder.onnx"):
        path = folder / name
        if kind == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(path, path, per_channel=True, weight_type=QuantType.QUInt8)
        else:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), bits=4, block_size=32, is_symmetric=True)
            quantizer.process()
            quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    if kind == "int8":
        return "onnxruntime.quantization.quantize_dynamic(per_channel=True, QUInt8)"
    return "onnxruntime MatMulNBitsQuantizer(bits=4, block_size=32, symmetric)"


def ggml_stock(model, folder: Path, kind: str) -> str:
    from core.deploy.ggml import export_ggml

    export_ggml(model, folder, requantize=kind)
    return f"whisper.cpp reference quantizer, {kind}"


# ----------------------------------------------------------------------------- choosing lab recipes


def choose(model, slot: tuple[str, str], dataset_name: str) -> dict:
    """The candidate recipe of `slot` with the lowest WER on `dataset_name` (the lab's packed evaluation,
    from the results store when measured before)."""
    dataset = load_dataset(dataset_name)
    with Store(Path(tempfile.gettempdir()) / "bench-runtimes-choice.sqlite") as store:
        points = list(run_sweep(model, dataset, SLOTS[slot], store, SweepSettings(latency_runs=0)))
    best = min(points, key=lambda p: p.wer)
    for p in points:
        print(f"  choose {slot[0]} {slot[1]} on {dataset_name}: {100 * p.wer:6.2f}%  {p.label}")
    return best.recipe


def variants(model, names: list[str], choice_set: str, root: Path) -> list[Variant]:
    """Every variant of the runtimes in `names`, exported under `root`."""
    out = []

    def add(name: str, label: str, make) -> None:
        folder = root / f"{name}-{label.replace(' ', '-')}"
        out.append(Variant(name, label, make(folder), folder))

    def lab(name: str, fmt: str):
        recipe = Recipe.from_json(choose(model, (name, fmt), choice_set))
        variant = apply_recipe(model, recipe)[0]

        def make(folder: Path) -> str:
            runtime(name).export(variant, folder)
            return f"lab: {recipe.describe()}"

        add(name, f"lab {fmt}", make)

    def float_export(name: str):
        def make(folder: Path) -> str:
            if name == "ggml":  # whisper.cpp 1.8.5's CPU backend runs no float32 convolution: f16 it is
                runtime(name).export(apply_recipe(model, Recipe.from_json(F16))[0], folder)
                return "the model in float16, exported by the lab"
            runtime(name).export(model, folder)
            return "the float model, exported by the lab"

        return make

    for name in names:
        add(name, "float", float_export(name))
        if name == "ct2":
            add(name, "stock int8", lambda folder: ct2_stock_int8(model, folder))
            lab(name, "int8")
        elif name == "onnx":
            for kind in ("int8", "int4"):
                add(name, f"stock {kind}", lambda folder, kind=kind: onnx_stock(model, folder, kind))
                lab(name, kind)
            lab(name, "int4 linear")
        elif name == "ggml":
            for kind in ("q8_0", "q5_1", "q4_0"):
                add(name, f"stock {kind}", lambda folder, kind=kind: ggml_stock(model, folder, kind))
                lab(name, kind)
    return out


# ----------------------------------------------------------------------------- measuring


def interleaved(deployed: list, waves: list) -> tuple[list[list[str]], list[list[float]]]:
    """Transcribe every clip with every model, clip by clip in a rotating order; texts and ms per model."""
    for model in deployed:
        model.transcribe([waves[0]])  # warm-up
    texts = [[] for _ in deployed]
    times = [[] for _ in deployed]
    for index, wave in enumerate(waves):
        order = list(range(len(deployed)))
        order = order[index % len(order) :] + order[: index % len(order)]
        for i in order:
            start = time.perf_counter()
            texts[i].append(deployed[i].transcribe([wave])[0])
            times[i].append((time.perf_counter() - start) * 1000)
    return texts, times


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="python -m bench.runtimes", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="full", help="the set reported on (never used for choosing)")
    parser.add_argument("--choose", default="quick", help="the set the lab's recipes are chosen on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", default="ct2,onnx,ggml")
    parser.add_argument("--clips", type=int, default=0, help="only the first N clips (0 = all)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported folders here")
    args = parser.parse_args()
    if args.choose == args.dataset:
        parser.error("--choose and --dataset must differ: a recipe chosen on the reported set flatters it")
    torch.set_num_threads(args.threads)
    model = load_model()
    dataset = load_dataset(args.dataset)
    waves, refs = load_waves(dataset), [u.text for u in dataset.utterances]
    if args.clips:
        waves, refs = waves[: args.clips], refs[: args.clips]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    built = variants(model, args.runtimes.split(","), args.choose, root)
    print(
        f"\ndataset {dataset.name}: {len(waves)} clips (recipes chosen on {args.choose}), "
        f"{args.threads} threads, interleaved per clip; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    header = (
        "| runtime | variant | made by | WER % | size MB | median ms/clip (min–max) | speed vs stock int8 |"
    )
    for name in args.runtimes.split(","):
        group = [v for v in built if v.runtime == name]
        deployed = [runtime(name).load(v.folder, args.threads) for v in group]
        texts, times = interleaved(deployed, waves)
        medians = [statistics.median(t) for t in times]
        stock = next((m for v, m in zip(group, medians) if v.label in ("stock int8", "stock q8_0")), None)
        print(f"\n{header}\n|{'---|' * 7}")
        lengths = []
        for v, d, text, t, median in zip(group, deployed, texts, times, medians):
            speed = f"{stock / median:.2f}×" if stock else "—"
            scores = score(refs, text)
            print(
                f"| {runtime(name).title} | {v.label} | {v.origin} | {100 * scores.wer:.2f} | "
                f"{d.size_bytes() / 1e6:.2f} | {median:.0f} ({min(t):.0f}–{max(t):.0f}) | {speed} |"
            )
            buckets = by_length(scores.rows, [len(w) / SAMPLE_RATE for w in waves], t)
            lengths.append(
                f"| {v.label} | " + " | ".join(f"{100 * b.wer:.2f}% · {b.median_ms:.0f} ms" for b in buckets)
            )
        counts = ", ".join(f"{b.bucket}: {b.clips} clips" for b in buckets)
        print(f"\nby clip length ({counts}): WER · median ms per clip")
        print("\n".join(line + " |" for line in lengths))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
