"""Evaluate a model on a dataset: WER/CER, size as saved, and measured latency.

Every number here is measured, never estimated: size is the byte count of the model written as
safetensors (the same files `python -m core compress` produces), latency is the median of timed
runs after a warm-up with the thread count recorded (`measure_paired_latency` times a model together with
its baseline, clip by clip, so that their ratio holds on a busy machine). A model exported for a deployment
runtime (`core.deploy.runtime.Deployed`) is evaluated inside that runtime: its transcripts, the bytes of the
files the runtime loads, and its latency at its own pinned thread count.

Packed mode (`evaluate(..., packed=True)`, used by sweeps): consecutive utterances are joined with
short silences into 30 s windows and each window is scored against the joined references. Whisper
always encodes a 30 s window, so this runs the encoder ~8x less on short clips; WER differs from the
one-clip-per-window mode (more context), so only compare numbers measured in the same mode.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from core.audio import SAMPLE_RATE, is_probably_speech, load_audio
from core.data import Dataset, load_waves, pack_groups, pack_utterances
from core.deploy.runtime import Deployed
from core.io.artifact import save_weights
from core.metrics import BucketScore, Scores, by_length, score
from core.models import SpeechModel

LATENCY_CLIP = Path(__file__).resolve().parents[2] / "assets" / "samples" / "hello.wav"


@dataclass
class Latency:
    """Wall time of transcribing one fixed clip: median and range over timed runs, and the thread count."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    threads: int
    clip_seconds: float

    @classmethod
    def from_json(cls, data: dict) -> Latency:
        """From `asdict(latency)` as evaluation results and stored points keep it (extra keys ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio duration (below 1 is faster than real time)."""
        return self.median_ms / 1000 / self.clip_seconds

    def describe(self) -> str:
        """How it was measured: "median of 5 runs (min 80, max 95 ms) on a 2.1 s clip, 2 threads"."""
        return (
            f"median of {self.runs} runs (min {self.min_ms:.0f}, max {self.max_ms:.0f} ms) on a "
            f"{self.clip_seconds:.1f} s clip, {self.threads} threads"
        )


@dataclass
class PairedLatency:
    """A model's latency timed in the same run as its baseline's, alternating clip by clip (baseline clip
    1, model clip 1, baseline clip 2, ...), so that machine noise (other jobs, frequency changes) hits both
    alike. `ratio` is the median of the per-clip ratios model ms / baseline ms (each pair ran back to back;
    from 3 clips on, the median also drops a pair that a burst of load hit), not the ratio of the two
    medians."""

    variant: Latency
    baseline: Latency
    ratio: float  # median over clips of variant ms / baseline ms; below 1 the variant is faster
    per_clip: list[tuple[float, float]]  # (baseline ms, variant ms) of each clip, in the order timed
    load_average: float  # 1-minute load average while timing (the higher of its values before and after)
    cpus: int
    contended: bool  # load_average above cpus: the milliseconds are inflated, the ratio holds better

    RATIO_OF = "median of per-clip ratios"

    def to_json(self) -> dict:
        """What a stored point keeps as its `latency`: the variant's Latency fields (so Latency.from_json
        reads it), the baseline's median and range, the ratio and how it was taken, the load while timing."""
        return asdict(self.variant) | {
            "baseline_ms": self.baseline.median_ms,
            "baseline_min_ms": self.baseline.min_ms,
            "baseline_max_ms": self.baseline.max_ms,
            "ratio": self.ratio,
            "ratio_of": self.RATIO_OF,
            "per_clip": [list(pair) for pair in self.per_clip],
            "load_average": self.load_average,
            "cpus": self.cpus,
            "contended": self.contended,
        }


@dataclass
class EvalResult:
    model: str
    dataset: str
    scores: Scores
    size_bytes: int
    parameters: int
    latency: Latency | None
    eval_seconds: float
    machine: dict = field(default_factory=dict)
    packed: bool = False  # rows are packed windows (ids joined by "+"), see pack_utterances
    by_length: list[BucketScore] = field(default_factory=list)  # per clip-length bucket (not when packed)
    runtime: str = "lab"  # where it ran: "lab" (PyTorch, this process) or a deployment runtime's name
    no_speech: list[str] = field(default_factory=list)  # ids of clips that sound like noise or silence

    def to_dict(self) -> dict:
        """Flat JSON-ready summary plus the per-utterance rows."""
        scores = self.scores.to_dict()
        latency = asdict(self.latency) if self.latency else None
        return {
            "model": self.model,
            "dataset": self.dataset,
            "wer": scores["wer"],
            "cer": scores["cer"],
            "raw_wer": scores["raw_wer"],
            "looped": self.scores.looped,
            "no_speech": self.no_speech,
            "wer_ci95": scores["wer_ci95"],
            "n_utterances": scores["n_utterances"],
            "n_words": scores["n_words"],
            "size_bytes": self.size_bytes,
            "parameters": self.parameters,
            "latency_ms": latency["median_ms"] if latency else None,
            "latency": latency,
            "real_time_factor": self.latency.real_time_factor if self.latency else None,
            "eval_seconds": self.eval_seconds,
            "machine": self.machine,
            "packed": self.packed,
            "runtime": self.runtime,
            "by_length": [asdict(b) for b in self.by_length],
            "rows": scores["rows"],
        }


def machine_facts(threads: int | None = None) -> dict:
    """What a timing depends on: CPU, thread count (torch's unless given), torch version, and how busy the
    machine was (1-minute load average against its CPU count; `contended` when the load exceeded them, so
    the timing is inflated and only a ratio measured in the same run means much)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **machine_load(),
    }


def machine_load(load: float | None = None) -> dict:
    """How busy the machine is: {"load_average", "cpus", "contended"} (1-minute load average, unless
    `load` is given; contended when it exceeds the CPU count)."""
    load, cpus = os.getloadavg()[0] if load is None else load, os.cpu_count() or 1
    return {"load_average": round(load, 2), "cpus": cpus, "contended": load > cpus}


def transcribe_dataset(model: SpeechModel | Deployed, waves: list[np.ndarray]) -> Iterator[str]:
    """Transcribe one utterance at a time (batching does not pay on a few CPU cores), yielding each."""
    for wave in waves:
        yield model.transcribe([wave])[0]


def model_size_bytes(model: SpeechModel | Deployed) -> int:
    """Bytes of the model's weights as saved (safetensors + layout), measured by writing them; for a
    deployed model the bytes of the files its runtime loads."""
    if isinstance(model, Deployed):
        return model.size_bytes()
    with tempfile.TemporaryDirectory() as folder:
        save_weights(model.module, Path(folder))
        return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def measure_latency(
    model: SpeechModel | Deployed, wave: np.ndarray | None = None, runs: int = 5, warmup: int = 1
) -> Latency:
    """Median/min/max wall time of transcribing one fixed clip, after `warmup` untimed runs."""
    if wave is None:
        wave = load_audio(LATENCY_CLIP)
    for _ in range(warmup):
        model.transcribe([wave])
    return _latency(model, [_timed(model, wave) for _ in range(runs)], [wave] * runs)


def measure_paired_latency(
    variant: SpeechModel | Deployed,
    baseline: SpeechModel | Deployed | None,
    clips: list[np.ndarray] | None = None,
    runs: int = 2,
    warmup: int = 0,
    baseline_warmup: int = 0,
) -> PairedLatency:
    """Time `variant` and `baseline` on the same clips, interleaved: baseline clip i, variant clip i,
    baseline clip i + 1, ... (default clips: the fixed latency clip, `runs` times), after `baseline_warmup`
    and `warmup` untimed runs of each. The cost is the baseline's runs on top of the variant's, nothing
    more. `baseline=None`: the variant is its own baseline (timed once per clip, ratio 1)."""
    clips = clips if clips is not None else [load_audio(LATENCY_CLIP)] * runs
    if not clips:
        raise ValueError("paired latency needs at least one clip (runs >= 1)")
    for _ in range(baseline_warmup if baseline is not None else 0):
        baseline.transcribe([clips[0]])
    for _ in range(warmup):
        variant.transcribe([clips[0]])
    load_before = os.getloadavg()[0]
    pairs = []
    for clip in clips:
        base_ms = _timed(baseline, clip) if baseline is not None else None
        variant_ms = _timed(variant, clip)
        pairs.append((variant_ms if base_ms is None else base_ms, variant_ms))
    load = machine_load(max(load_before, os.getloadavg()[0]))
    return PairedLatency(
        variant=_latency(variant, [v for _, v in pairs], clips),
        baseline=_latency(variant if baseline is None else baseline, [b for b, _ in pairs], clips),
        ratio=statistics.median(v / max(b, 1e-6) for b, v in pairs) if baseline is not None else 1.0,
        per_clip=pairs,
        load_average=load["load_average"],
        cpus=load["cpus"],
        contended=load["contended"],
    )


def _timed(model: SpeechModel | Deployed, wave: np.ndarray) -> float:
    """Milliseconds of wall time to transcribe one clip."""
    start = time.perf_counter()
    model.transcribe([wave])
    return (time.perf_counter() - start) * 1000


def _latency(model: SpeechModel | Deployed, times: list[float], clips: list[np.ndarray]) -> Latency:
    """The Latency of timed runs (ms) of `model` on `clips` (one run each)."""
    return Latency(
        median_ms=statistics.median(times),
        min_ms=min(times),
        max_ms=max(times),
        runs=len(times),
        threads=model.threads if isinstance(model, Deployed) else torch.get_num_threads(),
        clip_seconds=statistics.median(len(wave) for wave in clips) / SAMPLE_RATE,
    )


def evaluate(
    model: SpeechModel | Deployed,
    dataset: Dataset,
    waves: list[np.ndarray] | None = None,
    latency_runs: int = 5,
    packed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Transcribe every utterance and score it; measure size and (if latency_runs > 0) latency.

    packed=True scores `pack_utterances` windows instead of single utterances (rows are windows;
    n_utterances still counts utterances). A `Deployed` model is measured in its runtime. `progress(done,
    total)` is called after each transcript."""
    start = time.perf_counter()
    waves = waves if waves is not None else load_waves(dataset)
    references, ids = [u.text for u in dataset.utterances], [u.id for u in dataset.utterances]
    # Whisper writes words for noise ("You"): such clips are named, so their WER is read for what it is
    no_speech = [id for id, wave in zip(ids, waves) if not is_probably_speech(wave)]
    parts = None  # packed: each window's utterance references, so the interval resamples utterances
    if packed:
        parts = [[references[i] for i in group] for group in pack_groups([len(w) for w in waves])]
        waves, references, ids = pack_utterances(waves, references, ids)
    hypotheses, clip_ms = [], []
    clock = time.perf_counter()
    for text in transcribe_dataset(model, waves):
        hypotheses.append(text)
        clip_ms.append((time.perf_counter() - clock) * 1000)
        if progress:
            progress(len(hypotheses), len(waves))
        clock = time.perf_counter()
    scores = score(references, hypotheses, ids=ids, parts=parts)
    scores.n_utterances = len(dataset.utterances)
    seconds = [len(w) / SAMPLE_RATE for w in waves]
    buckets = [] if packed else by_length(scores.rows, seconds, clip_ms)
    latency = measure_latency(model, runs=latency_runs) if latency_runs > 0 else None
    return EvalResult(
        model=model.name,
        dataset=dataset.name,
        scores=scores,
        size_bytes=model_size_bytes(model),
        parameters=model.parameters if isinstance(model, Deployed) else model.num_parameters(),
        latency=latency,
        eval_seconds=time.perf_counter() - start,
        machine=machine_facts(model.threads if isinstance(model, Deployed) else None),
        packed=packed,
        by_length=buckets,
        runtime=model.runtime if isinstance(model, Deployed) else "lab",
        no_speech=no_speech,
    )
