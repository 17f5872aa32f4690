"""Measure a recipe where it is deployed: export the compressed model for a runtime (CTranslate2, ONNX
Runtime, whisper.cpp), evaluate it inside that runtime, and keep the point in the results store beside the
lab's own point of the same recipe.

The runtime is part of the point's key (its settings carry the runtime's name, its package version and a
hash of the export code), so the lab's and each runtime's measurement of one recipe are separate points
that the Pareto page can show side by side. Latency is measured in the runtime with its thread count
pinned to torch's (the lab's) thread count; size is the bytes of the files the runtime loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import torch

from core.compress.recipe import Recipe, apply_recipe
from core.data import load_waves
from core.deploy.runtime import record_origin, runtime
from core.measure.evaluate import evaluate
from core.measure.store import Point, Store, model_identity, point_key
from core.measure.sweep import SweepSettings, code_version, recipe_identity, stored_point


def runtime_settings(settings: SweepSettings, name: str) -> dict:
    """The store-key settings of a point measured in runtime `name`: the lab's, plus where and by what."""
    return {
        **settings.key_json(),
        "runtime": name,
        "runtime_version": version(runtime(name).package),
        "export_code": code_version(("deploy",), techniques=False),
    }


def measure_deployed(
    base,
    recipe: Recipe,
    name: str,
    dataset,
    store: Store,
    folder: str | Path,
    settings: SweepSettings = SweepSettings(),
    waves: list | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Point:
    """`base` with `recipe` applied, exported for runtime `name` into `folder` and measured there: the
    stored point (measured once per key; the folder is written again whenever it is missing).

    ValueError (nothing measured) when the runtime cannot hold the compressed model exactly.
    `progress(stage, fraction)` hears "export", "transcribe" (after each clip but the last) and "latency"
    (once every clip is transcribed)."""
    say = progress or (lambda stage, fraction: None)
    target, folder = runtime(name), Path(folder)
    base_id, fingerprint = model_identity(base), dataset.fingerprint()
    key_settings = runtime_settings(settings, name)
    key = point_key(base_id, recipe_identity(recipe), fingerprint, key_settings)
    stored = store.get(key)
    if (
        stored is not None
        and target.model_files(folder)
        and len(target.model_files(folder)) == len(target.files)
    ):
        return stored
    start = time.perf_counter()
    say("export", 0.0)
    variant = (
        apply_recipe(base, recipe, name=f"{base.name} + {recipe.describe()}")[0] if recipe.steps else base
    )
    target.export(variant, folder)
    record_origin(folder, base.name, recipe.to_json())
    exported = time.perf_counter()
    if stored is not None:
        return stored
    deployed = target.load(folder, torch.get_num_threads())
    deployed = replace(deployed, name=variant.name)
    result = evaluate(
        deployed,
        dataset,
        waves=waves if waves is not None else load_waves(dataset),
        latency_runs=settings.latency_runs,
        packed=settings.packed,
        progress=lambda done, total: say("transcribe" if done < total else "latency", done / total),
    ).to_dict()
    done = time.perf_counter()
    timings = {"apply": exported - start, "evaluate": done - exported, "latency": 0.0, "total": done - start}
    point = stored_point(
        key,
        base,
        base_id,
        recipe.to_json(),
        recipe.describe(),
        dataset,
        fingerprint,
        key_settings,
        result,
        timings,
    )
    store.put(point)
    return point
