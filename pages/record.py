"""Record & compare: your own voice through the original and a compressed model, side by side."""

import json
import time
from pathlib import Path

import numpy as np
import streamlit as st

from core.audio import AudioError, decode_audio, is_probably_speech
from core.compress.advice import BROKEN_WER, PRESETS
from core.compress.recipe import Recipe
from core.measure.store import model_identity
from core.metrics import score
from core.pareto import pareto_front
from ui.datasets import dataset_picker
from ui.diff import DIFF_LEGEND, diff_html
from ui.navigation import stay_in_app_navigation
from ui.resources import (
    base_model,
    chosen_dataset_name,
    chosen_model_name,
    compressed_model,
    dataset_waves,
    results_store,
)

stay_in_app_navigation()
dataset_picker()

st.title("Record & compare")
st.caption("Speak or upload a clip, then read what the original and the compressed model heard.")


def variant_choices() -> dict[str, tuple[dict, str | None]]:
    """Variants worth comparing, as (recipe, trained student's folder or None): the Compress page's current
    recipe, the presets, and this model's points on the Pareto front of WER against size (measured in the
    lab on the chosen set; broken models, sensitivity probes, dominated points left out), smallest first."""
    choices = {}
    if st.session_state.get("recipe_json"):
        current = json.loads(st.session_state["recipe_json"])
        choices[f"Compress page: {Recipe.from_json(current).describe() or 'uncompressed'}"] = (current, None)
    for preset in PRESETS:
        choices[f"Preset: {preset.name}"] = (preset.recipe, None)
    dataset, _ = dataset_waves(chosen_dataset_name())
    points = [
        p
        for p in results_store().points(
            model_identity(base_model(chosen_model_name())), dataset.fingerprint()
        )
        if p.runtime == "lab"
        and (p.recipe.get("steps") or p.is_student)
        and p.size_bytes
        and p.wer <= BROKEN_WER
        and not is_probe(p.recipe)
    ]
    points = [p for p in points if not p.is_student or Path(p.student["folder"]).is_dir()]
    if points:
        front = pareto_front(np.array([[p.wer, p.size_bytes] for p in points], dtype=float))
        for point in sorted((p for p, on in zip(points, front) if on), key=lambda p: p.size_bytes):
            folder = point.student["folder"] if point.is_student else None
            facts = f"WER {100 * point.wer:.1f}%, {point.size_bytes / 1e6:.1f} MB on {dataset.name}"
            choices.setdefault(f"Pareto: {point.label} ({facts})", (point.recipe, folder))
    return choices


def is_probe(recipe: dict) -> bool:
    """A sensitivity probe: one step on one layer group (not a recipe anyone would deploy)."""
    steps = recipe.get("steps", [])
    return len(steps) == 1 and len(next(iter(steps[0].values())).get("groups") or ()) == 1


def timed_transcript(model, wave) -> tuple[str, float]:
    """The transcript and how long it took here, in ms."""
    start = time.perf_counter()
    text = model.transcribe([wave])[0]
    return text, 1000 * (time.perf_counter() - start)


source, settings = st.columns([3, 2], gap="large")
with source:
    recorded = st.audio_input("Record from your microphone")
    uploaded = st.file_uploader("…or upload a clip", type=["wav", "flac", "ogg", "mp3"])
with settings:
    choices = variant_choices()
    label = st.selectbox("Compressed variant", list(choices))
    reference = st.text_input("What you said (optional, gives WER for both)")

clip = recorded or uploaded
if clip is None:
    st.info("Record a sentence or upload a clip to start.")
    st.stop()

try:
    wave = decode_audio(clip.getvalue(), getattr(clip, "name", None) or "recording")
except AudioError as exc:
    st.error(f"Cannot use this audio: {exc}")
    st.stop()
st.audio(clip.getvalue())
if not is_probably_speech(wave):
    st.warning(
        "This does not sound like speech (noise, silence or a tone?). Whisper tends to write "
        "something like “you” for audio without speech, so do not read much into the transcripts."
    )

model_name = chosen_model_name()
chosen_recipe, student_folder = choices[label]
with st.spinner("Transcribing with both models …"):
    original = base_model(model_name)
    variant, _ = compressed_model(model_name, json.dumps(chosen_recipe, sort_keys=True), student_folder)
    (original_text, original_ms), (variant_text, variant_ms) = (
        timed_transcript(original, wave),
        timed_transcript(variant, wave),
    )
    texts = [original_text, variant_text]

left, right = st.columns(2, gap="large")
for column, title, text, ms in (
    (left, "Original", texts[0], original_ms),
    (right, "Compressed", texts[1], variant_ms),
):
    with column:
        st.subheader(title)
        st.write(text or "*(nothing)*")
        st.caption(f"Transcribed in {ms:.0f} ms here ({len(wave) / 16000:.1f} s of audio, one run)")
        if reference.strip():
            try:
                st.metric("WER against what you said", f"{100 * score([reference], [text]).wer:.0f}%")
            except ValueError as exc:
                st.warning(f"Cannot score against that reference: {exc}")

st.subheader("What changed")
st.markdown(
    DIFF_LEGEND + " — compressed against " + ("what you said" if reference.strip() else "the original"),
    unsafe_allow_html=True,
)
st.markdown(diff_html(reference.strip() or texts[0], texts[1]), unsafe_allow_html=True)
