"""The job board: every submitted job, its state, progress and log, in SQLite beside the results.

A job is a typed spec (core.jobs.kinds) serialized as canonical JSON; its id is a hash of that JSON, so
two sessions asking for the same work get the same job (one computation, both watch it). States:
queued -> running -> done | failed | cancelled. A running job whose worker process is gone (killed,
machine restarted) is put back in the queue by `recover`, and runs again from what it stored: sweep
points are in the results store, a distillation has its checkpoint, so at most the unit in flight is lost.

The board lives in the results store's SQLite file (table `jobs`, `job_log`), so a job's points and its
progress are one file to back up; each call is its own short transaction (WAL), safe across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.measure.store import canonical_json, default_store_path

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
HEARTBEAT_SECONDS = 2.0  # a worker refreshes its running job's heartbeat this often
STALE_SECONDS = 30.0  # a running job whose heartbeat is older than this has lost its worker
LOG_LINES = 500  # log lines kept per job (the oldest go first)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    label TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    heartbeat REAL,
    pid INTEGER,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    computed INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
CREATE TABLE IF NOT EXISTS job_log (
    job TEXT NOT NULL,
    at REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_log_by_job ON job_log (job, at);
"""


@dataclass(frozen=True)
class Job:
    """One row of the board, as read at one moment."""

    id: str
    kind: str
    spec: dict
    label: str
    state: str
    created: float
    started: float | None
    finished: float | None
    heartbeat: float | None
    pid: int | None
    done: int
    total: int
    computed: int  # units computed in this attempt (stored ones come back at once and are not counted)
    stage: str
    attempts: int
    cancel: bool
    result: dict | None
    error: str | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Time left at the pace of the units computed so far in this attempt (None before the first)."""
        if self.state != "running" or not self.computed or self.started is None:
            return None
        elapsed = (time.time() if now is None else now) - self.started
        return elapsed / self.computed * max(0, self.total - self.done)


def job_id(kind: str, spec: dict) -> str:
    """The id of a job: equal specs, equal ids (so equal requests share one computation)."""
    return hashlib.sha256(canonical_json({"kind": kind, "spec": spec}).encode()).hexdigest()[:16]


def process_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine (a zombie, dead but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust the signal
    # a killed process's main thread turns zombie before its other threads have exited and let go of its
    # files (the worker's lock): it is dead once the last one is gone
    return state != "Z" or threads > 1


class JobBoard:
    """The jobs table of a results store file (default: the user's store); shared by processes."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        if path is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.parent.is_dir():
            raise ValueError(f"job board {self.path}: the folder {self.path.parent} does not exist")
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self._conn:
                self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"job board {self.path} cannot be used ({exc}); move it away") from None

    # ------------------------------------------------------------------------- reading

    def get(self, id: str) -> Job | None:
        rows = self._select("SELECT * FROM jobs WHERE id = ?", [id])
        return rows[0] if rows else None

    def jobs(self, states: tuple[str, ...] = STATES, limit: int = 100) -> list[Job]:
        """Jobs in these states, newest first."""
        marks = ", ".join("?" * len(states))
        return self._select(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created DESC LIMIT ?", [*states, limit]
        )

    def log(self, id: str, last: int = LOG_LINES) -> list[str]:
        """The job's last log lines, oldest first, each stamped with its local time."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, line FROM job_log WHERE job = ? ORDER BY at DESC, rowid DESC LIMIT ?", [id, last]
            ).fetchall()
        return [f"{time.strftime('%H:%M:%S', time.localtime(at))} {line}" for at, line in reversed(rows)]

    # ------------------------------------------------------------------------- submitting

    def submit(self, kind: str, spec: dict, label: str, again: bool = False) -> Job:
        """Queue a job, or return the one with the same spec. A failed or cancelled one is queued again, a
        done one only with `again` (its results are in the store; running it again recomputes nothing
        already stored)."""
        id, now = job_id(kind, spec), time.time()
        with self._lock, self._conn:
            row = self._conn.execute("SELECT state FROM jobs WHERE id = ?", [id]).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO jobs (id, kind, spec, label, state, created) "
                    "VALUES (?, ?, ?, ?, 'queued', ?)",
                    [id, kind, canonical_json(spec), label, now],
                )
            elif row[0] in ("failed", "cancelled") or (row[0] == "done" and again):
                self._conn.execute(
                    "UPDATE jobs SET state = 'queued', created = ?, started = NULL, finished = NULL, "
                    "done = 0, total = 0, computed = 0, stage = '', cancel = 0, result = NULL, error = NULL, "
                    "attempts = 0 WHERE id = ?",
                    [now, id],
                )
                self._conn.execute("DELETE FROM job_log WHERE job = ?", [id])
        return self.get(id)

    def cancel(self, id: str) -> Job | None:
        """Ask a job to stop: a queued one stops at once, a running one at its next progress report (its
        worker is also signalled, see core.jobs.worker). Finished jobs are left as they are."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
                [time.time(), id],
            )
            self._conn.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND state = 'running'", [id])
        job = self.get(id)
        if job is not None and job.state == "cancelled":
            self.append_log(id, "cancelled before it started")
        return job

    def recover(self, orphaned: Callable[[Job], bool] | None = None) -> list[str]:
        """Put back in the queue every running job whose worker is gone (default: its process is dead or
        its heartbeat older than STALE_SECONDS; a worker holding the single-worker lock knows that every
        running job but its own is orphaned); a job asked to cancel is marked cancelled instead. Returns
        the ids requeued."""
        now, requeued = time.time(), []
        orphaned = orphaned or (
            lambda job: not process_alive(job.pid) or (job.heartbeat or 0) < now - STALE_SECONDS
        )
        for job in self.jobs(("running",)):
            if not orphaned(job):
                continue
            state = "cancelled" if job.cancel else "queued"
            with self._lock, self._conn:
                changed = self._conn.execute(
                    "UPDATE jobs SET state = ?, pid = NULL, finished = ? WHERE id = ? AND state = 'running' "
                    "AND pid IS ?",
                    [state, now if job.cancel else None, job.id, job.pid],
                ).rowcount
            if changed:
                self.append_log(job.id, f"its worker (pid {job.pid}) stopped; {state}")
                if state == "queued":
                    requeued.append(job.id)
        return requeued

    def requeue(self, id: str, why: str) -> None:
        """Put a running job back in the queue (it runs again from what it stored)."""
        with self._lock, self._conn:
            self._conn.execute("UPDATE jobs SET state = 'queued', pid = NULL WHERE id = ?", [id])
        self.append_log(id, why)

    # ------------------------------------------------------------------------- the worker's side

    def claim(self, pid: int) -> Job | None:
        """Atomically take the oldest queued job for the worker `pid` (None when the queue is empty)."""
        now = time.time()
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                row = self._conn.execute(
                    "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1"
                ).fetchone()
                if row is not None:
                    self._conn.execute(
                        "UPDATE jobs SET state = 'running', pid = ?, started = ?, heartbeat = ?, "
                        "computed = 0, attempts = attempts + 1 WHERE id = ?",
                        [pid, now, now, row[0]],
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row is not None else None

    def progress(self, id: str, done: int, total: int, stage: str, computed: bool) -> bool:
        """Record progress (and a heartbeat); True when the job has been asked to cancel."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET done = ?, total = ?, stage = ?, computed = computed + ?, heartbeat = ? "
                "WHERE id = ?",
                [done, total, stage[:300], int(computed), time.time(), id],
            )
            row = self._conn.execute("SELECT cancel FROM jobs WHERE id = ?", [id]).fetchone()
        return bool(row and row[0])

    def beat(self, id: str) -> None:
        """The worker is alive and still on this job."""
        with self._lock, self._conn:
            self._conn.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", [time.time(), id])

    def cancel_requested(self, id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT cancel FROM jobs WHERE id = ?", [id]).fetchone()
        return bool(row and row[0])

    def append_log(self, id: str, line: str) -> None:
        """One log line; only the last LOG_LINES of a job are kept."""
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("INSERT INTO job_log (job, at, line) VALUES (?, ?, ?)", [id, now, line[:2000]])
            self._conn.execute(
                "DELETE FROM job_log WHERE job = ? AND rowid NOT IN "
                "(SELECT rowid FROM job_log WHERE job = ? ORDER BY at DESC, rowid DESC LIMIT ?)",
                [id, id, LOG_LINES],
            )

    def set_partial(self, id: str, partial: dict) -> None:
        """A result so far, readable (Job.result) while the job runs; `finish` replaces it."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET result = ? WHERE id = ? AND state = 'running'", [json.dumps(partial), id]
            )

    def finish(self, id: str, state: str, result: dict | None = None, error: str | None = None) -> None:
        """The job ended: done (with its result), failed (with the error) or cancelled."""
        if state not in FINISHED:
            raise ValueError(f"a job finishes as one of {FINISHED}, not {state!r}")
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET state = ?, finished = ?, result = ?, error = ?, pid = NULL WHERE id = ?",
                [state, time.time(), None if result is None else json.dumps(result), error, id],
            )

    def close(self) -> None:
        self._conn.close()

    def _select(self, query: str, args: list) -> list[Job]:
        with self._lock:
            cursor = self._conn.execute(query, args)
            names = [c[0] for c in cursor.description]
            rows = cursor.fetchall()
        jobs = []
        for values in rows:
            row = dict(zip(names, values))
            row["spec"] = json.loads(row["spec"])
            row["result"] = json.loads(row["result"]) if row["result"] else None
            row["cancel"] = bool(row["cancel"])
            jobs.append(Job(**row))
        return jobs
