"""Recipes: an ordered list of compression steps, written as JSON and applied to a copy of a model.

    {"steps": [{"prune": {"sparsity": 0.3, "scope": "global"}},
               {"low_rank": {"energy": 0.95}},
               {"quantize": {"bits": 4, "granularity": "channel"}}]}

Each step is {name: {config field: value}}; the value object builds the step's frozen config
(core.prune.PruneConfig, core.lowrank.LowRankConfig, core.quant.QuantConfig), which validates itself.
JSON lists become tuples (e.g. "groups"). `to_json` writes back exactly the keys the JSON gave, so a
recipe round-trips exactly (values as the config normalized them: lists for tuples, 0 -> 0.0 for a
float field); a recipe built in Python writes each step's main (first) field and the fields that
differ from their defaults. Equality compares the configs only, so {"bits": 4} and {"bits": 4,
"granularity": "channel"} are equal recipes with different JSON. A bare list of steps is accepted too.
Steps run in order, each on the previous step's output; quantize must come last among the built-in
steps (after it no layer is a float Linear any more), and structured pruning must come before low_rank.
Other steps can be added with `register_step`.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

_SHORT_GROUPS = {"encoder.attention": "enc.attn", "encoder.ffn": "enc.ffn", "decoder.attention": "dec.attn",
                 "decoder.ffn": "dec.ffn", "embedding": "emb", "conv": "conv", "positions": "pos"}


# ----------------------------------------------------------------------------- labels


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _groups_suffix(config) -> str:
    """" [enc.ffn, dec.ffn]" when the config's groups are not its class's default, else ""."""
    groups = tuple(getattr(config, "groups", ()) or ())
    if not groups or groups == _field_default(type(config), "groups"):
        return ""
    return f" [{', '.join(_SHORT_GROUPS.get(g, g) for g in groups)}]"


def _describe_prune(config) -> str:
    if config.threshold is not None:
        label = f"prune |w|<{config.threshold:g}"
    elif config.structure != "unstructured":
        label = f"prune {_pct(config.sparsity)} {config.structure}"
    else:
        label = f"prune {_pct(config.sparsity)}" + (" global" if config.scope == "global" else "")
    return label + _groups_suffix(config)


def _describe_low_rank(config) -> str:
    if config.energy is not None:
        label = f"SVD {_pct(config.energy)} energy"
    elif config.rank_fraction is not None:
        label = f"SVD rank {_pct(config.rank_fraction)}"
    else:
        label = f"SVD rank {config.rank}"
    return label + _groups_suffix(config)


def _describe_quantize(config) -> str:
    bits = getattr(config, "bits", None)
    if bits == 16:
        label = "fp16"
    else:
        granularity = getattr(config, "granularity", "")
        label = f"{bits}-bit {granularity}".rstrip()
        if granularity == "group" and getattr(config, "group_size", None):
            label += f" {config.group_size}"
        if getattr(config, "symmetric", True) is False:
            label += " asym"
        if getattr(config, "method", "minmax") not in ("minmax", None):
            label += f" {config.method}"
        if getattr(config, "scale_dtype", "float32") == "float16":
            label += " fp16 scales"
        if getattr(config, "gptq", False):
            label += " gptq"
        if getattr(config, "outlier_columns", 0):
            label += f" +{config.outlier_columns} fp16 cols"
        if getattr(config, "entropy_code", False):
            label += " entropy-coded"
    if getattr(config, "backend", "fake") not in ("fake", None):
        label += f" {str(config.backend).replace('_', ' ')}"
    return label + _groups_suffix(config)


# ----------------------------------------------------------------------------- the step registry


@dataclass(frozen=True)
class StepType:
    """A kind of step: how to get its config class and verb (imported on first use) and how to label it."""

    load: Callable[[], tuple[type, Callable]]  # () -> (config class, verb(model, config) -> (model, reports))
    describe: Callable[[Any], str]
    calibrated: bool = False  # the verb takes a third argument: calibration data (see core.gptq.Calibration)


def _lazy(module: str, config: str, verb: str) -> Callable[[], tuple[type, Callable]]:
    def load() -> tuple[type, Callable]:
        namespace = importlib.import_module(module)
        return getattr(namespace, config), getattr(namespace, verb)
    return load


STEP_TYPES: dict[str, StepType] = {
    "prune": StepType(_lazy("core.prune", "PruneConfig", "prune"), _describe_prune),
    "low_rank": StepType(_lazy("core.lowrank", "LowRankConfig", "low_rank"), _describe_low_rank),
    "quantize": StepType(_lazy("core.quant", "QuantConfig", "quantize"), _describe_quantize, calibrated=True),
}


def register_step(name: str, config_class: type, verb: Callable,
                  describe: Callable[[Any], str] | None = None) -> None:
    """Make `name` usable in recipes: `config_class`, a frozen dataclass; `verb(model, config)` -> (model, reports)."""
    if not dataclasses.is_dataclass(config_class):
        raise ValueError(f"step {name!r}: the config class must be a dataclass, got {config_class!r}")
    STEP_TYPES[name] = StepType(lambda: (config_class, verb), describe or (lambda config: name))


def _step_type(name, where: str) -> StepType:
    if not isinstance(name, str) or name not in STEP_TYPES:
        raise ValueError(f"{where}: unknown step {name!r}; allowed steps: {', '.join(STEP_TYPES)}")
    return STEP_TYPES[name]


# ----------------------------------------------------------------------------- JSON <-> configs


def _field_default(config_class: type, name: str):
    for f in dataclasses.fields(config_class):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


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
    config_class, _ = _step_type(name, where).load()
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}: the value of {name!r} must be an object of settings, got {options!r}")
    allowed = [f.name for f in dataclasses.fields(config_class) if f.init]
    for key in options:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {name}.{key}; allowed keys for {name}: {', '.join(allowed)}")
    try:
        return config_class(**{key: _from_json_value(value) for key, value in options.items()})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _default_keys(config) -> tuple[str, ...]:
    """The keys written for a config built in Python: its main (first) field if set, and every non-default field."""
    keys = []
    for i, f in enumerate(f for f in dataclasses.fields(config) if f.init):
        value = getattr(config, f.name)
        default = _field_default(type(config), f.name)
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
            config_class, _ = _step_type(name, where).load()
            if not isinstance(config, config_class):
                raise ValueError(f"{where}: {name} needs a {config_class.__name__}, got {type(config).__name__}")
            steps.append((name, config))
        object.__setattr__(self, "steps", tuple(steps))
        keys = tuple(_default_keys(config) for _, config in steps) if self.keys is None else \
            tuple(tuple(k) for k in self.keys)
        if len(keys) != len(steps):
            raise ValueError(f"Recipe.keys needs one entry per step ({len(steps)}), got {len(keys)}")
        for i, ((name, config), names) in enumerate(zip(steps, keys), 1):
            allowed = [f.name for f in dataclasses.fields(config) if f.init]
            if any(key not in allowed for key in names):
                raise ValueError(f"recipe step {i}: Recipe.keys {list(names)} must be fields of {name}: "
                                 f"{', '.join(allowed)}")
        object.__setattr__(self, "keys", keys)
        self._check_order()

    def _check_order(self) -> None:
        names = [name for name, _ in self.steps]
        for i, (name, config) in enumerate(self.steps):
            where = f"recipe step {i + 1}"
            if name in ("prune", "low_rank") and "quantize" in names[:i]:
                raise ValueError(f"{where}: {name} after quantize has no float layers to act on; put quantize last")
            if name == "prune" and config.structure != "unstructured" and "low_rank" in names[:i]:
                raise ValueError(f"{where}: prune with structure {config.structure!r} needs plain Linear layers; "
                                 "put it before low_rank")

    @classmethod
    def from_json(cls, obj) -> "Recipe":
        """A recipe from {"steps": [...]}, a bare list of steps, or the JSON text of either."""
        if isinstance(obj, Recipe):
            return obj
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as exc:
                raise ValueError(f"recipe is not valid JSON: {exc}") from None
        if isinstance(obj, dict):
            unknown = [k for k in obj if k != "steps"]
            if unknown or "steps" not in obj:
                raise ValueError(f"recipe: expected {{\"steps\": [...]}}, got keys {list(obj)}")
            obj = obj["steps"]
        if not isinstance(obj, (list, tuple)):
            raise ValueError(f"recipe: steps must be a list of {{name: settings}} objects, got {obj!r}")
        steps, keys = [], []
        for i, step in enumerate(obj, 1):
            where = f"recipe step {i}"
            if not isinstance(step, dict) or len(step) != 1:
                raise ValueError(f"{where}: expected one {{name: settings}} object such as "
                                 f"{{\"prune\": {{\"sparsity\": 0.3}}}}, got {step!r}")
            (name, options), = step.items()
            steps.append((name, _build_config(name, options, where)))
            keys.append(tuple(options or ()))
        return cls(tuple(steps), tuple(keys))

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
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
        """{"steps": [{name: {key: value}}]}, JSON-serializable (lists for tuples); see `keys` for which keys."""
        return {"steps": [{name: {key: _to_json_value(getattr(config, key)) for key in keys}}
                          for (name, config), keys in zip(self.steps, self.keys)]}

    @property
    def is_empty(self) -> bool:
        return not self.steps

    def describe(self) -> str:
        """A short human label, e.g. "prune 30% global · SVD 95% energy · 4-bit channel"."""
        if self.is_empty:
            return "uncompressed"
        return " · ".join(STEP_TYPES[name].describe(config) for name, config in self.steps)

    def apply(self, model: nn.Module, calibration: Callable | None = None) -> tuple[nn.Module, list]:
        """Run the steps in order on a copy of `model`; returns the new model and every step's LayerReports.

        `calibration` (core.gptq.calibration_for(speech_model)) feeds the steps that need data, e.g. GPTQ."""
        if self.is_empty:
            return copy.deepcopy(model), []
        reports = []
        for name, config in self.steps:
            step = STEP_TYPES[name]
            _, verb = step.load()
            model, step_reports = verb(model, config, calibration) if step.calibrated else verb(model, config)
            reports.extend(step_reports)
        return model, reports

    def __str__(self) -> str:
        return self.describe()


def apply_recipe(model, recipe: Recipe, name: str | None = None) -> tuple[Any, list]:
    """A core.models.SpeechModel with `recipe` applied to a copy of its weights, and the LayerReports; steps
    that need data (GPTQ) are calibrated through the model's own front end (core.gptq.calibration_for)."""
    from core.gptq import calibration_for

    module, reports = recipe.apply(model.module, calibration_for(model))
    label = name or (model.name if recipe.is_empty else f"{model.name} + {recipe.describe()}")
    return model.with_module(module, name=label), reports
