"""Evaluation sets: audio files paired with reference transcripts, from the bundled set or your own.

Accepted: the bundled names (`quick` and `full`: splits of assets/eval/manifest.csv; `train`, for
distillation, sentences and voices that never occur in quick/full, synthesized on first use), a manifest CSV
with columns path,text, a LibriSpeech-style folder (*.trans.txt) or a folder of audio files each
with a same-named .txt transcript.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.audio import EXTENSIONS, SAMPLE_RATE, load_audio
from core.paths import cache_dir

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = ("quick", "full", "train")
TRAIN_COUNT = 480  # utterances in the train split (28.3 min of speech, 24 per voice)
# The version of make_eval_set.py's train recipe (voices, rates, pitches) in the cache folder's name, so a
# folder synthesized by an older recipe (v1: 320 utterances, 4 of its 8 voices also in quick/full) is never
# read back. Bump it whenever the recipe changes.
TRAIN_RECIPE = "v2"
ACCEPTED = (
    f"a bundled set ({', '.join(BUNDLED)}), a manifest .csv with columns path,text, "
    "a LibriSpeech-style folder (*.trans.txt files with 'ID TEXT' lines beside ID.flac), "
    f"or a folder of audio files ({', '.join(EXTENSIONS)}) each with a same-named .txt transcript"
)


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    text: str
    speaker: str = ""  # a manifest's `voice` or `speaker` column, if any: splits that keep voices apart


@dataclass(frozen=True)
class Dataset:
    name: str
    utterances: tuple[Utterance, ...]

    def __len__(self) -> int:
        return len(self.utterances)

    def fingerprint(self) -> str:
        """A sha256 over ids, texts and audio bytes, stable across machines; reads every audio file."""
        digest = hashlib.sha256()
        for utt in self.utterances:
            for part in (utt.id.encode(), utt.text.encode()):
                digest.update(len(part).to_bytes(8, "little") + part)
            digest.update(utt.path.stat().st_size.to_bytes(8, "little"))
            with open(utt.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def load_dataset(name_or_path: str | Path, assets_dir: str | Path | None = None) -> Dataset:
    """Load an evaluation set by bundled name or path; raises ValueError saying what is accepted.

    Bundled names read `<assets_dir>/eval/manifest.csv` (`train`: `<assets_dir>/train/manifest.csv`, and
    without an assets_dir or such a file the synthesized one) and keep the rows whose `split` equals the name.
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        root = Path(assets_dir).resolve() if assets_dir is not None else ASSETS_DIR
        if name_or_path == "train" and assets_dir is None and not (root / "train" / "manifest.csv").is_file():
            return _load_bundled(name_or_path, synthesized_train_folder() / "manifest.csv")
        folder = root / ("train" if name_or_path == "train" else "eval")
        return _load_bundled(name_or_path, folder / "manifest.csv")
    path = Path(name_or_path).expanduser().resolve()
    if not path.exists():
        raise ValueError(
            f"unknown dataset {str(name_or_path)!r}: no such bundled set or path; expected {ACCEPTED}"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path} is not a manifest .csv; expected {ACCEPTED}")
        return _finish(path.stem, _read_manifest(path), path)
    if (path / "manifest.csv").is_file():
        return _finish(path.name, _read_manifest(path / "manifest.csv"), path)
    if next(path.rglob("*.trans.txt"), None) is not None:
        return _finish(path.name, _read_librispeech(path), path)
    return _finish(path.name, _read_folder(path), path)


def synthesized_train_folder(count: int = TRAIN_COUNT) -> Path:
    """The `train` split, synthesized once into the cache folder train-<TRAIN_RECIPE>-<count> by
    tools/make_eval_set.py (20 espeak-ng voices, none of them in quick/full, through the espeakng-loader
    wheel; about 15 s, byte-identical for the same wheel) rather than shipped as 30 MB."""
    import contextlib
    import importlib.util
    import io
    import os
    import shutil
    import sys

    folder = cache_dir() / f"train-{TRAIN_RECIPE}-{count}"
    if (folder / "manifest.csv").is_file():
        return folder
    tool = ASSETS_DIR.parent / "tools" / "make_eval_set.py"
    spec = importlib.util.spec_from_file_location("make_eval_set", tool)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = module.main(
                ["--split", "train", "--count", str(count), "--out", str(tmp), "--espeak", "library"]
            )
    except SystemExit as exc:  # the wheel is missing or broken
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"the train split is synthesized on first use with espeak-ng: {exc}") from None
    if code != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"synthesizing the train split failed:\n{log.getvalue()[-2000:]}")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _load_bundled(name: str, manifest: Path) -> Dataset:
    if not manifest.is_file():
        raise ValueError(f"bundled set {name!r} is not available: {manifest} not found; expected {ACCEPTED}")
    rows = _read_manifest(manifest, split=name)
    if not rows:
        splits = sorted({row.get("split") or "" for row in _csv_rows(manifest)} - {""})
        raise ValueError(
            f"bundled set {name!r} is empty: {manifest} has no rows with split={name!r} "
            f"(splits present: {', '.join(splits) or 'none'})"
        )
    return _finish(name, rows, manifest)


def _csv_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"path", "text"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{manifest} lacks column(s) {', '.join(sorted(missing))}; "
                f"found {', '.join(reader.fieldnames or ()) or 'no header'}; expected path,text"
            )
        return list(reader)


def _read_manifest(manifest: Path, split: str | None = None) -> list[Utterance]:
    """Rows of a path,text manifest (audio paths relative to the CSV), optionally one split only."""
    utterances = []
    for line, row in enumerate(_csv_rows(manifest), start=2):
        if split is not None and (row.get("split") or "").strip() != split:
            continue
        relative = (row["path"] or "").strip()
        if not relative:
            raise ValueError(f"{manifest} line {line}: empty path")
        audio = manifest.parent / relative
        if not audio.is_file():
            raise ValueError(f"{manifest} line {line}: audio file {audio} not found")
        uid = Path(relative).with_suffix("").as_posix()
        speaker = (row.get("voice") or row.get("speaker") or "").strip()
        utterances.append(Utterance(uid, audio, (row["text"] or "").strip(), speaker))
    return utterances


def _read_librispeech(root: Path) -> list[Utterance]:
    """`ID TEXT` lines of every *.trans.txt under root, audio `ID.flac` (or .wav/.ogg/.mp3) beside it."""
    utterances = []
    for transcript in sorted(root.rglob("*.trans.txt")):
        for line in transcript.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = next(
                (
                    transcript.parent / (uid + ext)
                    for ext in (".flac", ".wav", ".ogg", ".mp3")
                    if (transcript.parent / (uid + ext)).is_file()
                ),
                None,
            )
            if audio is None:
                raise ValueError(f"{transcript}: audio file {transcript.parent / (uid + '.flac')} not found")
            utterances.append(Utterance(uid, audio, text.strip()))
    return utterances


def _read_folder(root: Path) -> list[Utterance]:
    """Audio files under root, each with the transcript in a same-named .txt file."""
    audio = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    missing = [p for p in audio if not p.with_suffix(".txt").is_file()]
    if missing:
        names = ", ".join(str(p.relative_to(root)) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{root}: no .txt transcript for {names}{more}; expected {ACCEPTED}")
    return [
        Utterance(
            p.relative_to(root).with_suffix("").as_posix(),
            p,
            p.with_suffix(".txt").read_text(encoding="utf-8").strip(),
        )
        for p in audio
    ]


def _finish(name: str, utterances: list[Utterance], source: Path) -> Dataset:
    """Reject empty sets and duplicate ids, then freeze."""
    if not utterances:
        raise ValueError(f"{source}: no utterances found; expected {ACCEPTED}")
    seen: set[str] = set()
    for utt in utterances:
        if utt.id in seen:
            raise ValueError(f"{source}: utterance id {utt.id!r} appears more than once")
        seen.add(utt.id)
    return Dataset(name, tuple(utterances))


# ----------------------------------------------------------------------------- audio of a dataset

PACK_WINDOW_SECONDS = 30.0  # Whisper's window
PACK_GAP_SECONDS = 0.3  # silence between packed utterances: a sentence pause


def load_waves(dataset: Dataset) -> list[np.ndarray]:
    """Decode every utterance of a dataset to 16 kHz mono float32."""
    return [load_audio(u.path) for u in dataset.utterances]


def pack_utterances(
    waves: list[np.ndarray],
    texts: list[str],
    ids: list[str],
    window_seconds: float = PACK_WINDOW_SECONDS,
    gap_seconds: float = PACK_GAP_SECONDS,
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Join consecutive utterances, in order, with `gap_seconds` of silence into windows of at most
    `window_seconds`; returns (windows, joined references, ids joined by "+"). Longer clips stay alone."""
    limit, gap = int(window_seconds * SAMPLE_RATE), np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    packs: list[list[int]] = []
    length = 0
    for index, wave in enumerate(waves):
        if packs and length + len(gap) + len(wave) <= limit:
            packs[-1].append(index)
            length += len(gap) + len(wave)
        else:
            packs.append([index])
            length = len(wave)
    windows = [np.concatenate([x for i in pack for x in (gap, waves[i])][1:]) for pack in packs]
    return (
        windows,
        [" ".join(texts[i] for i in pack) for pack in packs],
        ["+".join(ids[i] for i in pack) for pack in packs],
    )


def training_clips(
    waves: list[np.ndarray], texts: list[str], seed: int, max_seconds: float = 30.0
) -> tuple[list[np.ndarray], list[str]]:
    """Clips of 1–30 s for training a short-context model, each utterance used once, seeded: utterances in
    a shuffled order, joined in runs of 1 (half the clips) to 8 with 0.1–0.8 s pauses, with 0–0.5 s of
    silence before and 0–1.5 s after (so the speech starts and ends anywhere in the clip), and a third of
    the clips under white noise at 15–40 dB SNR. Returns (clips, joined transcripts)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(waves)).tolist()
    silence = lambda low, high: np.zeros(int(rng.uniform(low, high) * SAMPLE_RATE), dtype=np.float32)  # noqa: E731
    limit = int(max_seconds * SAMPLE_RATE)
    clips, transcripts = [], []
    while order:
        size = 1 if rng.random() < 0.5 else int(rng.integers(2, 9))
        parts, words = [silence(0.0, 0.5)], []
        while order and len(words) < size:
            wave = np.asarray(waves[order[0]], dtype=np.float32)
            pause = silence(0.1, 0.8) if words else silence(0, 0)
            if words and sum(map(len, parts)) + len(pause) + len(wave) > limit - SAMPLE_RATE:
                break
            parts += [pause, wave[: limit - SAMPLE_RATE]]
            words.append(texts[order.pop(0)])
        parts.append(silence(0.0, 1.5))
        clip = np.concatenate(parts)[:limit]
        if rng.random() < 1 / 3:
            power = float(np.mean(clip**2)) or 1e-8
            noise = rng.standard_normal(len(clip)).astype(np.float32)
            clip = clip + noise * np.sqrt(power / 10 ** (rng.uniform(15, 40) / 10))
        clips.append(clip.astype(np.float32))
        transcripts.append(" ".join(words))
    return clips, transcripts
