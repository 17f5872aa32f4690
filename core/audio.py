"""Reading audio into the 16 kHz mono float32 arrays Whisper expects, with errors a person can act on.

Files and uploaded bytes go through one path: soundfile decodes (WAV, FLAC, OGG/Vorbis, MP3 and the
other libsndfile formats), then we downmix to mono and resample with torchaudio.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
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
WAV_HEADER_BYTES = 1 << 16  # where a WAV file's data chunk is looked for (fmt, LIST, fact ... come first)


class TruncatedAudioWarning(UserWarning):
    """A WAV file holds less audio than its header declares (a copy or recording cut short): what is there
    is still used; the message names the file and how much is missing."""


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file (or "recording") and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.source, self.reason)


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file as float32 mono samples at 16 kHz; raises AudioError on anything unusable, and
    warns (TruncatedAudioWarning) on a WAV file cut short of what its header declares."""
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
    """Decode uploaded or recorded audio bytes as float32 mono 16 kHz; `name` appears in errors and in the
    warning on truncated WAV data (see load_audio)."""
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
        missing = wav_truncation(source)
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, EOFError, OSError) as err:
        detail = getattr(err, "error_string", None) or str(err)
        raise AudioError(
            name, f"could not be decoded as audio ({detail}); supported formats are WAV, FLAC, OGG and MP3"
        ) from err
    wave = _prepare(samples, rate, name)
    if missing:
        warnings.warn(truncation_message(name, *missing), TruncatedAudioWarning, stacklevel=3)
    return wave


def wav_truncation(source: Path | io.BytesIO) -> tuple[float, float, int] | None:
    """(seconds of audio the header declares, seconds the file holds, bytes missing) for a RIFF/WAVE file
    whose data chunk runs past the end of the file (soundfile quietly decodes what is there); None for a
    complete file, another format, or a header that leaves the length open (0 or 0xFFFFFFFF: a stream
    written before its length was known, an RF64 file)."""
    if isinstance(source, io.BytesIO):
        head, size = source.getvalue()[:WAV_HEADER_BYTES], len(source.getbuffer())
    else:
        size = source.stat().st_size
        with open(source, "rb") as f:
            head = f.read(WAV_HEADER_BYTES)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        kind, length = head[offset : offset + 4], struct.unpack(order + "I", head[offset + 4 : offset + 8])[0]
        if kind == b"fmt " and offset + 20 <= len(head):
            byte_rate = struct.unpack(order + "I", head[offset + 16 : offset + 20])[0]
        if kind == b"data":
            held = size - offset - 8
            if length in (0, 0xFFFFFFFF) or length <= held or not byte_rate:
                return None
            return length / byte_rate, held / byte_rate, length - held
        offset += 8 + length + (length & 1)  # chunks are padded to an even length
    return None  # no data chunk among the first bytes: left to soundfile


def truncation_message(name: str, declared: float, held: float, missing: int) -> str:
    """The warning on a truncated WAV file (see wav_truncation), in the words the CLI prints."""
    return (
        f"{name}: the file is truncated: its header declares {declared:.1f} s of audio but it holds "
        f"{held:.1f} s ({declared - held:.1f} s, {missing:,} bytes missing); using the audio that is there"
    )


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


def overlapping_spans(
    length: int, seconds: float, overlap: float, sample_rate: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """(start, end) sample spans of windows of `seconds` over audio of `length` samples, each overlapping the
    next by at least `overlap` seconds: as few windows as that allows, all of the same length, spread evenly
    from the first sample to the last. Audio no longer than one window is one span; no audio, none."""
    size, least = int(round(seconds * sample_rate)), int(round(overlap * sample_rate))
    if not 0 <= least < size:
        raise ValueError(
            f"the overlap ({overlap} s) must be at least 0 and shorter than the window ({seconds} s)"
        )
    if length <= size:
        return [(0, length)] if length > 0 else []
    count = 1 + math.ceil((length - size) / (size - least))
    return [
        (start, start + size) for start in (round(i * (length - size) / (count - 1)) for i in range(count))
    ]
