"""Per-layer-group sensitivity and budget search: which groups can take how much compression.

Sensitivity compresses one layer group alone at several levels of each technique (prune sparsity,
quantize bits, low-rank rank fraction, where the technique applies to the group) and records WER,
size and latency against the uncompressed model: a tidy table (group, technique, level, wer,
delta_wer, size_bytes, ...) to draw as a heatmap. Every probe is an ordinary recipe restricted to
one group, so it is measured through `run_sweep` and cached in the store like any other point.

Budget search (AIMET-style greedy): starting from no compression, repeatedly move the one group whose
next-stronger measured option costs the least extra ΔWER per byte (or ms) saved, until the estimate
(baseline minus the sum of per-group savings) fits the budget. ΔWER and savings are assumed additive
across groups; the resulting recipe should be measured (`budget --verify` does). With
`budget --measure` each move is measured on the dataset instead (a few points per move): slower,
but it sees that errors compound when several groups are compressed together.

With signal "divergence" each probe records its KL divergence from the base model instead of WER
(core.measure.divergence), `divergence_plan` probes several quantizers per group, and `allocate` picks the
per-group options exactly: the least summed divergence that fits the budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from core.compress.recipe import Recipe
from core.compress.registry import TECHNIQUES, in_order
from core.measure.divergence import run_divergence
from core.measure.executors import Executor
from core.measure.store import Store
from core.measure.sweep import SweepSettings, run_sweep
from core.models import GROUPS, EncoderCache


def technique_levels() -> dict[str, tuple[str, tuple]]:
    """technique -> (knob, levels from mild to strong), from every registered technique that has levels."""
    return {t.name: t.levels for t in in_order() if t.levels}


# other quantizers a divergence plan probes at VARIANT_BITS: which one is best differs by group
QUANT_VARIANTS = (
    {"method": "mse"},
    {"granularity": "group", "scale_dtype": "float16"},
    {"granularity": "group", "scale_dtype": "float16", "method": "mse", "symmetric": False},
    {"outlier_columns": 4},
)
VARIANT_BITS = (5, 4, 3)
SIGNALS = ("wer", "divergence")  # what a probe measures: WER on the set, or KL from the base model


def probe_groups() -> tuple[str, ...]:
    """The groups probed by default: all but "positions"
    (2% of Whisper's weights, not worth a probe's time)."""
    return tuple(g for g in GROUPS if g != "positions")


@dataclass(frozen=True)
class Probe:
    """One sensitivity measurement: a technique at one level on one group, as a recipe JSON."""

    group: str
    technique: str
    knob: str
    level: float
    recipe: dict


def sensitivity_plan(
    groups: tuple[str, ...] | None = None, levels: dict | None = None, options: dict[str, dict] | None = None
) -> list[Probe]:
    """Probes for every group (default: probe_groups()) x technique x level; `options` adds
    fixed fields per technique (e.g. {"quantize": {"granularity": "group"}}). Pairs a technique refuses
    (low_rank on the embedding or conv) are left out. `levels` defaults to every technique's own levels."""
    levels = technique_levels() if levels is None else levels
    groups = probe_groups() if groups is None else tuple(groups)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown layer group(s) {sorted(unknown)}; allowed: {list(GROUPS)}")
    unknown = (set(levels) | set(options or {})) - set(TECHNIQUES)
    if unknown:
        raise ValueError(f"unknown technique(s) {sorted(unknown)}; allowed: {list(TECHNIQUES)}")
    probes = []
    for group in groups:
        for technique, (knob, values) in levels.items():
            try:
                Recipe.from_json({"steps": [{technique: {knob: values[0], "groups": [group]}}]})
            except ValueError:
                continue  # this technique does not apply to this group
            for level in values:
                config = {**(options or {}).get(technique, {}), knob: level, "groups": [group]}
                probes.append(Probe(group, technique, knob, level, {"steps": [{technique: config}]}))
    return probes


def divergence_plan(groups: tuple[str, ...] | None = None) -> list[Probe]:
    """Probes for a divergence budget search: every bit width of quantize's levels per channel, and each of
    QUANT_VARIANTS at VARIANT_BITS, so `allocate` can give each group the quantizer that suits it."""
    plan = sensitivity_plan(groups, {"quantize": TECHNIQUES["quantize"].levels})
    for variant in QUANT_VARIANTS:
        plan += sensitivity_plan(groups, {"quantize": ("bits", VARIANT_BITS)}, {"quantize": variant})
    return plan


@dataclass(frozen=True)
class Measured:
    """What a probe measured, from a WER point (core.measure.store.Point) or a divergence measurement."""

    recipe: dict
    label: str
    size_bytes: int
    key: str
    cached: bool
    wer: float | None = None
    divergence: float | None = None
    latency_ms: float | None = None

    @classmethod
    def of(cls, point) -> Measured:
        if isinstance(point, dict):  # core.measure.divergence.run_divergence
            return cls(
                point["recipe"],
                point["label"],
                point["size_bytes"],
                point["key"],
                point["cached"],
                divergence=point["divergence"],
            )
        return cls(
            point.recipe,
            point.label,
            point.size_bytes,
            point.key,
            point.cached,
            wer=point.wer,
            latency_ms=point.latency_ms,
        )


@dataclass(frozen=True)
class SensitivityRow:
    """One row of the tidy sensitivity table: a probe (or the baseline) and what it measured against it."""

    group: str  # "all" for the baseline
    technique: str  # "none" for the baseline
    knob: str | None
    level: float | None
    setting: str  # the probe's label without its groups, e.g. "4-bit channel" ("none" for the baseline)
    label: str
    step: dict | None  # the probe's recipe step, {technique: config JSON}
    size_bytes: int
    bytes_saved: int
    key: str = ""
    cached: bool = False
    wer: float | None = None
    delta_wer: float | None = None
    divergence: float | None = None
    latency_ms: float | None = None
    delta_latency_ms: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.technique == "none"

    def to_json(self) -> dict:
        return asdict(self)


def _row(probe: Probe | None, point: Measured, baseline: Measured) -> SensitivityRow:
    """One table row (the baseline row has technique "none")."""
    latency = (
        None
        if point.latency_ms is None or baseline.latency_ms is None
        else point.latency_ms - baseline.latency_ms
    )
    return SensitivityRow(
        group=probe.group if probe else "all",
        technique=probe.technique if probe else "none",
        knob=probe.knob if probe else None,
        level=probe.level if probe else None,
        setting=point.label.split(" [")[0] if probe else "none",
        label=point.label,
        step=probe.recipe["steps"][0] if probe else None,
        size_bytes=point.size_bytes,
        bytes_saved=baseline.size_bytes - point.size_bytes,
        key=point.key,
        cached=point.cached,
        wer=point.wer,
        delta_wer=None if point.wer is None else point.wer - baseline.wer,
        divergence=point.divergence,
        latency_ms=point.latency_ms,
        delta_latency_ms=latency,
    )


def run_sensitivity(
    model,
    dataset,
    store: Store,
    plan: list[Probe] | None = None,
    settings: SweepSettings = SweepSettings(),
    waves: list | None = None,
    encoder_cache: EncoderCache | None = None,
    signal: str = "wer",
    executor: Executor = Executor(),
) -> Iterator[SensitivityRow]:
    """Yield the baseline row, then one table row per probe as its point arrives (cached ones first).

    signal "wer" measures each probe as a sweep point (WER, size, latency), on `executor` (here or on a
    Ray cluster); "divergence" measures its teacher-forced KL from the base model and its size instead
    (core.measure.divergence: continuous and cheaper; always here)."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {list(SIGNALS)}")
    plan = sensitivity_plan() if plan is None else plan
    encoder_cache = EncoderCache() if encoder_cache is None else encoder_cache
    reference: dict = {}

    def measure(recipes: list) -> Iterator[Measured]:
        if signal == "divergence":
            return map(Measured.of, run_divergence(model, dataset, recipes, store, waves, reference))
        points = run_sweep(model, dataset, recipes, store, settings, waves, encoder_cache, executor)
        return map(Measured.of, points)

    baseline = next(measure([Recipe()]))
    yield _row(None, baseline, baseline)
    recipes, probes = [], {}
    for probe in plan:
        recipe = Recipe.from_json(probe.recipe)
        recipes.append(recipe)
        probes.setdefault(json.dumps(recipe.to_json(), sort_keys=True), probe)
    for point in measure(recipes):
        yield _row(probes[json.dumps(point.recipe, sort_keys=True)], point, baseline)


# ----------------------------------------------------------------------------- budget search


@dataclass
class BudgetPlan:
    """The chosen per-group options: per group the table row, the recipe, and the estimates."""

    recipe: Recipe
    choices: dict[str, SensitivityRow]  # group -> sensitivity row
    estimated_size_bytes: int
    estimated_latency_ms: float | None
    estimated_wer: float | None  # the measured WER of the recipe on the search set when `measured`
    measured: bool = False
    trail: list[str] = field(default_factory=list)  # the greedy moves (or the candidates measured), in order
    estimated_divergence: float | None = None  # for allocate(): summed (or measured) divergence


class BudgetUnreachable(ValueError):
    """No combination of the measured options fits the budget: `smallest` is the strongest combination's
    estimate (bytes for a size budget, ms for latency), so a caller can say by how much and what to do."""

    def __init__(self, budget: float, smallest: float, by_size: bool):
        self.budget, self.smallest, self.by_size = budget, smallest, by_size
        if by_size:
            amounts = f"{budget / 1e6:,.1f} MB", f"{smallest / 1e6:,.1f} MB"
        else:
            amounts = f"{budget:,.0f} ms", f"{smallest:,.0f} ms"
        super().__init__(
            f"budget {amounts[0]} cannot be reached with the measured options: the strongest combination "
            f"is estimated at {amounts[1]}; probe more layer groups, or raise the budget"
        )


@dataclass(frozen=True)
class _Budget:
    """What both searches need from a table and a budget: the options per group and how a saving counts."""

    baseline: SensitivityRow
    by_size: bool
    start: float
    budget: float
    options: dict[str, list[SensitivityRow]]

    def saved(self, row: SensitivityRow) -> float:
        return row.bytes_saved if self.by_size else -row.delta_latency_ms

    def unreachable(self, estimate: float) -> BudgetUnreachable:
        return BudgetUnreachable(self.budget, estimate, self.by_size)

    def plan(self, choices: dict[str, SensitivityRow], **fields) -> BudgetPlan:
        chosen = list(choices.values())
        base = self.baseline
        latency = (
            None
            if base.latency_ms is None or any(r.delta_latency_ms is None for r in chosen)
            else base.latency_ms + sum(r.delta_latency_ms for r in chosen)
        )
        return BudgetPlan(
            recipe=Recipe.from_json(plan_recipe(chosen)),
            choices=choices,
            estimated_size_bytes=base.size_bytes - sum(r.bytes_saved for r in chosen),
            estimated_latency_ms=latency,
            **fields,
        )


def _budget(
    table: list[SensitivityRow], max_bytes: float | None, max_ms: float | None, candidates: int, cost: str
) -> _Budget:
    """Check the arguments and collect, per group, the options that save something and have a cost."""
    if (max_bytes is None) == (max_ms is None):
        raise ValueError("give exactly one budget: max_bytes or max_ms")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
    baseline = next((r for r in table if r.is_baseline), None)
    if baseline is None:
        raise ValueError("the sensitivity table has no baseline row (technique 'none')")
    by_size = max_bytes is not None
    if not by_size and baseline.latency_ms is None:
        raise ValueError("a latency budget needs latency measurements (latency_runs > 0)")
    setup = _Budget(
        baseline,
        by_size,
        baseline.size_bytes if by_size else baseline.latency_ms,
        max_bytes if by_size else max_ms,
        {},
    )
    for row in table:
        measured = (by_size or row.delta_latency_ms is not None) and getattr(row, cost) is not None
        if not row.is_baseline and measured and setup.saved(row) > 0:
            setup.options.setdefault(row.group, []).append(row)
    if not setup.options and any(not r.is_baseline for r in table):
        raise ValueError(f"the sensitivity table has no {cost!r} measurements to search with")
    return setup


def budget_search(
    table: list[SensitivityRow],
    max_bytes: float | None = None,
    max_ms: float | None = None,
    measure: Callable[[object], float] | None = None,
    candidates: int = 3,
) -> BudgetPlan:
    """Pick per-group levels from a sensitivity table so the estimate fits the budget at least ΔWER.

    Greedy: each move upgrades one group to a stronger option (more saved), choosing the move with the
    smallest extra ΔWER per extra byte (or ms) saved, the larger saving on ties. A negative ΔWER counts
    as 0: on a small set it is noise, not a gain to chase. ValueError if the budget cannot be reached.

    With `measure` (recipe -> WER on a search set) moves are checked instead of assumed additive: the
    `candidates` cheapest moves by the table are each measured together with the groups chosen so far,
    and the least measured WER increase per unit saved wins. That catches groups that are harmless
    alone and break the model together (seen on tiny.en: decoder FFN at 4 bits beside 6-bit layers)."""
    setup = _budget(table, max_bytes, max_ms, candidates, "delta_wer")
    saved = setup.saved
    choices: dict[str, SensitivityRow] = {}
    estimate, trail, wer = setup.start, [], setup.baseline.wer
    while estimate > setup.budget:
        moves = []  # (ΔWER per unit saved by the table, extra saving, group, row)
        for group, rows in setup.options.items():
            current = choices.get(group)
            base_saved, base_delta = (saved(current), max(current.delta_wer, 0.0)) if current else (0, 0.0)
            for row in rows:
                gain = saved(row) - base_saved
                if gain > 0:
                    moves.append(((max(row.delta_wer, 0.0) - base_delta) / gain, gain, group, row))
        if not moves:
            raise setup.unreachable(estimate)
        moves.sort(key=lambda move: (move[0], -move[1]))
        if measure is None:
            _, gain, group, row = moves[0]
            note = f"ΔWER {row.delta_wer:+.4f}"
        else:
            tried = []
            for _, gain, group, row in moves[:candidates]:
                measured_wer = measure(Recipe.from_json(plan_recipe(list({**choices, group: row}.values()))))
                tried.append((max(measured_wer - wer, 0.0) / gain, -gain, measured_wer, gain, group, row))
            _, _, wer, gain, group, row = min(tried, key=lambda t: t[:2])
            note = f"measured WER {100 * wer:.2f}% (of {len(tried)} tried)"
        choices[group] = row
        estimate -= gain
        trail.append(f"{group}: {row.label} ({note}, saves {saved(row):,.0f})")
    chosen = choices.values()
    estimated_wer = (
        setup.baseline.wer + sum(r.delta_wer for r in chosen) if measure is None or not chosen else wer
    )
    return setup.plan(
        choices, estimated_wer=estimated_wer, measured=measure is not None and bool(choices), trail=trail
    )


def _pareto_combinations(setup: _Budget, cost: str) -> list[tuple[float, float, dict]]:
    """Every non-dominated (saving, summed cost, choices) over at most one option per group: exact, since
    adding the same option to a dominated combination leaves it dominated."""
    states: list[tuple[float, float, dict]] = [(0.0, 0.0, {})]
    for group, rows in setup.options.items():
        merged = states + [
            (s + setup.saved(r), c + max(getattr(r, cost), 0.0), {**chosen, group: r})
            for s, c, chosen in states
            for r in rows
        ]
        merged.sort(key=lambda state: (-state[0], state[1]))
        states, least = [], float("inf")
        for state in merged:  # by saving, largest first: keep those cheaper than everything saving more
            if state[1] < least:
                states.append(state)
                least = state[1]
    return states


def allocate(
    table: list[SensitivityRow],
    max_bytes: float | None = None,
    max_ms: float | None = None,
    cost: str = "divergence",
    measure: Callable[[object], float] | None = None,
    candidates: int = 3,
) -> BudgetPlan:
    """The per-group options that fit the budget at the least summed `cost` ("divergence" or "delta_wer").

    Exact (a multiple-choice knapsack over the Pareto front of combinations), so the table may hold
    several quantizers per group (divergence_plan) and the search mixes them where each is best. With
    `measure` (recipe -> divergence, or WER, measured on the search set) the `candidates` cheapest plans
    that fit are measured together and the least measured wins, as costs do not add up exactly across
    groups."""
    setup = _budget(table, max_bytes, max_ms, candidates, cost)
    combinations = _pareto_combinations(setup, cost)
    fits = sorted(
        (c for c in combinations if setup.start - c[0] <= setup.budget), key=lambda c: (c[1], -c[0])
    )
    if not fits:
        raise setup.unreachable(setup.start - max(saving for saving, _, _ in combinations))
    _, estimate, choices = fits[0]
    trail = []
    if measure is not None and choices:
        tried = []
        for saving, summed, option in fits[:candidates]:
            recipe = Recipe.from_json(plan_recipe(list(option.values())))
            tried.append((measure(recipe), -saving, option))
            trail.append(f"{recipe.describe()}: summed {summed:.4g}, measured {tried[-1][0]:.4g}")
        estimate, _, choices = min(tried, key=lambda t: t[:2])
    measured = measure is not None and bool(choices)
    if cost == "divergence":
        return setup.plan(
            choices, estimated_wer=None, estimated_divergence=estimate, measured=measured, trail=trail
        )
    wer = estimate if measured else setup.baseline.wer + estimate  # `measure` gives WER itself
    return setup.plan(choices, estimated_wer=wer, measured=measured, trail=trail)


def plan_recipe(rows: list[SensitivityRow]) -> dict:
    """A recipe JSON applying each row's step to its group; groups sharing a step share one step entry."""
    merged: dict[str, dict] = {}
    for row in rows:
        ((technique, config),) = row.step.items()
        rest = {k: v for k, v in config.items() if k != "groups"}
        key = json.dumps([TECHNIQUES[technique].position, technique, rest], sort_keys=True)
        entry = merged.setdefault(key, {technique: {**rest, "groups": []}})
        entry[technique]["groups"] += [g for g in config["groups"] if g not in entry[technique]["groups"]]
    steps = [merged[key] for key in sorted(merged, key=lambda k: json.loads(k)[:2])]
    for step in steps:
        (config,) = step.values()
        config["groups"] = sorted(config["groups"], key=GROUPS.index)
    return {"steps": steps}


def budget_signal(signal: str | None, max_ms: float | None) -> str:
    """The signal a budget search uses: the one given,
    else divergence for a size budget and wer for latency."""
    signal = signal or ("wer" if max_ms is not None else "divergence")
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {list(SIGNALS)}")
    if signal == "divergence" and max_ms is not None:
        raise ValueError("a latency budget needs --signal wer (divergence probes measure size, not latency)")
    return signal


def search_budget(
    model,
    dataset,
    store: Store,
    rows: list[SensitivityRow],
    signal: str,
    max_bytes: float | None = None,
    max_ms: float | None = None,
    measured: bool = False,
    candidates: int = 3,
    settings: SweepSettings = SweepSettings(),
    waves: list | None = None,
    encoder_cache: EncoderCache | None = None,
    announce: Callable[[str], None] | None = None,
) -> BudgetPlan:
    """The budget search the CLI and the Pareto page both run on a sensitivity table.

    signal "divergence": `allocate` over summed KL (size budgets only); "wer": `budget_search` over ΔWER.
    With `measured`, the candidate plans (divergence) or moves (wer) are measured on `dataset` and stored
    like any point; `announce(label)` is called before each such measurement (for progress)."""
    signal = budget_signal(signal, max_ms)
    reference: dict = {}  # the base model's outputs, computed once for all the candidates

    def measure(recipe: Recipe) -> float:
        if announce is not None:
            announce(recipe.describe())
        if signal == "divergence":
            return next(run_divergence(model, dataset, [recipe], store, waves, reference))["divergence"]
        return next(run_sweep(model, dataset, [recipe], store, settings, waves, encoder_cache)).wer

    chosen = measure if measured else None
    if signal == "divergence":
        return allocate(rows, max_bytes=max_bytes, measure=chosen, candidates=candidates)
    return budget_search(rows, max_bytes=max_bytes, max_ms=max_ms, measure=chosen, candidates=candidates)
