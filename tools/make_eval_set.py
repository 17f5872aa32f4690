#!/usr/bin/env python3
"""Synthesize the bundled English speech evaluation set (and, on demand, training speech).

Every utterance is a sentence we wrote ourselves, spoken by a formant (espeak-ng) or diphone/cluster
(flite) synthesizer, so each file's reference transcript is known exactly. The audio is conditioned
the same way for every voice: resampled to 16 kHz mono with torchaudio, trimmed to 0.25 s of silence
at each end, peak-normalized to -3 dBFS and written with soundfile as FLAC PCM_16.

Usage
-----
    python tools/make_eval_set.py
        Regenerate assets/eval/ (splits `quick` and `full`, manifest.csv) and the browser demo clip
        assets/samples/hello.wav + hello.txt, then sanity-check and print a summary.
        Needs the `espeak-ng`, `flite` and `sox` programs (Debian: apt-get install espeak-ng flite sox).

    python tools/make_eval_set.py --split train --count 480 --out /some/dir
        Write 480 training utterances to /some/dir/audio/*.flac + /some/dir/manifest.csv (split
        `train`). The sentences come from a template grammar and never occur in quick/full. The voices
        (TRAIN_VOICES: 20 espeak-ng accents and variants) are none of the evaluation voices, so a model
        trained on them is scored on voices it has never heard; each utterance also gets its own
        speaking rate (130-200 wpm) and pitch (30-70 on espeak-ng's 0-100 scale), drawn with --seed.
        Speech comes from libespeak-ng in the `espeakng-loader` PyPI wheel (pip install
        espeakng-loader; no system packages), falling back to the `espeak-ng` program (-s RATE -p PITCH)
        when the wheel is missing. 480 utterances: 28 minutes of speech, 29 MiB, about 15 s on 2 idle cores.

    python tools/make_eval_set.py --check-only [--out DIR]
        Only sanity-check an existing manifest (default assets/eval) and print its summary.

Output format (what core/data.py reads): manifest.csv with columns exactly `path,text,split,voice`,
`path` relative to the CSV's folder (e.g. `audio/q000.flac`), `text` the reference sentence as
written. The output is deterministic: the same tool versions (and --seed) give byte-identical files.
Every espeak-ng voice name (language and +variant) is looked up in the backend's data folder before
synthesis, because espeak-ng quietly speaks a similar voice for a name it does not know.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = REPO / "assets" / "eval"
SAMPLES_DIR = REPO / "assets" / "samples"

SAMPLE_RATE = 16_000
PEAK = 10 ** (-3 / 20)  # peak level after normalization: -3 dBFS
EDGE_SILENCE_S = 0.25  # silence kept before the first and after the last sound
TRIM_THRESHOLD_DB = -40  # "sound" = samples within 40 dB of the peak
MANIFEST_COLUMNS = ("path", "text", "split", "voice")
SIZE_LIMIT_BYTES = 6_000_000  # 6 MB, decimal: stricter than 6 MiB
DURATION_RANGE_S = (1.5, 8.0)
MIN_RMS = 0.01  # RMS amplitude below this counts as (near) silent
CLIP_LEVEL = 0.999  # a peak at or above this counts as clipped


# --------------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak-ng" or "flite"
    name: str  # the engine's voice name, e.g. "en-us+f3" or "slt"

    @property
    def label(self) -> str:
        """The manifest's `voice` column, e.g. "espeak-ng:en-gb-scotland" or "flite:awb"."""
        return f"{self.engine}:{self.name}"


ESPEAK_RATE_WPM = 160  # a little slower than espeak-ng's default 175 words per minute: clearer
ESPEAK_PITCH = 50  # espeak-ng's default: each voice at its own pitch

# Eight voices, two per voice in `quick` and ten per voice in `full`. flite's `kal16` is the kal
# (US male diphone) voice recorded at 16 kHz; plain `kal` is 8 kHz telephone quality.
EVAL_VOICES = (
    Voice("espeak-ng", "en-us"),
    Voice("flite", "slt"),  # US female
    Voice("espeak-ng", "en-gb"),
    Voice("flite", "awb"),  # Scottish English male
    Voice("espeak-ng", "en-us+f3"),  # en-us with a female variant
    Voice("flite", "rms"),  # US male
    Voice("espeak-ng", "en-gb-scotland"),
    Voice("flite", "kal16"),  # US male diphone
)

# Training voices: espeak-ng only, so the wheel alone can produce them, and none of EVAL_VOICES, so a
# model trained on `train` is scored on voices it has not heard (a shared voice flatters its WER).
# Twenty voices: six accents (American, New York, Received Pronunciation, Lancaster, West Midlands,
# Caribbean) crossed with male (m*) and female (f*, steph) variants and variants that use the Klatt
# synthesizer (klatt*) instead of espeak-ng's default one. `+NAME` is a file in
# espeak-ng-data/voices/!v. Pass --voices to choose others (flite:NAME works too).
TRAIN_VOICES = (
    Voice("espeak-ng", "en-us+m1"),
    Voice("espeak-ng", "en-us+m3"),
    Voice("espeak-ng", "en-us+m6"),
    Voice("espeak-ng", "en-us+f1"),
    Voice("espeak-ng", "en-us+f2"),
    Voice("espeak-ng", "en-us+f4"),
    Voice("espeak-ng", "en-us+steph"),
    Voice("espeak-ng", "en-us+klatt5"),
    Voice("espeak-ng", "en-us-nyc"),
    Voice("espeak-ng", "en-us-nyc+f4"),
    Voice("espeak-ng", "en-gb-x-rp"),
    Voice("espeak-ng", "en-gb-x-rp+m2"),
    Voice("espeak-ng", "en-gb-x-rp+f2"),
    Voice("espeak-ng", "en-gb-x-rp+klatt4"),
    Voice("espeak-ng", "en-gb-x-gbclan"),
    Voice("espeak-ng", "en-gb-x-gbclan+f1"),
    Voice("espeak-ng", "en-gb-x-gbcwmd"),
    Voice("espeak-ng", "en-029"),
    Voice("espeak-ng", "en-029+f5"),
    Voice("espeak-ng", "en+klatt"),  # en = the en-gb voice file, with the Klatt synthesizer
)
# Each train utterance gets its own speaking rate and pitch, drawn uniformly with the seed: the same
# voice at different speeds and pitches, like different speakers of one accent. At the ends of both
# ranges Whisper tiny.en's WER on the train voices (6-55% on template sentences) stays within its WER on
# the evaluation voices (7-65%).
TRAIN_RATE_WPM = (130, 200)  # words per minute (espeak-ng's default is 175)
TRAIN_PITCH = (30, 70)  # espeakPITCH / espeak-ng -p, 0-100; 50 is the voice's own pitch


def parse_voice(label: str) -> Voice:
    engine, sep, name = label.partition(":")
    if not sep or engine not in ("espeak-ng", "flite") or not name:
        raise argparse.ArgumentTypeError(f"voice {label!r}: expected espeak-ng:NAME or flite:NAME")
    return Voice(engine, name)


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------
# Everyday sentences of 7-13 words (2-5 s of speech). Some carry numbers as digits ("7 apples",
# "in 1985", "9th") and some as words ("twenty minutes", "a hundred") to exercise the WER
# normalizer. We avoid proper names, British/American spelling pairs (colour/color,
# centre/center) and hyphenated compounds, whose written form a listener cannot know.

QUICK_SENTENCES = (
    "Please close the window before you leave the house.",
    "I bought 7 apples and 3 oranges at the market.",
    "The train to the city leaves every twenty minutes.",
    "She has been learning to play the piano since 2015.",
    "Could you turn the music down a little, please?",
    "We planted two rows of tomatoes behind the garage.",
    "The library is closed on Sundays and public holidays.",
    "My grandfather built this wooden table in 1985.",
    "It started to rain just as the football match began.",
    "There are 12 eggs in the fridge and a loaf of bread.",
    "He forgot his umbrella at the office again today.",
    "The children laughed at the small dog chasing its tail.",
    "Our flight was delayed by three hours because of fog.",
    "Remember to water the plants on the kitchen shelf.",
    "The soup tastes much better with a pinch of salt.",
    "They moved to a quiet village near the sea last spring.",
)

FULL_SENTENCES = (
    "The coffee shop on the corner opens at seven in the morning.",
    "I need to buy new shoes before the winter starts.",
    "The old bridge was finally repaired after many years.",
    "Turn left at the second traffic light and park near the bank.",
    "She read the whole book in a single afternoon.",
    "We watched the sunset from the top of the hill.",
    "The meeting has been moved to Thursday afternoon.",
    "He keeps his keys in a small box by the door.",
    "Fresh bread is delivered to the bakery every morning.",
    "The students handed in 25 essays on Friday.",
    "My phone battery died in the middle of the call.",
    "The cat sleeps on the warm blanket near the fire.",
    "Please write your answer clearly on the back of the page.",
    "The museum first opened its doors to visitors in 1999.",
    "A strong wind knocked over the fence last night.",
    "They ordered four pizzas for the party on Saturday.",
    "The doctor told him to drink more water every day.",
    "I left my jacket on the chair in the waiting room.",
    "The river flooded the fields after the heavy storm.",
    "Our team scored 3 goals in the second half.",
    "She painted the kitchen walls a soft shade of yellow.",
    "The bus driver waited for the old man to sit down.",
    "We need six more chairs for the dinner tonight.",
    "The printer on the second floor is out of paper again.",
    "He walked the dog along the beach before breakfast.",
    "The concert tickets sold out in less than an hour.",
    "Can you help me carry these boxes up the stairs?",
    "The baby finally fell asleep after a long walk.",
    "There were 40 people waiting outside the cinema.",
    "The farmer sells honey and fresh eggs at the gate.",
    "I usually go for a run before work on Mondays.",
    "The lights went out in the middle of the movie.",
    "She keeps a notebook full of recipes from her mother.",
    "The hotel room had a lovely view of the mountains.",
    "He fixed the broken bicycle with a few simple tools.",
    "The shop will be closed for repairs until next week.",
    "We found an old map hidden inside the drawer.",
    "My sister visits us once or twice a year.",
    "The soup needs to simmer for 30 minutes.",
    "The airport is about 15 miles from the town.",
    "A small bird built a nest above the front door.",
    "They painted the fence white over the long weekend.",
    "Please remember to switch off the lights when you leave.",
    "The teacher wrote the answers on the board.",
    "I have lived in this apartment for eight years.",
    "The ice on the pond was too thin to walk on.",
    "He spends most evenings reading in the garden.",
    "The new road will open to traffic next summer.",
    "We ate lunch on a bench beside the lake.",
    "The clock in the hall stopped at midnight.",
    "She wrapped the present in bright blue paper.",
    "The car wouldn't start on the coldest morning of the year.",
    "Our school was founded in 1962 by a group of parents.",
    "The waiter brought us two glasses of cold lemonade.",
    "I can hear the birds singing outside my window.",
    "The village holds a market in the square every week.",
    "He lost his wallet somewhere between the station and home.",
    "The new bakery sells the best bread in town.",
    "The recipe calls for 2 cups of flour and one egg.",
    "We stayed up late talking about our plans.",
    "The elevator is broken, so please use the stairs.",
    "A long line of cars waited at the border crossing.",
    "The garden looks beautiful after the spring rain.",
    "She answered every question on the test correctly.",
    "The mountain path is steep and covered with loose stones.",
    "My brother works at a hospital on the other side of town.",
    "The package should arrive within five working days.",
    "The kitchen smells of fresh coffee and warm toast.",
    "They built a snowman in the park after school.",
    "The show starts at eight, so we should leave soon.",
    "The store is having a sale on winter coats.",
    "I wrote down the address on the back of a receipt.",
    "The film was much longer than we expected.",
    "The bridge is closed to heavy trucks until further notice.",
    "Please put the dirty dishes in the sink.",
    "He has run 5 marathons in the last 10 years.",
    "The wind blew the leaves across the empty street.",
    "We counted more than a hundred stars in the night sky.",
    "The little boat drifted slowly back to the shore.",
    "Our hotel room was on the 9th floor.",
)

DEMO_TEXT = "Hello, this is a short test of the speech lab."
DEMO_VOICE = Voice("flite", "slt")  # a voice tiny.en transcribes exactly: a clean demo and latency clip

# A template grammar for the `train` split: each template is a format string whose fields are
# filled from the word lists below. It yields hundreds of thousands of distinct sentences; the
# generator rejects any that match a quick/full sentence after normalization.
_TRAIN_WORDS = {
    "who": (
        "my uncle",
        "the teacher",
        "our driver",
        "a young nurse",
        "the old fisherman",
        "her little brother",
        "the new manager",
        "a tired student",
        "my best friend",
        "the night guard",
        "our cook",
        "the shop owner",
    ),
    "did": (
        "cleaned",
        "painted",
        "sold",
        "borrowed",
        "carried",
        "checked",
        "opened",
        "moved",
        "locked",
        "washed",
        "repaired",
        "measured",
    ),
    "thing": (
        "the blue van",
        "a heavy suitcase",
        "the wooden gate",
        "a box of candles",
        "the kitchen cupboard",
        "an old radio",
        "the garden shed",
        "a pair of boots",
        "the spare wheel",
        "a basket of plums",
        "the metal ladder",
        "a stack of letters",
    ),
    "where": (
        "near the station",
        "behind the school",
        "at the docks",
        "by the canal",
        "in the basement",
        "on the roof",
        "beside the bakery",
        "outside the post office",
        "in the parking lot",
        "across the road",
        "at the farm",
        "inside the barn",
    ),
    "when": (
        "this morning",
        "after lunch",
        "on Tuesday",
        "last weekend",
        "before dawn",
        "late at night",
        "yesterday evening",
        "in the afternoon",
        "on Wednesday",
        "during the storm",
        "at noon",
        "last month",
    ),
    "do": (
        "sort",
        "count",
        "label",
        "pack",
        "check",
        "weigh",
        "wrap",
        "move",
        "find",
        "collect",
        "bring in",
        "put away",
    ),
    "later": (
        "tomorrow morning",
        "next week",
        "after dinner",
        "on Friday",
        "tonight",
        "before noon",
        "on Monday",
        "next month",
        "after the meeting",
        "this evening",
    ),
    "stuff": (
        "the towels",
        "these papers",
        "the spoons",
        "the old jars",
        "your shirts",
        "the paint brushes",
        "those crates",
        "the clean cups",
        "the seed packets",
        "the front steps",
        "the bread rolls",
        "the empty bottles",
    ),
    "event": (
        "the guests arrive",
        "the shop closes",
        "the rain starts",
        "dinner is ready",
        "the bus comes",
        "the lesson begins",
        "the sun goes down",
        "we go out",
        "the film starts",
        "the bell rings",
        "the truck leaves",
        "your sister calls",
    ),
    "count": ("2", "4", "6", "8", "11", "14", "17", "20", "three", "five", "nine", "sixteen"),
    "many": (
        "blue bottles",
        "paper cups",
        "wooden spoons",
        "spare keys",
        "cotton shirts",
        "glass jars",
        "small candles",
        "old coins",
        "empty boxes",
        "green pencils",
        "clean towels",
        "tin cans",
    ),
    "spot": (
        "on the top shelf",
        "in the back room",
        "under the stairs",
        "by the sink",
        "in the blue cupboard",
        "on the porch",
        "in the hall closet",
        "near the oven",
        "in the attic",
        "behind the sofa",
        "on the window sill",
        "in the van",
    ),
    "go": (
        "walked",
        "drove",
        "cycled",
        "took the bus",
        "took the train",
        "rode",
        "sailed",
        "flew",
        "hiked",
        "went",
    ),
    "place": (
        "lake",
        "coast",
        "valley",
        "old mill",
        "island",
        "forest",
        "castle",
        "zoo",
        "fair",
        "river",
        "city",
        "hills",
    ),
    "year": ("1978", "1983", "1991", "1997", "2004", "2008", "2011", "2019"),
    "weather": ("cold", "windy", "foggy", "sunny", "quiet", "busy", "warm", "wet"),
    "part": ("morning", "evening", "night", "afternoon", "week", "day"),
}
_TRAIN_TEMPLATES = (
    "{Who} {did} {thing} {where} {when}.",
    "Please {do} {stuff} before {event}.",
    "There are {count} {many} {spot}.",
    "Did {who} {do} {stuff} {when}?",
    "We {go} to the {place} in {year}.",
    "It was a {weather} {part} when {who} {did} {thing}.",
    "{Who} will {do} {stuff} {where} {later}.",
    "I found {count} {many} {spot} {when}.",
)


def normalize_for_overlap(text: str) -> str:
    """Lower case, letters, digits and single spaces only: what "the same sentence" means here."""
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


def train_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences from the template grammar, none equal to a quick/full sentence."""
    held_out = {normalize_for_overlap(s) for s in QUICK_SENTENCES + FULL_SENTENCES}
    rng = random.Random(seed)
    chosen: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(chosen) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise RuntimeError(f"the template grammar ran out of new sentences after {len(chosen)}")
        template = _TRAIN_TEMPLATES[len(chosen) % len(_TRAIN_TEMPLATES)]
        fields = {key: rng.choice(words) for key, words in _TRAIN_WORDS.items()}
        fields.update({key.capitalize(): value[0].upper() + value[1:] for key, value in fields.items()})
        sentence = template.format(**fields)
        key = normalize_for_overlap(sentence)
        if key in seen or key in held_out:
            continue
        seen.add(key)
        chosen.append(sentence)
    return chosen


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


class _EspeakLibrary:
    """libespeak-ng from the `espeakng-loader` wheel, driven through ctypes (synchronous mode)."""

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    POS_CHARACTER = 1
    CHARS_UTF8 = 1
    PARAM_RATE = 1
    PARAM_PITCH = 3  # espeakPITCH: 0-100, 50 = the voice's own pitch
    LANGUAGE_FILES = {"en-gb": "en", "en-uk": "en"}
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self):
        import espeakng_loader  # raises ImportError when the wheel is not installed

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.sample_rate = lib.espeak_Initialize(
            self.AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self._chunks: list[np.ndarray] = []

        def collect(wav, n_samples, _events):
            if n_samples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
            return 0  # 0 = keep synthesizing

        self._callback = self._CALLBACK(collect)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)  # espeak-ng >= 1.52
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        self.lib = lib

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            # The library, unlike the espeak-ng program, does not fall back from a language code
            # to the voice file that speaks it: en-gb lives in the file gmw/en, named "en".
            language, plus, variant = voice.partition("+")
            alias = self.LANGUAGE_FILES.get(language.lower())
            if alias is None or self.lib.espeak_SetVoiceByName((alias + plus + variant).encode()) != 0:
                raise RuntimeError(f"libespeak-ng has no voice {voice!r}")
        # Set after the voice, as the espeak-ng program does with -s and -p.
        self.lib.espeak_SetParameter(self.PARAM_RATE, rate, 0)
        self.lib.espeak_SetParameter(self.PARAM_PITCH, pitch, 0)
        if self._set_seed is not None:
            # Variants with breath noise (+f2, +f3 ...) draw random numbers; the library seeds
            # them from the clock. A fixed seed per utterance makes the output reproducible.
            self._set_seed(0)
        data = text.encode("utf-8")
        self._chunks = []
        status = self.lib.espeak_Synth(
            data, len(data) + 1, 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768.0, self.sample_rate


class Synthesizer:
    """Text + Voice -> float32 samples at the engine's native rate.

    espeak_backend: "binary" (the espeak-ng program), "library" (the espeakng-loader wheel) or
    "auto" (the wheel if it imports, else the program).
    """

    def __init__(self, espeak_backend: str = "binary"):
        self._library: _EspeakLibrary | None = None
        if espeak_backend in ("library", "auto"):
            try:
                self._library = _EspeakLibrary()
            except (ImportError, OSError, RuntimeError) as exc:
                if espeak_backend == "library":
                    raise SystemExit(
                        f"espeakng-loader is not usable ({exc}); pip install espeakng-loader"
                    ) from None
                print(
                    f"note: espeakng-loader not usable ({exc}); using the espeak-ng program", file=sys.stderr
                )
        self.espeak_backend = "library" if self._library is not None else "binary"
        self._tmp = Path(tempfile.mkdtemp(prefix="make_eval_set_"))

    def missing_voices(self, voices: tuple[Voice, ...]) -> list[str]:
        """Labels of the espeak-ng voices whose language or variant file this backend lacks.

        The library and the program both quietly speak something else for an unknown name
        (en-us+typo speaks as en-us, en-typo as en), so look the files up in their data folder.
        """
        data = self.espeak_data_dir()
        if data is None:
            return []
        languages = {p.name.lower() for p in (data / "lang").rglob("*") if p.is_file()}
        languages |= set(_EspeakLibrary.LANGUAGE_FILES)
        variants = {p.name for p in (data / "voices" / "!v").glob("*")}
        missing = []
        for voice in voices:
            language, _, variant = voice.name.partition("+")
            if voice.engine == "espeak-ng" and (
                language.lower() not in languages or (variant and variant not in variants)
            ):
                missing.append(voice.label)
        return missing

    def espeak_data_dir(self) -> Path | None:
        """espeak-ng-data of the wheel, or the one `espeak-ng --version` names; None if unknown."""
        if self._library is not None:
            import espeakng_loader

            return Path(espeakng_loader.get_data_path())
        if shutil.which("espeak-ng") is None:
            return None
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"Data at:\s*(\S+)", out)
        return Path(found.group(1)) if found and Path(found.group(1)).is_dir() else None

    def describe(self) -> str:
        if self._library is not None:
            import espeakng_loader

            return (
                "libespeak-ng from espeakng-loader "
                f"({Path(espeakng_loader.get_library_path()).resolve().name})"
            )
        return _tool_version(["espeak-ng", "--version"])

    def __call__(
        self, text: str, voice: Voice, rate: int = ESPEAK_RATE_WPM, pitch: int = ESPEAK_PITCH
    ) -> tuple[np.ndarray, int]:
        """rate (words per minute) and pitch (0-100) apply to espeak-ng only; flite speaks as it is."""
        if voice.engine == "espeak-ng" and self._library is not None:
            return self._library.synth(text, voice.name, rate, pitch)
        wav = self._tmp / "utterance.wav"
        if voice.engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice.name, "-s", str(rate), "-p", str(pitch)]
            cmd += ["-w", str(wav), "--stdin"]
        elif voice.engine == "flite":
            cmd = ["flite", "-voice", voice.name, "-o", str(wav), "-f", "/dev/stdin"]
        else:
            raise ValueError(f"unknown engine {voice.engine!r}")
        _require(cmd[0])
        subprocess.run(cmd, input=text.encode("utf-8"), check=True, capture_output=True)
        samples, rate_hz = sf.read(wav, dtype="float32", always_2d=True)
        return samples.mean(axis=1), rate_hz

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _require(program: str) -> None:
    if shutil.which(program) is None:
        raise SystemExit(
            f"`{program}` is not installed; on Debian/Ubuntu: apt-get install espeak-ng flite sox"
        )


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = (out.stdout or out.stderr).strip().splitlines()
        return next((line.strip() for line in lines if "version" in line.lower()), lines[0])
    except (OSError, IndexError):
        return f"{cmd[0]} (version unknown)"


def condition(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """Native-rate float samples -> 16 kHz int16: resample, trim edge silence, pad, normalize."""
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if rate_hz != SAMPLE_RATE:
        audio = AF.resample(audio, rate_hz, SAMPLE_RATE)
    audio = audio.numpy().astype(np.float64)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak <= 0:
        raise RuntimeError("the synthesizer produced silence")
    loud = np.flatnonzero(np.abs(audio) >= peak * 10 ** (TRIM_THRESHOLD_DB / 20))
    audio = audio[loud[0] : loud[-1] + 1]
    pad = np.zeros(int(EDGE_SILENCE_S * SAMPLE_RATE))
    audio = np.concatenate([pad, audio * (PEAK / peak), pad])
    return np.round(audio * 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------
# Writing, checking, summarizing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    uid: str
    text: str
    split: str
    voice: Voice
    rate: int = ESPEAK_RATE_WPM  # words per minute (espeak-ng only)
    pitch: int = ESPEAK_PITCH  # 0-100, 50 = the voice's own pitch (espeak-ng only)


def eval_items() -> list[Item]:
    """quick = q000..q015 (two per voice), full = f000..f079 (ten per voice), voices round-robin."""
    items = [
        Item(f"q{i:03d}", text, "quick", EVAL_VOICES[i % len(EVAL_VOICES)])
        for i, text in enumerate(QUICK_SENTENCES)
    ]
    items += [
        Item(f"f{i:03d}", text, "full", EVAL_VOICES[i % len(EVAL_VOICES)])
        for i, text in enumerate(FULL_SENTENCES)
    ]
    return items


def train_items(count: int, seed: int, voices: tuple[Voice, ...]) -> list[Item]:
    """t0000.. with voices balanced but shuffled (seeded), so no voice always gets one template, and
    each utterance's speaking rate and pitch drawn from TRAIN_RATE_WPM and TRAIN_PITCH (seeded), so a
    voice is not always heard at one speed and one pitch."""
    order = [voices[i % len(voices)] for i in range(count)]
    random.Random(seed + 2).shuffle(order)
    rng = random.Random(seed + 1)
    styles = [(rng.randint(*TRAIN_RATE_WPM), rng.randint(*TRAIN_PITCH)) for _ in range(count)]
    return [
        Item(f"t{i:04d}", text, "train", voice, rate, pitch)
        for i, (text, voice, (rate, pitch)) in enumerate(zip(train_sentences(count, seed), order, styles))
    ]


def write_set(out_dir: Path, items: list[Item], synth: Synthesizer) -> None:
    """Synthesize every item (at its own rate and pitch) into out_dir/audio/<uid>.flac and write
    out_dir/manifest.csv.

    Stale audio files from an earlier run are removed so the folder matches the manifest exactly.
    """
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{item.uid}.flac" for item in items}
    for old in audio_dir.glob("*.flac"):
        if old.name not in wanted:
            old.unlink()
    rows = []
    for n, item in enumerate(items, 1):
        samples, rate_hz = synth(item.text, item.voice, item.rate, item.pitch)
        pcm = condition(samples, rate_hz)
        path = audio_dir / f"{item.uid}.flac"
        sf.write(path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append(
            {"path": f"audio/{path.name}", "text": item.text, "split": item.split, "voice": item.voice.label}
        )
        if n % 50 == 0 or n == len(items):
            print(f"  synthesized {n}/{len(items)}", file=sys.stderr)
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_demo_clip(synth: Synthesizer, out_dir: Path = SAMPLES_DIR) -> Path:
    """assets/samples/hello.wav (16 kHz mono PCM16, about 3 s) and hello.txt, its transcript."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples, rate_hz = synth(DEMO_TEXT, DEMO_VOICE)
    wav = out_dir / "hello.wav"
    sf.write(wav, condition(samples, rate_hz), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    (out_dir / "hello.txt").write_text(DEMO_TEXT + "\n", encoding="utf-8")
    return wav


def read_manifest(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def audio_stats(path: Path) -> dict[str, float]:
    """Duration, peak and RMS amplitude (full scale = 1) from `sox FILE -n stat`, or numpy without sox."""
    if shutil.which("sox"):
        out = subprocess.run(
            ["sox", str(path), "-n", "stat"], capture_output=True, text=True, check=True
        ).stderr
        fields = dict(re.findall(r"^(.+?):\s+(\S+)$", out, flags=re.M))
        return {
            "duration": float(fields["Length (seconds)"]),
            "peak": max(abs(float(fields["Maximum amplitude"])), abs(float(fields["Minimum amplitude"]))),
            "rms": float(fields["RMS     amplitude"]),
        }
    samples, _ = sf.read(path, dtype="float64")
    return {
        "duration": len(samples) / SAMPLE_RATE,
        "peak": float(np.abs(samples).max()),
        "rms": float(np.sqrt(np.mean(samples**2))),
    }


def check_set(out_dir: Path, size_limit: int | None) -> tuple[list[str], list[dict]]:
    """Problems found (empty list = all good) and per-row stats for the summary."""
    problems: list[str] = []
    rows = read_manifest(out_dir / "manifest.csv")
    stats = []
    for row in rows:
        path = out_dir / row["path"]
        info = sf.info(path)
        if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.subtype != "PCM_16":
            problems.append(
                f"{row['path']}: {info.samplerate} Hz, {info.channels} channel(s), {info.subtype}"
            )
        s = audio_stats(path)
        lo, hi = DURATION_RANGE_S
        if not lo <= s["duration"] <= hi:
            problems.append(f"{row['path']}: duration {s['duration']:.2f} s outside {lo}-{hi} s")
        if s["rms"] < MIN_RMS:
            problems.append(f"{row['path']}: RMS {s['rms']:.4f} looks silent")
        if s["peak"] >= CLIP_LEVEL:
            problems.append(f"{row['path']}: peak {s['peak']:.4f} looks clipped")
        stats.append({**row, **s, "bytes": path.stat().st_size})
    texts = [normalize_for_overlap(r["text"]) for r in rows]
    if len(set(texts)) != len(texts):
        problems.append("duplicate sentences in the manifest")
    if size_limit is not None:
        total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
        if total > size_limit:
            problems.append(f"{out_dir} holds {total} bytes, over the {size_limit} byte limit")
    return problems, stats


def print_summary(stats: list[dict], out_dir: Path) -> None:
    splits = sorted(
        {s["split"] for s in stats},
        key=lambda x: ("quick", "full", "train").index(x) if x in ("quick", "full", "train") else 9,
    )
    voices = sorted({s["voice"] for s in stats})
    width = max(len(v) for v in voices) + 2
    print(f"\n{'voice':<{width}}" + "".join(f"{sp:>8}" for sp in splits) + f"{'seconds':>10}")
    for voice in voices:
        mine = [s for s in stats if s["voice"] == voice]
        counts = "".join(f"{sum(s['split'] == sp for s in mine):>8}" for sp in splits)
        print(f"{voice:<{width}}{counts}{sum(s['duration'] for s in mine):>10.1f}")
    totals = "".join(f"{sum(s['split'] == sp for s in stats):>8}" for sp in splits)
    print(f"{'total':<{width}}{totals}{sum(s['duration'] for s in stats):>10.1f}")
    durations = [s["duration"] for s in stats]
    folder_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(
        f"\n{len(stats)} utterances, {len(voices)} voices, {sum(durations) / 60:.1f} min of speech "
        f"(each {min(durations):.2f}-{max(durations):.2f} s, mean {np.mean(durations):.2f} s)"
    )
    print(
        f"audio {sum(s['bytes'] for s in stats):,} bytes; folder {out_dir} {folder_bytes:,} bytes "
        f"({folder_bytes / 2**20:.2f} MiB)"
    )


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--split",
        choices=("eval", "train"),
        default="eval",
        help="eval: quick + full into assets/eval (default); train: --count template sentences",
    )
    parser.add_argument("--out", type=Path, help="output folder (default assets/eval; required for train)")
    parser.add_argument("--count", type=int, default=300, help="number of train utterances (default 300)")
    parser.add_argument(
        "--seed", type=int, default=0, help="train: seed for sentences, voices, rates and pitches"
    )
    parser.add_argument(
        "--voices",
        type=parse_voice,
        nargs="+",
        help="train: voices as espeak-ng:NAME or flite:NAME (default: TRAIN_VOICES, none used by quick/full)",
    )
    parser.add_argument(
        "--espeak",
        choices=("auto", "library", "binary"),
        help="espeak-ng backend (default: binary for eval, auto = wheel then program for train)",
    )
    parser.add_argument("--check-only", action="store_true", help="only check and summarize an existing set")
    args = parser.parse_args(argv)

    if args.split == "train" and args.out is None and not args.check_only:
        parser.error("--split train needs --out DIR (training audio does not go into assets/)")
    out_dir = (args.out or EVAL_DIR).resolve()
    if args.split == "train" and out_dir == EVAL_DIR.resolve():
        parser.error("refusing to write training audio into assets/eval")

    started = time.perf_counter()
    if not args.check_only:
        synth = Synthesizer(args.espeak or ("binary" if args.split == "eval" else "auto"))
        try:
            print(f"espeak-ng: {synth.describe()}", file=sys.stderr)
            voices = EVAL_VOICES if args.split == "eval" else tuple(args.voices or TRAIN_VOICES)
            missing = synth.missing_voices(voices)
            if missing:
                raise SystemExit(f"espeak-ng ({synth.espeak_backend}) has no voice {', '.join(missing)}")
            if args.split == "eval":
                print(f"flite: {_tool_version(['flite', '--version'])}", file=sys.stderr)
                write_set(out_dir, eval_items(), synth)
                if out_dir == EVAL_DIR.resolve():
                    print(f"demo clip: {write_demo_clip(synth)}", file=sys.stderr)
            else:
                shared = sorted({v.label for v in voices} & {v.label for v in EVAL_VOICES})
                if shared:
                    print(
                        f"note: {', '.join(shared)} also speak(s) quick/full, so WER there will "
                        "flatter a model trained on this set",
                        file=sys.stderr,
                    )
                write_set(out_dir, train_items(args.count, args.seed, voices), synth)
        finally:
            synth.close()
        print(f"generated in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    problems, stats = check_set(out_dir, SIZE_LIMIT_BYTES if args.split == "eval" else None)
    print_summary(stats, out_dir)
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    lo, hi = DURATION_RANGE_S
    print(f"checks passed: 16 kHz mono PCM_16, durations {lo:.1f}-{hi:.1f} s, none silent or clipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
