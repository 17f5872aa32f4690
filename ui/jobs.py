"""Long work off the page's script: a job runs on a worker thread of the server process, so the page
stays responsive, the work goes on when the user navigates away, and any session sees it by its key.

One worker (jobs run one after another: two measurements at once would time each other) and a bounded
board of jobs, both cached per process. A page polls a job in an `st.fragment(run_every=...)`."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import streamlit as st

MAX_JOBS = 16  # finished jobs kept for their results; the oldest finished one goes first


@dataclass
class Job:
    """One submitted piece of work: what it is doing now, and its result or error when done."""

    label: str
    future: Future | None = None
    stage: str = "queued"
    fraction: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, stage: str, fraction: float) -> None:
        """The progress callback handed to the work."""
        with self.lock:
            self.stage, self.fraction = stage, max(0.0, min(1.0, fraction))

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    @property
    def error(self) -> BaseException | None:
        return self.future.exception() if self.done else None


@st.cache_resource(show_spinner=False, max_entries=1)
def _worker() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="speech-lab-job")


@st.cache_resource(show_spinner=False, max_entries=1)
def _board() -> OrderedDict[str, Job]:
    return OrderedDict()


def submit(key: str, label: str, work: Callable[[Callable[[str, float], None]], object]) -> Job:
    """The job under `key`: a running or finished one is returned as it is (a failed one is started
    again); otherwise `work(report)` starts on the worker, `report(stage, fraction)` feeding its progress."""
    board = _board()
    job = board.get(key)
    if job is not None and not (job.done and job.error is not None):
        return job
    job = Job(label)
    board[key] = job
    finished = [k for k, j in board.items() if j.done]
    for old in finished[: max(0, len(board) - MAX_JOBS)]:
        board.pop(old)
    job.future = _worker().submit(work, job.report)
    return job


def find(key: str) -> Job | None:
    """The job under `key`, if one was submitted in this server process."""
    return _board().get(key)
