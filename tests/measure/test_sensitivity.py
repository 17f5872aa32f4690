"""Per-group sensitivity (shape, monotonic sizes, caching), the greedy budget search
and the exact allocation."""

import json

import pytest
from test_divergence import sharpened
from test_sweep import tiny_dataset, tiny_speech_model

from core.cli.sensitivity import format_table
from core.measure.sensitivity import (
    SensitivityRow,
    allocate,
    budget_search,
    divergence_plan,
    plan_recipe,
    run_sensitivity,
    sensitivity_plan,
)
from core.measure.store import Store
from core.measure.sweep import SweepSettings

FAST = SweepSettings(latency_runs=0)


pytestmark = pytest.mark.usefixtures("one_thread")


LEVELS = {
    "prune": ("sparsity", (0.5, 0.9)),
    "quantize": ("bits", (8, 4)),
    "low_rank": ("rank_fraction", (0.5,)),
}


def test_plan_covers_every_group_technique_and_level():
    plan = sensitivity_plan()
    assert len(plan) == 6 * (3 + 5) + 4 * 3  # low_rank refuses the embedding and conv groups
    assert not [p for p in plan if p.technique == "low_rank" and p.group in ("embedding", "conv")]
    assert {p.group for p in plan} == {
        "encoder.attention",
        "encoder.ffn",
        "decoder.attention",
        "decoder.ffn",
        "embedding",
        "conv",
    }
    probe = next(
        p
        for p in sensitivity_plan(("decoder.ffn",), options={"quantize": {"granularity": "group"}})
        if p.technique == "quantize" and p.level == 4
    )
    assert probe.recipe == {
        "steps": [{"quantize": {"granularity": "group", "bits": 4, "groups": ["decoder.ffn"]}}]
    }
    with pytest.raises(ValueError, match="unknown layer group"):
        sensitivity_plan(("encoder.everything",))
    with pytest.raises(ValueError, match="unknown technique"):
        sensitivity_plan(options={"distill": {}})


def test_table_shape_monotonic_sizes_and_cache(tiny_whisper, tmp_path, monkeypatch):
    from core.compress.recipe import Recipe

    model, dataset = tiny_speech_model(tiny_whisper), tiny_dataset(tmp_path / "data")
    store = Store(tmp_path / "results.sqlite")
    plan = sensitivity_plan(("encoder.ffn", "decoder.ffn"), LEVELS)
    rows = list(run_sensitivity(model, dataset, store, plan, FAST))
    assert len(rows) == 1 + 2 * 5 and rows[0].technique == "none" and rows[0].delta_wer == 0
    assert {tuple(sorted(r.to_json())) for r in rows} == {
        tuple(sorted(rows[0].to_json()))
    }  # tidy: same columns
    cells = {(r.group, r.technique, r.level): r for r in rows[1:]}
    assert len(cells) == 10
    for group in ("encoder.ffn", "decoder.ffn"):
        for row in (cells[(group, "quantize", 8)], cells[(group, "prune", 0.9)]):
            assert 0 < row.size_bytes < rows[0].size_bytes
            assert row.bytes_saved == rows[0].size_bytes - row.size_bytes
            assert row.delta_wer == pytest.approx(row.wer - rows[0].wer)
        assert cells[(group, "quantize", 4)].size_bytes < cells[(group, "quantize", 8)].size_bytes
        assert cells[(group, "prune", 0.9)].size_bytes < cells[(group, "prune", 0.5)].size_bytes
    calls = []
    apply = Recipe.apply
    monkeypatch.setattr(Recipe, "apply", lambda self, module: calls.append(1) or apply(self, module))
    again = list(run_sensitivity(model, dataset, store, plan, FAST))
    assert calls == [] and all(r.cached for r in again)
    assert [(r.group, r.technique, r.level, r.wer) for r in again] == [
        (r.group, r.technique, r.level, r.wer) for r in rows
    ]


def _row(group, technique, level, delta_wer, saved, latency=None, divergence=None, **options):
    knob = {"prune": "sparsity", "quantize": "bits", "low_rank": "rank_fraction"}[technique]
    setting = f"{technique} {level}" + "".join(f" {k}={v}" for k, v in options.items())
    return SensitivityRow(
        group=group,
        technique=technique,
        knob=knob,
        level=level,
        setting=setting,
        label=f"{setting} [{group}]",
        step={technique: {**options, knob: level, "groups": [group]}},
        size_bytes=1000 - saved,
        bytes_saved=saved,
        wer=None if delta_wer is None else 0.1 + delta_wer,
        delta_wer=delta_wer,
        divergence=divergence,
        delta_latency_ms=latency,
    )


BASELINE = SensitivityRow(
    group="all",
    technique="none",
    knob=None,
    level=None,
    setting="none",
    label="none",
    step=None,
    size_bytes=1000,
    bytes_saved=0,
    wer=0.1,
    delta_wer=0.0,
    divergence=0.0,
    latency_ms=50.0,
    delta_latency_ms=0.0,
)
TABLE = [
    BASELINE,
    _row("encoder.ffn", "quantize", 8, 0.00, 300),  # free
    _row("encoder.ffn", "quantize", 4, 0.10, 400),  # +0.10 for 100 more bytes: expensive
    _row("decoder.ffn", "quantize", 8, 0.01, 200),
    _row("decoder.ffn", "quantize", 4, 0.02, 350),  # +0.01 for 150 more bytes: cheap
    _row("decoder.ffn", "prune", 0.5, 0.05, 100, latency=-20.0),
    _row("conv", "prune", 0.5, 0.30, 50),
]


def test_budget_search_takes_the_cheapest_wer_per_byte_first():
    from core.compress.recipe import Recipe

    plan = budget_search(TABLE, max_bytes=400)  # must save 600 bytes
    assert {g: (r.technique, r.level) for g, r in plan.choices.items()} == {
        "encoder.ffn": ("quantize", 8),
        "decoder.ffn": ("quantize", 4),
    }
    assert plan.estimated_size_bytes == 350 and plan.estimated_wer == pytest.approx(0.12)
    assert len(plan.trail) == 3  # encoder q8, decoder q8, then decoder upgraded to q4
    assert isinstance(plan.recipe, Recipe)
    assert (
        plan.recipe.to_json()
        == Recipe.from_json(
            {
                "steps": [
                    {"quantize": {"bits": 8, "groups": ["encoder.ffn"]}},
                    {"quantize": {"bits": 4, "groups": ["decoder.ffn"]}},
                ]
            }
        ).to_json()
    )
    assert budget_search(TABLE, max_bytes=1000).choices == {}  # already fits


def test_budget_search_treats_a_lower_wer_as_noise_not_a_gain():
    table = [BASELINE, _row("conv", "prune", 0.5, -0.05, 100), _row("embedding", "quantize", 8, 0.0, 300)]
    plan = budget_search(table, max_bytes=800)
    assert list(plan.choices) == ["embedding"]  # both cost nothing; the larger saving goes first
    assert budget_search(table, max_bytes=650).choices["embedding"].level == 8


def test_measured_budget_search_avoids_a_combination_that_breaks():
    """By the table decoder q4 is cheap; measured beside encoder q8 it breaks the model, so the search
    takes the next candidate instead (encoder q4), and reports the measured WER."""
    calls = []

    def measure(recipe):
        calls.append(recipe.describe())
        chosen = {(g, config.bits) for _, config in recipe.steps for g in config.groups}
        return 0.9 if {("encoder.ffn", 8), ("decoder.ffn", 4)} <= chosen else 0.1 + 0.01 * len(chosen)

    plan = budget_search(TABLE, max_bytes=400, measure=measure, candidates=2)
    assert {g: r.level for g, r in plan.choices.items()} == {"encoder.ffn": 4, "decoder.ffn": 8}
    assert plan.measured and plan.estimated_wer == pytest.approx(0.12)
    assert len(calls) == 2 * len(plan.trail) and any("measured WER" in move for move in plan.trail)
    assert (
        budget_search(TABLE, max_bytes=400).choices["decoder.ffn"].level == 4
    )  # unmeasured: the table's pick
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        budget_search(TABLE, max_bytes=400, measure=measure, candidates=0)


def test_budget_search_latency_and_errors():
    plan = budget_search(TABLE, max_ms=40)
    assert list(plan.choices) == ["decoder.ffn"] and plan.estimated_latency_ms == pytest.approx(30.0)
    with pytest.raises(ValueError, match="cannot be reached"):
        budget_search(TABLE, max_bytes=100)
    with pytest.raises(ValueError, match="cannot be reached"):
        budget_search(TABLE, max_ms=10)
    with pytest.raises(ValueError, match="exactly one"):
        budget_search(TABLE, max_bytes=1, max_ms=1)
    with pytest.raises(ValueError, match="baseline"):
        budget_search(TABLE[1:], max_bytes=500)


def test_divergence_plan_probes_every_quantizer_on_every_group():
    plan = divergence_plan()
    assert len(plan) == 6 * (5 + 4 * 3) and {p.technique for p in plan} == {"quantize"}
    steps = {json.dumps(p.recipe, sort_keys=True) for p in plan}
    assert len(steps) == len(plan)  # no probe twice
    conv = [p.recipe["steps"][0]["quantize"] for p in plan if p.group == "conv"]
    assert {"bits": 4, "method": "mse", "groups": ["conv"]} in conv
    assert {"bits": 3, "outlier_columns": 4, "groups": ["conv"]} in conv


# A divergence table: encoder.ffn has two quantizers at 4 bits (mse is the better one there); the
# greedy rate (divergence per byte) would take decoder q4 first, the exact optimum does not.
DIVERGENCE_TABLE = [
    BASELINE,
    _row("encoder.ffn", "quantize", 8, None, 300, divergence=0.001),
    _row("encoder.ffn", "quantize", 4, None, 400, divergence=0.30),
    _row("encoder.ffn", "quantize", 4, None, 400, divergence=0.05, method="mse"),
    _row("decoder.ffn", "quantize", 8, None, 200, divergence=0.002),
    _row("decoder.ffn", "quantize", 4, None, 350, divergence=0.04),
    _row("conv", "quantize", 4, None, 50, divergence=0.50),
]


def test_allocate_finds_the_least_summed_divergence_and_mixes_quantizers():
    plan = allocate(DIVERGENCE_TABLE, max_bytes=300)  # save 700: needs both encoder and decoder at 4 bits
    assert {g: r.setting for g, r in plan.choices.items()} == {
        "encoder.ffn": "quantize 4 method=mse",
        "decoder.ffn": "quantize 4",
    }
    assert plan.estimated_divergence == pytest.approx(0.09) and plan.estimated_wer is None
    assert plan.estimated_size_bytes == 250 and not plan.measured
    assert sorted((c.bits, c.method, c.groups) for _, c in plan.recipe.steps) == [
        (4, "minmax", ("decoder.ffn",)),
        (4, "mse", ("encoder.ffn",)),
    ]
    # save 600: encoder q8 + decoder q4 (0.041) beats encoder mse q4 + decoder q8 (0.052) and encoder q4 alone
    cheaper = allocate(DIVERGENCE_TABLE, max_bytes=400)
    assert {g: r.setting for g, r in cheaper.choices.items()} == {
        "encoder.ffn": "quantize 8",
        "decoder.ffn": "quantize 4",
    }
    assert allocate(DIVERGENCE_TABLE, max_bytes=1000).choices == {}


def test_allocate_is_exact_where_the_greedy_is_not():
    """Saving 500: the greedy takes the best rate first (encoder, 450) and then still needs a step, taking
    the next best rate (decoder attention, 500) although that one alone would have done."""
    table = [
        BASELINE,
        _row("encoder.ffn", "quantize", 8, 0.0045, 450),
        _row("decoder.ffn", "quantize", 8, 0.002, 100),
        _row("decoder.attention", "quantize", 8, 0.0055, 500),
    ]
    assert set(budget_search(table, max_bytes=500).choices) == {"encoder.ffn", "decoder.attention"}
    plan = allocate(table, max_bytes=500, cost="delta_wer")
    assert list(plan.choices) == ["decoder.attention"]
    assert plan.estimated_wer == pytest.approx(0.1055) and plan.estimated_divergence is None


def test_measured_allocation_takes_the_best_measured_candidate():
    """The cheapest plan by the table breaks when measured; the second one wins, with its measured value."""
    measured = []

    def measure(recipe):
        measured.append(recipe.describe())
        chosen = {(g, config.bits, config.method) for _, config in recipe.steps for g in config.groups}
        return 0.8 if ("encoder.ffn", 4, "mse") in chosen else 0.07

    plan = allocate(DIVERGENCE_TABLE, max_bytes=400, measure=measure, candidates=3)
    assert len(measured) == len(plan.trail) == 3 and plan.measured
    assert plan.estimated_divergence == pytest.approx(0.07)
    assert {g: r.setting for g, r in plan.choices.items()} == {
        "encoder.ffn": "quantize 8",
        "decoder.ffn": "quantize 4",
    }
    broken = lambda recipe: 0.8 if any(config.bits == 8 for _, config in recipe.steps) else 0.2  # noqa: E731
    plan = allocate(DIVERGENCE_TABLE, max_bytes=400, measure=broken, candidates=2)
    assert plan.estimated_divergence == pytest.approx(0.2) and plan.choices["encoder.ffn"].level == 4


def test_allocate_errors():
    with pytest.raises(ValueError, match="cannot be reached"):
        allocate(DIVERGENCE_TABLE, max_bytes=100)
    with pytest.raises(ValueError, match="no 'divergence' measurements"):
        allocate(TABLE, max_bytes=500)  # a ΔWER table
    with pytest.raises(ValueError, match="exactly one"):
        allocate(DIVERGENCE_TABLE)
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        allocate(DIVERGENCE_TABLE, max_bytes=400, measure=lambda r: 0.0, candidates=True)


def test_divergence_table_on_a_tiny_model(tiny_whisper, tmp_path, monkeypatch):
    from core.compress.recipe import Recipe

    model, dataset = tiny_speech_model(sharpened(tiny_whisper)), tiny_dataset(tmp_path / "data")
    store = Store(tmp_path / "results.sqlite")
    plan = sensitivity_plan(("encoder.ffn", "decoder.ffn"), {"quantize": ("bits", (8, 4, 2))})
    rows = list(run_sensitivity(model, dataset, store, plan, FAST, signal="divergence"))
    assert len(rows) == 7 and rows[0].divergence == pytest.approx(0.0, abs=1e-6)
    assert all(r.wer is None and r.delta_wer is None for r in rows)
    for group in ("encoder.ffn", "decoder.ffn"):
        values = [r.divergence for r in rows if r.group == group]
        assert 0 <= values[0] <= values[1] < values[2], values  # 8 bits may round to no change at all
    assert rows[1].setting == "8-bit channel" and "0.0" in format_table(rows, "divergence")
    calls = []
    apply = Recipe.apply
    monkeypatch.setattr(Recipe, "apply", lambda self, module, *a: calls.append(1) or apply(self, module, *a))
    again = list(run_sensitivity(model, dataset, store, plan, FAST, signal="divergence"))
    assert calls == [] and [r.divergence for r in again] == [r.divergence for r in rows]
    assert allocate(rows, max_bytes=rows[0].size_bytes - 1).choices  # something saves a byte
    with pytest.raises(ValueError, match="unknown signal"):
        next(run_sensitivity(model, dataset, store, plan, FAST, signal="loss"))


def test_plan_recipe_merges_groups_and_orders_steps():
    rows = [
        _row("decoder.ffn", "quantize", 4, 0, 1),
        _row("encoder.ffn", "quantize", 4, 0, 1),
        _row("conv", "prune", 0.5, 0, 1),
        _row("encoder.attention", "quantize", 8, 0, 1),
    ]
    assert plan_recipe(rows) == {
        "steps": [
            {"prune": {"sparsity": 0.5, "groups": ["conv"]}},
            {"quantize": {"bits": 4, "groups": ["encoder.ffn", "decoder.ffn"]}},
            {"quantize": {"bits": 8, "groups": ["encoder.attention"]}},
        ]
    }
