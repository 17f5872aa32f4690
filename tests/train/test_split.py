"""The validation split on plain data: whole voices held out, seeded, with an utterance fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import Dataset, Utterance
from core.train.split import describe_split, held_out_count, held_out_indices, split_by_speaker

VOICES = ["ann", "bob", "cy", "dee", "eve"] * 2 + ["ann", "bob"]  # 12 utterances, 5 voices


def test_whole_voices_are_held_out_and_the_split_is_seeded():
    training, validation = held_out_indices(VOICES, 0.4, seed=3)
    held = {VOICES[i] for i in validation}
    assert len(held) == 2 and not held & {VOICES[i] for i in training}  # no voice on both sides
    assert sorted(training + validation) == list(range(len(VOICES)))
    assert training == sorted(training) and validation == sorted(validation)  # the original order
    assert held_out_indices(VOICES, 0.4, seed=3) == (training, validation)
    assert {frozenset(VOICES[i] for i in held_out_indices(VOICES, 0.4, s)[1]) for s in range(8)} != {
        frozenset(held)
    }  # another seed, other voices
    _, one = held_out_indices(VOICES, 1, seed=0)  # a count: one voice
    assert len({VOICES[i] for i in one}) == 1


def test_without_voices_whole_utterances_are_held_out():
    for speakers in (["", "", "", "", "", "", "", ""], ["ann"] * 8, ["ann", "", "bob", "", "", "", "", ""]):
        training, validation = held_out_indices(speakers, 0.25, seed=0)
        assert len(validation) == 2 and len(training) == 6
        assert held_out_indices(speakers, 0.25, seed=0) == (training, validation)


def test_held_out_counts_and_refusals():
    assert held_out_count(20, 0.2) == 4 and held_out_count(20, 0.01) == 1 and held_out_count(20, 3) == 3
    for groups, held_out, message in [
        (1, 0.5, "at least two"),
        (4, 4, "leaves none"),
        (4, 0.9, "leaves none"),
        (4, 1.5, "whole number"),
        (4, 0, "fraction"),
    ]:
        with pytest.raises(ValueError, match=message):
            held_out_count(groups, held_out)


def test_split_by_speaker_makes_two_datasets():
    dataset = Dataset(
        "train", tuple(Utterance(f"u{i}", Path(f"u{i}.wav"), f"text {i}", v) for i, v in enumerate(VOICES))
    )
    training, validation = split_by_speaker(dataset, 2, seed=1)
    assert len(training) + len(validation) == len(dataset)
    assert training.name == "train (training)" and validation.name == "train (held out)"
    voices = {u.speaker for u in validation.utterances}
    assert describe_split(training, validation) == f"2 voices, {len(validation)} utterances"
    assert not voices & {u.speaker for u in training.utterances}
    nameless = Dataset("x", tuple(Utterance(f"u{i}", Path(f"u{i}.wav"), "t") for i in range(5)))
    assert describe_split(*split_by_speaker(nameless, 1)) == "1 utterance"
