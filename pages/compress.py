"""Compress: sliders for each technique, and what the result costs and buys, measured on the chosen set."""

import json
from dataclasses import asdict

import streamlit as st

from core.compress.advice import PRESETS, diagnose, preset_named
from core.compress.recipe import Recipe
from core.jobs.kinds import SweepJob, to_spec
from ui.datasets import dataset_picker
from ui.diff import DIFF_LEGEND, diff_html
from ui.forms import FORMS, compress_widget_state, widget_defaults
from ui.jobs import evaluation, follow, followed, measuring, submit
from ui.navigation import stay_in_app_navigation
from ui.resources import (
    artifact_zip,
    base_model,
    chosen_dataset_name,
    chosen_model_name,
    compressed_model,
    stored,
)
from ui.tables import (
    LAYER_COLUMNS,
    LAYER_HELP,
    layer_rows,
    layer_sizes,
    owner,
    size_delta,
    speed_delta,
    wer_delta,
    wer_interval_text,
)

stay_in_app_navigation()
dataset_picker()
for key, value in widget_defaults().items():  # widgets read their values from session state only
    st.session_state.setdefault(key, value)

st.title("Compress")
st.caption(
    f"Move a slider in the sidebar: the compressed model is measured on the `{chosen_dataset_name()}` set "
    "(its clips packed into 30 s windows; pick the set at the top of the sidebar) and every point joins the "
    "Pareto page. Points you have tried before return at once."
)


def latency_help(point) -> str | None:
    """How a point's latency and its speed-up were measured (the baseline timed in the same run)."""
    latency = point.latency
    if latency is None:
        return None
    text = latency.describe().capitalize()
    baseline_ms = point.result["latency"].get("baseline_ms")
    if point.latency_ratio is None or baseline_ms is None:
        return f"{text}. Stored before the baseline was timed beside it: no speed-up shown."
    return (
        f"{text}. The baseline took {baseline_ms:.0f} ms, timed in turns with it clip by clip; the speed-up "
        "is the median of the per-clip ratios."
    )


def applying_help(point) -> str:
    """What showing every layer costs: the recipe is applied here, as long as it took when measured."""
    seconds = (point.timings or {}).get("apply")
    if seconds is None:
        return "Applies the recipe in this session to build the table."
    return (
        "Applies the recipe in this session to build the table; applying it took "
        f"{seconds:.1f} s when this point was measured."
    )


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


PRESET_NONE = "(choose a preset)"


def fill_from_preset() -> None:
    """The chosen preset's recipe into the JSON box (a callback: it runs before the box is drawn)."""
    name = st.session_state["preset_name"]
    if name != PRESET_NONE:
        st.session_state["recipe_text"] = json.dumps(preset_named(name).recipe, indent=1)


def recipe_from_text() -> str:
    """The recipe as JSON text: typed or pasted, filled from a preset, or uploaded as a file."""
    st.selectbox(
        "Preset", [PRESET_NONE, *(p.name for p in PRESETS)], key="preset_name", on_change=fill_from_preset
    )
    if st.session_state.get("preset_name", PRESET_NONE) != PRESET_NONE:
        preset = preset_named(st.session_state["preset_name"])
        st.caption(
            f"{preset.goal}. Chosen on `{preset.chosen_on}`; "
            f"the cards measure it on `{chosen_dataset_name()}`."
        )
    uploaded = st.file_uploader("…or upload a recipe JSON", type=["json"], key="recipe_upload")
    if uploaded is not None and st.session_state.get("recipe_uploaded") != uploaded.file_id:
        st.session_state["recipe_uploaded"] = uploaded.file_id
        st.session_state["recipe_text"] = uploaded.getvalue().decode("utf-8", errors="replace")
    st.session_state.setdefault("recipe_text", json.dumps(PRESETS[0].recipe, indent=1))
    return st.text_area("Recipe JSON", key="recipe_text", height=260)


def use_recipe(recipe_json: dict) -> None:
    """Show `recipe_json` (a one-click fix): on the sliders when they can hold it, else as JSON."""
    try:
        st.session_state.update(compress_widget_state(recipe_json))
        st.session_state["recipe_source"] = "sliders"
    except ValueError:  # e.g. two quantize steps: only the JSON box holds it
        st.session_state["recipe_text"] = json.dumps(recipe_json, indent=1)
        st.session_state["recipe_source"] = "json"


with st.sidebar:
    st.header("Recipe")
    source = st.radio(
        "Recipe from",
        ["sliders", "json"],
        key="recipe_source",
        horizontal=True,
        format_func={"sliders": "Sliders", "json": "Preset or JSON"}.get,
    )
    spec = recipe_from_widgets() if source == "sliders" else recipe_from_text()
results = st.container()
try:
    recipe = Recipe.from_json(spec)
    st.session_state["last_valid_recipe"] = recipe.to_json()
except ValueError as exc:  # said in one line; the last valid recipe's results stay below it
    results.error(f"This recipe is not valid: {exc}")
    if "last_valid_recipe" not in st.session_state:
        st.stop()
    recipe = Recipe.from_json(st.session_state["last_valid_recipe"])
    results.caption(f"Still showing the last valid recipe: {recipe.describe() or 'uncompressed'}.")

st.session_state["recipe_json"] = json.dumps(recipe.to_json(), sort_keys=True)  # for Record & compare
model_name, dataset_name = chosen_model_name(), chosen_dataset_name()
with results:
    try:
        with st.spinner("Loading the model …"):
            base_model(model_name)  # a model that cannot load is said here, before anything is asked
    except ValueError as exc:
        st.error(f"Could not load the model: {exc}")
        st.stop()
    wanted = [{"steps": []}, recipe.to_json()]  # the baseline on the same windows, and this recipe
    baseline, point = stored(model_name, wanted, dataset_name)
    if point is None or baseline is None:  # measured by the lab's worker; every session asking shares it
        job = SweepJob(model_name, dataset_name, tuple(wanted), measuring())
        asked = followed("compress_job")
        if asked is None or asked.spec != to_spec(job):
            submit(job, "compress_job")
        elif asked.state == "done":  # done, yet a point is missing: the measuring code changed since
            submit(job, "compress_job", again=True)
        st.caption(
            f"Measuring {recipe.describe() or 'the uncompressed model'} and the baseline (timed in turns "
            f"with it) on `{dataset_name}` in the background; the cards appear when it is done."
        )
        follow("compress_job")
        st.stop()
    # everything above the tabs comes from the two stored points: a point measured before shows at once,
    # without building the compressed model (the per-layer tab and the download build it, on demand)
    macs = point.result.get("linear_macs"), baseline.result.get("linear_macs")
    theory = macs[1] / max(macs[0], 1) if all(macs) else None
    measured = 1 / point.latency_ratio if point.latency_ratio else None  # timed in the same run
    interval = wer_interval_text(point.result, baseline.wer)
    cards = st.columns(4)
    cards[0].metric(
        "WER",
        f"{100 * point.wer:.{0 if point.wer >= 1 else 1}f}%",
        **wer_delta(point.wer, baseline.wer).metric_kwargs(),
        help=" ".join(
            filter(None, [f"Baseline {100 * baseline.wer:.1f}% on the same packed windows.", interval])
        ),
    )
    cards[1].metric(
        "Size",
        f"{point.size_bytes / 1e6:.1f} MB",
        **size_delta(baseline.size_bytes, point.size_bytes).metric_kwargs(),
        help="Bytes of the exported artifact (safetensors with packed integers, "
        "sparse storage where smaller)",
    )
    cards[2].metric(
        "Latency",
        f"{point.latency_ms:.0f} ms",
        **speed_delta(measured).metric_kwargs(),
        help=latency_help(point),
    )
    cards[3].metric(
        "Speed-up in theory",
        f"{theory:.2f}×" if theory else "–",
        f"measured {measured:.2f}×" if measured else None,
        delta_color="off",
        delta_arrow="off",
        help="Linear-layer multiply-adds of one window, nonzero weights only. "
        "Unstructured zeros and fake-quantized weights still compute densely "
        "on this CPU, so measured speed stays near 1×.",
    )

    if interval:
        st.caption(f"WER: {interval}")
    if point.latency_ms is not None and point.contended:
        facts = point.result.get("latency") or point.machine
        load, cpus = facts.get("load_average", 0), facts.get("cpus", "?")
        st.caption(
            f"⚠ Timed on a busy machine (load {load:.1f} on {cpus} CPUs): the milliseconds are inflated. "
            "The speed-up compares the two models timed in turns on the same clips, so it holds better."
        )

    diagnosis = diagnose(recipe.to_json(), point.wer, baseline.wer, point.result.get("looped", 0))
    if diagnosis.broken:
        st.warning(
            f"**{diagnosis.reason}** Likely causes and a recipe for each (measured in the background, then "
            "shown here):"
        )
        for number, fix in enumerate(diagnosis.fixes):
            left, right = st.columns([4, 1])
            left.markdown(f"- **{fix.title}**: {fix.why}")
            right.button("Try it", key=f"fix_{number}", on_click=use_recipe, args=(fix.recipe,))

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
            st.session_state["by_length_of"] = st.session_state["recipe_json"]
        if st.session_state.get("by_length_of") == st.session_state["recipe_json"]:  # asked for this recipe
            before = evaluation(model_name, dataset_name, "by_length_base")  # Home's baseline: shared
            after = evaluation(
                model_name, dataset_name, "by_length_variant", recipe.to_json(), latency_runs=0
            )
            if before and after:
                st.dataframe(by_length_rows(before, after), hide_index=True, width="stretch")
                st.caption(
                    f"Transcripts that end in a loop: {after['looped']} (baseline "
                    f"{before.get('looped', 0)}). Synthetic speech (espeak-ng, flite)."
                )
    with layers:
        if recipe.is_empty:
            st.info("No compression step is on: every layer is as loaded.")
        elif st.toggle(
            "Show every layer (applies the recipe here)",
            key="show_layers",
            help=applying_help(point),
        ):
            with st.spinner("Applying the recipe …"):
                compressed, reports = compressed_model(model_name, st.session_state["recipe_json"])
            base = base_model(model_name)
            names = [info.name for info in base.layers()]
            changed = {owner(report.name, names) for report in reports}
            rows = layer_rows(
                [asdict(report) for report in reports],
                names,
                layer_sizes(base.module, compressed.module, sorted(changed)),
            )
            st.dataframe(
                rows,
                hide_index=True,
                width="stretch",
                column_order=LAYER_COLUMNS,
                column_config={
                    column: st.column_config.TextColumn(column, help=LAYER_HELP[column])
                    for column in LAYER_COLUMNS
                },
            )
            st.caption(f"{len(rows)} layers changed. – : a value the recipe's steps do not set.")
    with export:
        recipe_text = json.dumps(recipe.to_json(), indent=1)
        st.code(recipe_text, language="json")
        st.download_button(
            "Download recipe JSON",
            recipe_text,
            file_name="recipe.json",
            mime="application/json",
            on_click="ignore",
        )
        if st.button(
            "Build the compressed model for download", disabled=recipe.is_empty, key="build_artifact"
        ):
            st.session_state["artifact_of"] = st.session_state["recipe_json"]  # stays built for this recipe
        if st.session_state.get("artifact_of") == st.session_state["recipe_json"] and not recipe.is_empty:
            with st.spinner("Writing the artifact …"):
                data = artifact_zip(model_name, st.session_state["recipe_json"])  # cached: once per recipe
            st.download_button(
                f"Download artifact ({len(data) / 1e6:.1f} MB zip)",
                data,
                file_name="compressed-model.zip",
                mime="application/zip",
                key="download_artifact",
                on_click="ignore",  # a download is no reason to rerun the page
            )
        st.caption("The same from the command line:")
        st.code(
            f"python -m core compress --model {model_name} --recipe recipe.json --out compressed/\n"
            f"python -m core evaluate --model compressed/ --dataset full",
            language="bash",
        )
