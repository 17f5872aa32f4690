"""Sweeps: a grid of recipe knobs -> recipes -> measured points, cached in the results store.

GRID.json maps "step.field" keys to a list of values (an axis of the grid) or to one value (fixed):

    {"prune.sparsity": [0, 0.2, 0.4], "quantize.bits": [16, 8, 4], "low_rank.energy": [1.0, 0.95],
     "quantize.granularity": "group", "prune.groups": ["encoder.ffn", "decoder.ffn"]}

Steps are the registered techniques (core.compress.registry: prune, low_rank, quantize, ...), always
applied in their `position` order; any field of the step's config may be set. A step is present at a
grid point only when one of its main knobs (the technique's `knobs`) is set there and is not "off".
Off values come from the technique (prune.sparsity 0, low_rank.energy 1.0, quantize.bits 16 or 32,
...); `"off"` or null mean off for any main knob. A technique's `aliases` map grid words to values
(`"fp16"` as quantize.bits means bits=16). `groups` takes a list of group names, so for it a flat
list is one fixed value and a list of lists is an axis. Fields of a step without a main knob in the
grid are an error.

`run_sweep` is a generator: points already in the store come back at once, the rest are computed in
order, stored one transaction each, and yielded as they finish. Stop iterating to cancel; running the
same sweep again computes only the missing points. A store that cannot be written is refused (ValueError)
before the first point is measured.

A point's latency is timed together with the base model's, clip by clip in the same run
(core.measure.evaluate.measure_paired_latency): the point keeps both and their ratio (`Point.latency_ratio`)
with the load while timing, so a speed-up is never a ratio of two latencies taken at different times.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from core.compress.cost import linear_macs
from core.compress.recipe import Recipe, apply_recipe
from core.compress.registry import TECHNIQUES, in_order, technique
from core.data import load_waves
from core.measure.evaluate import evaluate, measure_paired_latency
from core.measure.executors import Executor
from core.measure.store import Point, Store, canonical_json, model_identity, point_key, weights_hash
from core.models import EncoderCache

OFF_WORDS = (None, "off")
LIST_FIELDS = ("groups",)  # fields whose single value is itself a list
EVAL_METHOD = 2  # bump when the way a point is measured changes: old points are then not reused
CORE = Path(__file__).resolve().parent.parent
# Code that produces a point's numbers (and every registered technique's module): editing (or upgrading)
# any of it retires old points.
MEASURING_CODE = (
    "audio.py",
    "data.py",
    "metrics.py",
    "models",
    "compress",
    "io",
    "measure/evaluate.py",
)


# ----------------------------------------------------------------------------- grids


def load_grid(path: str | Path) -> dict:
    """Read GRID.json; ValueError naming the file if it is not a JSON object."""
    path = Path(path)
    try:
        grid = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"grid file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(grid, dict):
        raise ValueError(f'{path} must hold a JSON object of "step.field": values')
    return grid


def _is_off(step: str, field: str, value) -> bool:
    if value in OFF_WORDS:
        return True
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and value in technique(step).off.get(field, ())
    )


def _axis(key: str, field: str, value) -> list:
    """The values one grid key takes: a list is an axis, anything else one fixed value."""
    if field in LIST_FIELDS:
        axis = (
            value
            if isinstance(value, list) and value and all(isinstance(v, list) for v in value)
            else [value]
        )
    else:
        axis = value if isinstance(value, list) else [value]
    if not axis:
        raise ValueError(f"grid key {key!r}: empty list of values")
    return axis


def _parse_keys(grid: dict) -> dict[str, tuple[str, str, list]]:
    """key -> (step, field, values); ValueError naming the key for unknown steps or malformed keys."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError('a grid is a non-empty JSON object of "step.field": values')
    parsed = {}
    for key, value in grid.items():
        step, dot, field = str(key).partition(".")
        if not dot or not field:
            raise ValueError(f'grid key {key!r}: expected "step.field", e.g. "quantize.bits"')
        if step not in TECHNIQUES:
            raise ValueError(f"grid key {key!r}: unknown step {step!r}; steps: {', '.join(TECHNIQUES)}")
        parsed[key] = (step, field, _axis(key, field, value))
    for step in TECHNIQUES:
        keys = [k for k, (s, _, _) in parsed.items() if s == step]
        mains = [k for k in keys if parsed[k][1] in technique(step).knobs]
        if keys and not mains:
            raise ValueError(
                f"grid key {keys[0]!r}: the {step} step needs one of "
                f"{', '.join(f'{step}.{f}' for f in technique(step).knobs)} in the grid"
            )
        if len(mains) > 1:
            raise ValueError(f"grid keys {mains[0]!r} and {mains[1]!r}: give one main knob per step")
    return parsed


def _step_config(step: str, field: str, value) -> tuple[str, object]:
    """(field, config value) of a grid value, through the technique's aliases (e.g. bits "fp16" -> 16)."""
    aliases = technique(step).aliases
    return field, aliases.get((field, value), value) if isinstance(value, (str, int, float)) else value


MAX_GRID_POINTS = 100_000  # a grid beyond this is only ever sampled (--sample), never expanded whole


def _combination(axes: list[list], index: int) -> tuple:
    """The `index`-th combination of itertools.product(*axes), computed without the ones before it."""
    values = []
    for axis in reversed(axes):
        index, position = divmod(index, len(axis))
        values.append(axis[position])
    return tuple(reversed(values))


def expand_grid(grid: dict, sample: int | None = None, seed: int = 0) -> list[dict]:
    """Recipe JSON objects for every point of the grid (or `sample` of them at random), duplicates dropped.

    The points are counted first: a grid of more than MAX_GRID_POINTS is refused unless sampled, and then
    only the sampled combinations are built. Structure only; values are checked by `grid_recipes`.
    ValueError names the offending key."""
    parsed = _parse_keys(grid)
    keys = list(parsed)
    axes = [parsed[k][2] for k in keys]
    count = math.prod(len(axis) for axis in axes)
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be at least 1, got {sample}")
    huge = count > MAX_GRID_POINTS
    if huge and sample is None:
        raise ValueError(
            f"the grid has {count:,} points (more than {MAX_GRID_POINTS:,}); evaluate a random sample of "
            "them (--sample N) or give fewer values"
        )
    if huge:
        picks = random.Random(seed).sample(range(count), min(sample, count))
        combinations = (_combination(axes, i) for i in sorted(picks))
    else:
        combinations = itertools.product(*axes)
    recipes, seen = [], set()
    for combo in combinations:
        configs: dict[str, dict] = {}
        on: set[str] = set()
        for key, value in zip(keys, combo):
            step, field, _ = parsed[key]
            if field in technique(step).knobs and not _is_off(step, field, value):
                on.add(step)
            name, setting = _step_config(step, field, value)
            configs.setdefault(step, {})[name] = setting
        recipe = {"steps": [{t.name: configs[t.name]} for t in in_order() if t.name in on]}
        text = canonical_json(recipe)
        if text not in seen:
            seen.add(text)
            recipes.append(recipe)
    if sample is not None and not huge:
        picks = random.Random(seed).sample(range(len(recipes)), min(sample, len(recipes)))
        recipes = [recipes[i] for i in sorted(picks)]
    return recipes


def grid_recipes(grid: dict, sample: int | None = None, seed: int = 0) -> list:
    """`expand_grid` turned into Recipe objects; ValueError naming the key of a bad value."""

    def check(what: str, obj: dict) -> object:
        try:
            return Recipe.from_json(obj)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{what}: {exc}") from None

    parsed = _parse_keys(grid)
    for key, (step, field, values) in parsed.items():  # one single-step probe per value: errors name the key
        main_field, main_values = next(
            (f, v) for s, f, v in parsed.values() if s == step and f in technique(step).knobs
        )
        on = [v for v in main_values if not _is_off(step, main_field, v)]
        for value in values:
            if field == main_field and _is_off(step, field, value) or not on:
                continue  # off, or a field of a step that is off at every grid point
            config = dict([_step_config(step, main_field, on[0]), _step_config(step, field, value)])
            check(f"grid key {key!r}, value {value!r}", {"steps": [{step: config}]})
    return [check(f"grid point {canonical_json(obj)}", obj) for obj in expand_grid(grid, sample, seed)]


# ----------------------------------------------------------------------------- measuring points


@dataclass(frozen=True)
class SweepSettings:
    """How points are measured. Everything that changes a number is part of the store key."""

    packed: bool = True  # score packed 30 s windows (core.data.pack_utterances), not one clip each
    latency_runs: int = 2  # timed runs of the latency clip, each beside one of the baseline (0 = no latency)
    reuse_encoder: bool = True  # reuse encoder outputs when the encoder's weights are unchanged (exact)

    def key_json(self) -> dict:
        """The settings that go into the store key (threads only matter when latency is measured)."""
        threads = torch.get_num_threads() if self.latency_runs > 0 else None
        return {
            "method": EVAL_METHOD,
            "code": code_version(),
            "packed": self.packed,
            "latency_runs": self.latency_runs,
            "threads": threads,
        }


NAIVE = SweepSettings(packed=False, latency_runs=5, reuse_encoder=False)  # what `evaluate` does by default


def code_version(parts: tuple[str, ...] = MEASURING_CODE, techniques: bool = True) -> str:
    """A short sha256 over the code under core/ named by `parts` (default: the measuring code) and every
    registered technique's module (a few ms): points measured by other code differ."""
    files = set()
    for part in parts:
        path = CORE / part
        files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    for t in TECHNIQUES.values() if techniques else ():
        source = getattr(sys.modules.get(t.apply.__module__), "__file__", None)
        if source:
            files.add(Path(source).resolve())
    digest = hashlib.sha256()
    for path in sorted(files):
        name = path.relative_to(CORE).as_posix() if path.is_relative_to(CORE) else path.name
        digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def recipe_identity(recipe) -> dict:
    """Every config field of every step, defaults included, so a changed default cannot reuse old points."""
    return {
        "steps": [
            {name: json.loads(json.dumps(asdict(config), default=list))} for name, config in recipe.steps
        ]
    }


def encoder_identity(model) -> str | None:
    """Weights hash of a generative model's encoder (None for others): equal hash, equal encoder outputs."""
    return weights_hash(model.encoder()) if model.family.GENERATIVE else None


def apply_reusing(model, recipe, reuse: dict):
    """apply_recipe(model, recipe), starting from `reuse`'s model when it holds what all steps but the last
    give (a grid varies its last step fastest, so prune + SVD run once for every bit width). Afterwards
    `reuse` holds that model and this result, keyed by their recipes' full configs."""
    if not recipe.steps:
        return apply_recipe(model, recipe)[0]
    head = Recipe(recipe.steps[:-1], recipe.keys[:-1])
    head_key = canonical_json(recipe_identity(head))
    start = model if head.is_empty else reuse.get(head_key) or apply_recipe(model, head)[0]
    last = Recipe(recipe.steps[-1:], recipe.keys[-1:])
    variant, _ = apply_recipe(start, last, name=f"{model.name} + {recipe.describe()}")
    reuse.clear()
    reuse.update({head_key: start, canonical_json(recipe_identity(recipe)): variant})
    return variant


# Modules timed (or warmed up) in this process: a baseline's first timing gets one untimed run before it,
# once per process (a page's base model) or per sweep, not once per point.
_WARM: weakref.WeakSet = weakref.WeakSet()


def measure_point(
    model,
    recipe,
    dataset,
    waves: list,
    settings: SweepSettings = SweepSettings(),
    encoder_cache: EncoderCache | None = None,
    reuse: dict | None = None,
    baseline=None,
) -> tuple[dict, dict]:
    """Apply `recipe` to a copy of `model`, evaluate it; returns (core.measure.evaluate result dict, timings).

    With `encoder_cache` (and settings.reuse_encoder), a variant whose encoder is still the base model's
    reuses the base encoder's outputs; only those are cached, so the cache stays one dataset's size.
    `reuse` (a dict kept across calls) skips re-applying the steps a previous recipe shared
    (apply_reusing).
    Latency (settings.latency_runs > 0) is timed against `baseline` (default `model`), alternating clip by
    clip (measure_paired_latency): result["latency"] holds both, the ratio and the load while timing,
    result["latency_ratio"] the ratio. The base model itself (an empty recipe, no other baseline) is timed
    alone, ratio 1."""
    start = time.perf_counter()
    variant = apply_reusing(model, recipe, {} if reuse is None else reuse)
    applied = time.perf_counter()
    encoder_id = None
    if settings.reuse_encoder and encoder_cache is not None:
        encoder_id = encoder_identity(variant)
        encoder_id = encoder_id if encoder_id is not None and encoder_id == encoder_identity(model) else None
    hits_before = encoder_cache.hits if encoder_id else 0
    scored = variant.with_encoder_cache(encoder_cache, encoder_id) if encoder_id else variant
    result = evaluate(scored, dataset, waves=waves, latency_runs=0, packed=settings.packed).to_dict()
    result["linear_macs"] = linear_macs(variant.module)  # the theoretical speed-up, shown without rebuilding
    hits = encoder_cache.hits - hits_before if encoder_id else 0
    evaluated = time.perf_counter()
    if settings.latency_runs > 0:
        warmup = 1 if hits else 0  # the evaluation was the warm-up, unless the encoder was reused
        against = model if baseline is None else baseline
        alone = against is model and recipe.is_empty
        baseline_warmup = 0 if alone or against.module in _WARM else 1
        latency = measure_paired_latency(
            variant,
            None if alone else against,
            runs=settings.latency_runs,
            warmup=warmup,
            baseline_warmup=baseline_warmup,
        )
        if not alone:
            _WARM.add(against.module)
        result["latency"] = latency.to_json() | {"warmup": warmup, "baseline_warmup": baseline_warmup}
        result["latency_ms"] = latency.variant.median_ms
        result["latency_ratio"] = latency.ratio
        result["real_time_factor"] = latency.variant.real_time_factor
    done = time.perf_counter()
    timings = {
        "apply": applied - start,
        "evaluate": evaluated - applied,
        "latency": done - evaluated,
        "total": done - start,
        "encoder_reused": hits,
    }
    return result, timings


def point_keys(model, dataset, recipes: list, settings: SweepSettings) -> dict[str, Recipe]:
    """Store key -> recipe of each distinct recipe (Recipe objects or their JSON), in the given order."""
    model_id, fingerprint, key_settings = model_identity(model), dataset.fingerprint(), settings.key_json()
    keys: dict[str, Recipe] = {}
    for recipe in map(Recipe.from_json, recipes):
        keys.setdefault(point_key(model_id, recipe_identity(recipe), fingerprint, key_settings), recipe)
    return keys


def stored_points(model, dataset, recipes: list, store: Store, settings: SweepSettings) -> list[Point | None]:
    """The stored point of each recipe, None where it is not measured yet: what a page shows at once,
    before it asks for any work."""
    keys = [next(iter(point_keys(model, dataset, [recipe], settings))) for recipe in recipes]
    stored = store.get_many(keys)
    return [stored.get(key) for key in keys]


def run_sweep(
    model,
    dataset,
    recipes: list,
    store: Store,
    settings: SweepSettings = SweepSettings(),
    waves: list | None = None,
    encoder_cache: EncoderCache | None = None,
    executor: Executor = Executor(),
) -> Iterator[Point]:
    """Yield a Point per distinct recipe: stored ones first and at once, then each new one as it is measured.

    Recipes may be Recipe objects or their JSON. New points are written to `store` before they are
    yielded; ValueError before the first one is measured when `store` cannot be written. Pass the same
    `encoder_cache` to successive calls (e.g. from a page) to reuse encoder outputs across them. `executor`
    says where the missing points are measured (here, or on a Ray cluster: in the order they finish
    there)."""
    model_id, fingerprint, key_settings = model_identity(model), dataset.fingerprint(), settings.key_json()
    todo = point_keys(model, dataset, recipes, settings)
    stored = store.get_many(list(todo))
    for key in todo:
        if key in stored:
            yield stored[key]
    missing = [(key, recipe) for key, recipe in todo.items() if key not in stored]
    if not missing:
        return
    store.check_writable()  # before the work, not after it (a point can take minutes)
    if waves is None:
        waves = load_waves(dataset)
    encoder_cache = EncoderCache() if encoder_cache is None else encoder_cache
    measure = partial(measure_point, model=model, dataset=dataset, waves=waves, settings=settings)
    for key, recipe, result, timings in executor.measure(measure, missing, encoder_cache):
        point = stored_point(
            key,
            model,
            model_id,
            recipe.to_json(),
            recipe.describe(),
            dataset,
            fingerprint,
            key_settings,
            result,
            timings,
        )
        store.put(point)
        yield point


def stored_point(
    key: str,
    base,
    base_id: str,
    recipe_json: dict,
    label: str,
    dataset,
    fingerprint: str,
    key_settings: dict,
    result: dict,
    timings: dict,
    student: dict | None = None,
) -> Point:
    """A Point of `base` from an evaluation result (its per-clip rows moved out of `result`) and timings."""
    rows = result.pop("rows")
    return Point(
        key=key,
        model=base.name,
        model_id=base_id,
        recipe=recipe_json,
        label=label,
        dataset=dataset.name,
        dataset_fingerprint=fingerprint,
        settings=key_settings,
        wer=result["wer"],
        cer=result["cer"],
        size_bytes=result["size_bytes"],
        latency_ms=result["latency_ms"],
        parameters=result["parameters"],
        result=result,
        rows=rows,
        timings=timings,
        machine=result["machine"],
        student=student,
    )


def record_student(
    base,
    variant,
    dataset,
    store: Store,
    student: dict,
    recipe: Recipe,
    label: str,
    settings: SweepSettings = SweepSettings(),
    waves: list | None = None,
    encoder_cache: EncoderCache | None = None,
) -> Point:
    """Measure a trained student (no recipe of `base` produces it) and store it among `base`'s points, so it
    joins the same Pareto plots (its latency timed against `base`'s); keyed by the student's own weights.
    `student` says where it was written ({"folder", "spec", "config"}), `recipe` which steps ran after
    training."""
    base_id, fingerprint, key_settings = model_identity(base), dataset.fingerprint(), settings.key_json()
    key = point_key(base_id, {"model": model_identity(variant)}, fingerprint, key_settings)
    stored = store.get(key)
    if stored is not None:
        return stored
    store.check_writable()
    if waves is None:
        waves = load_waves(dataset)
    result, timings = measure_point(
        variant,
        Recipe(),
        dataset,
        waves,
        settings,
        EncoderCache() if encoder_cache is None else encoder_cache,
        baseline=base,
    )
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
        student,
    )
    store.put(point)
    return point
