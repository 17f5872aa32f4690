"""Where a sweep's points are measured: here, one after another, or fanned out over a Ray cluster.

Points are independent (model + recipe + dataset -> metrics), so an executor only has to take the list
of (store key, recipe) still missing and yield each one's (key, recipe, result, timings) as it finishes;
`core.measure.sweep.run_sweep` writes them to the store as they arrive, so a sweep on a cluster streams
into the same store and resumes the same way.

On Ray, each worker is an actor that holds one copy of the base model, the dataset's audio and an encoder
cache, sent once through Ray's object store (the cluster needs the lab installed, not its files), and
measures recipe after recipe with `measure_point`: the very code of the local path. Each actor reserves as
many CPUs as torch threads the driver uses, so its latency is measured at the thread count the store key
records; several actors on one machine time each other, so on one machine prefer `latency_runs=0` or one
worker per node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

RESULT = tuple[str, object, dict, dict]  # (store key, recipe, evaluation result, timings)


@dataclass(frozen=True)
class Executor:
    """How points are measured: "local" (this process) or "ray" (`address`: a running cluster such as
    "ray://head:10001" or "auto"; None starts a private one on this machine) with `workers` actors."""

    name: str = "local"
    address: str | None = None
    workers: int = 1

    def __post_init__(self):
        if self.name not in ("local", "ray"):
            raise ValueError(f"unknown executor {self.name!r}; choose 'local' or 'ray'")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= 1024:
            raise ValueError(f"workers must be a whole number from 1 to 1024, got {self.workers!r}")
        if self.name == "local" and (self.address or self.workers != 1):
            raise ValueError(
                "the local executor measures one point at a time here; --address and "
                "--workers are for --executor ray"
            )

    def measure(self, model, dataset, waves, settings, encoder_cache, todo: list) -> Iterator[RESULT]:
        """Measure each (key, recipe) of `todo`, yielding results as they finish (any order on Ray)."""
        if self.name == "ray":
            return measure_on_ray(self, model, dataset, waves, settings, todo)
        return measure_here(model, dataset, waves, settings, encoder_cache, todo)


def measure_here(model, dataset, waves, settings, encoder_cache, todo: list) -> Iterator[RESULT]:
    """One point after another in this process, reusing shared recipe prefixes and encoder outputs."""
    from core.measure.sweep import measure_point  # measure_point's module uses this one

    reuse: dict = {}
    for key, recipe in todo:
        result, timings = measure_point(model, recipe, dataset, waves, settings, encoder_cache, reuse)
        yield key, recipe, result, timings


class PointWorker:
    """A Ray actor's state: the base model, the dataset and its audio, kept across the points it measures."""

    def __init__(self, model, dataset, waves, settings, threads: int):
        from core.models import EncoderCache

        torch.set_num_threads(threads)
        self.model, self.dataset, self.waves, self.settings = model, dataset, waves, settings
        self.encoder_cache, self.reuse = EncoderCache(), {}

    def measure(self, key: str, recipe_json: dict) -> tuple[str, dict, dict]:
        from core.compress.recipe import Recipe
        from core.measure.sweep import measure_point

        recipe = Recipe.from_json(recipe_json)
        result, timings = measure_point(
            self.model, recipe, self.dataset, self.waves, self.settings, self.encoder_cache, self.reuse
        )
        return key, result, timings


def measure_on_ray(executor: Executor, model, dataset, waves, settings, todo: list) -> Iterator[RESULT]:
    """Fan `todo` out over `executor.workers` actors; each actor takes the next recipe when it is free."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--executor ray needs Ray: pip install -r requirements-ray.txt (see README, 'Running on a Ray "
            "cluster')"
        ) from None
    if not ray.is_initialized():
        ray.init(address=executor.address, include_dashboard=False, log_to_driver=False)
    threads = torch.get_num_threads()
    actor = ray.remote(num_cpus=threads)(PointWorker)
    shared = [ray.put(obj) for obj in (model, dataset, waves, settings)]
    workers = [actor.remote(*shared, threads) for _ in range(min(executor.workers, len(todo)))]
    recipes = {key: recipe for key, recipe in todo}
    queue = list(todo)
    running = {}
    for worker in workers:
        if queue:
            key, recipe = queue.pop(0)
            running[worker.measure.remote(key, recipe.to_json())] = worker
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            worker = running.pop(ready[0])
            key, result, timings = ray.get(ready[0])
            if queue:
                next_key, recipe = queue.pop(0)
                running[worker.measure.remote(next_key, recipe.to_json())] = worker
            yield key, recipes[key], result, timings
    finally:
        for worker in workers:
            ray.kill(worker)
