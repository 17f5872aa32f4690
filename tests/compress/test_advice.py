"""Guard rails on plain data: what counts as broken, which fixes are offered, and that every fix and preset
is a valid recipe."""

from __future__ import annotations

import pytest

from core.compress.advice import PRESETS, diagnose, fixes_for, is_broken, preset_named
from core.compress.recipe import Recipe

FOUR_BIT_CHANNEL = {"steps": [{"quantize": {"bits": 4}}]}


def test_broken_means_unusable_not_just_worse():
    assert not is_broken(0.14, 0.13) and not is_broken(0.30, 0.13)
    assert is_broken(0.961, 0.097)  # the measured 4-bit per-channel model
    assert is_broken(0.40, 0.13)  # 27 points worse
    assert is_broken(0.15, 0.13, looped=2)  # the loop stop fired


def test_4_bit_per_channel_is_diagnosed_with_groups_first_and_every_fix_is_a_valid_recipe():
    diagnosis = diagnose(FOUR_BIT_CHANNEL, 0.961, 0.097)
    assert diagnosis.broken and "96.1%" in diagnosis.reason and "+86.4 points" in diagnosis.reason
    titles = [f.title for f in diagnosis.fixes]
    assert titles[0] == "4-bit in groups of 64 with an mse range"
    assert "keep the token embedding at 8 bits" in titles
    grouped = diagnosis.fixes[0].recipe["steps"][0]["quantize"]
    assert grouped == {"bits": 4, "granularity": "group", "group_size": 64, "method": "mse"}
    embedding = next(f for f in diagnosis.fixes if "embedding" in f.title).recipe["steps"]
    assert "embedding" not in embedding[0]["quantize"]["groups"]
    assert embedding[1] == {"quantize": {"bits": 8, "groups": ["embedding"]}}
    for fix in diagnosis.fixes:
        Recipe.from_json(fix.recipe)  # valid: the one-click fix can be measured as it is
    assert FOUR_BIT_CHANNEL == {"steps": [{"quantize": {"bits": 4}}]}  # the original is not changed


def test_grouped_4_bit_gets_gptq_and_pruning_and_low_rank_get_milder_settings():
    grouped = {"steps": [{"quantize": {"bits": 3, "granularity": "group", "groups": ["decoder.ffn"]}}]}
    assert [f.title for f in fixes_for(grouped)] == ["GPTQ rounding"]
    mixed = {"steps": [{"prune": {"sparsity": 0.6}}, {"low_rank": {"rank_fraction": 0.5}}]}
    fixes = {f.title: f.recipe for f in fixes_for(mixed)}
    assert fixes["prune 30%"]["steps"][0] == {"prune": {"sparsity": 0.3}}
    assert fixes["keep 99% of the energy"]["steps"][1] == {"low_rank": {"energy": 0.99}}
    for recipe in fixes.values():
        Recipe.from_json(recipe)
    assert fixes_for({"steps": [{"quantize": {"bits": 8}}]}) == []


def test_a_working_model_has_no_diagnosis():
    assert diagnose({"steps": [{"quantize": {"bits": 8}}]}, 0.10, 0.097) == diagnose(
        FOUR_BIT_CHANNEL, 0.1, 0.1
    )
    assert not diagnose(FOUR_BIT_CHANNEL, 0.1, 0.1).broken


def test_presets_are_valid_recipes_chosen_on_another_split():
    for preset in PRESETS:
        Recipe.from_json(preset.recipe)
        assert preset.chosen_on.startswith("full")  # the dashboard shows `quick`
    assert preset_named(PRESETS[0].name) is PRESETS[0]
    with pytest.raises(ValueError, match="no preset"):
        preset_named("magic")
