"""Point executors: a sweep on a local two-CPU Ray cluster gives the very points of the local executor."""

from __future__ import annotations

import pytest
from test_sweep import FAST, recipes_for, tiny_dataset, tiny_speech_model

from core.measure.executors import Executor
from core.measure.store import Store
from core.measure.sweep import run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def test_executor_settings_are_checked():
    with pytest.raises(ValueError, match="unknown executor"):
        Executor("dask")
    with pytest.raises(ValueError, match="whole number"):
        Executor("ray", workers=0)
    with pytest.raises(ValueError, match="for --executor ray"):
        Executor("local", workers=2)


def test_ray_executor_on_a_local_two_cpu_cluster_returns_the_local_points(tiny_whisper, tmp_path):
    ray = pytest.importorskip("ray")  # requirements-test.txt installs it: CI runs this
    model, dataset = tiny_speech_model(tiny_whisper), tiny_dataset(tmp_path / "data")
    recipes = recipes_for(0, 0.2, 0.4, 0.6)
    local = {p.key: p for p in run_sweep(model, dataset, recipes, Store(tmp_path / "local.sqlite"), FAST)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        store = Store(tmp_path / "ray.sqlite")
        remote = list(run_sweep(model, dataset, recipes, store, FAST, executor=Executor("ray", workers=2)))
    finally:
        ray.shutdown()
    assert sorted(p.key for p in remote) == sorted(local) and len(store) == len(local)
    for point in remote:
        assert not point.cached
        assert (point.wer, point.size_bytes, point.rows) == (
            local[point.key].wer,
            local[point.key].size_bytes,
            local[point.key].rows,
        )
    again = list(run_sweep(model, dataset, recipes, store, FAST, executor=Executor("ray", workers=2)))
    assert all(p.cached for p in again)  # stored: no cluster needed the second time
