"""Speech Compression Lab: compress a speech model and see what it costs in word error rate."""
from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="Speech Compression Lab", page_icon="🎙️", layout="wide")
navigation = st.navigation([
    st.Page(PAGES / "home.py", title="Home", icon="🏠", default=True),
    st.Page(PAGES / "compress.py", title="Compress", icon="🗜️"),
    st.Page(PAGES / "record.py", title="Record & compare", icon="🎤"),
    st.Page(PAGES / "pareto.py", title="Pareto", icon="📈"),
    st.Page(PAGES / "distill.py", title="Distill", icon="🧑‍🏫"),
    st.Page(PAGES / "learn.py", title="Learn", icon="🎓"),
])
navigation.run()
