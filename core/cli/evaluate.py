"""`evaluate`: WER, CER, size and latency of a model on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli.common import add_model_arg, load


def run(args: argparse.Namespace) -> None:
    from core.data import load_dataset  # lazy: --help
    from core.measure.evaluate import evaluate  # lazy: --help

    dataset = load_dataset(args.dataset)
    model = load(args.model, args.recipe)
    result = evaluate(model, dataset, latency_runs=args.latency_runs)
    print(format_result(result.to_dict(), show_rows=args.rows))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}")


def format_result(r: dict, show_rows: bool = False) -> str:
    """A readable summary table of one evaluation."""
    low, high = r["wer_ci95"]
    lines = [
        f"model        {r['model']}",
        f"dataset      {r['dataset']} ({r['n_utterances']} utterances, {r['n_words']} words)",
        f"WER          {100 * r['wer']:.2f}%  (95% CI {100 * low:.2f}–{100 * high:.2f}; "
        f"raw {100 * r['raw_wer']:.2f}%)",
        f"CER          {100 * r['cer']:.2f}%",
        f"size         {r['size_bytes'] / 1e6:.2f} MB ({r['size_bytes']:,} bytes as safetensors), "
        f"{r['parameters']:,} parameters",
    ]
    if r["latency"]:
        lat = r["latency"]
        lines.append(
            f"latency      {lat['median_ms']:.0f} ms median "
            f"(min {lat['min_ms']:.0f}, max {lat['max_ms']:.0f}, "
            f"{lat['runs']} runs, {lat['threads']} threads) on a {lat['clip_seconds']:.1f} s clip, "
            f"RTF {r['real_time_factor']:.3f}"
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
        help="quick | full | train | a manifest CSV (path,text) | a LibriSpeech folder | "
        "a folder of audio files with same-named .txt transcripts",
    )
    p.add_argument("--json", type=Path, help="also write the full result (with per-utterance rows) here")
    p.add_argument("--latency-runs", type=int, default=5, help="timed runs for latency (0 = skip)")
    p.add_argument("--rows", action="store_true", help="print every utterance")
    add_model_arg(p)
    p.add_argument("--recipe", type=Path, help="compression recipe JSON applied to the model first")
    p.set_defaults(run=run)
