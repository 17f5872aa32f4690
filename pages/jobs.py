"""Jobs: the long work of every page and session (sweeps, sensitivity, distillation, exports), running in
the lab's worker process, with progress, ETA, logs and cancel."""

import streamlit as st

from ui.jobs import jobs_panel
from ui.navigation import stay_in_app_navigation

stay_in_app_navigation()

st.title("Jobs")
st.caption(
    "Long work runs in a worker process of its own, one job after another (two measurements at once would "
    "time each other): leaving a page, closing the tab or restarting the dashboard does not stop it, and a "
    "job whose worker was killed starts again from what it stored. Same as `python -m core jobs list`."
)


@st.fragment(run_every=2.0)
def board() -> None:
    jobs_panel()


board()
