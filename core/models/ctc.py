"""The CTC family: wav2vec2-style encoders with a CTC head (`*ForCTC` in Hugging Face transformers).

An encoder only: features -> frames -> per-frame token logits, decoded greedily (argmax, collapse
repeats, drop blanks) by the checkpoint's processor. No autoregressive decoder, so distillation and
divergence (which teacher-force a decoder) do not apply.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from core.audio import SAMPLE_RATE
from core.models.base import AttentionBlock, FeedForwardBlock, SpeechModel, materialize

NAME = "ctc"
GENERATIVE = False
MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
FEED_FORWARD = ("intermediate_dense", "output_dense")


def handles(module: nn.Module) -> bool:
    return type(module).__name__.endswith("ForCTC") and hasattr(module, "lm_head")


def layer_group(name: str, module: nn.Module) -> str | None:
    """Transformer attention and feed-forward Linears, and the convolutional feature encoder."""
    if isinstance(module, nn.Conv1d):
        return "conv"
    if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
        return None  # the CTC head stays dense
    if ".attention." in f".{name}":
        return "encoder.attention"
    if ".feed_forward." in f".{name}":
        return "encoder.ffn"
    return None


def _set_heads(attention: nn.Module, heads: int) -> None:
    """Hugging Face's Wav2Vec2Attention reshapes with -1 heads; num_heads is kept for the record."""
    attention.num_heads = heads
    attention.layout_attrs = {**getattr(attention, "layout_attrs", {}), "num_heads": heads}


def attention_blocks(module: nn.Module) -> list[AttentionBlock]:
    return [
        AttentionBlock(name, "encoder.attention", *ATTENTION, m.num_heads, m.head_dim, _set_heads)
        for name, m in module.named_modules()
        if all(hasattr(m, p) for p in ATTENTION) and hasattr(m, "num_heads") and hasattr(m, "head_dim")
    ]


def ffn_blocks(module: nn.Module) -> list[FeedForwardBlock]:
    return [
        FeedForwardBlock(name, "encoder.ffn", *FEED_FORWARD)
        for name, m in module.named_modules()
        if all(hasattr(m, p) for p in FEED_FORWARD)
    ]


def encoder(module: nn.Module) -> nn.Module:
    return module


def encode(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Per-frame token logits: for CTC the whole model is the encoder."""
    return module(features).logits


def over_audio(name: str) -> bool:
    return True


def encoder_input(model: SpeechModel, windows: list[np.ndarray]) -> torch.Tensor:
    """The raw waveforms as the encoder takes them (a CTC model sees each clip at its own length)."""
    return model.features(windows)


def transcribe(model: SpeechModel, windows: list[np.ndarray]) -> list[str]:
    logits = model.encode(encoder_input(model, windows))
    return [model.decode(ids.tolist()) for ids in logits.argmax(-1)]


def collapse(ids: list[int], blank: int) -> list[int]:
    """Greedy CTC: merge runs of the same frame token, then drop the blank. In this order, so a blank
    between two equal tokens keeps both ("l <blank> l" is "ll"). The tokenizer cannot be asked to do it:
    with skip_special_tokens it drops the blank (a special token) before it merges runs."""
    merged = [token for i, token in enumerate(ids) if i == 0 or token != ids[i - 1]]
    return [token for token in merged if token != blank]


def calibration_batch(model: SpeechModel, window: np.ndarray, text: str) -> dict:
    return {"input_values": model.features([window])}


# ----------------------------------------------------------------------------- building models


def fold_parametrizations(module: nn.Module) -> nn.Module:
    """Replace every parametrized weight by its current value, in place (wav2vec2's positional convolution
    is weight-normed: weight = g * v / |v|, computed on each forward).

    The reparametrization only matters for training. Folded, the layer is a plain nn.Conv1d whose `weight`
    is a tensor: pruning can zero it (on the parametrized layer an in-place edit of the computed weight is
    lost) and core.io.artifact can save and rebuild it as a builtin conv1d. Outputs are unchanged."""
    for layer in list(module.modules()):
        if parametrize.is_parametrized(layer):
            for name in list(layer.parametrizations):
                parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
    return module


def speech_model(name: str, module: nn.Module, processor, source: dict) -> SpeechModel:
    """A SpeechModel around a CTC module (parametrizations folded) and its processor (feature extractor +
    tokenizer)."""
    module = fold_parametrizations(module)
    extract = processor.feature_extractor
    features = lambda waves: (
        extract(
            waves,
            sampling_rate=SAMPLE_RATE,
            padding=True,  # noqa: E731
            return_tensors="pt",
        ).input_values
    )
    blank = processor.tokenizer.pad_token_id
    decode = lambda ids: processor.decode(
        collapse(ids, blank),
        skip_special_tokens=True,  # noqa: E731
        group_tokens=False,
    )
    return SpeechModel(
        name=name,
        family=sys.modules[__name__],
        module=module.eval(),
        features=features,
        decode=decode,
        tokenizer=processor,
        source=source,
    )


def skeleton(folder: Path) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCTC

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        module = AutoModelForCTC.from_config(config)
    return materialize(module, folder)


def from_folder(name: str, module: nn.Module, folder: Path, meta: dict) -> SpeechModel:
    from transformers import AutoProcessor

    return speech_model(
        meta.get("name", name),
        module,
        AutoProcessor.from_pretrained(folder),
        {"folder": str(folder), "meta": meta},
    )


def save_files(model: SpeechModel, folder: Path) -> dict:
    """Write config.json and the processor's files (feature extractor, vocabulary)."""
    model.module.config.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return {}


def from_hf(name: str, label: str, config, processor) -> SpeechModel:
    from transformers import AutoModelForCTC

    return speech_model(label, AutoModelForCTC.from_pretrained(name), processor, {"hf": name})


def accepts(config) -> bool:
    """True for a Hugging Face config this family loads."""
    return config.model_type in MODEL_TYPES and any(
        a.endswith("ForCTC") for a in (config.architectures or ["ForCTC"])
    )


def load_plain(module: nn.Module, folder: Path) -> nn.Module:
    """Load a plain model.safetensors written for this config."""
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return module
