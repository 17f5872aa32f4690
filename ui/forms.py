"""The Compress page's controls, one form per technique, both ways: widgets -> step config -> widgets.

Each `Form` draws its technique's widgets (reading their values from session state by key) and says
which widget values show a given step config, so the page and "Open in Compress" on the Pareto page
cannot drift apart. A technique without a form is simply not on the Compress page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from core.compress.quant import int8_blockers
from core.compress.recipe import Recipe
from core.compress.registry import TECHNIQUES

BITS = [2, 3, 4, 5, 6, 7, 8, 16]
GROUP_SIZES = [16, 32, 64, 128, 256]
GROUP_CHOICES = ["encoder.attention", "encoder.ffn", "decoder.attention", "decoder.ffn", "embedding"]
LINEAR_GROUPS = GROUP_CHOICES[:4]
GROUP_LABELS = {  # short enough that a chip in the sidebar shows it whole
    "encoder.attention": "enc attn",
    "encoder.ffn": "enc FFN",
    "decoder.attention": "dec attn",
    "decoder.ffn": "dec FFN",
    "embedding": "embedding",
}
PARTS_HELP = (
    "enc attn / dec attn: the encoder's / decoder's attention projections (q, k, v, out); "
    "enc FFN / dec FFN: their feed-forward layers (fc1, fc2); embedding: the token embedding."
)


def group_label(group: str) -> str:
    """A layer group's chip label in a Parts multiselect ('encoder.attention' -> 'enc attn')."""
    return GROUP_LABELS.get(group, group)


def parts(options: list[str], key: str, help: str = PARTS_HELP) -> list[str]:
    """A Parts multiselect over layer groups, with short chip labels and a help text that names them."""
    return st.multiselect("Parts", options, key=key, format_func=group_label, help=help)


@dataclass(frozen=True)
class Form:
    """One technique's controls in the Compress sidebar: an expander with an on/off toggle and the widgets."""

    technique: str  # the step name in recipes (a key of core.compress.registry.TECHNIQUES)
    title: str  # the expander's title
    expanded: bool  # the expander starts open
    toggle: str  # the on/off toggle's label
    toggle_key: str  # its session-state key
    defaults: dict  # widget key -> value when the page first opens, the toggle's included
    draw: Callable[[], dict]  # draws the widgets under the toggle; returns the step config they describe
    state: Callable[[dict], dict]  # a step config -> the widget values that show it (toggle on); ValueError
    # when the widgets cannot show it


def offered(groups: list, options: list) -> list:
    """`groups` when a Parts multiselect with `options` can show them; ValueError otherwise."""
    missing = sorted(set(groups) - set(options))
    if missing:
        raise ValueError(f"it compresses {missing}, which the sliders do not offer")
    return list(groups)


# ----------------------------------------------------------------------------- prune

PRUNE_DEFAULTS = {
    "prune_on": False,
    "prune_structure": "unstructured",
    "prune_by": "sparsity",
    "prune_sparsity": 0.3,
    "prune_threshold": 0.02,
    "prune_scope": "layer",
    "prune_groups": LINEAR_GROUPS,
    "prune_groups_neurons": ["encoder.ffn", "decoder.ffn"],
    "prune_groups_heads": ["encoder.attention", "decoder.attention"],
}


def draw_prune() -> dict:
    """Structure, sparsity or threshold, scope and parts -> a prune step config."""
    structure = st.selectbox(
        "Structure",
        ["unstructured", "neurons", "heads"],
        key="prune_structure",
        help="Unstructured zeroes single weights (smaller files, no speed-up on a CPU). "
        "Neurons/heads remove whole feed-forward neurons or attention heads: "
        "the model really gets smaller and faster.",
    )
    config = {}
    if structure == "unstructured":
        by = st.radio(
            "Prune by",
            ["sparsity", "threshold"],
            horizontal=True,
            key="prune_by",
            help="Sparsity: the fraction of weights removed. Threshold: remove every weight "
            "whose magnitude is below it (in weight units).",
        )
    else:
        by, config["structure"] = "sparsity", structure
    if by == "sparsity":
        unit = {"unstructured": "weights", "neurons": "feed-forward neurons", "heads": "attention heads"}
        config["sparsity"] = st.slider(
            f"Fraction of {unit[structure]} removed", 0.0, 0.95, step=0.05, key="prune_sparsity"
        )
    else:
        config["threshold"] = st.slider(
            "Threshold |w| <", 0.0, 0.2, step=0.005, format="%.3f", key="prune_threshold"
        )
    if structure == "unstructured":
        config["scope"] = st.radio(
            "Scope",
            ["layer", "global"],
            horizontal=True,
            key="prune_scope",
            help="Layer: every layer loses the same fraction. Global: one ranking over all selected layers.",
        )
        config["groups"] = parts(GROUP_CHOICES, "prune_groups")
    else:
        config["groups"] = parts(structured_parts(structure), f"prune_groups_{structure}")
    return config


def structured_parts(structure: str) -> list[str]:
    """The parts structured pruning offers: feed-forward blocks for neurons, attention for heads."""
    return [g for g in LINEAR_GROUPS if g.endswith("ffn" if structure == "neurons" else "attention")]


def prune_state(config: dict) -> dict:
    """A prune step config -> the pruning widgets' values."""
    structure = config.get("structure", "unstructured")
    by = "threshold" if "threshold" in config else "sparsity"
    state = dict(
        PRUNE_DEFAULTS,
        prune_on=True,
        prune_structure=structure,
        prune_by=by,
        prune_scope=config.get("scope", "layer"),
    )
    state[f"prune_{by}"] = config[by]
    if structure == "unstructured":
        state["prune_groups"] = offered(config.get("groups", LINEAR_GROUPS), GROUP_CHOICES)
    else:
        key = f"prune_groups_{structure}"
        state[key] = offered(config.get("groups", PRUNE_DEFAULTS[key]), structured_parts(structure))
    return state


PRUNE = Form("prune", "✂️ Pruning", True, "Prune weights", "prune_on", PRUNE_DEFAULTS, draw_prune, prune_state)


# ----------------------------------------------------------------------------- low rank

LOW_RANK_DEFAULTS = {
    "lowrank_on": False,
    "lowrank_by": "energy",
    "lowrank_energy": 0.95,
    "lowrank_fraction": 0.5,
    "lowrank_groups": LINEAR_GROUPS,
}


def draw_low_rank() -> dict:
    """Energy or rank fraction and parts -> a low_rank step config."""
    by = st.radio(
        "Rank by",
        ["energy", "rank_fraction"],
        horizontal=True,
        key="lowrank_by",
        help="Energy: keep this fraction of the sum of squared singular values. "
        "Rank fraction: keep this fraction of the full rank.",
    )
    if by == "energy":
        config = {"energy": st.slider("Energy kept", 0.5, 1.0, step=0.01, key="lowrank_energy")}
    else:
        config = {"rank_fraction": st.slider("Rank fraction", 0.05, 1.0, step=0.05, key="lowrank_fraction")}
    config["groups"] = parts(LINEAR_GROUPS, "lowrank_groups")
    return config


def low_rank_state(config: dict) -> dict:
    """A low_rank step config -> the low-rank widgets' values (not an absolute rank: no slider for it)."""
    by = "energy" if "energy" in config else "rank_fraction"
    if by not in config:
        raise ValueError("its low-rank step sets an absolute rank (the slider sets a fraction or energy)")
    state = dict(
        LOW_RANK_DEFAULTS,
        lowrank_on=True,
        lowrank_by=by,
        lowrank_groups=offered(config.get("groups", LINEAR_GROUPS), LINEAR_GROUPS),
    )
    state["lowrank_energy" if by == "energy" else "lowrank_fraction"] = config[by]
    return state


LOW_RANK = Form(
    "low_rank",
    "📉 Low-rank (SVD)",
    False,
    "Factorize Linear layers",
    "lowrank_on",
    LOW_RANK_DEFAULTS,
    draw_low_rank,
    low_rank_state,
)


# ----------------------------------------------------------------------------- quantize

QUANTIZE_DEFAULTS = {  # 8-bit weights per channel: the page's starting point
    "quant_on": True,
    "quant_bits": 8,
    "quant_granularity": "channel",
    "quant_group": 64,
    "quant_method": "minmax",
    "quant_symmetric": True,
    "quant_groups": GROUP_CHOICES,
    "quant_int8": False,
    "quant_gptq": False,
    "quant_entropy": False,
}


def draw_quantize() -> dict:
    """Bits, scales, range, GPTQ, entropy coding, parts and kernels -> a quantize step config."""
    config = {"bits": st.select_slider("Bits", BITS, key="quant_bits")}
    granularity = st.radio(
        "Scales",
        ["channel", "group", "tensor"],
        horizontal=True,
        key="quant_granularity",
        help="One scale per output channel, per group of weights in a row, or per tensor.",
    )
    config["granularity"] = granularity
    if granularity == "group":
        config["group_size"] = st.select_slider("Group size", GROUP_SIZES, key="quant_group")
    config["method"] = st.radio(
        "Range",
        ["minmax", "mse"],
        horizontal=True,
        key="quant_method",
        help="minmax: the full range. mse: search a clipping range that minimises error.",
    )
    config["symmetric"] = st.checkbox("Symmetric", key="quant_symmetric")
    if st.checkbox(
        "GPTQ error compensation",
        key="quant_gptq",
        help="Round Linear weights column by column, folding each error into the rest, weighted "
        "by their inputs on 16 windows of calibration speech: what keeps 4-bit per channel "
        "working. Slower to apply than plain rounding: it runs the model on that speech first.",
    ):
        config["gptq"] = True
    if st.checkbox(
        "Entropy-code the stored codes",
        key="quant_entropy",
        help="Store the integer codes Huffman-coded: the file gets smaller (most codes sit "
        "near zero), the model and its transcripts stay exactly the same.",
    ):
        config["entropy_code"] = True
    config["groups"] = parts(
        GROUP_CHOICES,
        "quant_groups",
        help=f"{PARTS_HELP} The token embedding is tied to the output projection: "
        "quantizing it quantizes both, stored once.",
    )
    blockers = int8_blockers(config["bits"], config["symmetric"], config["granularity"])
    checked = st.checkbox(
        "Run on int8 kernels (8-bit only)",
        key="quant_int8",
        help="Real int8 matrix multiplies instead of dequantized fp32: faster on this CPU. "
        "Needs 8-bit symmetric codes with channel or tensor scales.",
    )
    if checked and blockers:  # said beside the box; the rest of the recipe is measured without it
        st.error(
            f"The int8 kernels need 8-bit symmetric codes with channel or tensor scales: off with "
            f"{', '.join(blockers)}."
        )
    elif checked:
        config["backend"] = "int8_dynamic"
    return config


def quantize_state(config: dict) -> dict:
    """A quantize step config -> the quantization widgets' values (fp16 scales, outlier columns and other
    calibration sets have no widget)."""
    if config.get("scale_dtype", "float32") != "float32" or config.get("outlier_columns", 0):
        raise ValueError("its fp16 scales or fp16 outlier columns are not on the sliders")
    if config.get("calibration", "train") != "train" or config.get("calibration_windows", 16) != 16:
        raise ValueError("its GPTQ calibration is not the sliders' (16 windows of train)")
    state = dict(
        QUANTIZE_DEFAULTS,
        quant_on=True,
        quant_bits=config.get("bits", 8),
        quant_granularity=config.get("granularity", "channel"),
        quant_group=config.get("group_size", 64),
        quant_method=config.get("method", "minmax"),
        quant_symmetric=config.get("symmetric", True),
        quant_groups=offered(config.get("groups", GROUP_CHOICES), GROUP_CHOICES),
        quant_int8=config.get("backend") == "int8_dynamic",
        quant_gptq=config.get("gptq", False),
        quant_entropy=config.get("entropy_code", False),
    )
    if state["quant_bits"] not in BITS or state["quant_group"] not in GROUP_SIZES:
        raise ValueError("its bit width or group size is not on the sliders")
    return state


QUANTIZE = Form(
    "quantize",
    "🔢 Quantization",
    True,
    "Quantize weights",
    "quant_on",
    QUANTIZE_DEFAULTS,
    draw_quantize,
    quantize_state,
)


# ----------------------------------------------------------------------------- all forms

FORMS = tuple(sorted((PRUNE, LOW_RANK, QUANTIZE), key=lambda form: TECHNIQUES[form.technique].position))


def widget_defaults() -> dict:
    """Every Compress widget's starting value, by key: 8-bit weights, nothing else."""
    return {key: value for form in FORMS for key, value in form.defaults.items()}


def compress_widget_state(recipe: dict) -> dict:
    """The Compress page's widget values that reproduce `recipe`; ValueError if its sliders cannot."""
    state = widget_defaults()
    state.update({form.toggle_key: False for form in FORMS})
    forms = {form.technique: form for form in FORMS}
    steps = [next(iter(step.items())) for step in Recipe.from_json(recipe).to_json()["steps"]]
    names = [name for name, _ in steps]
    for name in names:  # what no slider can show comes first, before the details of one step
        if names.count(name) > 1:
            raise ValueError(f"it has two {name} steps (the sliders hold one of each)")
        if name not in forms:
            raise ValueError(f"its {name} step has no controls on the Compress page")
    for name, config in steps:
        state.update(forms[name].state(config))
    return state
