"""Reading audio into the 16 kHz mono float32 arrays Whisper expects, with errors a person can act on.

Files and uploaded bytes go through one path: soundfile decodes (WAV, FLAC, OGG/Vorbis, MP3 and the
other libsndfile formats), then we downmix to mono and resample with torchaudio.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
RATE_RANGE = (4000, 384_000)  # sample rates a real recording has; a header outside them is refused
MAX_SECONDS_ENV = "SPEECH_LAB_MAX_AUDIO_SECONDS"  # the longest audio accepted (default MAX_SECONDS)
MAX_SECONDS = 3600.0
SILENCE_PEAK = 1e-4  # a peak below this (about -80 dBFS) is treated as a silent recording
EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file (or "recording") and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.source, self.reason)


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file as float32 mono samples at 16 kHz; raises AudioError on anything unusable."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise AudioError(source, "file not found")
    if not path.is_file():
        raise AudioError(source, "is not a file")
    if path.stat().st_size == 0:
        raise AudioError(source, "is empty (0 bytes)")
    return _decode(path, source)


def decode_audio(data: bytes, name: str = "recording") -> np.ndarray:
    """Decode uploaded or recorded audio bytes as float32 mono 16 kHz; `name` appears in errors."""
    if not data:
        raise AudioError(name, "is empty (0 bytes)")
    return _decode(io.BytesIO(data), name)


def max_seconds() -> float:
    """The longest audio accepted: $SPEECH_LAB_MAX_AUDIO_SECONDS, else MAX_SECONDS (one hour)."""
    value = os.environ.get(MAX_SECONDS_ENV)
    try:
        return float(value) if value else MAX_SECONDS
    except ValueError:
        raise ValueError(f"{MAX_SECONDS_ENV}={value!r} is not a number of seconds") from None


def _check_header(source: Path | io.BytesIO, name: str) -> None:
    """Refuse, before decoding anything, audio whose header claims an implausible sample rate or a length
    over max_seconds(): what the header says decides how much memory decoding and resampling take."""
    info = sf.info(source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    low, high = RATE_RANGE
    if not low <= info.samplerate <= high:
        raise AudioError(name, f"its header claims {info.samplerate} Hz; accepted: {low:,}–{high:,} Hz")
    seconds, limit = info.frames / info.samplerate, max_seconds()
    if seconds > limit:
        raise AudioError(
            name, f"is {seconds / 60:.1f} minutes long; the limit is {limit / 60:.1f} (set {MAX_SECONDS_ENV})"
        )


def _decode(source: Path | io.BytesIO, name: str) -> np.ndarray:
    """Shared by load_audio and decode_audio: check the header, decode, check, downmix, resample."""
    try:
        _check_header(source, name)
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, EOFError, OSError) as err:
        detail = getattr(err, "error_string", None) or str(err)
        raise AudioError(
            name, f"could not be decoded as audio ({detail}); supported formats are WAV, FLAC, OGG and MP3"
        ) from err
    return _prepare(samples, rate, name)


def _prepare(samples: np.ndarray, rate: int, name: str = "recording") -> np.ndarray:
    """Check decoded samples (frames x channels, or 1-D) and return them as float32 mono at 16 kHz."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.shape[0] == 0:
        raise AudioError(name, "contains no audio (zero length)")
    if not np.isfinite(samples).all():
        raise AudioError(name, "contains NaN or infinite samples")
    wave = samples.mean(axis=1)
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise AudioError(name, "is silent (peak level below -80 dBFS)")
    if rate != SAMPLE_RATE:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), int(rate), SAMPLE_RATE).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def is_probably_speech(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bool:
    """Cheap guess whether a recording contains speech, to warn before Whisper "hears" words in noise.

    Speech rises and falls: syllables are 10+ dB above the pauses between them, and voiced sounds
    cross zero far less often than hiss. So we count 30 ms frames that are both loud (10 dB over the
    quiet floor and above -60 dBFS) and low in zero crossings (under 0.25 per sample), and want at
    least 0.2 s and 5% of the recording of them.
    Steady noise, hum and silence fail; music or a tone with gaps can pass. A warning, not a gate.
    """
    frame = int(0.03 * sample_rate)
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n = len(wave) // frame
    if n < 4:
        return False
    wave = wave[: n * frame] - wave.mean()
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        return False
    level = 10 * np.log10(np.var(wave.reshape(n, frame), axis=1) + 1e-12)
    # Zero crossings per non-negligible sample; near-zero stretches (digital silence between noise
    # bursts) carry the previous sign instead of looking like a slowly varying, voiced signal.
    signs = np.where(wave > 1e-3 * peak, 1, np.where(wave < -1e-3 * peak, -1, 0))
    last = np.maximum.accumulate(np.where(signs != 0, np.arange(len(wave)), 0))
    held = signs[last]
    flips = (signs != 0) & (np.r_[0, held[:-1]] == -signs)
    crossings = flips.reshape(n, frame).sum(axis=1) / np.maximum(
        (signs != 0).reshape(n, frame).sum(axis=1), 1
    )
    floor = np.percentile(level, 10)
    voiced = (level > floor + 10) & (level > -60) & (crossings < 0.25)
    return bool(voiced.sum() * frame >= 0.2 * sample_rate and voiced.mean() >= 0.05)


def split_windows(
    wave: np.ndarray, seconds: float = 30.0, sample_rate: int = SAMPLE_RATE
) -> list[np.ndarray]:
    """Cut audio into consecutive windows of `seconds` (the last may be shorter) for Whisper's 30 s input."""
    if seconds <= 0:
        raise ValueError(f"window length must be positive, got {seconds}")
    size = int(round(seconds * sample_rate))
    return [wave[start : start + size] for start in range(0, len(wave), size)]
