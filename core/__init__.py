"""Speech Compression Lab engine: models, data, evaluation and compression. Never imports streamlit."""
