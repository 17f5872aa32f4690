"""Record & compare: your own voice through the original and a compressed model, side by side."""

import json
from pathlib import Path

import streamlit as st

from core.audio import AudioError, decode_audio, is_probably_speech
from core.compress.recipe import Recipe
from core.metrics import score
from ui.diff import DIFF_LEGEND, diff_html
from ui.navigation import stay_in_app_navigation
from ui.resources import base_model, chosen_model_name, compressed_model, results_store

stay_in_app_navigation()

st.title("Record & compare")
st.caption("Speak or upload a clip, then read what the original and the compressed model heard.")

EXAMPLE = {"steps": [{"quantize": {"bits": 4, "granularity": "group", "group_size": 64, "method": "mse"}}]}


def variant_choices() -> dict[str, tuple[dict, str | None]]:
    """Variants the user can compare against, as (recipe, trained student's folder or None): the Compress
    page's current recipe, stored points, an example."""
    choices = {}
    if st.session_state.get("recipe_json"):
        current = json.loads(st.session_state["recipe_json"])
        choices[f"Compress page: {Recipe.from_json(current).describe()}"] = (current, None)
    for point in results_store().points():
        folder = point.student["folder"] if point.is_student else None
        if (point.recipe.get("steps") and folder is None) or (folder is not None and Path(folder).is_dir()):
            choices.setdefault(
                f"Stored: {point.label} (WER {100 * point.wer:.1f}% on {point.dataset})",
                (point.recipe, folder),
            )
    choices.setdefault(f"Example: {Recipe.from_json(EXAMPLE).describe()}", (EXAMPLE, None))
    return choices


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
    texts = [original.transcribe([wave])[0], variant.transcribe([wave])[0]]

left, right = st.columns(2, gap="large")
for column, title, text in ((left, "Original", texts[0]), (right, "Compressed", texts[1])):
    with column:
        st.subheader(title)
        st.write(text or "*(nothing)*")
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
