"""A transcript against its reference as HTML: which words were substituted, deleted or inserted."""

from core.metrics import word_diff


def diff_html(reference: str, hypothesis: str) -> str:
    """Hypothesis words with substitutions, deletions and insertions highlighted (colour-blind safe)."""
    styles = {
        "substitute": "background:#ffd8a8;color:#000",
        "delete": "background:#d0bfff;color:#000;text-decoration:line-through",
        "insert": "background:#a5d8ff;color:#000",
    }
    parts = []
    for op, ref, hyp in word_diff(reference, hypothesis):
        if op == "equal":
            parts.append(hyp)
        elif op == "substitute":
            parts.append(f'<span style="{styles[op]}" title="was: {ref}">{hyp}</span>')
        elif op == "delete":
            parts.append(f'<span style="{styles[op]}" title="missing">{ref}</span>')
        else:
            parts.append(f'<span style="{styles[op]}" title="inserted">{hyp}</span>')
    return " ".join(parts)


DIFF_LEGEND = (
    '<span style="background:#ffd8a8;color:#000">substituted</span> · '
    '<span style="background:#d0bfff;color:#000;text-decoration:line-through">deleted</span> · '
    '<span style="background:#a5d8ff;color:#000">inserted</span>'
)
