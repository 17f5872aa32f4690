"""Pareto: every measured point, the best trade-offs as a front, sweeps, sensitivity and budget search."""

import json
import math
import statistics

import pandas as pd
import streamlit as st

from core.data import BUNDLED
from core.jobs.kinds import SensitivityJob, SweepJob
from core.measure.sensitivity import (
    BudgetUnreachable,
    divergence_plan,
    probe_groups,
    run_sensitivity,
    search_budget,
    sensitivity_plan,
)
from core.measure.store import model_identity
from core.measure.sweep import grid_recipes
from core.models import GROUPS
from ui.charts import front_figure, interval_words, selected_key, sensitivity_figure
from ui.datasets import dataset_picker
from ui.forms import compress_widget_state
from ui.jobs import follow, followed, measuring, submit
from ui.navigation import stay_in_app_navigation
from ui.resources import (
    LIVE,
    base_model,
    chosen_dataset_name,
    chosen_model_name,
    dataset_waves,
    encoder_cache,
    results_store,
    stored,
)

stay_in_app_navigation()
dataset_picker()

JOBS = ("sweep_job", "sensitivity_job", "budget_job", "plan_job")  # this page's jobs: they add points
LIVE_EVERY = 3.0  # seconds between re-reads of the stored points while one of them runs
POINT_KEY = "pareto_point"  # session state: the inspected point's label (the selectbox's own key)

model_name = chosen_model_name()
dataset_name = chosen_dataset_name()
model = base_model(model_name)
dataset, waves = dataset_waves(dataset_name)
store = results_store()
sentences = len(dataset.utterances)
synthetic = " of synthetic speech (espeak-ng, flite)" if dataset_name in BUNDLED else ""

st.title("Pareto")
scored_as = "packed windows of several sentences" if LIVE.packed else "one row per sentence"
st.caption(
    f"Every point measured for this model on the `{dataset_name}` set ({sentences} sentences{synthetic}, "
    f"scored as {scored_as}). The line joins the non-dominated working points: nothing else is both more "
    "accurate and smaller (or faster). "
    f"On {sentences} sentences a WER is uncertain by several points: hover a point for its 95% interval "
    "(a bootstrap over the sentences, each window's errors counted against the sentence they fall on) and "
    "treat points whose intervals overlap as a tie. Click a point to inspect it below."
)


def technique(point) -> str:
    """What made the point, for its colour: the recipe's step names, "distillation" / "recovery" for a
    trained student, "uncompressed" for the baseline."""
    if point.is_student:
        return "recovery" if (point.student.get("spec") or {}).get("recipe") else "distillation"
    steps = [next(iter(step)) for step in point.recipe.get("steps", [])]
    return " + ".join(steps) if steps else "uncompressed"


RUNTIME_KEYS = ("runtime", "runtime_version", "export_code")  # what a runtime point adds to the settings
WHERE = {"lab": "lab (PyTorch)", "ct2": "CTranslate2", "onnx": "ONNX Runtime", "ggml": "whisper.cpp"}


def percent_interval(point) -> list[float] | None:
    """The stored 95% interval of a point's WER, in percent (None for a point stored without one)."""
    ci = point.result.get("wer_ci95")
    return [100 * ci[0], 100 * ci[1]] if ci and len(ci) == 2 else None


def stored_points() -> pd.DataFrame:
    """This model's points on the chosen set, measured with the live settings (in the lab or exported to a
    runtime on the Deploy page), as a table (ui.charts draws it)."""
    points = store.points(model_identity(model), dataset.fingerprint())
    live = LIVE.key_json()
    points = [p for p in points if {k: v for k, v in p.settings.items() if k not in RUNTIME_KEYS} == live]
    rows = [
        {
            "key": p.key,
            "runtime": p.runtime,
            "recipe": p.label,
            "technique": technique(p),
            "WER %": 100 * p.wer,
            "WER 95% CI": percent_interval(p),
            "size MB": p.size_bytes / 1e6 if p.size_bytes is not None else None,
            "latency ms": p.latency_ms,
            "looped": p.result.get("looped", 0),
            "measured s": p.timings.get("total"),
            "recipe_json": p.recipe,
            "student_folder": p.student["folder"] if p.is_student else None,
            "rows": p.rows,
        }
        for p in points
    ]
    return pd.DataFrame(rows)


def point_labels(table: pd.DataFrame) -> dict[str, str]:
    """A unique selectbox label per point key: recipe, WER and size (a repeat gets a number)."""
    labels: dict[str, str] = {}
    for _, r in table.iterrows():
        label = f"{r['recipe']} · WER {r['WER %']:.1f}% · {r['size MB']:.1f} MB"
        n = 2
        while label in labels.values():
            label, n = f"{label.rsplit(' (#', 1)[0]} (#{n})", n + 1
        labels[r["key"]] = label
    return labels


def inspect_selected(chart_key: str, labels: dict[str, str]) -> None:
    """A click on a chart (a Plotly selection) makes its point the inspected one: the selectbox follows."""
    key = selected_key(st.session_state.get(chart_key))
    if key in labels:
        st.session_state[POINT_KEY] = labels[key]


def transcripts(rows: list[dict]) -> pd.DataFrame:
    """The inspected point's scored rows (sentences, or packed windows of several), WER in percent."""
    table = pd.DataFrame(rows)
    return pd.DataFrame(
        {
            "reference": table["reference"],
            "hypothesis": table["hypothesis"],
            "WER %": [f"{100 * wer:.1f}" for wer in table["wer"]],
        }
    )


def measuring_time(table: pd.DataFrame) -> str | None:
    """The median time this lab took to measure one point here so far, in words (None before any)."""
    taken = table.loc[table["runtime"] == "lab", "measured s"].dropna() if len(table) else []
    if not len(taken):
        return None
    return (
        f"a median of {statistics.median(taken):.0f} s per point measured here so far ({len(taken)} points)"
    )


def sweep_estimate(total: int, already: int, took: str | None) -> str:
    """What a sweep will cost, from what is stored and how long points took here (no promised seconds)."""
    if already == total:
        return f"All {total} recipes are stored already: the sweep returns them at once."
    pace = f"; new points took {took}, longer while the machine is busy" if took else ""
    return (
        f"{already} of {total} recipes are stored already (back at once), {total - already} to measure{pace}."
    )


def budget_error_text(exc: BudgetUnreachable, probed: int) -> str:
    """A size budget the measured options cannot reach, in MB, with what to do about it: probe more groups,
    or raise the budget to at least what the strongest combination leaves."""
    smallest = exc.smallest / 1e6
    more = (
        f"probe more layer groups above (this table has {probed} of {len(probe_groups())}) and measure "
        "again, or "
        if probed < len(probe_groups())
        else ""
    )
    return (
        f"A {exc.budget / 1e6:g} MB budget cannot be reached with the measured options: compressing every "
        f"probed group as hard as measured still leaves about {smallest:.1f} MB. To get there, {more}raise "
        f"the budget to at least {math.ceil(smallest * 10) / 10:.1f} MB."
    )


def job_running() -> bool:
    """A job this page started (sweep, sensitivity, budget, plan) is queued or running: it adds points."""
    return any((job := followed(name)) is not None and not job.finished_state for name in JOBS)


@st.fragment(run_every=LIVE_EVERY if job_running() else None)
def points_section() -> None:
    """The charts and the inspected point. While one of this page's jobs runs, this part alone re-reads the
    stored points every few seconds, so the charts grow as points arrive; the page reruns when it ends."""
    table = stored_points()
    if table.empty:
        st.info(
            "No point measured yet for this model on this set: use the Compress page, or run a sweep below."
        )
        return
    counts = table["runtime"].value_counts()
    where = st.radio(
        "Measured in",
        [r for r in WHERE if r in counts] + [r for r in counts.index if r not in WHERE],
        format_func=lambda r: f"{WHERE.get(r, r)} · {counts[r]}",
        horizontal=True,
        help="Each runtime's points are measured in that runtime (Deploy page): its WER, the bytes of the "
        "files it loads, its latency at the same thread count.",
    )
    table = table[table["runtime"] == where].reset_index(drop=True)
    labels = point_labels(table)
    charts = st.columns(2)
    for column, x in zip(charts, ["size MB", "latency ms"]):
        chart_key = f"front_{x}"
        column.plotly_chart(
            front_figure(table, x),
            width="stretch",
            key=chart_key,
            on_select=lambda chart_key=chart_key: inspect_selected(chart_key, labels),
            selection_mode="points",
            config={"displaylogo": False},
        )

    st.subheader("Inspect a point")
    if st.session_state.get(POINT_KEY) not in labels.values():
        st.session_state.pop(POINT_KEY, None)  # a point of another runtime, model or set: start anew
    label = st.selectbox(
        "Point", list(labels.values()), key=POINT_KEY, help="Or click a point on either chart."
    )
    chosen = table.loc[list(labels.values()).index(label)]
    left, right = st.columns([1, 1])
    with left:
        st.code(json.dumps(chosen["recipe_json"], indent=1), language="json")
    with right:
        latency = (
            f"{chosen['latency ms']:.0f} ms" if pd.notna(chosen["latency ms"]) else "latency not measured"
        )
        took = f" · measured in {chosen['measured s']:.0f} s" if pd.notna(chosen["measured s"]) else ""
        st.markdown(
            f"**WER {chosen['WER %']:.1f}%** ({interval_words(chosen['WER 95% CI'])}, {sentences} sentences "
            f"of `{dataset_name}`) · {chosen['size MB']:.1f} MB · {latency}{took}"
        )
        trained = pd.notna(chosen["student_folder"])  # pandas keeps a missing folder as None or NaN
        if trained:
            st.caption(f"A trained student, saved in `{chosen['student_folder']}`.")
        if st.button("Open in Compress", disabled=trained or not chosen["recipe_json"].get("steps")):
            try:
                st.session_state.update(compress_widget_state(chosen["recipe_json"]))
                st.switch_page("pages/compress.py")
            except ValueError as exc:
                st.warning(f"The Compress sliders cannot show this recipe: {exc}")
    scored = transcripts(chosen["rows"])
    st.caption(f"Its transcripts as scored: {len(scored)} rows, {scored_as}.")
    if len(scored) <= 30:  # wraps long transcripts, full width
        st.table(scored.set_axis(range(1, len(scored) + 1)))
    else:
        st.dataframe(scored, hide_index=True, width="stretch", height=600)


points_section()
pace = measuring_time(stored_points())

st.divider()
st.subheader("Run a sweep")
st.caption(
    "A grid over the main knobs; 0 sparsity, 16 bits and 100% energy mean the step is off. Points "
    "already stored return at once. It runs as a background job (Jobs page): the plots above grow as "
    "points arrive, and leaving the page does not stop it."
)
grid_columns = st.columns(3)
sparsities = grid_columns[0].multiselect(
    "Pruning sparsity", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.0, 0.2, 0.4]
)
bits = grid_columns[1].multiselect("Quantization bits", [16, 8, 6, 5, 4, 3], [16, 8, 4])
energies = grid_columns[2].multiselect("SVD energy kept", [1.0, 0.99, 0.95, 0.9, 0.8], [1.0])
granularity = st.radio("Quantization scales", ["channel", "group"], horizontal=True, index=1)
grid = {
    "prune.sparsity": sparsities,
    "quantize.bits": bits,
    "low_rank.energy": energies,
    "quantize.granularity": granularity,
}
try:
    recipes = grid_recipes(grid)
except ValueError as exc:
    st.error(f"This grid is not valid: {exc}")
    recipes = []
st.code(json.dumps(grid), language="json")
if recipes:
    already = sum(p is not None for p in stored(model_name, [r.to_json() for r in recipes], dataset_name))
    st.caption(sweep_estimate(len(recipes), already, pace))
where_run = st.radio(
    "Measure the points",
    ["here", "ray"],
    horizontal=True,
    key="sweep_executor",
    format_func={"here": "on this machine", "ray": "on a Ray cluster"}.get,
    help="A Ray cluster measures several points at once (README: 'Running on a Ray cluster').",
)
executor = ("local", None, 1)
if where_run == "ray":
    address_column, workers_column = st.columns([3, 1])
    address = address_column.text_input(
        "Cluster address", "", placeholder="ray://head:10001, auto, or empty for a private one here"
    )
    executor = ("ray", address.strip() or None, int(workers_column.number_input("Workers", 1, 256, 2)))
if st.button(f"Run the sweep ({len(recipes)} recipes)", type="primary", disabled=not recipes):
    recipes_json = tuple(r.to_json() for r in recipes)
    submit(SweepJob(model_name, dataset_name, recipes_json, measuring(*executor)), "sweep_job")
    st.rerun()  # the charts above re-read the store while the job runs
follow("sweep_job")  # the charts above grow as points arrive; the page reruns when it ends

st.divider()
st.subheader("Which layers matter? (sensitivity)")
st.caption(
    "Each layer group is compressed alone at several levels, and a budget search then picks per-group "
    "levels. ΔWER shows where compression is cheap in words; divergence (how far the next-token "
    "probabilities move from the uncompressed model's, KL in nats per token) sees changes too small to "
    "cost a word on a short set, so it ranks layer groups and quantizers better."
)
chosen_groups = st.multiselect(
    "Layer groups to probe", probe_groups(), default=list(probe_groups()), key="sensitivity_groups"
)
signal = st.radio(
    "Measure each probe by",
    ["wer", "divergence"],
    horizontal=True,
    key="sensitivity_signal",
    format_func={
        "wer": "ΔWER (pruning, low rank, bit widths; greedy budget)",
        "divergence": "divergence (bit widths × 5 quantizers; exact budget)",
    }.get,
)
by_divergence = signal == "divergence"
plan = (divergence_plan if by_divergence else sensitivity_plan)(tuple(chosen_groups))
groups_asked = tuple(chosen_groups)
if by_divergence:
    st.caption(
        "A divergence probe scores the model teacher-forced on the reference: cheaper than a WER point."
    )
elif pace:
    st.caption(f"Probes already stored come back at once; new WER points took {pace}.")
if st.button(f"Measure sensitivity ({len(plan)} points)", disabled=not plan):
    submit(
        SensitivityJob(model_name, dataset_name, groups_asked, signal, measuring=measuring()),
        "sensitivity_job",
    )
    st.session_state["show_sensitivity"] = True
    st.rerun()  # the charts above re-read the store while the job runs
job = follow("sensitivity_job")
asked = job is not None and job.spec["groups"] == list(groups_asked) and job.spec["signal"] == signal
if st.session_state.get("show_sensitivity") and plan and asked and job.state == "done":
    # the job measured every probe into the store, so the table comes back at once
    rows = list(run_sensitivity(model, dataset, store, plan, LIVE, waves, encoder_cache(), signal))
    table = pd.DataFrame([r.to_json() for r in rows if not r.is_baseline])
    heat = table.pivot_table(
        index="group", columns="setting", values="divergence" if by_divergence else "delta_wer", sort=False
    )
    heat = heat.reindex([g for g in GROUPS if g in heat.index])
    st.plotly_chart(sensitivity_figure(heat, by_divergence), width="stretch", key="sensitivity")
    if not by_divergence:
        st.caption(
            f"Measured on {sentences} sentences of `{dataset_name}`: a ΔWER of a point or two is within "
            "the noise of so few words; divergence separates small differences better."
        )

    budget_mb = st.number_input("Size budget (MB)", 5.0, 200.0, 30.0, 1.0, key="budget_mb")
    measured = st.checkbox(
        "Measure the 3 best plans together (they do not add up exactly)"
        if by_divergence
        else "Measure each move (slower, but sees errors that add up across groups)",
        key="budget_measured",
    )
    if measured:  # a job measures the candidates into the store; the search below then reads them
        budget_job = SensitivityJob(
            model_name, dataset_name, groups_asked, signal, budget_mb, True, measuring()
        )
        asked = followed("budget_job")
        if asked is None or asked.spec["budget_mb"] != budget_mb or asked.spec["signal"] != signal:
            submit(budget_job, "budget_job")
            st.rerun()  # the charts above re-read the store while the job runs
        if not (job := follow("budget_job")) or job.state != "done":
            st.stop()
    try:
        budget_plan = search_budget(
            model,
            dataset,
            store,
            rows,
            signal,
            max_bytes=budget_mb * 1e6,
            measured=measured,
            settings=LIVE,
            waves=waves,
            encoder_cache=encoder_cache(),
        )
    except BudgetUnreachable as exc:
        st.error(budget_error_text(exc, len(groups_asked)))
        st.stop()
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    how = "measured" if budget_plan.measured else "≈ (table added up)"
    quality = (
        f"divergence {how} {budget_plan.estimated_divergence:.3g} nats/token"
        if by_divergence
        else f"WER {how} {100 * budget_plan.estimated_wer:.1f}%"
    )
    st.write(
        f"{'Plan' if by_divergence else 'Greedy plan'}: **{budget_plan.recipe.describe()}** — estimated "
        f"{budget_plan.estimated_size_bytes / 1e6:.1f} MB, {quality}"
    )
    if st.button("Measure this plan"):
        submit(SweepJob(model_name, dataset_name, (budget_plan.recipe.to_json(),), measuring()), "plan_job")
        st.rerun()  # the charts above re-read the store while the job runs
    job = follow("plan_job")
    if job is not None and job.state == "done":
        point = store.get(job.result["points"][0])
        st.success(
            f"Measured {point.label}: WER {100 * point.wer:.1f}%, {point.size_bytes / 1e6:.1f} MB — it is "
            "now on the plots."
        )
