"""Command line: everything the dashboard shows can be reproduced here (`python -m core --help`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="whisper-tiny.en",
                        help="'whisper-tiny.en' (bundled), a model/artifact folder, or a Hugging Face id")
    parser.add_argument("--recipe", type=Path, help="compression recipe JSON applied to the model first")


def _load(args: argparse.Namespace):
    from core.models import load_model

    model = load_model(args.model)
    if getattr(args, "recipe", None):
        from core.recipe import Recipe, apply_recipe

        model, _ = apply_recipe(model, Recipe.load(args.recipe))
    return model


def cmd_transcribe(args: argparse.Namespace) -> None:
    from core.audio import load_audio

    model = _load(args)
    for path in args.audio:
        print(model.transcribe([load_audio(path)])[0])


def cmd_evaluate(args: argparse.Namespace) -> None:
    from core.data import load_dataset
    from core.evaluate import evaluate

    dataset = load_dataset(args.dataset)
    model = _load(args)
    result = evaluate(model, dataset, latency_runs=args.latency_runs)
    print(format_result(result.to_dict(), show_rows=args.rows))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}")


def cmd_compress(args: argparse.Namespace) -> None:
    from core.artifact import LAYOUT_FILE, WEIGHTS_FILE
    from core.models import save_model
    from core.recipe import Recipe, apply_recipe

    base = _load(argparse.Namespace(model=args.model, recipe=None))
    recipe = Recipe.load(args.recipe)
    model, reports = apply_recipe(base, recipe)
    size = save_model(model, args.out, {"recipe": recipe.to_json(), "base_model": base.name,
                                        "report": [asdict(r) for r in reports]})
    print(format_reports(reports))
    weights = sum((Path(args.out) / name).stat().st_size for name in (WEIGHTS_FILE, LAYOUT_FILE))
    print(f"wrote {args.out}: {size:,} bytes ({size / 1e6:.2f} MB): weights {weights / 1e6:.2f} MB (the size "
          f"every table compares), tokenizer + config {(size - weights) / 1e6:.2f} MB; load it with --model {args.out}")


def format_reports(reports) -> str:
    """One line per layer and step: what the compression did."""
    lines = [f"{'layer':48s} {'step':9s} {'params':>17s} {'sparsity':>8s} {'bits':>4s} {'rank':>4s} {'rel.err':>7s}"]
    for r in reports:
        fmt = lambda v, f: format(v, f) if v is not None else "-"
        lines.append(f"{r.name:48s} {r.technique:9s} {r.params_before:>8,}→{r.params_after:<8,} "
                     f"{fmt(r.sparsity, '8.2f'):>8s} {fmt(r.bits, 'd'):>4s} {fmt(r.rank, 'd'):>4s} "
                     f"{fmt(r.rel_error, '7.3f'):>7s} {r.note}")
    return "\n".join(lines)


def format_result(r: dict, show_rows: bool = False) -> str:
    """A readable summary table of one evaluation."""
    low, high = r["wer_ci95"]
    lines = [
        f"model        {r['model']}",
        f"dataset      {r['dataset']} ({r['n_utterances']} utterances, {r['n_words']} words)",
        f"WER          {100 * r['wer']:.2f}%  (95% CI {100 * low:.2f}–{100 * high:.2f}; raw {100 * r['raw_wer']:.2f}%)",
        f"CER          {100 * r['cer']:.2f}%",
        f"size         {r['size_bytes'] / 1e6:.2f} MB ({r['size_bytes']:,} bytes as safetensors), "
        f"{r['parameters']:,} parameters",
    ]
    if r["latency"]:
        lat = r["latency"]
        lines.append(f"latency      {lat['median_ms']:.0f} ms median (min {lat['min_ms']:.0f}, max {lat['max_ms']:.0f}, "
                     f"{lat['runs']} runs, {lat['threads']} threads) on a {lat['clip_seconds']:.1f} s clip, "
                     f"RTF {r['real_time_factor']:.3f}")
    lines.append(f"eval time    {r['eval_seconds']:.1f} s")
    if show_rows:
        lines.append("")
        for row in r["rows"]:
            mark = "ok " if row["wer"] == 0 else f"{100 * row['wer']:3.0f}%"
            lines.append(f"{mark} {row['id']}: {row['hypothesis']}  | ref: {row['reference']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("transcribe", help="print one transcript per audio file")
    p.add_argument("audio", nargs="+", type=Path)
    _model_args(p)
    p.set_defaults(run=cmd_transcribe)

    p = commands.add_parser("compress", help="apply a recipe and write the compressed model folder")
    p.add_argument("--recipe", type=Path, required=True, help="recipe JSON (see README)")
    p.add_argument("--out", type=Path, required=True, help="output folder (loads back with --model OUT)")
    p.add_argument("--model", default="whisper-tiny.en", help="the model to compress")
    p.set_defaults(run=cmd_compress)

    p = commands.add_parser("evaluate", help="WER, CER, size and latency on a dataset")
    p.add_argument("--dataset", default="quick",
                   help="quick | full | train | a manifest CSV (path,text) | a LibriSpeech folder | "
                        "a folder of audio files with same-named .txt transcripts")
    p.add_argument("--json", type=Path, help="also write the full result (with per-utterance rows) here")
    p.add_argument("--latency-runs", type=int, default=5, help="timed runs for latency (0 = skip)")
    p.add_argument("--rows", action="store_true", help="print every utterance")
    _model_args(p)
    p.set_defaults(run=cmd_evaluate)

    from core import distill_cli, sensitivity, sweep  # light imports: torch loads only when a command runs

    sweep.add_commands(commands)  # sweep, pareto, export
    sensitivity.add_commands(commands)  # sensitivity, budget
    distill_cli.add_commands(commands)  # distill
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.exit(main())
