"""What the dashboard's pages share (Streamlit side only): cached resources, forms, diffs, diagrams."""
