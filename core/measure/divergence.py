"""Divergence: how far a compressed Whisper's next-token distributions move from its base model's.

Teacher-forced on the base model's own greedy transcripts of packed 30 s windows, the mean over tokens
of KL(p_base ‖ p_variant). Unlike WER on a few hundred words it is continuous: a change that costs a
fraction of a word still shows, so it can rank compression choices that WER cannot tell apart (HAWQ and
AIMET rank layers by loss, not accuracy, for the same reason). A point costs one encoder pass and one
decoder pass per window, with no decoding loop, so it is several times cheaper than a WER point.

The base side is kept coarsened to its `TOP_K` most likely tokens plus one bucket for the rest; the KL
of the coarsened distributions is a lower bound of the full KL and misses only mass the base model
never gives its likely tokens (tested against the full-vocabulary KL).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.compress.recipe import Recipe
from core.data import load_waves, pack_utterances
from core.measure.evaluate import model_size_bytes
from core.measure.store import model_identity, point_key
from core.measure.sweep import apply_reusing, code_version, encoder_identity, recipe_identity
from core.models import SpeechModel

TOP_K = 128  # base-model tokens kept per position; the rest of its mass is one bucket
METHOD = 1  # bump when the way divergence is measured changes (part of the cache key)


@dataclass
class Reference:
    """The base model's side of the comparison, computed once per (model, windows)."""

    features: list[torch.Tensor]  # (1, mels, frames) per window
    inputs: list[torch.Tensor]  # (1, T) prompt + the base model's transcript tokens, per window
    first: int  # position of the first scored prediction (the prompt's last token predicts the text)
    top_index: list[torch.Tensor]  # (T - first, TOP_K) the base model's likeliest tokens
    top_log_probs: list[torch.Tensor]  # (T - first, TOP_K + 1) their log-probabilities, then the rest's
    encoder_states: list[
        torch.Tensor
    ]  # the base encoder's outputs, reused while a variant's encoder is equal
    encoder_id: str
    tokens: int  # scored positions in all

    def __post_init__(self):
        if not self.features:
            raise ValueError("a divergence reference needs at least one audio window")


def _coarsen(log_probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of `index`'s tokens plus one last column for all other tokens together."""
    top = log_probs.gather(-1, index)
    rest = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-7))
    return torch.cat([top, rest[..., None]], dim=-1)


def _decoder_log_probs(
    model: SpeechModel, states: torch.Tensor, inputs: torch.Tensor, first: int
) -> torch.Tensor:
    return F.log_softmax(model.decoder_logits(states, inputs)[0, first:].float(), dim=-1)


@torch.inference_mode()
def reference_outputs(model: SpeechModel, windows: list[np.ndarray]) -> Reference:
    """Greedy-transcribe each window with the base model and keep what divergence() compares against."""
    model.decoder("divergence (teacher-forced decoding)")
    room, prompt = model.token_room(), list(model.decoding.prompt)
    first = len(prompt) - 1
    features, inputs, indices, coarse, states = [], [], [], [], []
    for window in windows:
        feats = model.features([window])
        encoded = model.encode(feats)
        tokens = model.greedy(encoded, room)[0]
        ids = torch.tensor([prompt + tokens[: room - 1]])
        log_probs = _decoder_log_probs(model, encoded, ids, first)
        index = log_probs.topk(min(TOP_K, log_probs.shape[-1]), dim=-1).indices
        features.append(feats)
        inputs.append(ids)
        indices.append(index)
        coarse.append(_coarsen(log_probs, index))
        states.append(encoded)
    return Reference(
        features=features,
        inputs=inputs,
        first=first,
        top_index=indices,
        top_log_probs=coarse,
        encoder_states=states,
        encoder_id=encoder_identity(model),
        tokens=sum(len(i) for i in indices),
    )


@torch.inference_mode()
def divergence(variant: SpeechModel, reference: Reference) -> float:
    """Mean KL(p_base ‖ p_variant) per scored token, in nats (0 for the base model itself)."""
    same_encoder = encoder_identity(variant) == reference.encoder_id
    total = 0.0
    for feats, ids, index, base, states in zip(
        reference.features,
        reference.inputs,
        reference.top_index,
        reference.top_log_probs,
        reference.encoder_states,
    ):
        if not same_encoder:
            states = variant.encode(feats)
        log_q = _coarsen(_decoder_log_probs(variant, states, ids, reference.first), index)
        total += (base.exp() * (base - log_q)).sum().item()
    return max(total / reference.tokens, 0.0)


# ----------------------------------------------------------------------------- cached measurements


def measure_settings() -> dict:
    """What a stored divergence depends on besides model, recipe and data:
    this method and the engine's code."""
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return {
        "metric": "divergence",
        "method": METHOD,
        "top_k": TOP_K,
        "code": code_version(),
        "source": source,
    }


def dataset_windows(dataset, waves: list | None = None) -> list[np.ndarray]:
    """The dataset's utterances packed into 30 s windows, as sweeps score them (core.data.pack_utterances)."""
    waves = load_waves(dataset) if waves is None else waves
    utterances = dataset.utterances
    return pack_utterances(waves, [u.text for u in utterances], [u.id for u in utterances])[0]


def run_divergence(
    model: SpeechModel,
    dataset,
    recipes: list,
    store,
    waves: list | None = None,
    reference: dict | None = None,
) -> Iterator[dict]:
    """Yield {key, recipe, label, divergence, size_bytes, seconds, cached} per distinct recipe: stored ones
    first and at once, then each new one as it is measured (and stored). The base model's reference is
    computed only when something is missing; pass the same `reference` dict to share it between calls.
    ValueError before the first is measured when `store` cannot be written."""
    model_id, fingerprint, settings = model_identity(model), dataset.fingerprint(), measure_settings()
    todo: dict[str, object] = {}
    for recipe in map(Recipe.from_json, recipes):
        todo.setdefault(point_key(model_id, recipe_identity(recipe), fingerprint, settings), recipe)
    missing = []
    for key, recipe in todo.items():
        stored = store.get_measure(key)
        if stored is None:
            missing.append((key, recipe))
        else:
            yield {**stored, "key": key, "cached": True}
    if missing:
        store.check_writable()  # before the work, not after it
    reference = {} if reference is None else reference
    reuse: dict = {}
    for key, recipe in missing:
        start = time.perf_counter()
        if (model_id, fingerprint) not in reference:
            reference.clear()
            reference[(model_id, fingerprint)] = reference_outputs(model, dataset_windows(dataset, waves))
        variant = apply_reusing(model, recipe, reuse)
        value = {
            "recipe": recipe.to_json(),
            "label": recipe.describe(),
            "dataset": dataset.name,
            "divergence": divergence(variant, reference[(model_id, fingerprint)]),
            "size_bytes": model_size_bytes(variant),
        }
        value["seconds"] = time.perf_counter() - start
        store.put_measure(key, value)
        yield {**value, "key": key, "cached": False}
