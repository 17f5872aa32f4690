"""Command line: everything the dashboard shows can be reproduced here (`python -m core --help`).

One module per command (or per pair of commands that share their data); each registers itself with
`add_command`. Commands import the engine when they run, so building the parser stays free of torch.
"""

from __future__ import annotations

import argparse
import sys

from core.cli import (
    compress,
    datasets,
    distill,
    evaluate,
    export,
    jobs,
    points,
    sensitivity,
    sweep,
    transcribe,
)

COMMANDS = (transcribe, compress, export, evaluate, sweep, points, sensitivity, distill, jobs, datasets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures (bad input, missing files) print one line and return 2."""
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
