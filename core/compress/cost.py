"""The theoretical cost that pruning and factorization reduce: multiply-adds of the Linear layers."""

from __future__ import annotations

import torch
from torch import nn

from core.compress.quant import Int8DynamicLinear, QuantLinear
from core.models import family_of


def linear_macs(model: nn.Module, decoder_tokens: int = 20, encoder_frames: int = 1500) -> int:
    """Multiply-adds of the Linear layers for one window; zeros of float layers are skipped.

    Layers that run per audio frame (the family's `over_audio`: the encoder, and in Whisper the
    cross-attention keys/values) see `encoder_frames` positions, the rest `decoder_tokens`. Quantized
    layers count in full (an integer kernel multiplies every code, zero or not). Set beside measured
    latency it shows which savings this CPU turns into speed.
    """
    family = family_of(model)
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, QuantLinear, Int8DynamicLinear)):
            weights = (
                torch.count_nonzero(module.weight) if isinstance(module, nn.Linear) else module.weight.numel()
            )
            total += int(weights) * (encoder_frames if family.over_audio(name) else decoder_tokens)
    return total
