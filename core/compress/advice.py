"""Guard rails: when a measured recipe gives a broken model, say so, say why it likely broke, and offer
recipes that fix it; and a few named recipes (presets) that were chosen on another split.

Pure functions over recipe JSON and measured numbers (no model, no streamlit), so the Compress page, the
CLI and tests share them. The rules come from what was measured on Whisper tiny.en (bench/RESULTS.md,
"Size against WER"): 4-bit codes with one scale per row loop or emit garbage (WER > 100%), groups of 64
with an mse range hold; 3-bit codes need GPTQ; the token embedding (half of tiny.en's weights) is the
layer most hurt by few bits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from core.compress.quant import QuantConfig

BROKEN_WER = 0.5  # above this WER a model is broken for any use
BROKEN_DELTA = 0.2  # ... or this far above its baseline


@dataclass(frozen=True)
class Fix:
    """A changed recipe that addresses one likely cause, and why."""

    title: str
    why: str
    recipe: dict


@dataclass(frozen=True)
class Diagnosis:
    """Whether a measured model is broken, in words, and the fixes to try (most likely first)."""

    broken: bool
    reason: str
    fixes: tuple[Fix, ...]


def is_broken(wer: float, baseline_wer: float, looped: int = 0) -> bool:
    """A model that no one could use: WER over 50%, 20 points worse than its baseline, or decoding loops."""
    return wer > BROKEN_WER or wer - baseline_wer > BROKEN_DELTA or looped > 0


def _steps(recipe: dict, name: str) -> list[tuple[int, dict]]:
    return [(i, step[name]) for i, step in enumerate(recipe.get("steps", [])) if name in step]


def _with(recipe: dict, index: int, name: str, **changes) -> dict:
    changed = copy.deepcopy(recipe)
    changed["steps"][index][name].update(changes)
    return changed


def fixes_for(recipe: dict) -> list[Fix]:
    """Recipes to try instead of `recipe`, each changing one thing, most likely cause first."""
    fixes = []
    for index, config in _steps(recipe, "quantize"):
        bits = config.get("bits", 8)
        if bits > 5:
            continue
        if config.get("granularity", "channel") != "group":
            fixes.append(
                Fix(
                    f"{bits}-bit in groups of 64 with an mse range",
                    f"one scale per row leaves {bits}-bit codes too few levels for rows with a few large "
                    "weights; a scale per 64 columns, fitted by mean squared error, keeps 4-bit working",
                    _with(recipe, index, "quantize", granularity="group", group_size=64, method="mse"),
                )
            )
        elif not config.get("gptq"):
            fixes.append(
                Fix(
                    "GPTQ rounding",
                    "rounds each column to make up for the error of the ones before it (calibrated on the "
                    "train split; takes minutes)",
                    _with(recipe, index, "quantize", gptq=True, method="mse"),
                )
            )
        groups = config.get("groups")
        if groups is None or "embedding" in groups:
            kept = [g for g in (groups or QuantConfig().groups) if g != "embedding"]
            split = copy.deepcopy(recipe)
            split["steps"][index]["quantize"]["groups"] = kept
            split["steps"].insert(index + 1, {"quantize": {"bits": 8, "groups": ["embedding"]}})
            fixes.append(
                Fix(
                    "keep the token embedding at 8 bits",
                    "the embedding is half of the weights and also the output layer: few bits there "
                    "change which word wins",
                    split,
                )
            )
    for index, config in _steps(recipe, "prune"):
        if (config.get("sparsity") or 0) > 0.3:
            fixes.append(
                Fix(
                    "prune 30%",
                    "beyond about 30% without retraining, magnitude pruning removes weights that matter; "
                    "distillation (Distill page) can win some back",
                    _with(recipe, index, "prune", sparsity=0.3),
                )
            )
    for index, config in _steps(recipe, "low_rank"):
        if (config.get("energy") or 1) < 0.99 or (config.get("rank_fraction") or 1) < 0.75:
            changed = _with(recipe, index, "low_rank", energy=0.99)
            changed["steps"][index]["low_rank"].pop("rank_fraction", None)
            changed["steps"][index]["low_rank"].pop("rank", None)
            fixes.append(
                Fix(
                    "keep 99% of the energy",
                    "Whisper's weights have flat spectra: dropping 5% of the energy already costs words",
                    changed,
                )
            )
    return fixes


def diagnose(recipe: dict, wer: float, baseline_wer: float, looped: int = 0) -> Diagnosis:
    """Is the model of `recipe` broken, given its measured WER (and loops) against its baseline's?"""
    if not is_broken(wer, baseline_wer, looped):
        return Diagnosis(False, "", ())
    loops = f", and {looped} transcript(s) end in a loop" if looped else ""
    reason = (
        f"WER {100 * wer:.1f}% against {100 * baseline_wer:.1f}% uncompressed "
        f"({100 * (wer - baseline_wer):+.1f} points){loops}: this model is broken, not just worse."
    )
    return Diagnosis(True, reason, tuple(fixes_for(recipe)))


@dataclass(frozen=True)
class Preset:
    """A named recipe, what it is for, and where it was chosen (never the split the dashboard shows)."""

    name: str
    goal: str
    recipe: dict
    chosen_on: str


_LINEAR = ["encoder.attention", "encoder.ffn", "decoder.attention", "decoder.ffn"]
_FP16_MSE = {"method": "mse", "symmetric": False, "scale_dtype": "float16"}

PRESETS = (
    Preset(
        "Fast int8 (CPU kernels)",
        "real int8 matrix products: faster on a CPU, about 3.6× smaller",
        {"steps": [{"quantize": {"bits": 8, "backend": "int8_dynamic"}}]},
        "full (bench/RESULTS.md, 'Speed')",
    ),
    Preset(
        "Safe 8-bit",
        "3.6× smaller with no WER change measured",
        {"steps": [{"quantize": {"bits": 8}}]},
        "full (bench/RESULTS.md, 'Size against WER')",
    ),
    Preset(
        "Smallest within 1 point (4-bit groups)",
        "about 5.7× smaller, fast to build",
        {
            "steps": [
                {
                    "quantize": {
                        "bits": 4,
                        "granularity": "group",
                        "group_size": 64,
                        "method": "mse",
                        "symmetric": False,
                    }
                }
            ]
        },  # fmt: skip
        "full (bench/RESULTS.md, 'Size against WER')",
    ),
    Preset(
        "8× at about the same WER (GPTQ, outlier columns)",
        "8.5× smaller; GPTQ calibration takes minutes the first time",
        {
            "steps": [
                {
                    "quantize": {
                        "bits": 4,
                        "granularity": "group",
                        "group_size": 64,
                        "gptq": True,
                        "entropy_code": True,
                        "groups": _LINEAR,
                        **_FP16_MSE,
                    }
                },
                {
                    "quantize": {
                        "bits": 4,
                        "groups": ["embedding"],
                        "outlier_columns": 4,
                        "entropy_code": True,
                        **_FP16_MSE,
                    }
                },
                {"quantize": {"bits": 8, "groups": ["conv", "positions"], "entropy_code": True, **_FP16_MSE}},
            ]
        },  # fmt: skip
        "full (bench/RESULTS.md, 'Entropy-coded storage and outlier columns')",
    ),
)


def preset_named(name: str) -> Preset:
    """The preset with this name; ValueError listing the names otherwise."""
    for preset in PRESETS:
        if preset.name == name:
            return preset
    raise ValueError(f"no preset {name!r}; presets: {[p.name for p in PRESETS]}")
