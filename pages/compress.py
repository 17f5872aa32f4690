"""Compress: sliders for each technique, and what the result costs and buys, measured on the quick set."""
import json

import pandas as pd
import streamlit as st

from core.compress.cost import linear_macs
from core.compress.recipe import Recipe
from pages.common import (BITS, COMPRESS_DEFAULTS, DIFF_LEGEND, GROUP_CHOICES, GROUP_SIZES, LINEAR_GROUPS, artifact_zip,
                          base_model, chosen_model_name, compressed_model, diff_html, measure)

for key, value in COMPRESS_DEFAULTS.items():  # widgets read their values from session state only
    st.session_state.setdefault(key, value)

st.title("Compress")
st.caption("Move a slider in the sidebar: the compressed model is measured on the bundled `quick` set (16 sentences, packed "
           "into 30 s windows) and every point joins the Pareto page. Points you have tried before return at once.")


def speed_text(ratio: float | None) -> str | None:
    """Measured speed against the baseline, in words that read right both ways."""
    if not ratio:
        return None
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def recipe_from_widgets() -> dict:
    """The recipe JSON the controls describe (steps in the order prune → low-rank → quantize)."""
    steps = []
    with st.expander("✂️ Pruning", expanded=True):
        if st.toggle("Prune weights", key="prune_on"):
            structure = st.selectbox("Structure", ["unstructured", "neurons", "heads"], key="prune_structure",
                                     help="Unstructured zeroes single weights (smaller files, no speed-up on a CPU). "
                                          "Neurons/heads remove whole feed-forward neurons or attention heads: "
                                          "the model really gets smaller and faster.")
            config = {}
            if structure == "unstructured":
                by = st.radio("Prune by", ["sparsity", "threshold"], horizontal=True, key="prune_by",
                              help="Sparsity: the fraction of weights removed. Threshold: remove every weight "
                                   "whose magnitude is below it (in weight units).")
            else:
                by, config["structure"] = "sparsity", structure
            if by == "sparsity":
                unit = {"unstructured": "weights", "neurons": "feed-forward neurons", "heads": "attention heads"}
                config["sparsity"] = st.slider(f"Fraction of {unit[structure]} removed", 0.0, 0.95, step=0.05,
                                               key="prune_sparsity")
            else:
                config["threshold"] = st.slider("Threshold |w| <", 0.0, 0.2, step=0.005, format="%.3f",
                                                key="prune_threshold")
            if structure == "unstructured":
                config["scope"] = st.radio("Scope", ["layer", "global"], horizontal=True, key="prune_scope",
                                           help="Layer: every layer loses the same fraction. Global: one ranking "
                                                "over all selected layers.")
                config["groups"] = st.multiselect("Parts", GROUP_CHOICES, key="prune_groups")
            else:
                parts = [g for g in LINEAR_GROUPS if g.endswith("ffn" if structure == "neurons" else "attention")]
                config["groups"] = st.multiselect("Parts", parts, key=f"prune_groups_{structure}")
            steps.append({"prune": config})
    with st.expander("📉 Low-rank (SVD)", expanded=False):
        if st.toggle("Factorize Linear layers", key="lowrank_on"):
            by = st.radio("Rank by", ["energy", "rank_fraction"], horizontal=True, key="lowrank_by",
                          help="Energy: keep this fraction of the sum of squared singular values. "
                               "Rank fraction: keep this fraction of the full rank.")
            if by == "energy":
                config = {"energy": st.slider("Energy kept", 0.5, 1.0, step=0.01, key="lowrank_energy")}
            else:
                config = {"rank_fraction": st.slider("Rank fraction", 0.05, 1.0, step=0.05, key="lowrank_fraction")}
            config["groups"] = st.multiselect("Parts", LINEAR_GROUPS, key="lowrank_groups")
            steps.append({"low_rank": config})
    with st.expander("🔢 Quantization", expanded=True):
        if st.toggle("Quantize weights", key="quant_on"):
            config = {"bits": st.select_slider("Bits", BITS, key="quant_bits")}
            granularity = st.radio("Scales", ["channel", "group", "tensor"], horizontal=True, key="quant_granularity",
                                   help="One scale per output channel, per group of weights in a row, or per tensor.")
            config["granularity"] = granularity
            if granularity == "group":
                config["group_size"] = st.select_slider("Group size", GROUP_SIZES, key="quant_group")
            config["method"] = st.radio("Range", ["minmax", "mse"], horizontal=True, key="quant_method",
                                        help="minmax: the full range. mse: search a clipping range that minimises error.")
            config["symmetric"] = st.checkbox("Symmetric", key="quant_symmetric")
            if st.checkbox("GPTQ error compensation", key="quant_gptq",
                           help="Round Linear weights column by column, folding each error into the rest, weighted "
                                "by their inputs on 16 windows of calibration speech: what keeps 4-bit per channel "
                                "working. Takes ~20-40 s on tiny.en."):
                config["gptq"] = True
            if st.checkbox("Entropy-code the stored codes", key="quant_entropy",
                           help="Store the integer codes Huffman-coded: the file gets smaller (most codes sit "
                                "near zero), the model and its transcripts stay exactly the same."):
                config["entropy_code"] = True
            config["groups"] = st.multiselect("Parts", GROUP_CHOICES, key="quant_groups",
                                              help="The token embedding is tied to the output projection: "
                                                   "quantizing it quantizes both, stored once.")
            if st.checkbox("Run on int8 kernels (8-bit only)", key="quant_int8",
                           help="Real int8 matrix multiplies instead of dequantized fp32: faster on this CPU."):
                config["backend"] = "int8_dynamic"
            steps.append({"quantize": config})
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
        status.update(label=f"{'From the results store' if point.cached else 'Measured'}: "
                            f"{recipe.describe() or 'uncompressed'}", state="complete")
    variant, reports = compressed_model(model_name, st.session_state["recipe_json"])

    theory = linear_macs(base.module) / max(linear_macs(variant.module), 1)
    measured = baseline.latency_ms / point.latency_ms if point.latency_ms else None
    cards = st.columns(4)
    cards[0].metric("WER", f"{100 * point.wer:.{0 if point.wer >= 1 else 1}f}%", f"{100 * (point.wer - baseline.wer):+.1f} pts",
                    delta_color="inverse", help=f"Baseline {100 * baseline.wer:.1f}% on the same packed windows")
    cards[1].metric("Size", f"{point.size_bytes / 1e6:.1f} MB", f"{baseline.size_bytes / point.size_bytes:.2f}× smaller",
                    delta_color="off", help="Bytes of the exported artifact (safetensors with packed integers, "
                                            "sparse storage where smaller)")
    cards[2].metric("Latency", f"{point.latency_ms:.0f} ms", speed_text(measured),
                    delta_color="off", help=f"Median of {point.result['latency']['runs']} runs on a "
                                            f"{point.result['latency']['clip_seconds']:.1f} s clip, "
                                            f"{point.result['latency']['threads']} threads")
    cards[3].metric("Speed-up in theory", f"{theory:.2f}×", f"measured {measured:.2f}×" if measured else None,
                    delta_color="off", help="Linear-layer multiply-adds of one window, nonzero weights only. "
                                            "Unstructured zeros and fake-quantized weights still compute densely "
                                            "on this CPU, so measured speed stays near 1×.")

    transcripts, layers, export = st.tabs(["Transcripts", "Per layer", "Recipe & export"])
    with transcripts:
        st.markdown(DIFF_LEGEND, unsafe_allow_html=True)
        for row in point.rows:
            st.markdown(f"**{100 * row['wer']:.0f}% WER** · {diff_html(row['reference'], row['hypothesis'])}",
                        unsafe_allow_html=True)
            st.caption(f"reference: {row['reference']}")
    with layers:
        if reports:
            table = pd.DataFrame([r.__dict__ for r in reports])
            st.dataframe(table, hide_index=True, width="stretch")
        else:
            st.info("No compression step is on: every layer is as loaded.")
    with export:
        recipe_text = json.dumps(recipe.to_json(), indent=1)
        st.code(recipe_text, language="json")
        st.download_button("Download recipe JSON", recipe_text, file_name="recipe.json", mime="application/json")
        if st.button("Build the compressed model for download", disabled=recipe.is_empty):
            with st.spinner("Writing the artifact …"):
                data = artifact_zip(model_name, st.session_state["recipe_json"])
            st.download_button(f"Download artifact ({len(data) / 1e6:.1f} MB zip)", data,
                               file_name="compressed-model.zip", mime="application/zip")
        st.caption("The same from the command line:")
        st.code(f"python -m core compress --model {model_name} --recipe recipe.json --out compressed/\n"
                f"python -m core evaluate --model compressed/ --dataset full", language="bash")
