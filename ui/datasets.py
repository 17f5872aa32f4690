"""The evaluation set every page measures on: a picker in the sidebar, the choice kept in session state."""

import streamlit as st

from core.data import known_datasets
from ui.resources import DATASET_KEY, chosen_dataset_name

PICK_KEY = "dataset_pick"  # the widget's own key: Streamlit drops it on pages without the picker


def keep_choice() -> None:
    st.session_state[DATASET_KEY] = st.session_state[PICK_KEY]


def dataset_picker() -> None:
    """A sidebar selectbox of the bundled sets and the user's saved ones (Record a test set page), drawn by
    each page that measures; the choice is read through ui.resources.chosen_dataset_name()."""
    known = {d.name: d.description for d in known_datasets()}
    if chosen_dataset_name() not in known:  # removed since it was chosen
        st.session_state[DATASET_KEY] = "quick"
    st.session_state[PICK_KEY] = chosen_dataset_name()
    st.sidebar.selectbox(
        "Evaluation set",
        list(known),
        key=PICK_KEY,
        on_change=keep_choice,
        format_func=lambda name: f"{name} · {known[name]}",
        help="Every WER on these pages is measured on this set. The bundled ones are synthetic speech "
        "(espeak-ng, flite); record your own voice on the 'Record a test set' page. From the command line: "
        "`--dataset NAME`.",
    )
