"""Where a sweep's points are measured: here, one after another, or fanned out over a Ray cluster.

Points are independent (model + recipe + dataset -> metrics), so an executor only has to take the list
of (store key, recipe) still missing and a `measure(recipe, encoder_cache, reuse)` function (the sweep's
`measure_point` bound to its model, data and settings), and yield each one's (key, recipe, result,
timings) as it finishes;
`core.measure.sweep.run_sweep` writes them to the store as they arrive, so a sweep on a cluster streams
into the same store and resumes the same way.

On Ray, each worker is an actor that holds one copy of that function (with the base model and the
dataset's audio: sent once through Ray's object store, so the cluster needs the lab installed, not its
files) and its own encoder cache, and measures recipe after recipe with it: the very code of the local
path. Each actor reserves as
many CPUs as torch threads the driver uses, so its latency is measured at the thread count the store key
records; several actors on one machine time each other, so on one machine prefer `latency_runs=0` or one
worker per node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from core.compress.recipe import Recipe
from core.models import EncoderCache

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

    def measure(self, measure: Callable, todo: list, encoder_cache: EncoderCache) -> Iterator[RESULT]:
        """Measure each (key, recipe) of `todo`, yielding results as they finish (any order on Ray)."""
        if self.name == "ray":
            return measure_on_ray(self, measure, todo)
        return measure_here(measure, todo, encoder_cache)


def measure_here(measure: Callable, todo: list, encoder_cache: EncoderCache) -> Iterator[RESULT]:
    """One point after another in this process, reusing shared recipe prefixes and encoder outputs."""
    reuse: dict = {}
    for key, recipe in todo:
        result, timings = measure(recipe=recipe, encoder_cache=encoder_cache, reuse=reuse)
        yield key, recipe, result, timings


class PointWorker:
    """A Ray actor's state: the bound measuring function, an encoder cache and the reusable steps."""

    def __init__(self, measure: Callable, threads: int):
        torch.set_num_threads(threads)
        self.measure_point, self.encoder_cache, self.reuse = measure, EncoderCache(), {}

    def measure(self, key: str, recipe_json: dict) -> tuple[str, dict, dict]:
        recipe = Recipe.from_json(recipe_json)
        result, timings = self.measure_point(
            recipe=recipe, encoder_cache=self.encoder_cache, reuse=self.reuse
        )
        return key, result, timings


def measure_on_ray(executor: Executor, measure: Callable, todo: list) -> Iterator[RESULT]:
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
    shared = ray.put(measure)
    workers = [actor.remote(shared, threads) for _ in range(min(executor.workers, len(todo)))]
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
