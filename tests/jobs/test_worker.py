"""The worker runs jobs to the same points as the direct call, cancels, and survives being killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import random_tiny_en

from core.compress.recipe import Recipe
from core.data import load_dataset
from core.io.folders import load_model, save_model
from core.jobs import worker
from core.jobs.board import JobBoard
from core.jobs.kinds import Measuring, SweepJob, from_spec, to_spec
from core.measure.store import Store
from core.measure.sweep import SweepSettings, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = Measuring(latency_runs=0, threads=1)


def sweep_recipes(*sparsities: float) -> tuple:
    return tuple({"steps": [{"prune": {"sparsity": s}}]} if s else {"steps": []} for s in sparsities)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny model saved as a folder and a four-clip dataset, named as a job names them (paths)."""
    root = tmp_path_factory.mktemp("jobs")
    save_model(random_tiny_en("tiny-random-en"), root / "model")
    lines = ["path,text"]
    for i in range(4):
        t = np.arange(16000) / 16000
        sf.write(
            root / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32), 16000
        )
        lines.append(f"clip{i}.wav,one two three")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return str(root / "model"), str(root / "manifest.csv")


def test_spec_round_trip_and_unknown_fields(lab):
    job = SweepJob(*lab, sweep_recipes(0, 0.5), FAST)
    assert from_spec("sweep", to_spec(job)) == job
    with pytest.raises(ValueError, match="unknown job kind"):
        from_spec("mine-bitcoin", {})
    with pytest.raises(ValueError, match="no field"):
        from_spec("sweep", {**to_spec(job), "shell": "rm -rf /"})


def test_a_sweep_job_stores_the_same_points_as_the_direct_sweep(lab, tmp_path):
    board = JobBoard(tmp_path / "results.sqlite")
    job = worker.submit(board, SweepJob(*lab, sweep_recipes(0, 0.5), FAST), start=False)
    assert worker.work(board.path, idle_seconds=0, max_jobs=1) == 1
    done = board.get(job.id)
    assert done.state == "done" and done.done == done.total == 2, board.log(job.id)
    direct = list(
        run_sweep(
            load_model(lab[0]),
            load_dataset(lab[1]),
            [Recipe.from_json(r) for r in sweep_recipes(0, 0.5)],
            Store(tmp_path / "direct.sqlite"),
            SweepSettings(latency_runs=0),
        )
    )
    stored = Store(board.path).get_many(done.result["points"])
    assert sorted(stored) == sorted(p.key for p in direct)  # same keys: same model, recipes, data, settings
    for point in direct:
        assert stored[point.key].wer == point.wer and stored[point.key].rows == point.rows


def test_cancel_while_running_keeps_the_points_measured_so_far(lab, tmp_path, monkeypatch):
    board = JobBoard(tmp_path / "results.sqlite")
    job = worker.submit(board, SweepJob(*lab, sweep_recipes(0, 0.2, 0.4, 0.6), FAST), start=False)
    report = worker.JobContext.report

    def cancel_after_the_second(context, done, total, stage, computed=False):
        report(context, done, total, stage, computed)
        if done == 2:
            board.cancel(job.id)  # as the Jobs page does; the next report sees it

    monkeypatch.setattr(worker.JobContext, "report", cancel_after_the_second)
    worker.work(board.path, idle_seconds=0, max_jobs=1)
    cancelled = board.get(job.id)
    assert cancelled.state == "cancelled" and "cancelled" in board.log(job.id)[-1]
    assert (
        cancelled.done == 3 and len(Store(board.path)) == 3
    )  # the point in flight when it was asked is kept


def test_a_failing_job_is_marked_failed_with_its_error_and_the_worker_goes_on(lab, tmp_path):
    board = JobBoard(tmp_path / "results.sqlite")
    bad = worker.submit(board, SweepJob(lab[0], str(tmp_path / "missing.csv"), (), FAST), start=False)
    good = worker.submit(board, SweepJob(*lab, sweep_recipes(0), FAST), start=False)
    assert worker.work(board.path, idle_seconds=0, max_jobs=2) == 2
    failed = board.get(bad.id)
    assert (
        failed.state == "failed"
        and "missing.csv" in failed.error
        and "Traceback" in "\n".join(board.log(bad.id))
    )
    assert board.get(good.id).state == "done"


def wait_for(condition, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_killed_worker_s_job_resumes_in_a_new_worker_losing_at_most_the_point_in_flight(lab, tmp_path):
    """The dashboard-independent worker process is SIGKILLed mid-sweep; the next ensure_worker (a page
    poll or `jobs list`) requeues its job and a new worker finishes it from the stored points."""
    board = JobBoard(tmp_path / "results.sqlite")
    recipes = sweep_recipes(0, 0.1, 0.2, 0.3, 0.4, 0.5)
    job = worker.submit(board, SweepJob(*lab, recipes, FAST))
    first = wait_for(lambda: (j := board.get(job.id)).done >= 2 and j.state == "running" and j)
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not worker.process_alive(first.pid))
    kept = len(Store(board.path))
    assert 2 <= kept < len(recipes)
    assert worker.ensure_worker(board)  # requeued and a new worker started
    finished = wait_for(lambda: (j := board.get(job.id)).finished_state and j)
    assert finished.state == "done" and finished.attempts == 2, board.log(job.id)
    assert len(Store(board.path)) == len(recipes) and len(finished.result["points"]) == len(recipes)
    assert any("attempt 2" in line for line in board.log(job.id))


def test_cancel_interrupts_a_running_worker_process(lab, tmp_path):
    board = JobBoard(tmp_path / "results.sqlite")
    job = worker.submit(board, SweepJob(*lab, sweep_recipes(0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), FAST))
    wait_for(lambda: board.get(job.id).done >= 1)
    worker.cancel(board, job.id)
    ended = wait_for(lambda: (j := board.get(job.id)).finished_state and j, seconds=60)
    assert ended.state == "cancelled" and ended.done < 8
    assert Path(worker.log_path(board.path)).exists()


def test_the_command_line_submits_follows_and_lists_a_background_sweep(lab, tmp_path, capsys):
    from core.cli import main

    store = tmp_path / "results.sqlite"
    grid = tmp_path / "grid.json"
    grid.write_text('{"prune.sparsity": [0, 0.5]}')
    common = ["--model", lab[0], "--dataset", lab[1], "--store", str(store), "--latency-runs", "0"]
    assert main(["--threads", "1", "sweep", "--grid", str(grid), *common, "--background"]) == 0
    printed = capsys.readouterr().out
    id = printed.split()[1]
    assert "queued" in printed and f"jobs wait {id}" in printed
    assert main(["jobs", "wait", id[:6], "--store", str(store)]) == 0
    assert main(["jobs", "list", "--store", str(store)]) == 0
    listed = capsys.readouterr().out
    assert f"{id}  done" in listed and "2/2" in listed and "sweep of 2 recipes" in listed
    assert main(["jobs", "show", id, "--store", str(store)]) == 0
    assert "prune 50%" in capsys.readouterr().out  # the log names each point measured
    assert len(Store(store)) == 2
    assert main(["jobs", "show", "ffffffff", "--store", str(store)]) == 2
    assert "no job 'ffffffff'" in capsys.readouterr().err


def test_the_command_line_refuses_workers_without_ray_before_any_work(lab, tmp_path, capsys):
    from core.cli import main

    grid = tmp_path / "grid.json"
    grid.write_text('{"prune.sparsity": [0, 0.5]}')
    args = [
        "sweep",
        "--grid",
        str(grid),
        "--model",
        lab[0],
        "--dataset",
        lab[1],
        "--store",
        str(tmp_path / "s"),
    ]
    assert main([*args, "--workers", "4"]) == 2
    assert "for --executor ray" in capsys.readouterr().err


def test_every_kind_round_trips_through_the_board(lab):
    from core.jobs.kinds import KINDS, DistillJob, EvaluateJob, ExportJob, SensitivityJob

    jobs = [
        SweepJob(*lab, sweep_recipes(0), FAST),
        SensitivityJob(*lab, ("conv",), "wer", 30.0, True, FAST),
        DistillJob(lab[0], {"decoder_layers": 1}, {"steps": 5}, "/tmp/out", "train", 8, "quick", FAST),
        EvaluateJob(*lab, "identity", {"steps": []}, 0, 1),
        ExportJob(lab[0], {"steps": []}, "ct2", "/tmp/out", lab[1], None, FAST),
    ]
    assert sorted(j.kind for j in jobs) == sorted(KINDS)
    for job in jobs:
        assert from_spec(job.kind, to_spec(job)) == job and job.describe()


def test_an_evaluate_job_keeps_evaluate_s_result_on_the_board(lab, tmp_path):
    from core.jobs.kinds import EvaluateJob, evaluation_identity
    from core.measure.evaluate import evaluate

    model, dataset = load_model(lab[0]), load_dataset(lab[1])
    board = JobBoard(tmp_path / "results.sqlite")
    job = EvaluateJob(*lab, evaluation_identity(model, dataset), {"steps": []}, 0, 1)
    worker.submit(board, job, start=False)
    worker.work(board.path, idle_seconds=0, max_jobs=1)
    done = board.get(worker.submit(board, job, start=False).id)  # asked again: the kept result, no work
    direct = evaluate(model, dataset, latency_runs=0).to_dict()
    assert (
        done.state == "done" and done.result["wer"] == direct["wer"] and done.result["rows"] == direct["rows"]
    )
    buckets = lambda result: [(b["bucket"], b["clips"], b["wer"]) for b in result["by_length"]]  # noqa: E731
    assert done.total == len(dataset) and buckets(done.result) == buckets(direct)  # times differ, of course


def test_a_job_outlives_the_process_that_submitted_it(lab, tmp_path):
    """The dashboard's process submits and is gone (a restart): the detached worker finishes the job."""
    import subprocess
    import sys

    from conftest import REPO

    store = tmp_path / "results.sqlite"
    script = (
        "import sys; from core.jobs.board import JobBoard; from core.jobs import worker;"
        "from core.jobs.kinds import SweepJob, Measuring;"
        f"job = SweepJob({lab[0]!r}, {lab[1]!r}, ({{'steps': []}},), Measuring(latency_runs=0, threads=1));"
        f"print(worker.submit(JobBoard({str(store)!r}), job).id)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    board = JobBoard(store)
    finished = wait_for(lambda: (j := board.get(done.stdout.strip())).finished_state and j)
    assert finished.state == "done" and len(Store(store)) == 1
