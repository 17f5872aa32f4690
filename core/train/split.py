"""A validation split for training: whole voices held out of the training data.

A student chosen (best step, early stopping, "good enough?") on the report set would be tuned to it, and a
validation set of the same voices it trains on says little about new ones. So the held-out part is whole
speakers of the training data (core.data.Utterance.speaker, a manifest's `voice` column); data without
speakers falls back to holding out whole utterances. Both are seeded and deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from core.data import Dataset


def held_out_count(groups: int, held_out: float) -> int:
    """How many of `groups` voices (or utterances) to hold out: `held_out` in (0, 1) is a fraction (rounded,
    at least one), an integer ≥ 1 a count. At least one group always stays for training."""
    if groups < 2:
        raise ValueError(
            f"a validation split needs at least two voices or utterances to hold one out; got {groups}"
        )
    if held_out <= 0:
        raise ValueError(f"held_out = {held_out!r}: hold out a fraction in (0, 1) or a count ≥ 1")
    if held_out < 1:
        count = max(1, round(held_out * groups))
    elif float(held_out).is_integer():
        count = int(held_out)
    else:
        raise ValueError(f"held_out = {held_out!r}: a fraction below 1 or a whole number of voices")
    if count >= groups:
        raise ValueError(
            f"holding out {count} of {groups} voices/utterances leaves none to train on; hold out fewer"
        )
    return count


def held_out_indices(speakers: Sequence[str], held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices into `speakers` (one entry per utterance, "" where unknown).

    When every utterance has a speaker and there are two or more, whole speakers are held out (`held_out`: a
    fraction of the speakers or their count), chosen by a seeded sample of their sorted names; otherwise
    (no speakers, or one voice) whole utterances are. Each list keeps the original order."""
    by_voice = all(speakers) and len(set(speakers)) > 1
    groups = sorted(set(speakers)) if by_voice else list(range(len(speakers)))
    chosen = set(random.Random(seed).sample(groups, held_out_count(len(groups), held_out)))
    key = (lambda i: speakers[i]) if by_voice else (lambda i: i)
    validation = [i for i in range(len(speakers)) if key(i) in chosen]
    training = [i for i in range(len(speakers)) if key(i) not in chosen]
    return training, validation


def split_by_speaker(dataset: Dataset, held_out: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(training, validation) datasets of `dataset` with whole voices held out (see held_out_indices)."""
    training, validation = held_out_indices([u.speaker for u in dataset.utterances], held_out, seed)
    return subset(dataset, training, "training"), subset(dataset, validation, "held out")


def subset(dataset: Dataset, indices: Sequence[int], part: str) -> Dataset:
    """The utterances of `dataset` at `indices`, named after the part they are."""
    return Dataset(f"{dataset.name} ({part})", tuple(dataset.utterances[i] for i in indices))


def describe_split(training: Dataset, validation: Dataset) -> str:
    """The held-out part, e.g. "4 voices, 96 utterances" (or "12 utterances" where the data names no voices
    or the split could not keep them apart)."""
    voices = {u.speaker for u in validation.utterances}
    count = f"{len(validation)} utterance{'s' if len(validation) != 1 else ''}"
    if voices and all(voices) and not voices & {u.speaker for u in training.utterances}:
        return f"{len(voices)} voice{'s' if len(voices) != 1 else ''}, {count}"
    return count
