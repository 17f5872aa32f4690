"""The heavy objects every page shares, cached per process: models, datasets, results store, points.

Thin wrappers over `core` with `st.cache_resource` / `st.cache_data`, each bounded by max_entries."""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import streamlit as st

from core.compress.recipe import Recipe, apply_recipe
from core.data import load_dataset, load_waves, saved_stamp
from core.io.folders import load_model, save_model
from core.measure.store import Point, Store
from core.measure.sweep import SweepSettings, stored_points
from core.models import DEFAULT_MODEL, EncoderCache, SpeechModel
from core.paths import check_model_path

LIVE = SweepSettings()  # packed windows, 2 latency runs: the same for every point the pages compare


@st.cache_resource(show_spinner=False, max_entries=3)
def base_model(name: str = DEFAULT_MODEL) -> SpeechModel:
    """The uncompressed model, loaded once per process and shared by every session (never mutated); on a
    shared server only from the allowed folders (core.paths.check_model_path)."""
    check_model_path(name)
    return load_model(name)


def dataset_waves(name: str):
    """A dataset and its decoded audio, loaded once per process (again when a saved set is saved anew)."""
    return _dataset_waves(name, saved_stamp(name))


@st.cache_resource(show_spinner=False, max_entries=4)
def _dataset_waves(name: str, stamp: int):
    dataset = load_dataset(name)
    return dataset, load_waves(dataset)


@st.cache_resource(show_spinner=False, max_entries=1)
def results_store() -> Store:
    """The results store shared by all pages and sessions (SQLite in the user's data folder)."""
    return Store(os.environ.get("SPEECH_LAB_STORE") or None)


@st.cache_resource(show_spinner=False, max_entries=1)
def encoder_cache() -> EncoderCache:
    """Encoder outputs reused across points whose encoder weights are unchanged (exact reuse)."""
    return EncoderCache()


def stored(model_name: str, recipes: list, dataset_name: str) -> list[Point | None]:
    """Each recipe's point from the results store (None where not measured yet), without any work: a page
    shows these at once and submits a job for the rest (ui.jobs)."""
    dataset, _ = dataset_waves(dataset_name)
    return stored_points(base_model(model_name), dataset, recipes, results_store(), LIVE)


@st.cache_resource(show_spinner=False, max_entries=2)
def compressed_model(
    model_name: str, recipe_json: str, student_folder: str | None = None
) -> tuple[SpeechModel, list]:
    """The base model with a recipe applied, and the per-layer report (few kept: they are large); a trained
    student (a point with a student folder) loads from its folder instead."""
    if student_folder is not None:
        return load_model(student_folder), []
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


def chosen_model_name() -> str:
    """The model the user picked on Home (session state holds only the choice)."""
    return st.session_state.get("model_name", DEFAULT_MODEL)


DATASET_KEY = "dataset_name"  # session state: the evaluation set picked in the sidebar (ui.datasets)


def chosen_dataset_name() -> str:
    """The evaluation set the user picked in the sidebar: every page measures and shows WER on it."""
    return st.session_state.get(DATASET_KEY, "quick")
