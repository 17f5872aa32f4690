"""The Compress page's numbers as text: card deltas whose colour and arrow say what the words say, the
WER's 95% interval, and the per-layer table.

Pure functions of plain data (numbers, dicts, the per-layer reports as dicts), so they are tested
without Streamlit; the page passes what they return straight to st.metric and st.dataframe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

MISSING = "–"  # what a table cell shows for a value a step does not set (bits of a pruned layer, …)


@dataclass(frozen=True)
class Delta:
    """What st.metric shows under a card's value: the text, its colour and its arrow.

    st.metric on its own points the arrow by the text's sign and colours it by that sign, so "+0.0 pts"
    came out red with an arrow up and "1.3× slower" with an arrow up; here the caller says both.
    """

    text: str | None
    color: str = "off"  # st.metric's delta_color: "off" (grey), "green" or "red"
    arrow: str = "off"  # st.metric's delta_arrow: "off", "up" or "down"

    def metric_kwargs(self) -> dict:
        """The keyword arguments of st.metric that draw this delta."""
        return {"delta": self.text, "delta_color": self.color, "delta_arrow": self.arrow}


def wer_delta(wer: float, baseline_wer: float) -> Delta:
    """The WER change in percentage points: worse (up) in red, better (down) in green, and a change that
    rounds to zero neutral, with no arrow."""
    points = round(100 * (wer - baseline_wer), 1)
    if points == 0:
        return Delta("±0.0 pts")
    if points > 0:
        return Delta(f"+{points:.1f} pts", "red", "up")
    return Delta(f"{points:.1f} pts", "green", "down")


def speed_delta(speedup: float | None) -> Delta:
    """A measured speed-up (baseline time over the variant's; above 1 is faster) in words: faster with a
    green arrow up, slower with a red arrow down, the same speed (to two decimals) neutral."""
    if not speedup:
        return Delta(None)
    if round(speedup, 2) == 1:
        return Delta("1.00× (same speed)")
    if speedup > 1:
        return Delta(f"{speedup:.2f}× faster", "green", "up")
    return Delta(f"{1 / speedup:.2f}× slower", "red", "down")


def size_delta(baseline_bytes: int | None, size_bytes: int | None) -> Delta:
    """The size against the baseline's: smaller with a green arrow down, larger with a red arrow up, the
    same size (to two decimals) neutral."""
    if not baseline_bytes or not size_bytes:
        return Delta(None)
    ratio = baseline_bytes / size_bytes
    if round(ratio, 2) == 1:
        return Delta("same size")
    if ratio > 1:
        return Delta(f"{ratio:.2f}× smaller", "green", "down")
    return Delta(f"{1 / ratio:.2f}× larger", "red", "up")


def wer_interval_text(result: Mapping, baseline_wer: float) -> str | None:
    """The WER's 95% interval, what it was measured on, and whether the baseline lies inside it (then the
    difference is within the noise of that many utterances); None for a point stored without one.

    `result` is a stored point's evaluation (`wer_ci95` as [low, high] fractions, `n_utterances`,
    `n_words`)."""
    interval, utterances = result.get("wer_ci95"), result.get("n_utterances")
    if not interval or not utterances:
        return None
    low, high = interval
    words = result.get("n_words")
    measured = f"{utterances} utterances" + (f" ({words} words)" if words else "")
    if low <= baseline_wer <= high:
        verdict = (
            f"the baseline's {100 * baseline_wer:.1f}% lies inside it: the difference is within the noise "
            f"of {utterances} utterances"
        )
    else:
        verdict = (
            f"the baseline's {100 * baseline_wer:.1f}% lies outside it: the difference is larger than the "
            f"noise of {utterances} utterances"
        )
    return f"95% interval of this WER: {100 * low:.1f}–{100 * high:.1f}% over {measured}; {verdict}."


# ----------------------------------------------------------------------------- the per-layer table

LAYER_COLUMNS = ("layer", "group", "technique", "params", "bits", "sparsity", "rank", "size", "error", "note")
LAYER_HELP = {
    "layer": "The layer's path in the model",
    "group": "The part of the model it belongs to (the recipe's `groups`)",
    "technique": "The recipe's steps that changed it, in order",
    "params": "Weights before → after (a factorized layer: both thin factors together)",
    "bits": "Bits per stored weight code (– : left as 32-bit floats)",
    "sparsity": "Share of its weights that are zero after pruning",
    "rank": "Rank kept by the low-rank step (– : not factorized)",
    "size": "Bytes of the layer's stored tensors (codes, scales, factors, biases), before → after. The file "
    "also stores mostly-zero tensors sparsely: a pruned layer shrinks there (the Size card), not here",
    "error": "‖W − W′‖ / ‖W‖ of each step on the weights it was given (a factorized layer: its worse factor)",
    "note": "What the step says about this layer",
}


def short_layer(name: str) -> str:
    """'model.encoder.layers.0.fc1' -> 'encoder.layers.0.fc1'."""
    return name.removeprefix("model.")


def human_bytes(count: int) -> str:
    """Bytes in decimal KB or MB, like the Size card (1 MB = 10⁶ bytes)."""
    if count >= 1e6:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.1f} KB" if count < 1e4 else f"{count / 1e3:.0f} KB"


def owner(name: str, layers: Iterable[str]) -> str:
    """The base model's layer that a report names or lies inside (a factorized layer's two parts report as
    'fc1.first' and 'fc1.second' when a later step quantizes them); `name` itself when none holds it."""
    known, path = set(layers), name
    while path and path not in known:
        path = path.rpartition(".")[0]
    return path or name


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a module stores (its state dict; a tensor shared by two entries counts once)."""
    seen, total = set(), 0
    for tensor in module.state_dict().values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def layer_sizes(base: nn.Module, compressed: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Stored bytes of each named layer in the base model and in the compressed one (a layer missing from
    either is left out)."""
    sizes = {}
    for name in names:
        try:
            sizes[name] = (
                tensor_bytes(base.get_submodule(name)),
                tensor_bytes(compressed.get_submodule(name)),
            )
        except AttributeError:
            continue
    return sizes


def _last(values: Iterable) -> object:
    """The last value that is not None (None if all are)."""
    found = None
    for value in values:
        if value is not None:
            found = value
    return found


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def layer_rows(
    reports: Iterable[Mapping],
    layers: Sequence[str] = (),
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict]:
    """The per-layer table: one row per layer of the base model that a step changed, every cell text.

    `reports` are core.compress.report.LayerReport values as dicts, in the order the steps made them;
    `layers` the base model's compressible layers in module order (rows follow it, and the reports of a
    factorized layer's parts join their layer's row); `sizes` each layer's stored bytes before and after
    (`layer_sizes`). A value no step sets shows as "–", not None.
    """
    by_layer: dict[str, list[Mapping]] = {}
    for report in reports:
        by_layer.setdefault(owner(report["name"], layers), []).append(report)
    order = {name: index for index, name in enumerate(layers)}
    rows = []
    for position, (name, steps) in enumerate(by_layer.items()):
        techniques = _unique(step["technique"] for step in steps)
        last = [step for step in steps if step["technique"] == techniques[-1]]
        before, after = steps[0]["params_before"], sum(step["params_after"] for step in last)
        errors = []
        for technique in techniques:
            values = [
                s["rel_error"]
                for s in steps
                if s["technique"] == technique and s.get("rel_error") is not None
            ]
            errors.append(f"{100 * max(values):.1f}%" if values else MISSING)
        sparsity, bits, rank = (
            _last(step.get(key) for step in steps) for key in ("sparsity", "bits", "rank")
        )
        size = (sizes or {}).get(name)
        rows.append(
            (
                order.get(name, len(order) + position),
                {
                    "layer": short_layer(name),
                    "group": steps[0]["group"],
                    "technique": " → ".join(techniques),
                    "params": f"{before:,} → {after:,}",
                    "bits": MISSING if bits is None else str(bits),
                    "sparsity": MISSING if sparsity is None else f"{100 * sparsity:.1f}%",
                    "rank": MISSING if rank is None else str(rank),
                    "size": f"{human_bytes(size[0])} → {human_bytes(size[1])}" if size else MISSING,
                    "error": " → ".join(errors),
                    "note": "; ".join(_unique(step.get("note", "") for step in steps)) or MISSING,
                },
            )
        )
    return [row for _, row in sorted(rows, key=lambda pair: pair[0])]
