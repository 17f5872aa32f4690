"""Which layers of a speech model can be compressed, and which group each belongs to.

Groups are what users choose and what sensitivity is measured over: encoder/decoder x
attention/feed-forward, the token embedding (tied to the output projection in Whisper), the
convolutional front-end and the position tables (Whisper's encoder and decoder positional embeddings). Works on Hugging Face Whisper and wav2vec2 module names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GROUPS = (
    "encoder.attention",
    "encoder.ffn",
    "decoder.attention",
    "decoder.ffn",
    "embedding",
    "conv",
    "positions",
)
DEFAULT_GROUPS = ("encoder.attention", "encoder.ffn", "decoder.attention", "decoder.ffn")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    group: str
    kind: str  # "linear", "embedding" or "conv"
    shape: tuple[int, ...]
    params: int


def layer_group(name: str, module: nn.Module) -> str | None:
    """The group of a module by its qualified name, or None if it is not compressible."""
    side = "decoder" if "decoder" in name else "encoder"
    if isinstance(module, nn.Embedding):
        return "embedding" if "embed_tokens" in name else "positions" if "embed_positions" in name else None
    if isinstance(module, nn.Conv1d):
        return "conv"
    if not isinstance(module, nn.Linear):
        return None
    if name.endswith(("proj_out", "lm_head")):
        return None  # tied to the token embedding (Whisper) or a head we keep dense
    if "attn" in name or "attention" in name:
        return f"{side}.attention"
    if any(key in name for key in ("fc1", "fc2", "feed_forward", "ffn", "mlp")):
        return f"{side}.ffn"
    return None


def compressible_layers(model: nn.Module, groups: tuple[str, ...] | None = None) -> list[LayerInfo]:
    """Every compressible layer of `model` (optionally only those in `groups`), in module order."""
    unknown = set(groups or ()) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown layer group(s) {sorted(unknown)}; allowed: {list(GROUPS)}")
    layers = []
    for name, module in model.named_modules():
        group = layer_group(name, module)
        if group is None or (groups is not None and group not in groups):
            continue
        weight = module.weight
        kind = "embedding" if group in ("embedding", "positions") else "conv" if group == "conv" else "linear"
        layers.append(LayerInfo(name, group, kind, tuple(weight.shape), weight.numel()))
    return layers


@dataclass(frozen=True)
class LayerReport:
    """What one compression step did to one layer; every technique reports in this shape."""

    name: str
    group: str
    technique: str  # "prune", "quantize", "low_rank", ...
    params_before: int
    params_after: int
    sparsity: float | None = None  # fraction of weights that are zero after the step
    bits: int | None = None
    rank: int | None = None
    rel_error: float | None = None  # ||W - W'||_F / ||W||_F
    note: str = ""  # e.g. "left dense: factorization would not save parameters"


def relative_error(before, after) -> float:
    """Frobenius-norm relative error between two weight tensors (0 means identical)."""
    denom = before.float().norm().item()
    return (before.float() - after.float()).norm().item() / denom if denom else 0.0


def linear_macs(model: nn.Module, decoder_tokens: int = 20, encoder_frames: int = 1500) -> int:
    """Multiply-adds of the Linear layers for one Whisper window; zeros of float layers are skipped.

    Encoder layers (and the decoder's cross-attention keys/values) see `encoder_frames` positions,
    the rest of the decoder `decoder_tokens`. This is the theoretical cost that pruning and
    factorization reduce; quantized layers count in full (an integer kernel multiplies every code,
    zero or not). Set beside measured latency it shows which savings this CPU turns into speed.
    """
    from core.quant import Int8DynamicLinear, QuantLinear  # quant builds on this module

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, QuantLinear, Int8DynamicLinear)):
            over_audio = ".encoder." in f".{name}" or "encoder_attn.k_proj" in name or "encoder_attn.v_proj" in name
            weights = torch.count_nonzero(module.weight) if isinstance(module, nn.Linear) else module.weight.numel()
            total += int(weights) * (encoder_frames if over_audio else decoder_tokens)
    return total
