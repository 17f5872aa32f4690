"""Speech Compression Lab: compress a speech model and see what it costs in word error rate."""

import os
from pathlib import Path

import streamlit as st

# Set before any page loads a model: huggingface_hub and transformers read these once, when first imported
# (a model load imports them). Offline: the lab never downloads; models are bundled or already cached. Quiet:
# no transformers warnings in the page's log. setdefault keeps a value the user exported. Pages call
# ui.navigation.stay_in_app_navigation() before loading anything, so this also holds after a deep link.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="Speech Compression Lab", page_icon="🎙️", layout="wide")
navigation = st.navigation(
    [
        st.Page(PAGES / "home.py", title="Home", icon="🏠", default=True),
        st.Page(PAGES / "compress.py", title="Compress", icon="🗜️"),
        st.Page(PAGES / "record.py", title="Record & compare", icon="🎤"),
        st.Page(PAGES / "testset.py", title="Record a test set", icon="📝"),
        st.Page(PAGES / "pareto.py", title="Pareto", icon="📈"),
        st.Page(PAGES / "distill.py", title="Distill", icon="🧑‍🏫"),
        st.Page(PAGES / "deploy.py", title="Deploy", icon="🚀"),
        st.Page(PAGES / "jobs.py", title="Jobs", icon="⚙️"),
        st.Page(PAGES / "learn.py", title="Learn", icon="🎓"),
    ]
)
navigation.run()
