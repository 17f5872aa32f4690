"""What every page shares: the cached base model and cached evaluations. Thin wrappers over `core`."""
from __future__ import annotations

import os

import streamlit as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from core.data import load_dataset  # noqa: E402
from core.evaluate import evaluate, load_waves  # noqa: E402
from core.models import DEFAULT_MODEL, SpeechModel, load_model  # noqa: E402


@st.cache_resource(show_spinner=False, max_entries=3)
def base_model(name: str = DEFAULT_MODEL) -> SpeechModel:
    """The uncompressed model, loaded once per process and shared by every session (never mutated)."""
    return load_model(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def dataset_waves(name: str):
    """A dataset and its decoded audio, loaded once per process."""
    dataset = load_dataset(name)
    return dataset, load_waves(dataset)


@st.cache_data(show_spinner=False, max_entries=16)
def baseline_result(model_name: str, dataset_name: str) -> dict:
    """Baseline WER/size/latency of an uncompressed model (a pure result, cached by its inputs)."""
    dataset, waves = dataset_waves(dataset_name)
    return evaluate(base_model(model_name), dataset, waves=waves).to_dict()


def chosen_model_name() -> str:
    """The model the user picked on Home (session state holds only the choice)."""
    return st.session_state.get("model_name", DEFAULT_MODEL)
