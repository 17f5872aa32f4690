"""What every page shares: cached models, datasets and measured points. Thin wrappers over `core`."""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from core.data import load_dataset  # noqa: E402
from core.measure.evaluate import evaluate  # noqa: E402
from core.data import load_waves  # noqa: E402
from core.metrics import word_diff  # noqa: E402
from core.models import DEFAULT_MODEL, EncoderCache, SpeechModel  # noqa: E402
from core.io.folders import load_model, save_model  # noqa: E402
from core.compress.recipe import apply_recipe, Recipe  # noqa: E402
from core.measure.store import Point, Store  # noqa: E402
from core.measure.sweep import run_sweep, SweepSettings  # noqa: E402

if PagesManager.uses_pages_directory:
    # A deep link (e.g. /compress) was the first request of this server process: Streamlit then runs the
    # page in its legacy pages/-folder mode without app.py's navigation. Switch to app.py and run again.
    PagesManager.uses_pages_directory = False
    st.rerun()

LIVE = SweepSettings()  # packed windows, 2 latency runs: the same for every point the pages compare


@st.cache_resource(show_spinner=False, max_entries=3)
def base_model(name: str = DEFAULT_MODEL) -> SpeechModel:
    """The uncompressed model, loaded once per process and shared by every session (never mutated)."""
    return load_model(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def dataset_waves(name: str):
    """A dataset and its decoded audio, loaded once per process."""
    dataset = load_dataset(name)
    return dataset, load_waves(dataset)


@st.cache_resource(show_spinner=False)
def results_store() -> Store:
    """The results store shared by all pages and sessions (SQLite in the user's data folder)."""
    return Store(os.environ.get("SPEECH_LAB_STORE") or None)


@st.cache_resource(show_spinner=False, max_entries=1)
def encoder_cache() -> EncoderCache:
    """Encoder outputs reused across points whose encoder weights are unchanged (exact reuse)."""
    return EncoderCache()


@st.cache_data(show_spinner=False, max_entries=16)
def baseline_result(model_name: str, dataset_name: str) -> dict:
    """Baseline of an uncompressed model, measured like `python -m core evaluate` (one clip per window)."""
    dataset, waves = dataset_waves(dataset_name)
    return evaluate(base_model(model_name), dataset, waves=waves).to_dict()


def measure(model_name: str, recipe: Recipe, dataset_name: str = "quick") -> Point:
    """One point from the results store, or measured now and stored (every point joins the Pareto store)."""
    dataset, waves = dataset_waves(dataset_name)
    return next(run_sweep(base_model(model_name), dataset, [recipe], results_store(), LIVE,
                          waves=waves, encoder_cache=encoder_cache()))


@st.cache_resource(show_spinner=False, max_entries=2)
def compressed_model(model_name: str, recipe_json: str) -> tuple[SpeechModel, list]:
    """The base model with a recipe applied, and the per-layer report (few kept: they are large). A trained
    student's entry (core.distill.pareto_entry) loads from its folder."""
    if "distill" in json.loads(recipe_json):
        return load_model(json.loads(recipe_json)["distill"]["folder"]), []
    recipe = Recipe.from_json(json.loads(recipe_json))
    base = base_model(model_name)
    if recipe.is_empty:
        return base, []
    return apply_recipe(base, recipe)


@st.cache_data(show_spinner=False, max_entries=2)
def artifact_zip(model_name: str, recipe_json: str) -> bytes:
    """The compressed model folder (as `python -m core compress` writes it), zipped for download."""
    model, _ = compressed_model(model_name, recipe_json)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, folder, {"recipe": json.loads(recipe_json), "base_model": model_name})
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(Path(folder).iterdir()):
                archive.write(path, f"compressed-model/{path.name}")
    return buffer.getvalue()


def diff_html(reference: str, hypothesis: str) -> str:
    """Hypothesis words with substitutions, deletions and insertions highlighted (colour-blind safe)."""
    styles = {"substitute": "background:#ffd8a8;color:#000", "delete": "background:#d0bfff;color:#000;"
              "text-decoration:line-through", "insert": "background:#a5d8ff;color:#000"}
    parts = []
    for op, ref, hyp in word_diff(reference, hypothesis):
        if op == "equal":
            parts.append(hyp)
        elif op == "substitute":
            parts.append(f'<span style="{styles[op]}" title="was: {ref}">{hyp}</span>')
        elif op == "delete":
            parts.append(f'<span style="{styles[op]}" title="missing">{ref}</span>')
        else:
            parts.append(f'<span style="{styles[op]}" title="inserted">{hyp}</span>')
    return " ".join(parts)


DIFF_LEGEND = ('<span style="background:#ffd8a8;color:#000">substituted</span> · '
               '<span style="background:#d0bfff;color:#000;text-decoration:line-through">deleted</span> · '
               '<span style="background:#a5d8ff;color:#000">inserted</span>')


def chosen_model_name() -> str:
    """The model the user picked on Home (session state holds only the choice)."""
    return st.session_state.get("model_name", DEFAULT_MODEL)


BITS = [2, 3, 4, 5, 6, 7, 8, 16]
GROUP_SIZES = [16, 32, 64, 128, 256]
GROUP_CHOICES = ["encoder.attention", "encoder.ffn", "decoder.attention", "decoder.ffn", "embedding"]
LINEAR_GROUPS = GROUP_CHOICES[:4]
COMPRESS_DEFAULTS = {  # the Compress page's widgets, by key: 8-bit weights, nothing else
    "prune_on": False, "prune_structure": "unstructured", "prune_by": "sparsity", "prune_sparsity": 0.3,
    "prune_threshold": 0.02, "prune_scope": "layer", "prune_groups": LINEAR_GROUPS,
    "prune_groups_neurons": ["encoder.ffn", "decoder.ffn"],
    "prune_groups_heads": ["encoder.attention", "decoder.attention"],
    "lowrank_on": False, "lowrank_by": "energy", "lowrank_energy": 0.95, "lowrank_fraction": 0.5,
    "lowrank_groups": LINEAR_GROUPS,
    "quant_on": True, "quant_bits": 8, "quant_granularity": "channel", "quant_group": 64, "quant_method": "minmax",
    "quant_symmetric": True, "quant_groups": GROUP_CHOICES, "quant_int8": False, "quant_gptq": False,
    "quant_entropy": False,
}


def compress_widget_state(recipe: dict) -> dict:
    """The Compress page's widget values that reproduce `recipe`; ValueError if its sliders cannot."""
    state = dict(COMPRESS_DEFAULTS, prune_on=False, lowrank_on=False, quant_on=False)
    seen = set()
    for step in Recipe.from_json(recipe).to_json()["steps"]:
        (name, config), = step.items()
        if name in seen:
            raise ValueError(f"it has two {name} steps (the sliders hold one of each)")
        seen.add(name)
        if name == "prune":
            structure = config.get("structure", "unstructured")
            by = "threshold" if "threshold" in config else "sparsity"
            state.update(prune_on=True, prune_structure=structure, prune_by=by,
                         prune_scope=config.get("scope", "layer"))
            state[f"prune_{by}"] = config[by]
            groups_key = "prune_groups" if structure == "unstructured" else f"prune_groups_{structure}"
            state[groups_key] = list(config.get("groups", COMPRESS_DEFAULTS[groups_key]))
        elif name == "low_rank":
            by = "energy" if "energy" in config else "rank_fraction"
            if by not in config:
                raise ValueError("its low-rank step sets an absolute rank (the slider sets a fraction or energy)")
            state.update(lowrank_on=True, lowrank_by=by, lowrank_groups=list(config.get("groups", LINEAR_GROUPS)))
            state["lowrank_energy" if by == "energy" else "lowrank_fraction"] = config[by]
        elif name == "quantize":
            state.update(quant_on=True, quant_bits=config.get("bits", 8),
                         quant_granularity=config.get("granularity", "channel"),
                         quant_group=config.get("group_size", 64), quant_method=config.get("method", "minmax"),
                         quant_symmetric=config.get("symmetric", True),
                         quant_groups=list(config.get("groups", GROUP_CHOICES)),
                         quant_int8=config.get("backend") == "int8_dynamic", quant_gptq=config.get("gptq", False),
                         quant_entropy=config.get("entropy_code", False))
            if config.get("scale_dtype", "float32") != "float32" or config.get("outlier_columns", 0):
                raise ValueError("its fp16 scales or fp16 outlier columns are not on the sliders")
            if config.get("calibration", "train") != "train" or config.get("calibration_windows", 16) != 16:
                raise ValueError("its GPTQ calibration is not the sliders' (16 windows of train)")
    for key in ("prune_groups", "prune_groups_neurons", "prune_groups_heads", "lowrank_groups", "quant_groups"):
        allowed = COMPRESS_DEFAULTS["quant_groups" if key in ("prune_groups", "quant_groups") else key]
        if not set(state[key]) <= set(allowed + (LINEAR_GROUPS if key == "lowrank_groups" else [])):
            raise ValueError(f"it compresses {sorted(set(state[key]) - set(allowed))}, which the sliders do not offer")
    if state["quant_bits"] not in BITS or state["quant_group"] not in GROUP_SIZES:
        raise ValueError("its bit width or group size is not on the sliders")
    return state
