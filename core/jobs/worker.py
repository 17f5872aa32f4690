"""The worker: a process of its own that runs queued jobs one after another, then exits when idle.

One worker per results store (an exclusive lock on `<store>.worker.lock`, released by the OS even when the
worker is killed): two measurements at once would time each other, and a sweep that needs more hands
fans its points out through its executor (Ray) instead. The worker is started detached from whoever asked
(`ensure_worker`: the dashboard, the CLI), so a closed tab or a restarted dashboard does not stop it; a
killed worker's job is requeued by the next worker and resumes from the store and its checkpoint.

Cancelling sets the job's flag (seen at its next progress report) and sends the worker SIGUSR1, which
raises Cancelled at once in the job's thread; a signal that arrives for a job already finished only
requeues the job then running (it resumes from what it stored).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from core.jobs.board import HEARTBEAT_SECONDS, Job, JobBoard, process_alive
from core.jobs.kinds import Cancelled, JobContext, from_spec, to_spec

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `core` package
IDLE_SECONDS = 60.0  # a worker waits this long for the next job (a page's jobs come one after another)


def lock_path(store_path: Path) -> Path:
    return Path(f"{store_path}.worker.lock")


def log_path(store_path: Path) -> Path:
    """Where a spawned worker's own output goes (each job's log is on the board)."""
    return Path(f"{store_path}.worker.log")


def _try_lock(store_path: Path):
    """The open lock file when this process took the worker lock, else None."""
    handle = open(lock_path(store_path), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def worker_running(store_path: Path) -> bool:
    """Whether a worker holds this store's lock now."""
    handle = _try_lock(store_path)
    if handle is None:
        return True
    handle.close()  # closing releases the lock
    return False


def submit(board: JobBoard, job, again: bool = False, start: bool = True) -> Job:
    """Put a job spec (core.jobs.kinds) on the board and make sure a worker will run it."""
    row = board.submit(job.kind, to_spec(job), job.describe(), again)
    if start:
        ensure_worker(board)
    return row


def ensure_worker(board: JobBoard) -> bool:
    """Requeue jobs whose worker died and start a worker when jobs wait and none runs; True if started."""
    board.recover()
    if not board.jobs(("queued",), limit=1) or worker_running(board.path):
        return False
    with open(log_path(board.path), "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "core", "jobs", "work", "--store", str(board.path)],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the dashboard's process group: outlives it
        )
    return True


def cancel(board: JobBoard, id: str) -> Job | None:
    """Cancel a job: a queued one at once; a running one's worker is interrupted now (SIGUSR1)."""
    job = board.cancel(id)
    if job is not None and job.state == "running" and process_alive(job.pid):
        try:
            os.kill(job.pid, signal.SIGUSR1)
        except OSError:
            pass  # it just ended; the flag is seen if it runs again
    return job


def _interrupt(signum, frame):
    raise Cancelled()


@contextmanager
def _heartbeat(board: JobBoard, id: str):
    """Refresh the job's heartbeat from a thread while it runs (long steps report no progress)."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            board.beat(id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_job(board: JobBoard, job: Job, loaded: dict | None = None) -> str:
    """Run one claimed job to its end state: done, failed, cancelled (or queued again, see module doc);
    `loaded` keeps models and datasets for the worker's next job."""
    context = JobContext(board, job.id, board.path, loaded)
    if job.attempts > 1:
        context.log(f"attempt {job.attempts}: resuming from the store and checkpoints")
    try:
        with _heartbeat(board, job.id):
            signal.signal(signal.SIGUSR1, _interrupt)  # only while a job runs: see cancel()
            try:
                if board.cancel_requested(job.id):
                    raise Cancelled()
                result = from_spec(job.kind, job.spec).run(context)
            finally:
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    except Cancelled:
        if board.cancel_requested(job.id):
            context.log("cancelled")
            board.finish(job.id, "cancelled")
            return "cancelled"
        board.requeue(job.id, "interrupted by a cancel meant for another job; queued again")
        return "queued"
    except Exception as exc:  # the job's own failure: recorded on the board, the worker goes on
        context.log(traceback.format_exc(limit=8))
        board.finish(job.id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    board.finish(job.id, "done", result=result)
    context.log("done")
    return "done"


def work(store_path: Path, idle_seconds: float = IDLE_SECONDS, max_jobs: int | None = None) -> int:
    """Run queued jobs until the queue stays empty for `idle_seconds` (or `max_jobs` ran); the number
    run. Returns 0 at once when another worker holds the store's lock."""
    lock = _try_lock(Path(store_path))
    if lock is None:
        return 0
    board, ran, loaded = JobBoard(store_path), 0, {}
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        board.recover(lambda job: job.pid != os.getpid())  # holding the lock: every other run is orphaned
        idle_since = time.monotonic()
        while max_jobs is None or ran < max_jobs:
            job = board.claim(os.getpid())
            if job is None:
                if time.monotonic() - idle_since > idle_seconds:
                    break
                time.sleep(0.2)
                continue
            run_job(board, job, loaded)
            ran += 1
            idle_since = time.monotonic()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        board.close()
        lock.close()
    return ran
