"""Word and character error rates on Whisper-normalized text, with a bootstrap interval and word diffs.

WER is corpus-level (all word errors / all reference words), so long utterances weigh more than
short ones, as in the Whisper paper. Text is normalized first so "Seven apples!" matches "7 apples".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import jiwer
import numpy as np

# British->American spellings for the Whisper normalizer. Whisper ships ~1,700 of these in
# normalizer.json next to its tokenizer; we keep none, so "colour" and "color" stay different words.
SPELLING: dict[str, str] = {}


@lru_cache(maxsize=1)
def _normalizer() -> Callable[[str], str]:
    try:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
    except ImportError:
        return _basic_normalize
    return EnglishTextNormalizer(SPELLING)


def _basic_normalize(text: str) -> str:
    """Fallback when transformers is missing: lower case, drop punctuation, collapse spaces."""
    text = re.sub(r"[^\w\s']|_", " ", text.lower()).replace("'", "")
    return " ".join(text.split())


def normalize(text: str) -> str:
    """Whisper's English normalizer: lower case, no punctuation, numbers as digits ("seven" -> "7"),
    "mr." -> "mister", contractions expanded ("it's" -> "it is"), fillers ("uh", "um") removed."""
    return _normalizer()(text)


def ends_in_repeat(text: str, min_words: int = 6) -> bool:
    """True when the words of `text` end with one phrase said over and over: more than twice back to back
    (the last time possibly cut off) and over at least `min_words` words ("go forward ten meters go forward
    ten meters go forward"): what a decoding loop leaves once the loop stop or the token cap cuts it."""
    words = text.split()
    for n in range(1, len(words) // 2 + 1):
        periodic = n  # the longest end of `words` that repeats with period n
        while periodic < len(words) and words[-1 - periodic] == words[-1 - periodic + n]:
            periodic += 1
        if periodic >= max(min_words, 2 * n + 1):
            return True
    return False


@dataclass
class UtteranceScore:
    id: str
    reference: str
    hypothesis: str
    normalized_reference: str
    normalized_hypothesis: str
    substitutions: int
    deletions: int
    insertions: int
    n_words: int  # words in the normalized reference
    wer: float  # errors / n_words; with an empty reference, 0.0 if the hypothesis is empty too, else 1.0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def looped(self) -> bool:
        """The hypothesis ends in a repeated phrase that the reference does not: a decoding loop cut short."""
        return ends_in_repeat(self.normalized_hypothesis) and not ends_in_repeat(self.normalized_reference)


@dataclass
class Scores:
    wer: float
    cer: float
    raw_wer: float  # on the text as given: case and punctuation count as errors
    n_utterances: int
    n_words: int
    wer_ci95: tuple[float, float]
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    rows: list[UtteranceScore] = field(default_factory=list)

    @property
    def looped(self) -> int:
        """Transcripts that end in a decoding loop (see UtteranceScore.looped)."""
        return sum(row.looped for row in self.rows)

    def to_dict(self) -> dict:
        """Plain JSON-ready values (the interval as a two-item list)."""
        out = asdict(self)
        out["wer_ci95"] = list(self.wer_ci95)
        return out


def score(
    references: list[str],
    hypotheses: list[str],
    ids: list[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    parts: list[list[str]] | None = None,
) -> Scores:
    """Score hypotheses against references after normalization; corpus WER plus per-utterance rows.

    An utterance whose reference normalizes to nothing (e.g. silence, or only "um") adds no reference
    words but its hypothesis words still count as insertions. If no reference has any words at all
    the WER is undefined and we raise ValueError. The 95% interval is a percentile bootstrap over
    utterances (`resamples` draws with a fixed `seed`, so it is deterministic).

    `parts` (packed windows: row i's reference is its utterances' references joined, parts[i] lists them)
    makes the interval a bootstrap over those utterances, not over the few windows: each error of a window
    is counted against the utterance whose reference words it falls on (an insertion: the next word's).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if ids is None:
        ids = [str(i) for i in range(len(references))]
    elif len(ids) != len(references):
        raise ValueError(f"{len(ids)} ids for {len(references)} references; they must pair up")
    if not references:
        raise ValueError("nothing to score: no references given")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    words = jiwer.process_words(refs, hyps)
    rows = []
    for i, chunks in enumerate(words.alignments):
        s, d, n = _counts(chunks)
        n_words = len(words.references[i])
        errors = s + d + n
        wer = errors / n_words if n_words else float(errors > 0)
        rows.append(
            UtteranceScore(ids[i], references[i], hypotheses[i], refs[i], hyps[i], s, d, n, n_words, wer)
        )
    total_words = sum(r.n_words for r in rows)
    if total_words == 0:
        raise ValueError("WER is undefined: every reference is empty after normalization")
    total_errors = sum(r.errors for r in rows)
    units = [(r.errors, r.n_words) for r in rows]
    if parts is not None:
        units = [
            unit for i, row in enumerate(rows) for unit in _split_errors(words.alignments[i], row, parts[i])
        ]
    return Scores(
        wer=total_errors / total_words,
        cer=float(jiwer.cer(refs, hyps)),
        raw_wer=_raw_wer(references, hypotheses),
        n_utterances=len(rows),
        n_words=total_words,
        wer_ci95=_bootstrap([e for e, _ in units], [n for _, n in units], resamples, seed),
        substitutions=sum(r.substitutions for r in rows),
        deletions=sum(r.deletions for r in rows),
        insertions=sum(r.insertions for r in rows),
        rows=rows,
    )


LENGTH_BUCKETS = (
    ("≤ 3 s", 0.0, 3.0),
    ("3–10 s", 3.0, 10.0),
    ("10–30 s", 10.0, 30.0),
    ("> 30 s", 30.0, math.inf),
)


@dataclass(frozen=True)
class BucketScore:
    """WER and time per clip of the clips whose length falls in one bucket."""

    bucket: str  # e.g. "3–10 s": over 3 s, up to 10 s
    clips: int
    words: int
    wer: float
    median_ms: float | None  # median transcription time per clip (None when not timed)


def by_length(
    rows: list[UtteranceScore], seconds: list[float], ms: list[float] | None = None
) -> list[BucketScore]:
    """Corpus WER (and median time per clip) per clip-length bucket of LENGTH_BUCKETS, for one score row
    per clip of `seconds` length: short commands and long dictation fail differently, and a model tuned
    for one may not serve the other. Empty buckets, and buckets whose references have no words, are left
    out."""
    if len(rows) != len(seconds) or (ms is not None and len(ms) != len(rows)):
        raise ValueError(f"{len(rows)} rows, {len(seconds)} lengths and {len(ms or [])} times must pair up")
    out = []
    for label, low, high in LENGTH_BUCKETS:
        inside = [i for i, s in enumerate(seconds) if (low < s or low == 0) and s <= high]
        words = sum(rows[i].n_words for i in inside)
        if not inside or not words:
            continue
        errors = sum(rows[i].errors for i in inside)
        median = float(np.median([ms[i] for i in inside])) if ms is not None else None
        out.append(BucketScore(label, len(inside), words, errors / words, median))
    return out


def word_diff(reference: str, hypothesis: str) -> list[tuple[str, str, str]]:
    """Aligned (op, ref_word, hyp_word) on normalized text; op is equal/substitute/delete/insert,
    and the missing side of a delete or insert is "".

    Between two matching words, errors are shown as substitutions first (paired left to right),
    then the leftover deletions or insertions; the counts equal jiwer's, the pairing reads better.
    """
    out = jiwer.process_words(normalize(reference), normalize(hypothesis))
    ref, hyp = out.references[0], out.hypotheses[0]
    diff: list[tuple[str, str, str]] = []
    gap_ref: list[str] = []
    gap_hyp: list[str] = []
    for chunk in out.alignments[0] + [None]:
        if chunk is not None and chunk.type != "equal":
            gap_ref += ref[chunk.ref_start_idx : chunk.ref_end_idx]
            gap_hyp += hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]
            continue
        paired = min(len(gap_ref), len(gap_hyp))
        diff += [("equal" if r == h else "substitute", r, h) for r, h in zip(gap_ref, gap_hyp)]
        diff += [("delete", r, "") for r in gap_ref[paired:]]
        diff += [("insert", "", h) for h in gap_hyp[paired:]]
        gap_ref, gap_hyp = [], []
        if chunk is not None:
            words = ref[chunk.ref_start_idx : chunk.ref_end_idx]
            diff += [("equal", w, w) for w in words]
    return diff


def _counts(chunks) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one utterance's jiwer alignment."""
    s = d = n = 0
    for c in chunks:
        if c.type == "substitute":
            s += c.ref_end_idx - c.ref_start_idx
        elif c.type == "delete":
            d += c.ref_end_idx - c.ref_start_idx
        elif c.type == "insert":
            n += c.hyp_end_idx - c.hyp_start_idx
    return s, d, n


def _split_errors(chunks, row: UtteranceScore, references: list[str]) -> list[tuple[int, int]]:
    """(errors, words) of each utterance in a packed row, from the row's alignment: substitutions and
    deletions belong to the utterance of their reference words, insertions to that of the next reference
    word (the last utterance's at the end). Where the utterances' normalized words do not add up to the
    row's (the normalizer joined something across a boundary), the row stays one unit."""
    counts = [len(normalize(reference).split()) for reference in references]
    if sum(counts) != row.n_words or not counts:
        return [(row.errors, row.n_words)]
    owner = [i for i, count in enumerate(counts) for _ in range(count)]
    errors = [0] * len(counts)
    for c in chunks:
        if c.type in ("substitute", "delete"):
            for word in range(c.ref_start_idx, c.ref_end_idx):
                errors[owner[word]] += 1
        elif c.type == "insert":
            errors[owner[min(c.ref_start_idx, len(owner) - 1)] if owner else 0] += (
                c.hyp_end_idx - c.hyp_start_idx
            )
    return list(zip(errors, counts))


def _raw_wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER on the unnormalized text (split on whitespace only); nan if there are no words."""
    out = jiwer.process_words(references, hypotheses)
    total = sum(len(r) for r in out.references)
    if total == 0:
        return float("nan")
    return (out.substitutions + out.deletions + out.insertions) / total


def _bootstrap(errors: list[int], n_words: list[int], resamples: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of corpus WER, resampling utterances with replacement."""
    errors_arr, words_arr = np.asarray(errors, dtype=float), np.asarray(n_words, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(errors_arr), size=(resamples, len(errors_arr)))
    denominators = words_arr[picks].sum(axis=1)
    keep = denominators > 0  # a draw of only empty references has no WER
    wers = errors_arr[picks].sum(axis=1)[keep] / denominators[keep]
    low, high = np.percentile(wers, [2.5, 97.5])
    return float(low), float(high)
