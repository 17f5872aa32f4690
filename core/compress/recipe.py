"""Recipes: an ordered list of compression steps, written as JSON and applied to a copy of a model.

    {"steps": [{"prune": {"sparsity": 0.3, "scope": "global"}},
               {"low_rank": {"energy": 0.95}},
               {"quantize": {"bits": 4, "granularity": "channel"}}]}

Each step is {name: {config field: value}}; the name is a registered technique (core.compress.registry)
and the value object builds its frozen config (e.g. core.compress.quant.QuantConfig), which validates itself.
JSON lists become tuples (e.g. "groups"). `to_json` writes back exactly the keys the JSON gave, so a
recipe round-trips exactly (values as the config normalized them: lists for tuples, 0 -> 0.0 for a
float field); a recipe built in Python writes each step's main (first) field and the fields that
differ from their defaults. Equality compares the configs only, so {"bits": 4} and {"bits": 4,
"granularity": "channel"} are equal recipes with different JSON. A bare list of steps is accepted too.
Steps run in order, each on the previous step's output. A step that needs float layers cannot follow one
that leaves none (quantize comes last), and a technique may add its own rule (structured pruning comes
before low_rank).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from core.compress.gptq import calibration_for
from core.compress.registry import technique
from core.compress.technique import field_default
from core.models import SpeechModel

# ----------------------------------------------------------------------------- JSON <-> configs

MAX_JSON_BYTES = 1_000_000  # a recipe is a few hundred bytes; anything this large is not one
MAX_STEPS = 32


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"recipe: key(s) {repeated} given twice in one object; give each once")
    return dict(pairs)


def parse_json(text: str | bytes):
    """Recipe JSON text parsed, refusing what json.loads would take silently or crash on: duplicate keys
    (the last would win), text over MAX_JSON_BYTES, nesting too deep to parse."""
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"recipe: {len(text):,} bytes of JSON; a recipe is at most {MAX_JSON_BYTES:,}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"recipe is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("recipe: the JSON is nested too deeply to be a recipe") from None


def _from_json_value(value):
    if isinstance(value, list):
        return tuple(_from_json_value(v) for v in value)
    return value


def _to_json_value(value):
    if isinstance(value, (tuple, list)):
        return [_to_json_value(v) for v in value]
    return value


def _same(a, b) -> bool:
    """Equal as JSON (tuples and lists alike; 1, 1.0 and true all differ)."""
    try:
        return json.dumps(_to_json_value(a), sort_keys=True) == json.dumps(_to_json_value(b), sort_keys=True)
    except TypeError:
        return a == b


def _build_config(name: str, options, where: str):
    config_class = technique(name, where).config
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}: the value of {name!r} must be an object of settings, got {options!r}")
    allowed = [f.name for f in dataclasses.fields(config_class) if f.init]
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown key {name}.{key}; allowed keys for {name}: {', '.join(allowed)}"
            )
    try:
        return config_class(**{key: _from_json_value(value) for key, value in options.items()})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _default_keys(config) -> tuple[str, ...]:
    """The keys written for a config built in Python: its main (first) field if set,
    and every non-default field."""
    keys = []
    for i, f in enumerate(f for f in dataclasses.fields(config) if f.init):
        value = getattr(config, f.name)
        default = field_default(type(config), f.name)
        if (i == 0 and value is not None) or default is dataclasses.MISSING or not _same(value, default):
            keys.append(f.name)
    return tuple(keys)


# ----------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class Recipe:
    """Ordered compression steps, each (step name, config); apply() runs them on a copy of a model."""

    steps: tuple[tuple[str, Any], ...] = ()
    # per step, the config keys to_json writes: those the JSON gave (so it round-trips exactly); None for
    # a recipe built in Python: each step's main (first) field if set and every field off its default
    keys: tuple[tuple[str, ...], ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.steps, (str, bytes)) or not isinstance(self.steps, (tuple, list)):
            raise ValueError(f"Recipe.steps must be a sequence of (name, config) pairs, got {self.steps!r}")
        steps = []
        for i, step in enumerate(self.steps, 1):
            where = f"recipe step {i}"
            if not isinstance(step, (tuple, list)) or len(step) != 2:
                raise ValueError(f"{where}: expected a (name, config) pair, got {step!r}")
            name, config = step
            config_class = technique(name, where).config
            if not isinstance(config, config_class):
                raise ValueError(
                    f"{where}: {name} needs a {config_class.__name__}, got {type(config).__name__}"
                )
            steps.append((name, config))
        object.__setattr__(self, "steps", tuple(steps))
        keys = (
            tuple(_default_keys(config) for _, config in steps)
            if self.keys is None
            else tuple(tuple(k) for k in self.keys)
        )
        if len(keys) != len(steps):
            raise ValueError(f"Recipe.keys needs one entry per step ({len(steps)}), got {len(keys)}")
        for i, ((name, config), names) in enumerate(zip(steps, keys), 1):
            allowed = [f.name for f in dataclasses.fields(config) if f.init]
            if any(key not in allowed for key in names):
                raise ValueError(
                    f"recipe step {i}: Recipe.keys {list(names)} must be fields of {name}: "
                    f"{', '.join(allowed)}"
                )
        object.__setattr__(self, "keys", keys)
        self._check_order()

    def _check_order(self) -> None:
        """A step that needs float layers cannot follow a step of another technique that leaves none (two
        quantize steps on different groups are fine); a technique may add its own rule."""
        names = tuple(name for name, _ in self.steps)
        for i, (name, config) in enumerate(self.steps):
            step, earlier = technique(name), names[:i]
            blocker = next((e for e in earlier if e != name and not technique(e).keeps_float), None)
            if step.needs_float and blocker is not None:
                raise ValueError(
                    f"recipe step {i + 1}: {name} after {blocker} has no float layers to act on; "
                    f"put {blocker} last"
                )
            problem = step.check_order(config, earlier) if step.check_order else None
            if problem:
                raise ValueError(f"recipe step {i + 1}: {problem}")
            if not step.keeps_float:  # its layers are not float any more: a second pass would skip them
                for j, (other, done) in enumerate(self.steps[:i]):
                    shared = set(getattr(config, "groups", ())) & set(getattr(done, "groups", ()))
                    if other == name and shared:
                        raise ValueError(
                            f"recipe step {i + 1}: {name} on {sorted(shared)} again (step {j + 1} already "
                            f"did); each group takes one {name} step"
                        )

    @classmethod
    def from_json(cls, obj) -> Recipe:
        """A recipe from {"steps": [...]}, a bare list of steps, or the JSON text of either."""
        if isinstance(obj, Recipe):
            return obj
        if isinstance(obj, (str, bytes)):
            obj = parse_json(obj)
        if isinstance(obj, dict):
            unknown = [k for k in obj if k != "steps"]
            if unknown or "steps" not in obj:
                raise ValueError(f'recipe: expected {{"steps": [...]}}, got keys {list(obj)}')
            obj = obj["steps"]
        if not isinstance(obj, (list, tuple)):
            raise ValueError(f"recipe: steps must be a list of {{name: settings}} objects, got {obj!r}")
        if len(obj) > MAX_STEPS:
            raise ValueError(f"recipe: {len(obj)} steps; a recipe has at most {MAX_STEPS}")
        steps, keys = [], []
        for i, step in enumerate(obj, 1):
            where = f"recipe step {i}"
            if not isinstance(step, dict) or len(step) != 1:
                raise ValueError(
                    f"{where}: expected one {{name: settings}} object such as "
                    f'{{"prune": {{"sparsity": 0.3}}}}, got {step!r}'
                )
            ((name, options),) = step.items()
            steps.append((name, _build_config(name, options, where)))
            keys.append(tuple(options or ()))
        return cls(tuple(steps), tuple(keys))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe JSON file; ValueError naming the file if it is missing or malformed."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"recipe file {path} not found") from None
        try:
            return cls.from_json(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    def to_json(self) -> dict:
        """{"steps": [{name: {key: value}}]}, JSON-serializable (lists for tuples);
        see `keys` for which keys."""
        return {
            "steps": [
                {name: {key: _to_json_value(getattr(config, key)) for key in keys}}
                for (name, config), keys in zip(self.steps, self.keys)
            ]
        }

    @property
    def is_empty(self) -> bool:
        return not self.steps

    def describe(self) -> str:
        """A short human label, e.g. "prune 30% global · SVD 95% energy · 4-bit channel"."""
        if self.is_empty:
            return "uncompressed"
        return " · ".join(technique(name).describe(config) for name, config in self.steps)

    def apply(self, model: nn.Module, calibration: Callable | None = None) -> tuple[nn.Module, list]:
        """Run the steps in order on a copy of `model`; returns the new model and every step's LayerReports.

        `calibration` (core.compress.gptq.calibration_for(speech_model)) feeds the steps that need
        data (GPTQ)."""
        if self.is_empty:
            return copy.deepcopy(model), []
        reports = []
        for name, config in self.steps:
            model, step_reports = technique(name).run(model, config, calibration)
            reports.extend(step_reports)
        return model, reports

    def __str__(self) -> str:
        return self.describe()


def apply_recipe(model: SpeechModel, recipe: Recipe, name: str | None = None) -> tuple[SpeechModel, list]:
    """A SpeechModel with `recipe` applied to a copy of its weights, and the LayerReports; steps that need
    data (GPTQ) are calibrated through the model's own front end (core.compress.gptq.calibration_for)."""
    module, reports = recipe.apply(model.module, calibration_for(model))
    label = name or (model.name if recipe.is_empty else f"{model.name} + {recipe.describe()}")
    return model.with_module(module, name=label), reports
