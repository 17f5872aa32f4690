"""Compress: sliders for each technique, and what the result costs and buys, measured on the quick set."""

import json

import pandas as pd
import streamlit as st

from core.compress.cost import linear_macs
from core.compress.recipe import Recipe
from ui.diff import DIFF_LEGEND, diff_html
from ui.forms import FORMS, widget_defaults
from ui.navigation import stay_in_app_navigation
from ui.resources import (
    artifact_zip,
    base_model,
    baseline_result,
    chosen_model_name,
    clip_result,
    compressed_model,
    measure,
)

stay_in_app_navigation()
for key, value in widget_defaults().items():  # widgets read their values from session state only
    st.session_state.setdefault(key, value)

st.title("Compress")
st.caption(
    "Move a slider in the sidebar: the compressed model is measured on the bundled `quick` set (16 "
    "sentences, packed "
    "into 30 s windows) and every point joins the Pareto page. Points you have tried before return at once."
)


def speed_text(ratio: float | None) -> str | None:
    """Measured speed against the baseline, in words that read right both ways."""
    if not ratio:
        return None
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def by_length_rows(baseline: dict, variant: dict) -> list[dict]:
    """One row per clip-length bucket: WER and median time per clip of the baseline and the variant."""
    base = {b["bucket"]: b for b in baseline["by_length"]}
    return [
        {
            "clip length": b["bucket"],
            "clips": b["clips"],
            "baseline WER %": round(100 * base[b["bucket"]]["wer"], 1) if b["bucket"] in base else None,
            "WER %": round(100 * b["wer"], 1),
            "baseline ms per clip": round(base[b["bucket"]]["median_ms"]) if b["bucket"] in base else None,
            "ms per clip": round(b["median_ms"]),
        }
        for b in variant["by_length"]
    ]


def recipe_from_widgets() -> dict:
    """The recipe JSON the controls describe: one expander per technique's form, steps in technique order."""
    steps = []
    for form in FORMS:
        with st.expander(form.title, expanded=form.expanded):
            if st.toggle(form.toggle, key=form.toggle_key):
                steps.append({form.technique: form.draw()})
    return {"steps": steps}


with st.sidebar:
    st.header("Recipe")
    spec = recipe_from_widgets()
results = st.container()
try:
    recipe = Recipe.from_json(spec)
except ValueError as exc:
    results.error(f"This combination is not valid: {exc}")
    st.stop()

st.session_state["recipe_json"] = json.dumps(recipe.to_json(), sort_keys=True)  # for Record & compare
model_name = chosen_model_name()
with results:
    try:
        with st.spinner("Loading the model …"):
            base = base_model(model_name)
    except ValueError as exc:
        st.error(f"Could not load the model: {exc}")
        st.stop()
    with st.status(f"Measuring: {recipe.describe() or 'uncompressed'} …", expanded=False) as status:
        st.write("Baseline (uncompressed) on the same windows …")
        baseline = measure(model_name, Recipe.from_json({"steps": []}))
        st.write("Compressed model …")
        point = measure(model_name, recipe)
        status.update(
            label=f"{'From the results store' if point.cached else 'Measured'}: "
            f"{recipe.describe() or 'uncompressed'}",
            state="complete",
        )
    variant, reports = compressed_model(model_name, st.session_state["recipe_json"])

    theory = linear_macs(base.module) / max(linear_macs(variant.module), 1)
    measured = baseline.latency_ms / point.latency_ms if point.latency_ms else None
    cards = st.columns(4)
    cards[0].metric(
        "WER",
        f"{100 * point.wer:.{0 if point.wer >= 1 else 1}f}%",
        f"{100 * (point.wer - baseline.wer):+.1f} pts",
        delta_color="inverse",
        help=f"Baseline {100 * baseline.wer:.1f}% on the same packed windows",
    )
    cards[1].metric(
        "Size",
        f"{point.size_bytes / 1e6:.1f} MB",
        f"{baseline.size_bytes / point.size_bytes:.2f}× smaller",
        delta_color="off",
        help="Bytes of the exported artifact (safetensors with packed integers, "
        "sparse storage where smaller)",
    )
    cards[2].metric(
        "Latency",
        f"{point.latency_ms:.0f} ms",
        speed_text(measured),
        delta_color="off",
        help=point.latency.describe().capitalize(),
    )
    cards[3].metric(
        "Speed-up in theory",
        f"{theory:.2f}×",
        f"measured {measured:.2f}×" if measured else None,
        delta_color="off",
        help="Linear-layer multiply-adds of one window, nonzero weights only. "
        "Unstructured zeros and fake-quantized weights still compute densely "
        "on this CPU, so measured speed stays near 1×.",
    )

    transcripts, lengths, layers, export = st.tabs(
        ["Transcripts", "By clip length", "Per layer", "Recipe & export"]
    )
    with transcripts:
        st.markdown(DIFF_LEGEND, unsafe_allow_html=True)
        for row in point.rows:
            st.markdown(
                f"**{100 * row['wer']:.0f}% WER** · {diff_html(row['reference'], row['hypothesis'])}",
                unsafe_allow_html=True,
            )
            st.caption(f"reference: {row['reference']}")
    with lengths:
        st.caption(
            "The cards score packed 30 s windows; short clips behave differently (a short-context model is "
            "fast on them). This measures both models one clip per window, like `python -m core evaluate`."
        )
        if st.button("Measure by clip length", key="by_length"):
            with st.spinner("Transcribing each clip of `quick` with both models …"):
                before = baseline_result(model_name, "quick")
                after = clip_result(model_name, st.session_state["recipe_json"])
            st.dataframe(by_length_rows(before, after), hide_index=True, width="stretch")
            st.caption(
                f"Transcripts that end in a loop: {after['looped']} (baseline {before.get('looped', 0)}). "
                "Synthetic speech (espeak-ng, flite)."
            )
    with layers:
        if reports:
            table = pd.DataFrame([r.__dict__ for r in reports])
            st.dataframe(table, hide_index=True, width="stretch")
        else:
            st.info("No compression step is on: every layer is as loaded.")
    with export:
        recipe_text = json.dumps(recipe.to_json(), indent=1)
        st.code(recipe_text, language="json")
        st.download_button(
            "Download recipe JSON", recipe_text, file_name="recipe.json", mime="application/json"
        )
        if st.button("Build the compressed model for download", disabled=recipe.is_empty):
            with st.spinner("Writing the artifact …"):
                data = artifact_zip(model_name, st.session_state["recipe_json"])
            st.download_button(
                f"Download artifact ({len(data) / 1e6:.1f} MB zip)",
                data,
                file_name="compressed-model.zip",
                mime="application/zip",
            )
        st.caption("The same from the command line:")
        st.code(
            f"python -m core compress --model {model_name} --recipe recipe.json --out compressed/\n"
            f"python -m core evaluate --model compressed/ --dataset full",
            language="bash",
        )
