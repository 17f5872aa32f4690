"""Pages and background jobs (core.jobs): submit a job, follow it while it runs, show it on the Jobs page.

A job runs in the lab's worker process, not in the page's script: leaving the page, closing the tab or
restarting the dashboard does not stop it, and every session sees it (two sessions asking for the same
work get the same job). Session state holds only which job this session is following."""

from __future__ import annotations

import time

import streamlit as st
import torch

from core.jobs import worker
from core.jobs.board import Job, JobBoard, job_id
from core.jobs.kinds import EvaluateJob, Measuring, evaluation_identity, to_spec
from ui.resources import LIVE, base_model, dataset_waves, results_store

ICONS = {"queued": "⏳", "running": "⚙️", "done": "✅", "failed": "❌", "cancelled": "⏹️"}


@st.cache_resource(show_spinner=False, max_entries=1)
def job_board() -> JobBoard:
    """The jobs table of the shared results store."""
    return JobBoard(results_store().path)


def measuring(executor: str = "local", address: str | None = None, workers: int = 1) -> Measuring:
    """The pages' way of measuring (LIVE settings at this process's thread count), on `executor`."""
    return Measuring(LIVE.packed, LIVE.latency_runs, torch.get_num_threads(), executor, address, workers)


def submit(job, follow_as: str, again: bool = False) -> Job:
    """Submit a job spec and remember in this session (under `follow_as`) that the page follows it
    (`again`: run a finished job once more)."""
    row = worker.submit(job_board(), job, again)
    st.session_state[follow_as] = row.id
    return row


def followed(follow_as: str) -> Job | None:
    """The job this session follows under `follow_as` (None when none, or it is gone from the board)."""
    id = st.session_state.get(follow_as)
    return job_board().get(id) if id else None


def eta_text(job: Job) -> str:
    eta = job.eta_seconds()
    if eta is None:
        return ""
    return f" · about {eta / 60:.0f} min left" if eta >= 90 else f" · about {eta:.0f} s left"


def progress_line(job: Job) -> str:
    counts = f"{job.done}/{job.total} · " if job.total else ""
    return f"{ICONS[job.state]} {job.label}: {job.state} · {counts}{job.stage}{eta_text(job)}"


def follow(follow_as: str, rerun_on_progress: bool = False) -> Job | None:
    """While the followed job is queued or running, a progress bar (refreshed every second) with a Cancel
    button; the whole page reruns when it ends (and, with `rerun_on_progress`, when a unit is done, so
    charts grow live). Returns the job as last read (None when the session follows none)."""
    job = followed(follow_as)
    if job is None or job.finished_state:
        if job is not None and job.state == "failed":
            st.error(f"The job failed: {job.error} (details on the Jobs page)")
        if job is not None and job.state == "cancelled":
            st.info("The job was cancelled; what it measured so far is kept.")
        return job

    @st.fragment(run_every=1.0)
    def poll() -> None:
        worker.ensure_worker(job_board())  # a job whose worker died resumes in a new one
        now = job_board().get(job.id)
        if now.finished_state or (rerun_on_progress and now.done != job.done):
            st.rerun()
        left, right = st.columns([5, 1])
        left.progress(now.fraction, text=progress_line(now) + " (you may leave this page: it goes on)")
        if right.button("Cancel", key=f"cancel_{follow_as}"):
            worker.cancel(job_board(), now.id)

    poll()
    return job


def evaluation(
    model_name: str, dataset_name: str, follow_as: str, recipe: dict | None = None, latency_runs: int = 5
) -> dict | None:
    """`python -m core evaluate`'s result for a model (with `recipe` applied) on a dataset: at once when any
    session had it computed before (it is kept on the job board, across restarts), else computed as a job
    that this page follows (None until it is done)."""
    dataset, _ = dataset_waves(dataset_name)
    identity = evaluation_identity(base_model(model_name), dataset)
    recipe = recipe or {"steps": []}
    job = EvaluateJob(model_name, dataset_name, identity, recipe, latency_runs, torch.get_num_threads())
    row = job_board().get(job_id(job.kind, to_spec(job)))
    if row is not None and row.state == "done":
        return row.result
    if row is None or (row.finished_state and st.session_state.get(follow_as) != row.id):
        submit(job, follow_as)  # new, or failed / cancelled before and asked again
    else:
        st.session_state[follow_as] = row.id  # queued or running (perhaps for another session): follow it
    follow(follow_as)
    return None


def jobs_panel(limit: int = 30) -> None:
    """Every job of the board, newest first: progress, ETA, log, cancel / run again."""
    board = job_board()
    worker.ensure_worker(board)
    jobs = board.jobs(limit=limit)
    if not jobs:
        st.info(
            "No job yet. Sweeps, sensitivity runs, distillation and exports started on other pages run here."
        )
        return
    for job in jobs:
        with st.container(border=True):
            st.progress(job.fraction if job.state != "done" else 1.0, text=progress_line(job))
            started = time.strftime("%H:%M:%S", time.localtime(job.created))
            st.caption(
                f"id `{job.id}` · submitted {started} · attempt {job.attempts}"
                + (f" · {job.error}" if job.error else "")
            )
            left, right = st.columns([5, 1])
            with left.expander("Log"):
                st.code("\n".join(board.log(job.id, 100)) or "(empty)", language=None)
            if not job.finished_state and right.button("Cancel", key=f"cancel_{job.id}"):
                worker.cancel(board, job.id)
                st.rerun()
            if job.state in ("failed", "cancelled") and right.button("Run again", key=f"again_{job.id}"):
                board.submit(job.kind, job.spec, job.label)
                worker.ensure_worker(board)
                st.rerun()
