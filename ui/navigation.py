"""Keep every page inside app.py's navigation, also when a deep link is the first request."""

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

RERUN_KEY = "reran_through_app"  # session state: this session has already been sent back through app.py


def stay_in_app_navigation() -> None:
    """Rerun through app.py when Streamlit runs this page in its legacy pages/-folder mode.

    A deep link (e.g. /compress) as the first request of a server process makes Streamlit run the page
    script alone, without app.py (its page config, its environment variables, its navigation), because a
    pages/ folder sits next to app.py. app.py cannot catch that itself (it does not run), so every page
    calls this first thing, before it loads a model: it switches the mode off and runs the app again.

    At most once per session: a rerun drops a button's click. A server never switches the mode back on,
    but Streamlit's AppTest does before every run, and there a second rerun would only lose clicks."""
    if PagesManager.uses_pages_directory and not st.session_state.get(RERUN_KEY):
        st.session_state[RERUN_KEY] = True
        PagesManager.uses_pages_directory = False
        st.rerun()
