"""`sensitivity` and `budget`: per-group compression sensitivity, and the recipe that fits a size or
latency budget."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core.cli.common import (
    absolute,
    add_run_args,
    context,
    executor,
    measuring,
    progress,
    settings,
    submit_job,
)

SIGNALS = ("wer", "divergence")  # as core.measure.sensitivity.SIGNALS (tested), without importing torch


def format_table(rows: list, value: str = "delta_wer") -> str:
    """Rows = groups, columns = settings; cells ΔWER in percentage points, divergence in nats, or MB saved."""
    probes = [r for r in rows if not r.is_baseline]
    columns = list(dict.fromkeys(r.setting for r in probes))
    groups = list(dict.fromkeys(r.group for r in probes))
    cells = {(r.group, r.setting): r for r in probes}
    formats = {
        "delta_wer": lambda r: f"{100 * r.delta_wer:+.1f}",
        "divergence": lambda r: f"{r.divergence:.3f}",
        "bytes_saved": lambda r: f"{r.bytes_saved / 1e6:.1f}",
    }
    widths = {column: max(8, len(column) + 2) for column in columns}
    lines = [f"{'group':18s}" + "".join(c.rjust(widths[c]) for c in columns)]
    for group in groups:
        line = f"{group:18s}"
        for column in columns:
            row = cells.get((group, column))
            line += ("-" if row is None else formats[value](row)).rjust(widths[column])
        lines.append(line)
    return "\n".join(lines)


def _sensitivity_rows(args: argparse.Namespace, model, dataset, store) -> list:
    """Run (or read back) the sensitivity table named by the CLI arguments, with progress on stderr."""
    from core.measure.sensitivity import divergence_plan, run_sensitivity, sensitivity_plan  # lazy: --help

    plan = divergence_plan(args.groups) if args.signal == "divergence" else sensitivity_plan(args.groups)
    start, rows = time.perf_counter(), []
    rows_measured = run_sensitivity(
        model, dataset, store, plan, settings(args), signal=args.signal, executor=executor(args)
    )
    for row in rows_measured:
        rows.append(row)
        print(
            progress(
                len(rows), len(plan) + 1, sum(r.cached for r in rows), time.perf_counter() - start, row.label
            ),
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    return rows


def run_table(args: argparse.Namespace) -> None:
    """`sensitivity`: ΔWER or divergence (and MB saved) per layer group and compression level."""
    if args.background:
        from core.jobs.kinds import SensitivityJob  # lazy: --help

        groups = tuple(args.groups or ())
        job = SensitivityJob(
            absolute(args.model), absolute(args.dataset), groups, args.signal, measuring=measuring(args)
        )
        return submit_job(args, job)
    rows = _sensitivity_rows(args, *context(args))
    baseline = rows[0]
    print(
        f"baseline size {baseline.size_bytes / 1e6:.2f} MB"
        + (f", WER {100 * baseline.wer:.2f}%" if baseline.wer is not None else "")
    )
    if args.signal == "divergence":
        print("KL divergence from the uncompressed model, nats per token (compressing one group alone):")
        print(format_table(rows, "divergence"))
    else:
        print("ΔWER, percentage points (compressing one group alone):")
        print(format_table(rows))
    print("\nMB saved:")
    print(format_table(rows, "bytes_saved"))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in rows], indent=1))
        print(f"wrote {args.json}")


def run_budget(args: argparse.Namespace) -> None:
    """`budget`: the per-group recipe that fits a size or latency budget; --verify measures it."""
    from core.measure.sensitivity import budget_signal, search_budget  # lazy: --help
    from core.measure.sweep import run_sweep  # lazy: --help

    args.signal = budget_signal(args.signal, args.max_ms)
    model, dataset, store = context(args)
    rows = _sensitivity_rows(args, model, dataset, store)
    max_bytes = args.max_mb * 1e6 if args.max_mb is not None else None
    plan = search_budget(
        model,
        dataset,
        store,
        rows,
        args.signal,
        max_bytes,
        args.max_ms,
        args.measure,
        args.candidates,
        settings(args),
    )
    for move in plan.trail:
        print(f"  {move}")
    latency = f", latency {plan.estimated_latency_ms:.0f} ms" if plan.estimated_latency_ms is not None else ""
    how = "measured" if plan.measured else "estimated"
    quality = (
        f"divergence {plan.estimated_divergence:.4g} nats/token"
        if plan.estimated_wer is None
        else f"WER {100 * plan.estimated_wer:.2f}%"
    )
    print(f"estimate: {quality} ({how}), size {plan.estimated_size_bytes / 1e6:.2f} MB{latency}")
    print(json.dumps(plan.recipe.to_json(), indent=1))
    if args.out:
        args.out.write_text(json.dumps(plan.recipe.to_json(), indent=1))
        print(f"wrote {args.out} (use it with --recipe)")
    if args.verify:
        point = next(run_sweep(model, dataset, [plan.recipe], store, settings(args)))
        latency = f", latency {point.latency_ms:.0f} ms" if point.latency_ms is not None else ""
        print(f"measured: WER {100 * point.wer:.2f}%, size {point.size_bytes / 1e6:.2f} MB{latency}")


def add_command(commands) -> None:
    """Register `sensitivity` and `budget` on the CLI's subparsers."""
    p = commands.add_parser("sensitivity", help="ΔWER per layer group and compression level (cached)")
    p.add_argument("--groups", nargs="+", help="layer groups to probe (default: all; see core.models.GROUPS)")
    p.add_argument("--json", type=Path, help="also write the tidy table here")
    p.add_argument(
        "--signal",
        choices=SIGNALS,
        default="wer",
        help="measure each probe's WER (default) or its KL divergence from the uncompressed model",
    )
    add_run_args(p)
    p.set_defaults(run=run_table)

    p = commands.add_parser("budget", help="per-group recipe that fits a size or latency budget")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-mb", type=float, help="size budget in MB (10^6 bytes) as saved")
    budget.add_argument("--max-ms", type=float, help="latency budget in ms on the latency clip")
    p.add_argument("--groups", nargs="+", help="layer groups to compress (default: all)")
    p.add_argument("--out", type=Path, help="write the recipe JSON here")
    p.add_argument("--verify", action="store_true", help="measure the chosen recipe (stored like any point)")
    p.add_argument(
        "--measure",
        action="store_true",
        help="measure each greedy move (wer) or the best plans together (divergence) instead of "
        "adding up the table",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=3,
        help="with --measure: moves measured per step (wer) or best plans measured (divergence); default 3",
    )
    p.add_argument(
        "--signal",
        choices=SIGNALS,
        help="divergence (default for --max-mb): exact search over per-group quantizers by KL from the "
        "uncompressed model; wer (default for --max-ms): greedy over the ΔWER table",
    )
    add_run_args(p, background=False)
    p.set_defaults(run=run_budget)
