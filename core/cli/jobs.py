"""`jobs`: the background jobs of a results store (what the dashboard's Jobs page shows): list, show with
log, wait, cancel; and `jobs work`, the worker process itself (started for you when a job is submitted)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from core.cli.common import add_store_arg


def _board(args: argparse.Namespace):
    from core.jobs.board import JobBoard  # lazy: --help

    return JobBoard(args.store)


def _job(board, id: str):
    matches = [job for job in board.jobs(limit=10_000) if job.id.startswith(id)]
    if len(matches) != 1:
        raise ValueError(
            f"no job {id!r}" if not matches else f"{id!r} names {len(matches)} jobs; give more of it"
        )
    return matches[0]


def describe(job) -> str:
    """One line: id, state, progress, ETA, what it is."""
    eta = job.eta_seconds()
    progress = f"{job.done}/{job.total}" if job.total else "-"
    return (
        f"{job.id}  {job.state:9s} {progress:>9s} {f'ETA {eta:.0f} s' if eta is not None else '':>10s}  "
        f"{job.label}" + (f"  [{job.stage}]" if job.state == "running" and job.stage else "")
    )


def run_list(args: argparse.Namespace) -> None:
    from core.jobs.worker import ensure_worker  # lazy: --help

    board = _board(args)
    ensure_worker(board)  # a job left by a killed worker goes back to the queue and runs again
    jobs = board.jobs()
    print("\n".join(describe(job) for job in jobs) if jobs else f"no jobs in {board.path}")


def run_show(args: argparse.Namespace) -> None:
    board = _board(args)
    job = _job(board, args.id)
    print(describe(job))
    if job.error:
        print(f"error: {job.error}")
    print("\n".join(board.log(job.id, args.lines)))


def run_cancel(args: argparse.Namespace) -> None:
    from core.jobs.worker import cancel  # lazy: --help

    board = _board(args)
    job = cancel(board, _job(board, args.id).id)
    print(describe(job))


def wait(board, id: str, poll: float = 1.0) -> object:
    """Print the job's progress on stderr until it ends; the finished job."""
    from core.jobs.worker import ensure_worker  # lazy: --help

    while True:
        ensure_worker(board)
        job = board.get(id)
        print(f"\r{describe(job)[:150]:150s}", end="", file=sys.stderr, flush=True)
        if job.finished_state:
            print(file=sys.stderr)
            return job
        time.sleep(poll)


def run_wait(args: argparse.Namespace) -> None:
    board = _board(args)
    job = wait(board, _job(board, args.id).id)
    if job.state != "done":
        raise ValueError(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))


def run_work(args: argparse.Namespace) -> None:
    from core.jobs.worker import work  # lazy: --help

    board = _board(args)
    print(f"worker {os.getpid()}: ran {work(board.path, args.idle)} jobs", flush=True)


def add_command(commands) -> None:
    p = commands.add_parser("jobs", help="background jobs: list, show, wait, cancel (and the worker)")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every job, newest first")
    listing.set_defaults(run=run_list)
    show = actions.add_parser("show", help="one job and its log")
    show.add_argument("id", help="a job id (or its first characters)")
    show.add_argument("--lines", type=int, default=50, help="log lines to print")
    show.set_defaults(run=run_show)
    for name, run, text in (
        ("wait", run_wait, "follow a job until it ends"),
        ("cancel", run_cancel, "stop a job"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", help="a job id (or its first characters)")
        action.set_defaults(run=run)
    work = actions.add_parser("work", help="run queued jobs in this process (started for you on submit)")
    work.add_argument("--idle", type=float, default=60.0, help="exit after this many seconds with no job")
    work.set_defaults(run=run_work)
    for action in (listing, show, work, *[actions.choices[n] for n in ("wait", "cancel")]):
        add_store_arg(action)
