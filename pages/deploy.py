"""Deploy: export a compressed model to the runtime you deploy with, measure it there, take it away."""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from core.compress.recipe import Recipe
from core.deploy.runtime import MODULES, README_FILE, runtime
from core.jobs.kinds import ExportJob, to_spec
from core.measure.store import model_identity
from core.paths import data_dir
from ui.datasets import dataset_picker
from ui.jobs import follow, followed, measuring, submit
from ui.navigation import stay_in_app_navigation
from ui.resources import (
    LIVE,
    base_model,
    chosen_dataset_name,
    chosen_model_name,
    compressed_model,
    dataset_waves,
    results_store,
)

stay_in_app_navigation()
dataset_picker()

DATASET = chosen_dataset_name()

st.title("Deploy")
st.caption(
    "Write the compressed model in the format of the runtime you deploy with, then measure it *in that "
    f"runtime*: WER on the `{DATASET}` set (packed windows; the bundled sets are synthetic espeak-ng / flite "
    "speech), size = "
    "bytes of the files the runtime loads, latency in the runtime at the same thread count as the lab. "
    "The lab's quantized codes are written as the runtime's own format, not re-quantized (transformers: "
    "dequantized to float, for compatibility rather than size)."
)

model_name = chosen_model_name()
store = results_store()


def stored_points() -> dict:
    """Label -> point of this model's points measured in the lab (recipes and trained students)."""
    base = base_model(model_name)
    dataset, _ = dataset_waves(DATASET)
    points = store.points(model_identity(base), dataset.fingerprint(), LIVE.key_json())
    return {f"{p.label} · WER {100 * p.wer:.1f}% · {p.size_bytes / 1e6:.1f} MB": p for p in points}


@st.cache_data(show_spinner=False, max_entries=2)
def zipped(folder: str, stamp: float) -> bytes:
    """The export folder as a zip (stamp: the folder's newest change, so a rewritten folder zips anew)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(Path(folder).iterdir()):
            archive.write(path, f"{Path(folder).name}/{path.name}")
    return buffer.getvalue()


source = st.radio("What to deploy", ["The Compress page's recipe", "A stored point"], horizontal=True)
student = None  # a stored point of a trained student: deployed from its folder
if source == "A stored point":
    choices = stored_points()
    if not choices:
        st.info("No point measured yet for this model: use the Compress or Pareto page first.")
        st.stop()
    chosen = choices[st.selectbox("Point", list(choices))]
    recipe_json = json.dumps(chosen.recipe, sort_keys=True)
    student = chosen if chosen.is_student else None
else:
    recipe_json = st.session_state.get("recipe_json", json.dumps({"steps": []}))
recipe = Recipe.from_json(json.loads(recipe_json))
student_folder = student.student["folder"] if student else None
titles, missing = {}, []
for name in MODULES:
    try:
        titles[runtime(name).title] = name
    except ImportError as exc:  # a runtime whose package is not installed here
        missing.append(f"{name}: {exc}")
if missing:
    st.info("Not available on this machine (install the runtime's package): " + "; ".join(missing))
name = titles[st.radio("Runtime", list(titles), horizontal=True)]
target = runtime(name)
what = f"the trained student in `{student_folder}`" if student else recipe.describe()
st.write(f"**Deploying:** {what}  ·  **runtime:** {target.title} (`pip install {target.package}`)")

with st.spinner("Applying the recipe …"):
    variant, _ = compressed_model(model_name, recipe_json, student_folder)
problems = target.inexpressible(variant)
if problems:
    st.warning(
        f"{target.title} cannot hold this model exactly, so the lab will not export it (nothing is "
        "converted silently). What to change:\n\n" + "\n".join(f"- {p}" for p in problems[:8])
    )

key = hashlib.sha256(f"{model_name}|{recipe_json}|{student_folder}|{name}".encode()).hexdigest()[:16]
folder = data_dir() / "exports" / f"{name}-{key}"


export = ExportJob(
    model_name, recipe.to_json(), name, str(folder), DATASET, student.key if student else None, measuring()
)
if st.button(f"Export and measure in {target.title}", type="primary", disabled=bool(problems)):
    submit(
        export, "export_job"
    )  # the lab's point, then the export measured in the runtime (stored ones at once)


def show_result(lab, there) -> None:
    """The lab's and the runtime's numbers side by side, the clips they differ on, the folder to take."""
    rows = []
    for where, point in (("lab (PyTorch)", lab), (target.title, there)):
        latency = point.latency
        rows.append(
            {
                "measured in": where,
                "WER %": round(100 * point.wer, 2),
                "size MB": round(point.size_bytes / 1e6, 2),
                "latency ms": round(point.latency_ms) if point.latency_ms else None,
                "latency range ms": f"{latency.min_ms:.0f}–{latency.max_ms:.0f}" if latency else "",
                "threads": latency.threads if latency else None,
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    differ = [(a, b) for a, b in zip(lab.rows, there.rows) if a["hypothesis"] != b["hypothesis"]]
    st.caption(
        f"WER {100 * (there.wer - lab.wer):+.2f} points in {target.title} against the lab on the same "
        f"windows; {len(differ)} of {len(lab.rows)} transcripts differ. Synthetic speech: check on your own "
        "audio before you ship. The two latencies were measured at different times (each when its point was "
        "first measured); for a head-to-head on the same clips, interleaved: `python -m bench.runtimes`."
    )
    if differ:
        table = [{"lab": a["hypothesis"], target.title: b["hypothesis"]} for a, b in differ]
        st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
    stamp = max(p.stat().st_mtime for p in folder.iterdir())
    st.download_button(
        f"Download the {target.title} folder (zip)",
        zipped(str(folder), stamp),
        file_name=f"{folder.name}.zip",
        mime="application/zip",
        on_click="ignore",
    )
    st.caption(f"Also on this machine: `{folder}`. How to load it:")
    st.code((folder / README_FILE).read_text(), language="python")


job = followed("export_job")
if job is not None and job.spec == to_spec(export):  # the job of what is chosen now
    follow("export_job")
    if job.state == "done":
        show_result(store.get(job.result["lab"]), store.get(job.result["there"]))
