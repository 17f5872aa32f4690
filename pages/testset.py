"""Record a test set: read sentences aloud (or upload recordings, or a zip), save them as a dataset of your
own voice with exact references, and measure any model on it here, on every page and in the CLI."""

import streamlit as st

from core.audio import AudioError, decode_audio, is_probably_speech
from core.data import (
    delete_dataset,
    import_dataset_zip,
    known_datasets,
    link_dataset,
    recording_prompts,
    save_dataset,
    user_datasets_dir,
)
from core.paths import check_model_path
from ui.datasets import dataset_picker
from ui.diff import DIFF_LEGEND, diff_html
from ui.jobs import evaluation
from ui.navigation import stay_in_app_navigation
from ui.resources import DATASET_KEY, chosen_model_name

stay_in_app_navigation()
dataset_picker()

st.title("Record a test set")
st.caption(
    "The bundled sets are synthetic speech. Here you make one of your own: read each sentence aloud (or "
    "upload a recording of it), correct the text if you said something else, and save. The set is kept in "
    f"your data folder ({user_datasets_dir()}) and is offered in the sidebar of every page; from the "
    "command line: `--dataset NAME`. Real voices, exact references."
)

st.session_state.setdefault("testset_count", 5)
st.session_state.setdefault("testset_name", "my-voice")
st.session_state.setdefault("testset_speaker", "")
st.session_state.setdefault("testset_folder", "")
prompts = recording_prompts()
top = st.columns([2, 2, 1])
top[0].text_input("Name of the set", key="testset_name", help="Letters, digits, '_', '.' or '-'.")
top[1].text_input("Speaker (optional)", key="testset_speaker", help="Kept with each clip in the manifest.")
top[2].number_input("Sentences", 1, len(prompts), key="testset_count")
count = int(st.session_state["testset_count"])


def take(number: int) -> tuple[bytes, str] | None:
    """The recording or upload of sentence `number` (the recording wins), as (bytes, name)."""
    for key in (f"take_{number}", f"upload_{number}"):
        value = st.session_state.get(key)
        if value is not None:
            return value.getvalue(), value.name
    return None


for number in range(count):
    st.session_state.setdefault(f"text_{number}", prompts[number])
    with st.container(border=True):
        st.markdown(f"**{number + 1}.** {prompts[number]}")
        left, right = st.columns(2)
        left.audio_input("Record it", key=f"take_{number}", sample_rate=16000)
        right.file_uploader("…or upload it", type=["wav", "flac", "ogg", "mp3"], key=f"upload_{number}")
        st.text_input(
            "What is said in it (exactly)",
            key=f"text_{number}",
            help="The reference the WER is scored against.",
        )


def save() -> None:
    """Decode every sentence that has audio and save them as the set; its outcome goes to session state
    (a callback runs before the page, so the sidebar shows the new set at once)."""
    clips, problems = [], []
    for number in range(count):
        got = take(number)
        if got is None:
            continue
        try:
            wave = decode_audio(*got)
        except AudioError as exc:
            problems.append(f"sentence {number + 1}: {exc}")
            continue
        if not is_probably_speech(wave):
            problems.append(f"sentence {number + 1}: no speech heard in it (check the microphone), left out")
            continue
        clips.append((wave, st.session_state[f"text_{number}"]))
    try:
        dataset = save_dataset(
            st.session_state["testset_name"].strip(),
            clips,
            speaker=st.session_state["testset_speaker"].strip(),
            replace=st.session_state.get("testset_replace", False),
        )
    except ValueError as exc:
        st.session_state["testset_outcome"] = ("error", str(exc), problems)
        return
    st.session_state[DATASET_KEY] = dataset.name  # measured on from now on, on every page
    st.session_state["testset_saved"] = dataset.name
    st.session_state["testset_outcome"] = (
        "success",
        f"Saved {len(dataset)} clips as `{dataset.name}`.",
        problems,
    )


have = sum(take(n) is not None for n in range(count))
st.checkbox("Replace a set of the same name", key="testset_replace")
st.button(f"Save {have} of {count} sentences as a dataset", type="primary", disabled=have == 0, on_click=save)
outcome = st.session_state.get("testset_outcome")  # kept while the evaluation below reruns the page
if outcome is not None:
    kind, message, problems = outcome
    (st.success if kind == "success" else st.error)(message)
    for problem in problems:
        st.warning(problem)

with st.expander("…or import a zip, or a folder on this machine"):
    st.caption(
        "Any layout `--dataset` accepts: a manifest.csv with columns path,text; a LibriSpeech-style folder "
        "(*.trans.txt); or audio files each with a same-named .txt transcript. A zip is unpacked into your "
        "data folder; a folder is listed where it lies (not copied). Saved under the name above."
    )
    archive = st.file_uploader("Zip file", type=["zip"], key="testset_zip")
    st.text_input("Folder or manifest.csv on this machine", key="testset_folder")
    source = (
        "zip" if archive is not None else "folder" if st.session_state["testset_folder"].strip() else None
    )
    if st.button("Import it", key="testset_import", disabled=source is None):
        name = st.session_state["testset_name"].strip()
        replace = st.session_state.get("testset_replace", False)
        try:
            if source == "zip":
                dataset = import_dataset_zip(name, archive.getvalue(), replace=replace)
            else:
                folder = st.session_state["testset_folder"].strip()
                check_model_path(folder)  # on a shared server only from the allowed folders
                dataset = link_dataset(name, folder, replace=replace)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.session_state["testset_saved"] = dataset.name
            st.success(f"Imported {len(dataset)} clips as `{dataset.name}`: pick it in the sidebar.")

saved = st.session_state.get("testset_saved")
if saved:
    model_name = chosen_model_name()
    st.subheader(f"{model_name} on `{saved}`")
    result = evaluation(model_name, saved, "testset_job", latency_runs=0)
    if result is not None:
        low, high = result["wer_ci95"]
        st.metric(
            "WER",
            f"{100 * result['wer']:.1f}%",
            help=f"95% interval {100 * low:.1f}–{100 * high:.1f}% over {result['n_utterances']} clips "
            f"({result['n_words']} words); one clip per window, like `python -m core evaluate`.",
        )
        st.markdown(DIFF_LEGEND, unsafe_allow_html=True)
        for row in result["rows"]:
            st.markdown(
                f"**{100 * row['wer']:.0f}% WER** · {diff_html(row['reference'], row['hypothesis'])}",
                unsafe_allow_html=True,
            )
        st.code(f"python -m core evaluate --model {model_name} --dataset {saved}", language="bash")

yours = [d for d in known_datasets() if d.name not in ("quick", "full")]
if yours:
    st.subheader("Your sets")
    for info in yours:
        left, right = st.columns([5, 1])
        left.markdown(f"`{info.name}` · {info.description}")
        if right.button("Delete", key=f"delete_{info.name}"):
            delete_dataset(info.name)
            if st.session_state.get("testset_saved") == info.name:
                del st.session_state["testset_saved"]
            st.rerun()
