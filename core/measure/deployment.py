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
from core.io.folders import load_model
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
    student: Point | None = None,
    origin: str | None = None,
) -> Point:
    """`base` with `recipe` applied (or the trained `student` of a stored student point, loaded from its
    folder), exported for runtime `name` into `folder` and measured there: the stored point (measured once
    per key; the folder is written again whenever it is missing).

    `origin`: how `load_model` names `base` (default its display name), recorded in the folder so that
    `evaluate --model FOLDER --parity` finds the lab model again.
    ValueError (nothing measured) when the runtime cannot hold the compressed model exactly, or when the
    point is not stored yet and `store` cannot be written.
    `progress(stage, fraction)` hears "export", "transcribe" (after each clip but the last) and "latency"
    (once every clip is transcribed)."""
    say = progress or (lambda stage, fraction: None)
    target, folder = runtime(name), Path(folder)
    say("export", 0.0)
    if student is not None:  # keyed by its weights, as core.measure.sweep.record_student keys it
        variant = load_model(student.student["folder"])
        recipe, what = Recipe.from_json(student.recipe), {"model": model_identity(variant)}
    else:  # keyed by the recipe: a stored point with its folder in place costs no apply_recipe
        variant, what = None, recipe_identity(recipe)
    base_id, fingerprint = model_identity(base), dataset.fingerprint()
    key_settings = runtime_settings(settings, name)
    key = point_key(base_id, what, fingerprint, key_settings)
    stored = store.get(key)
    if stored is not None and all((folder / f).is_file() for f in target.files):
        return stored
    if stored is None:
        store.check_writable()  # before exporting and measuring, not after
    start = time.perf_counter()
    if variant is None:
        variant = (
            apply_recipe(base, recipe, name=f"{base.name} + {recipe.describe()}")[0] if recipe.steps else base
        )
    target.export(variant, folder)
    if student is not None:
        record_origin(folder, student.student["folder"], None)
    else:
        record_origin(folder, origin or base.name, recipe.to_json())
    exported = time.perf_counter()
    if stored is not None:
        return stored
    deployed = replace(target.load(folder, torch.get_num_threads()), name=variant.name)
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
    label = student.label if student else recipe.describe()
    point = stored_point(
        key,
        base,
        base_id,
        recipe.to_json(),
        label,
        dataset,
        fingerprint,
        key_settings,
        result,
        timings,
        student.student if student else None,
    )
    store.put(point)
    return point
