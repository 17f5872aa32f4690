"""Sweeps: a grid of recipe knobs -> recipes -> measured points, cached in the results store.

GRID.json maps "step.field" keys to a list of values (an axis of the grid) or to one value (fixed):

    {"prune.sparsity": [0, 0.2, 0.4], "quantize.bits": [16, 8, 4], "low_rank.energy": [1.0, 0.95],
     "quantize.granularity": "group", "prune.groups": ["encoder.ffn", "decoder.ffn"]}

Steps are `prune`, `low_rank` and `quantize`, always applied in that order; any field of the step's
config may be set. A step is present at a grid point only when one of its main knobs is set there and
is not "off". Off values: prune.sparsity 0, prune.threshold 0, low_rank.energy 1.0,
low_rank.rank_fraction 1.0, quantize.bits 16 or 32; `"off"` or null mean off for any main knob
(low_rank.rank has no numeric off value). `"fp16"` as quantize.bits means fp16 storage (bits=16 in the
recipe). `groups` takes a list of group names, so for it a flat list is one fixed value and a list of
lists is an axis. Fields of a step without a main knob in the grid are an error.

`run_sweep` is a generator: points already in the store come back at once, the rest are computed in
order, stored one transaction each, and yielded as they finish. Stop iterating to cancel; running the
same sweep again computes only the missing points.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from core.store import Point, Store, canonical_json, model_identity, point_key, weights_hash

STEPS = ("prune", "low_rank", "quantize")  # application order
MAIN_KNOBS = {"prune": ("sparsity", "threshold"), "low_rank": ("rank_fraction", "rank", "energy"),
              "quantize": ("bits",)}
OFF_VALUES = {("prune", "sparsity"): (0,), ("prune", "threshold"): (0,), ("low_rank", "energy"): (1.0,),
              ("low_rank", "rank_fraction"): (1.0,), ("low_rank", "rank"): (), ("quantize", "bits"): (16, 32)}
OFF_WORDS = (None, "off")
LIST_FIELDS = ("groups",)  # fields whose single value is itself a list
EVAL_METHOD = 1  # bump when the way a point is measured changes: old points are then not reused
# Modules whose code produces a point's numbers: editing (or upgrading) any of them retires old points.
MEASURING_MODULES = ("audio", "models", "metrics", "evaluate", "artifact", "recipe", "prune", "lowrank", "quant",
                     "gptq")


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
        raise ValueError(f"{path} must hold a JSON object of \"step.field\": values")
    return grid


def _is_off(step: str, field: str, value) -> bool:
    if value in OFF_WORDS:
        return True
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value in OFF_VALUES[(step, field)]


def _axis(key: str, field: str, value) -> list:
    """The values one grid key takes: a list is an axis, anything else one fixed value."""
    if field in LIST_FIELDS:
        axis = value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
    else:
        axis = value if isinstance(value, list) else [value]
    if not axis:
        raise ValueError(f"grid key {key!r}: empty list of values")
    return axis


def _parse_keys(grid: dict) -> dict[str, tuple[str, str, list]]:
    """key -> (step, field, values); ValueError naming the key for unknown steps or malformed keys."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError("a grid is a non-empty JSON object of \"step.field\": values")
    parsed = {}
    for key, value in grid.items():
        step, dot, field = str(key).partition(".")
        if not dot or not field:
            raise ValueError(f"grid key {key!r}: expected \"step.field\", e.g. \"quantize.bits\"")
        if step not in STEPS:
            raise ValueError(f"grid key {key!r}: unknown step {step!r}; steps: {', '.join(STEPS)}")
        parsed[key] = (step, field, _axis(key, field, value))
    for step in STEPS:
        keys = [k for k, (s, _, _) in parsed.items() if s == step]
        mains = [k for k in keys if parsed[k][1] in MAIN_KNOBS[step]]
        if keys and not mains:
            raise ValueError(f"grid key {keys[0]!r}: the {step} step needs one of "
                             f"{', '.join(f'{step}.{f}' for f in MAIN_KNOBS[step])} in the grid")
        if len(mains) > 1:
            raise ValueError(f"grid keys {mains[0]!r} and {mains[1]!r}: give one main knob per step")
    return parsed


def _step_config(step: str, field: str, value) -> tuple[str, object]:
    if step == "quantize" and field == "bits" and value == "fp16":
        return field, 16
    return field, value


def expand_grid(grid: dict, sample: int | None = None, seed: int = 0) -> list[dict]:
    """Recipe JSON objects for every point of the grid (or `sample` of them at random), duplicates dropped.

    Structure only; values are checked by `grid_recipes`. ValueError names the offending key."""
    parsed = _parse_keys(grid)
    keys = list(parsed)
    recipes, seen = [], set()
    for combo in itertools.product(*(parsed[k][2] for k in keys)):
        configs: dict[str, dict] = {}
        on: set[str] = set()
        for key, value in zip(keys, combo):
            step, field, _ = parsed[key]
            if field in MAIN_KNOBS[step] and not _is_off(step, field, value):
                on.add(step)
            name, setting = _step_config(step, field, value)
            configs.setdefault(step, {})[name] = setting
        recipe = {"steps": [{step: configs[step]} for step in STEPS if step in on]}
        text = canonical_json(recipe)
        if text not in seen:
            seen.add(text)
            recipes.append(recipe)
    if sample is not None:
        if sample < 1:
            raise ValueError(f"sample must be at least 1, got {sample}")
        picks = random.Random(seed).sample(range(len(recipes)), min(sample, len(recipes)))
        recipes = [recipes[i] for i in sorted(picks)]
    return recipes


def grid_recipes(grid: dict, sample: int | None = None, seed: int = 0) -> list:
    """`expand_grid` turned into core.recipe.Recipe objects; ValueError naming the key of a bad value."""
    from core.recipe import Recipe

    def check(what: str, obj: dict) -> object:
        try:
            return Recipe.from_json(obj)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{what}: {exc}") from None

    parsed = _parse_keys(grid)
    for key, (step, field, values) in parsed.items():  # one single-step probe per value: errors name the key
        main_field, main_values = next((f, v) for s, f, v in parsed.values() if s == step and f in MAIN_KNOBS[step])
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

    packed: bool = True  # score packed 30 s windows (core.evaluate.pack_utterances), not one clip each
    latency_runs: int = 2  # timed runs of the latency clip (0 = no latency); warm-up is the evaluation
    reuse_encoder: bool = True  # reuse encoder outputs when the encoder's weights are unchanged (exact)

    def key_json(self) -> dict:
        """The settings that go into the store key (threads only matter when latency is measured)."""
        import torch

        threads = torch.get_num_threads() if self.latency_runs > 0 else None
        return {"method": EVAL_METHOD, "code": code_version(), "packed": self.packed,
                "latency_runs": self.latency_runs, "threads": threads}


NAIVE = SweepSettings(packed=False, latency_runs=5, reuse_encoder=False)  # what `evaluate` does by default


def code_version() -> str:
    """A short sha256 over the source of MEASURING_MODULES (about 1 ms): points measured by other code differ."""
    digest = hashlib.sha256()
    for name in MEASURING_MODULES:
        path = Path(__file__).with_name(f"{name}.py")
        digest.update(name.encode() + (path.read_bytes() if path.exists() else b"-"))
    return digest.hexdigest()[:16]


def recipe_identity(recipe) -> dict:
    """Every config field of every step, defaults included, so a changed default cannot reuse old points."""
    return {"steps": [{name: json.loads(json.dumps(asdict(config), default=list))} for name, config in recipe.steps]}


def encoder_identity(model) -> str | None:
    """Weights hash of a Whisper model's encoder (None for other models): equal hash, equal encoder outputs."""
    encoder = getattr(getattr(model.module, "model", None), "encoder", None)
    return weights_hash(encoder) if model.kind == "whisper" and encoder is not None else None


@contextmanager
def reuse_encoder_outputs(model, cache: dict, encoder_id: str) -> Iterator[dict]:
    """While active, the model's encoder returns outputs cached under (encoder_id, features) when present.

    Only exact reuse: the key is the encoder's weights hash plus a hash of the input features. Yields a
    counter dict {"hits", "misses"}."""
    from transformers.modeling_outputs import BaseModelOutput

    encoder = model.module.model.encoder
    original = encoder.forward
    counts = {"hits": 0, "misses": 0}

    def forward(input_features, *args, **kwargs):
        features = input_features.detach().cpu().contiguous()
        key = (encoder_id, hashlib.sha1(features.numpy().tobytes()).hexdigest(), tuple(features.shape))
        if key in cache:
            counts["hits"] += 1
        else:
            counts["misses"] += 1
            cache[key] = original(input_features, *args, **kwargs).last_hidden_state
        return BaseModelOutput(last_hidden_state=cache[key])

    encoder.forward = forward
    try:
        yield counts
    finally:
        del encoder.forward


def apply_reusing(model, recipe, reuse: dict):
    """apply_recipe(model, recipe), starting from `reuse`'s model when it holds what all steps but the last
    give (a grid varies its last step fastest, so prune + SVD run once for every bit width). Afterwards
    `reuse` holds that model and this result, keyed by their recipes' full configs."""
    from core.recipe import Recipe, apply_recipe

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


def measure_point(model, recipe, dataset, waves: list, settings: SweepSettings = SweepSettings(),
                  encoder_cache: dict | None = None, reuse: dict | None = None) -> tuple[dict, dict]:
    """Apply `recipe` to a copy of `model`, evaluate it; returns (core.evaluate result dict, timings).

    With `encoder_cache` (and settings.reuse_encoder), a variant whose encoder is still the base model's
    reuses the base encoder's outputs; only those are cached, so the cache stays one dataset's size.
    `reuse` (a dict kept across calls) skips re-applying the steps a previous recipe shared (apply_reusing)."""
    from core.evaluate import evaluate, measure_latency

    start = time.perf_counter()
    variant = apply_reusing(model, recipe, {} if reuse is None else reuse)
    applied = time.perf_counter()
    encoder_id = None
    if settings.reuse_encoder and encoder_cache is not None:
        encoder_id = encoder_identity(variant)
        encoder_id = encoder_id if encoder_id is not None and encoder_id == encoder_identity(model) else None
    reuse = reuse_encoder_outputs(variant, encoder_cache, encoder_id) if encoder_id else nullcontext(None)
    with reuse as counts:
        result = evaluate(variant, dataset, waves=waves, latency_runs=0, packed=settings.packed).to_dict()
    evaluated = time.perf_counter()
    if settings.latency_runs > 0:
        warmup = 1 if counts and counts["hits"] else 0  # the evaluation was the warm-up, unless the encoder was reused
        latency = measure_latency(variant, runs=settings.latency_runs, warmup=warmup)
        result["latency"] = asdict(latency) | {"warmup": warmup}
        result["latency_ms"] = latency.median_ms
        result["real_time_factor"] = latency.real_time_factor
    done = time.perf_counter()
    timings = {"apply": applied - start, "evaluate": evaluated - applied, "latency": done - evaluated,
               "total": done - start, "encoder_reused": counts["hits"] if counts else 0}
    return result, timings


def run_sweep(model, dataset, recipes: list, store: Store, settings: SweepSettings = SweepSettings(),
              waves: list | None = None, encoder_cache: dict | None = None) -> Iterator[Point]:
    """Yield a Point per distinct recipe: stored ones first and at once, then each new one as it is measured.

    Recipes may be core.recipe.Recipe objects or their JSON. New points are written to `store` before
    they are yielded. Pass the same `encoder_cache` dict to successive calls (e.g. from a page) to reuse
    encoder outputs across them."""
    from core.recipe import Recipe

    model_id, fingerprint, key_settings = model_identity(model), dataset.fingerprint(), settings.key_json()
    todo: dict[str, object] = {}
    for recipe in map(Recipe.from_json, recipes):
        todo.setdefault(point_key(model_id, recipe_identity(recipe), fingerprint, key_settings), recipe)
    stored = store.get_many(list(todo))
    for key in todo:
        if key in stored:
            yield stored[key]
    missing = [(key, recipe) for key, recipe in todo.items() if key not in stored]
    if not missing:
        return
    if waves is None:
        from core.evaluate import load_waves

        waves = load_waves(dataset)
    encoder_cache = {} if encoder_cache is None else encoder_cache
    reuse: dict = {}
    for key, recipe in missing:
        result, timings = measure_point(model, recipe, dataset, waves, settings, encoder_cache, reuse)
        point = _point(key, model, model_id, recipe.to_json(), recipe.describe(), dataset, fingerprint,
                       key_settings, result, timings)
        store.put(point)
        yield point


def _point(key: str, base, base_id: str, recipe_json: dict, label: str, dataset, fingerprint: str,
           key_settings: dict, result: dict, timings: dict) -> Point:
    rows = result.pop("rows")
    return Point(key=key, model=base.name, model_id=base_id, recipe=recipe_json, label=label, dataset=dataset.name,
                 dataset_fingerprint=fingerprint, settings=key_settings, wer=result["wer"], cer=result["cer"],
                 size_bytes=result["size_bytes"], latency_ms=result["latency_ms"], parameters=result["parameters"],
                 result=result, rows=rows, timings=timings, machine=result["machine"])


def record_model_point(base, variant, dataset, store: Store, recipe_json: dict, label: str,
                       settings: SweepSettings = SweepSettings(), waves: list | None = None,
                       encoder_cache: dict | None = None) -> Point:
    """Measure a model that no recipe of `base` produces (e.g. a distilled student) and store it among
    `base`'s points, so it joins the same Pareto plots; keyed by the variant's own weights."""
    from core.recipe import Recipe

    base_id, fingerprint, key_settings = model_identity(base), dataset.fingerprint(), settings.key_json()
    key = point_key(base_id, {"model": model_identity(variant)}, fingerprint, key_settings)
    stored = store.get(key)
    if stored is not None:
        return stored
    if waves is None:
        from core.evaluate import load_waves

        waves = load_waves(dataset)
    result, timings = measure_point(variant, Recipe(), dataset, waves, settings,
                                    {} if encoder_cache is None else encoder_cache)
    point = _point(key, base, base_id, recipe_json, label, dataset, fingerprint, key_settings, result, timings)
    store.put(point)
    return point


# ----------------------------------------------------------------------------- command line


def format_points(points: list[Point], x: str = "size") -> str:
    """A table of points in the given order; '*' marks the Pareto front of (WER, size or latency)."""
    import numpy as np

    from core.pareto import pareto_front

    value = (lambda p: p.size_bytes) if x == "size" else (lambda p: p.latency_ms)
    objectives = np.array([[p.wer, np.nan if value(p) is None else value(p)] for p in points], dtype=float)
    front = pareto_front(objectives.reshape(-1, 2))
    lines = [f"  {'WER':>7s} {'size MB':>8s} {'lat ms':>7s} {'time s':>7s}  recipe"]
    for index, p in enumerate(points):
        latency = f"{p.latency_ms:7.0f}" if p.latency_ms is not None else f"{'-':>7s}"
        spent = "cached" if p.cached else f"{p.timings.get('total', 0):.1f}"
        lines.append(f"{'*' if front[index] else ' '} {100 * p.wer:6.2f}% {(p.size_bytes or 0) / 1e6:8.2f} "
                     f"{latency} {spent:>7s}  {p.label}")
    return "\n".join(lines)


def progress(done: int, total: int, cached: int, seconds: float, label: str = "") -> str:
    """One progress-bar line (for stderr): bar, counts, elapsed time, the last point's recipe."""
    width = 24
    filled = int(width * done / max(total, 1))
    return (f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({cached} cached) "
            f"{seconds:5.1f} s  {label[:60]:60s}")


def _settings(args: argparse.Namespace) -> SweepSettings:
    if args.naive:
        return NAIVE
    return SweepSettings(latency_runs=args.latency_runs)


def _context(args: argparse.Namespace):
    """(model, dataset, store) named by the common arguments."""
    from core.data import load_dataset
    from core.models import load_model

    return load_model(args.model), load_dataset(args.dataset), Store(args.store)


def cmd_sweep(args: argparse.Namespace) -> None:
    """`sweep`: run (or resume) a grid and print the points with the Pareto front marked."""
    recipes = grid_recipes(load_grid(args.grid), args.sample, args.seed)
    total = len({canonical_json(r.to_json()) for r in recipes})
    model, dataset, store = _context(args)
    start, points = time.perf_counter(), []
    try:
        for point in run_sweep(model, dataset, recipes, store, _settings(args)):
            points.append(point)
            cached = sum(p.cached for p in points)
            print(progress(len(points), total, cached, time.perf_counter() - start, point.label), end="",
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(points)} of {total} points are in {store.path}; run the same command "
              "again to compute the rest", file=sys.stderr)
    print(file=sys.stderr)
    print(format_points(sorted(points, key=lambda p: (p.wer, p.size_bytes or 0))))
    print(f"{len(points)} points ({sum(p.cached for p in points)} from {store.path}) "
          f"in {time.perf_counter() - start:.1f} s")


def _stored(args: argparse.Namespace) -> list[Point]:
    points = Store(args.store).points()
    return [p for p in points if args.dataset is None or p.dataset == args.dataset]


def cmd_pareto(args: argparse.Namespace) -> None:
    """`pareto`: the non-dominated stored points, per (model, dataset, settings)."""
    import numpy as np

    from core.pareto import front_order

    groups: dict[tuple, list[Point]] = {}
    for point in _stored(args):
        if args.x == "size" or point.latency_ms is not None:
            groups.setdefault((point.model, point.dataset, point.dataset_fingerprint,
                               canonical_json(point.settings)), []).append(point)
    if not groups:
        print("no stored points" + (f" on dataset {args.dataset}" if args.dataset else "") +
              (" with latency" if args.x == "latency" else ""))
    for (model, dataset, _, settings), points in groups.items():
        x = [p.size_bytes if args.x == "size" else p.latency_ms for p in points]
        order = front_order(np.array([[xi, p.wer] for xi, p in zip(x, points)], dtype=float))
        print(f"{model} on {dataset}, settings {settings}: {len(order)} of {len(points)} points on the front "
              f"(WER vs {args.x})")
        print(format_points([points[i] for i in order], args.x))


def cmd_export(args: argparse.Namespace) -> None:
    """`export`: stored points as CSV or JSON, to a file or stdout."""
    from core.store import export_points

    text = export_points(_stored(args), args.format)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--model, --dataset, --store, --latency-runs, --naive: shared by sweep, sensitivity and budget."""
    parser.add_argument("--model", default="whisper-tiny.en", help="base model (see `evaluate --help`)")
    parser.add_argument("--dataset", default="quick", help="quick | full | a dataset path (see `evaluate`)")
    parser.add_argument("--store", type=Path, default=None, help="results database (default: the user data folder)")
    parser.add_argument("--latency-runs", type=int, default=2, help="timed latency runs per point (0 = none)")
    parser.add_argument("--naive", action="store_true",
                        help="measure like `evaluate`: one clip per window, 5 latency runs (separate cache)")


def add_commands(commands) -> None:
    """Register `sweep`, `pareto` and `export` on the CLI's subparsers."""
    p = commands.add_parser("sweep", help="evaluate a grid of recipes (cached, resumable)")
    p.add_argument("--grid", type=Path, required=True, help='GRID.json, e.g. {"quantize.bits": [16, 8, 4]}')
    p.add_argument("--sample", type=int, help="evaluate only this many grid points, drawn at random")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    add_run_args(p)
    p.set_defaults(run=cmd_sweep)

    for name, help_text, run in (("pareto", "the non-dominated stored points", cmd_pareto),
                                 ("export", "stored points as CSV or JSON", cmd_export)):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--store", type=Path, default=None, help="results database (default: the user data folder)")
        p.add_argument("--dataset", default=None, help="only points measured on this dataset (by name)")
        if name == "pareto":
            p.add_argument("--x", choices=("size", "latency"), default="size", help="objective besides WER")
        else:
            p.add_argument("--format", choices=("csv", "json"), default="csv")
            p.add_argument("--out", type=Path, help="output file (default: stdout)")
        p.set_defaults(run=run)
