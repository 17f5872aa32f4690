"""`evaluate`: WER, CER, size and latency of a model on a dataset. A folder written by
`export --format ct2|onnx|ggml` is measured inside its runtime (detected from the folder); `--parity`
also evaluates the lab model it was exported from and lists the clips whose transcripts differ."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli.common import add_model_arg, load, load_or_deployed


def run(args: argparse.Namespace) -> None:
    from core.data import load_dataset  # lazy: --help
    from core.deploy.runtime import Deployed, export_facts  # lazy: --help
    from core.measure.evaluate import evaluate  # lazy: --help

    dataset = load_dataset(args.dataset)
    model = load_or_deployed(args.model, args.recipe, args.threads)
    if args.parity and not isinstance(model, Deployed):
        raise ValueError("--parity compares an exported folder with the lab model it came from")
    result = evaluate(model, dataset, latency_runs=args.latency_runs).to_dict()
    print(format_result(result, show_rows=args.rows))
    if args.parity:
        origin = export_facts(Path(args.model)).get("origin")
        if not origin:
            raise ValueError(f"{args.model} does not record the lab model it came from (exported by hand?)")
        from core.compress.recipe import Recipe, apply_recipe  # lazy: --help

        lab_model = load(origin["model"])
        if origin["recipe"]:
            lab_model = apply_recipe(lab_model, Recipe.from_json(origin["recipe"]))[0]
        lab = evaluate(lab_model, dataset, latency_runs=args.latency_runs).to_dict()
        print("\n" + format_parity(lab, result))
        result["parity"] = {"lab": lab}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


def format_parity(lab: dict, deployed: dict) -> str:
    """The lab's and the runtime's WER, size and latency side by side, then every clip they differ on."""
    lines = [f"{'':10s} {'WER':>7s} {'size MB':>8s} {'latency ms':>11s}"]
    for name, r in (("lab", lab), (deployed["runtime"], deployed)):
        latency = f"{r['latency_ms']:11.0f}" if r["latency_ms"] is not None else f"{'-':>11s}"
        lines.append(f"{name:10s} {100 * r['wer']:6.2f}% {r['size_bytes'] / 1e6:8.2f} {latency}")
    lines.append(f"WER difference {100 * (deployed['wer'] - lab['wer']):+.2f} points")
    differ = [(a, b) for a, b in zip(lab["rows"], deployed["rows"]) if a["hypothesis"] != b["hypothesis"]]
    lines.append(f"{len(differ)} of {len(lab['rows'])} transcripts differ")
    for a, b in differ:
        lines.append(
            f"  {a['id']}: lab: {a['hypothesis']}\n  {' ' * len(a['id'])}  {deployed['runtime']}: "
            f"{b['hypothesis']}"
        )
    return "\n".join(lines)


def format_result(r: dict, show_rows: bool = False) -> str:
    """A readable summary table of one evaluation."""
    low, high = r["wer_ci95"]
    runtime = r.get("runtime", "lab")
    where = "as safetensors" if runtime == "lab" else f"of the files {runtime} loads"
    lines = [
        f"model        {r['model']}" + ("" if runtime == "lab" else f"  (measured in {runtime})"),
        f"dataset      {r['dataset']} ({r['n_utterances']} utterances, {r['n_words']} words)",
        f"WER          {100 * r['wer']:.2f}%  (95% CI {100 * low:.2f}–{100 * high:.2f}; "
        f"raw {100 * r['raw_wer']:.2f}%)",
        f"CER          {100 * r['cer']:.2f}%",
        f"loops        {r.get('looped', 0)} transcript(s) end in a repeated phrase (a loop cut short)",
        f"size         {r['size_bytes'] / 1e6:.2f} MB ({r['size_bytes']:,} bytes {where}), "
        f"{r['parameters']:,} parameters",
    ]
    silent = r.get("no_speech") or []
    if silent:
        more = " …" if len(silent) > 5 else ""
        lines.append(
            f"no speech    {len(silent)} clip(s) sound like noise or silence, and Whisper writes words for "
            f"them anyway: {', '.join(silent[:5])}{more}"
        )
    if r["latency"]:
        lat = r["latency"]
        lines.append(
            f"latency      {lat['median_ms']:.0f} ms median "
            f"(min {lat['min_ms']:.0f}, max {lat['max_ms']:.0f}, "
            f"{lat['runs']} runs, {lat['threads']} threads) on a {lat['clip_seconds']:.1f} s clip, "
            f"RTF {r['real_time_factor']:.3f}"
        )
    if r.get("by_length"):
        lines.append("by length    (one clip per window; time = transcription of the clip)")
    for b in r.get("by_length") or []:
        lines.append(
            f"  {b['bucket']:>8s}   WER {100 * b['wer']:6.2f}% on {b['clips']} clips ({b['words']} words), "
            f"{b['median_ms']:.0f} ms median per clip"
        )
    machine = r.get("machine") or {}
    if machine.get("contended"):
        lines.append(
            f"load         {machine['load_average']:.1f} on {machine['cpus']} CPUs while measuring: the "
            "machine was busy, so the times are inflated; compare ratios measured in one run"
        )
    lines.append(f"eval time    {r['eval_seconds']:.1f} s")
    if show_rows:
        lines.append("")
        for row in r["rows"]:
            mark = "ok " if row["wer"] == 0 else f"{100 * row['wer']:3.0f}%"
            lines.append(f"{mark} {row['id']}: {row['hypothesis']}  | ref: {row['reference']}")
    return "\n".join(lines)


def add_command(commands) -> None:
    p = commands.add_parser("evaluate", help="WER, CER, size and latency on a dataset")
    p.add_argument(
        "--dataset",
        default="quick",
        help="quick | full | train | a saved set (see `datasets`) | a manifest CSV (path,text) | "
        "a LibriSpeech folder | "
        "a folder of audio files with same-named .txt transcripts",
    )
    p.add_argument("--json", type=Path, help="also write the full result (with per-utterance rows) here")
    p.add_argument("--latency-runs", type=int, default=5, help="timed runs for latency (0 = skip)")
    p.add_argument("--rows", action="store_true", help="print every utterance")
    add_model_arg(
        p,
        "'whisper-tiny.en' (bundled), a model/artifact folder, a Hugging Face id, or a folder written by "
        "`export --format ct2|onnx|ggml` (measured in that runtime, on --threads threads)",
    )
    p.add_argument("--recipe", type=Path, help="compression recipe JSON applied to the model first")
    p.add_argument(
        "--parity",
        action="store_true",
        help="with an exported folder: also evaluate the lab model it was exported from, and list the "
        "clips whose transcripts differ",
    )
    p.set_defaults(run=run)
