"""The job board on plain data: one job per spec, queue order, progress and ETA, cancel, recovery, logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.jobs.board import LOG_LINES, JobBoard, job_id, process_alive


@pytest.fixture
def board(tmp_path):
    return JobBoard(tmp_path / "results.sqlite")


def test_equal_specs_are_one_job_so_two_sessions_share_the_work(board):
    first = board.submit("sweep", {"model": "m", "recipes": [1, 2]}, "a sweep")
    again = board.submit("sweep", {"recipes": [1, 2], "model": "m"}, "the same, asked by another session")
    other = board.submit("sweep", {"model": "m", "recipes": [1]}, "another sweep")
    assert first.id == again.id == job_id("sweep", {"model": "m", "recipes": [1, 2]})
    assert other.id != first.id and first.state == "queued"
    assert [j.id for j in board.jobs()] == [other.id, first.id]  # newest first


def test_claim_takes_the_oldest_queued_job_once(board):
    a = board.submit("sweep", {"n": 1}, "a")
    b = board.submit("sweep", {"n": 2}, "b")
    assert board.claim(pid=11).id == a.id
    claimed = board.claim(pid=12)
    assert claimed.id == b.id and claimed.state == "running" and claimed.pid == 12 and claimed.attempts == 1
    assert board.claim(pid=13) is None


def test_progress_eta_partial_result_and_finish(board):
    job = board.submit("sweep", {"n": 1}, "a")
    board.claim(pid=1)
    assert board.get(job.id).eta_seconds() is None  # nothing computed yet
    assert board.progress(job.id, 1, 4, "first", computed=False) is False  # read from the store: no pace
    board.progress(job.id, 2, 4, "second", computed=True)
    running = board.get(job.id)
    assert running.fraction == 0.5 and running.stage == "second" and running.computed == 1
    eta = running.eta_seconds(now=running.started + 10.0)
    assert eta == pytest.approx(20.0)  # 10 s for one computed unit, two units left
    board.set_partial(job.id, {"history": [[1, 0.5]]})
    assert board.get(job.id).result == {"history": [[1, 0.5]]}
    board.finish(job.id, "done", result={"points": ["k"]})
    done = board.get(job.id)
    assert done.state == "done" and done.result == {"points": ["k"]} and done.finished_state
    with pytest.raises(ValueError, match="finishes as one of"):
        board.finish(job.id, "running")


def test_cancel_a_queued_job_at_once_and_a_running_one_by_flag(board):
    queued = board.submit("sweep", {"n": 1}, "a")
    running = board.submit("sweep", {"n": 2}, "b")
    assert board.claim(pid=1).id == queued.id
    assert board.cancel(running.id).state == "cancelled"  # never started
    assert board.cancel(queued.id).state == "running"  # its worker stops at the next report
    assert board.cancel_requested(queued.id)
    assert board.progress(queued.id, 1, 3, "x", computed=True) is True
    assert "cancelled before it started" in board.log(running.id)[-1]


def test_failed_and_cancelled_jobs_run_again_when_asked_again_and_done_ones_only_on_request(board):
    job = board.submit("sweep", {"n": 1}, "a")
    board.claim(pid=1)
    board.finish(job.id, "failed", error="ValueError: boom")
    again = board.submit("sweep", {"n": 1}, "a")
    assert again.state == "queued" and again.error is None and again.attempts == 0
    board.claim(pid=1)
    board.finish(job.id, "done", result={})
    assert board.submit("sweep", {"n": 1}, "a").state == "done"
    assert board.submit("sweep", {"n": 1}, "a", again=True).state == "queued"


def test_a_job_whose_worker_died_is_requeued_and_a_live_one_is_left(board):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not process_alive(dead.pid)
    orphan = board.submit("sweep", {"n": 1}, "orphan")
    board.claim(pid=dead.pid)
    alive = board.submit("sweep", {"n": 2}, "alive")
    board.claim(pid=os.getpid())
    assert board.recover() == [orphan.id]
    assert board.get(orphan.id).state == "queued" and board.get(alive.id).state == "running"
    assert "stopped; queued" in board.log(orphan.id)[-1]
    board.cancel(alive.id)
    assert board.recover(lambda job: True) == []  # asked to cancel: it ends cancelled, not requeued
    assert board.get(alive.id).state == "cancelled"


def test_log_keeps_the_last_lines(board):
    job = board.submit("sweep", {"n": 1}, "a")
    for i in range(LOG_LINES + 5):
        board.append_log(job.id, f"line {i}")
    lines = board.log(job.id)
    assert (
        len(lines) == LOG_LINES
        and lines[-1].endswith(f"line {LOG_LINES + 4}")
        and lines[0].endswith("line 5")
    )


def test_a_board_in_a_missing_folder_or_a_garbage_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        JobBoard(tmp_path / "nope" / "results.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="cannot be used"):
        JobBoard(garbage)
