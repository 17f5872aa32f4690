"""Home: what the lab does, which model is loaded, and its baseline numbers."""

import streamlit as st

from core.io.folders import known_models
from core.measure.evaluate import Latency
from core.models import DEFAULT_MODEL
from ui.datasets import dataset_picker
from ui.jobs import evaluation
from ui.navigation import stay_in_app_navigation
from ui.resources import base_model, chosen_dataset_name, chosen_model_name, stored

stay_in_app_navigation()
dataset_picker()

st.title("🎙️ Speech Compression Lab")
st.markdown(
    "Compress a speech-recognition model — **prune** small weights, **quantize** them to fewer bits, "
    "replace layers by **low-rank** factors, **distil** a smaller student — and see what each choice "
    "costs in **word error rate** (WER), and what it buys in **size** and **latency**. "
    "Everything runs on your machine, offline; the default model is OpenAI's Whisper tiny.en."
)


def remember_model() -> None:
    """Keep the typed model as the session's choice (read by every page)."""
    st.session_state["model_name"] = st.session_state["model_input"].strip() or DEFAULT_MODEL


def pick_model() -> None:
    """A model from the list goes into the box, and becomes the session's choice."""
    if st.session_state["model_pick"]:
        st.session_state["model_input"] = st.session_state["model_pick"]
        remember_model()


if "model_input" not in st.session_state:  # a widget's state is dropped when its page is left
    st.session_state["model_input"] = chosen_model_name()
known = dict(known_models())
st.selectbox(
    "Known models",
    list(known),
    index=None,
    key="model_pick",
    format_func=lambda name: known[name],
    placeholder=f"{len(known)} on this machine: bundled, trained, exported, in the Hugging Face cache",
    on_change=pick_model,
)
st.text_input(
    "Model",
    key="model_input",
    on_change=remember_model,
    help="'whisper-tiny.en' (bundled), a local model folder, an exported compressed artifact, "
    "or a Hugging Face id you have downloaded before.",
)
name = chosen_model_name()

try:
    with st.spinner(f"Loading {name} …"):
        model = base_model(name)
except ValueError as exc:
    st.error(f"Could not load the model: {exc}")
    st.stop()

dataset_name = chosen_dataset_name()
result = evaluation(name, dataset_name, "home_job")
if result is None:
    st.info(
        f"Measuring this model's baseline on `{dataset_name}` (one clip per window, then 5 timed runs) in "
        "the background, once: every later visit, from any session, shows it at once. It takes minutes on a "
        "laptop CPU (the progress bar counts the clips); you can use the other pages meanwhile."
    )
    st.stop()

st.subheader(f"Baseline on `{dataset_name}`, one clip per window")
cols = st.columns(4)
cols[0].metric(
    "WER",
    f"{100 * result['wer']:.1f}%",
    help=f"95% interval {100 * result['wer_ci95'][0]:.1f}–{100 * result['wer_ci95'][1]:.1f}% "
    f"over {result['n_utterances']} utterances ({result['n_words']} words)",
)
cols[1].metric(
    "Size", f"{result['size_bytes'] / 1e6:.1f} MB", help="Bytes of the weights saved as safetensors"
)
cols[2].metric("Parameters", f"{result['parameters'] / 1e6:.1f} M")
cols[3].metric(
    "Latency",
    f"{result['latency_ms']:.0f} ms",
    help=Latency.from_json(result["latency"]).describe().capitalize(),
)

packed = stored(name, [{"steps": []}], dataset_name)[0]  # the Compress/Pareto pages' baseline, if measured
synthetic = (
    "Synthetic speech (espeak-ng and flite voices): it shows changes in WER well; your own speech will score "
    'differently (record a test set of your voice on the "Record a test set" page). '
)
st.caption(
    (synthetic if dataset_name in ("quick", "full") else "")
    + "One clip per 30 s window, as `python -m core evaluate` and a user transcribing one recording. The "
    "Compress and Pareto pages pack several clips into each window (as batch transcription does), a second "
    "mode with its own baseline: "
    + (
        f"{100 * packed.wer:.1f}% WER, {packed.latency_ms:.0f} ms per window."
        if packed is not None and packed.latency_ms is not None
        else "measured on the Compress page's first visit."
    )
)
with st.expander("By clip length"):
    st.dataframe(
        [
            {
                "clip length": b["bucket"],
                "clips": b["clips"],
                "words": b["words"],
                "WER %": round(100 * b["wer"], 1),
                "median ms per clip": round(b["median_ms"]),
            }
            for b in result.get("by_length", [])
        ],
        width="stretch",
        hide_index=True,
    )
with st.expander("Per-utterance transcripts"):
    st.dataframe(
        [
            {
                "id": r["id"],
                "reference": r["reference"],
                "hypothesis": r["hypothesis"],
                "WER": round(100 * r["wer"], 1),
            }
            for r in result["rows"]
        ],
        width="stretch",
        hide_index=True,
    )

st.subheader("Reproduce it from the command line")
st.code(
    f"python -m core evaluate --model {name} --dataset {dataset_name} --json result.json", language="bash"
)
st.caption(f"Model: {model.name} · {model.kind} · {len(model.layers())} compressible layers")
