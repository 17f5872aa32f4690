"""Evaluation sets: audio files paired with reference transcripts, from the bundled set or your own.

Accepted: the bundled names (`quick` and `full`: splits of assets/eval/manifest.csv; `train`, for
distillation, sentences and voices that never occur in quick/full, synthesized on first use), a manifest CSV
with columns path,text, a LibriSpeech-style folder (*.trans.txt) or a folder of audio files each
with a same-named .txt transcript.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.audio import EXTENSIONS, SAMPLE_RATE, load_audio
from core.paths import cache_dir, data_dir

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = ("quick", "full", "train")
TRAIN_COUNT = 480  # utterances in the train split (28.3 min of speech, 24 per voice)
# The version of make_eval_set.py's train recipe (voices, rates, pitches) in the cache folder's name, so a
# folder synthesized by an older recipe (v1: 320 utterances, 4 of its 8 voices also in quick/full) is never
# read back. Bump it whenever the recipe changes.
TRAIN_RECIPE = "v2"
ACCEPTED = (
    f"a bundled set ({', '.join(BUNDLED)}), the name of a set saved in the data folder, "
    "a manifest .csv with columns path,text, "
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
    if isinstance(name_or_path, str) and saved_stamp(name_or_path):  # a set the user recorded or imported
        folder = user_datasets_dir() / name_or_path
        return _finish(name_or_path, _read_manifest(folder / "manifest.csv"), folder)
    path = Path(name_or_path).expanduser().resolve()
    if not path.exists():
        raise ValueError(
            f"unknown dataset {str(name_or_path)!r}: no such bundled set, saved set or path; "
            f"expected {ACCEPTED}"
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
    import importlib.util
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
        uid = (row.get("id") or "").strip() or Path(relative).with_suffix("").as_posix()
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


# ----------------------------------------------------------------------------- the user's own sets

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a saved set's name: one plain folder name
MAX_ZIP_BYTES = 2 * 1024**3  # an imported zip's unpacked size
PROMPTS = ASSETS_DIR / "prompts.txt"  # sentences to read aloud for a recorded test set


def user_datasets_dir() -> Path:
    """Where recorded and imported sets live: <data folder>/datasets/<name>/manifest.csv."""
    return data_dir() / "datasets"


def check_dataset_name(name: str) -> str:
    """`name` if it can name a saved set (letters, digits, `_.-`; not a bundled name), else ValueError."""
    if not NAME_PATTERN.fullmatch(name) or name in BUNDLED:
        raise ValueError(
            f"{name!r} cannot name a dataset: use 1–64 letters, digits, '_', '.' or '-' starting with a "
            f"letter or digit, and not {', '.join(BUNDLED)}"
        )
    return name


@dataclass(frozen=True)
class DatasetInfo:
    """A set the dashboard can evaluate on: its name for load_dataset, and a line saying what it is."""

    name: str
    description: str


def known_datasets() -> list[DatasetInfo]:
    """The bundled evaluation sets, then the user's saved sets (newest first); `train` is for distillation
    and not listed. Counting reads manifests only, never audio."""
    splits = [(row.get("split") or "").strip() for row in _csv_rows(ASSETS_DIR / "eval" / "manifest.csv")]
    found = [DatasetInfo(name, f"{splits.count(name)} synthetic sentences") for name in ("quick", "full")]
    folders = [f for f in user_datasets_dir().glob("*") if (f / "manifest.csv").is_file()]
    for folder in sorted(folders, key=lambda f: f.stat().st_mtime, reverse=True):
        if NAME_PATTERN.fullmatch(folder.name) and folder.name not in BUNDLED:
            count = len(_csv_rows(folder / "manifest.csv"))
            found.append(DatasetInfo(folder.name, f"{count} clips, yours"))
    return found


def saved_stamp(name: str) -> int:
    """When the saved set `name` was last written (ns; 0 for anything else): caches of loaded sets key on
    it, so a set saved again under its name is read again."""
    manifest = user_datasets_dir() / name / "manifest.csv"
    return manifest.stat().st_mtime_ns if NAME_PATTERN.fullmatch(name) and manifest.is_file() else 0


def recording_prompts() -> list[str]:
    """Sentences to read aloud for a test set (Harvard sentences, IEEE 1969; none is in the bundled sets)."""
    return [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_dataset(
    name: str, clips: Sequence[tuple[np.ndarray, str]], speaker: str = "", replace: bool = False
) -> Dataset:
    """Write clips (16 kHz mono float waves, each with the exact text spoken) as the saved set `name`:
    clipNNN.wav (16-bit PCM) and manifest.csv (path,text,speaker) in user_datasets_dir()/name."""
    import soundfile as sf

    if not clips:
        raise ValueError("a dataset needs at least one clip")
    for number, (wave, text) in enumerate(clips, start=1):
        if not text.strip():
            raise ValueError(f"clip {number} has no transcript: type exactly what is said in it")
        if np.asarray(wave).ndim != 1 or len(wave) < SAMPLE_RATE // 10:
            raise ValueError(f"clip {number} is shorter than 0.1 s or not mono audio")
    with _writing_set(name, replace) as folder:
        with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "text", "speaker"])
            for number, (wave, text) in enumerate(clips, start=1):
                audio = np.asarray(wave, dtype=np.float32)
                sf.write(folder / f"clip{number:03d}.wav", audio, SAMPLE_RATE, "PCM_16")
                writer.writerow([f"clip{number:03d}.wav", " ".join(text.split()), speaker])
    return load_dataset(name)


def import_dataset_zip(name: str, data: bytes, replace: bool = False) -> Dataset:
    """Unpack a zip holding any accepted layout (manifest.csv, LibriSpeech *.trans.txt, or audio + .txt
    pairs; one top folder is fine) as the saved set `name`, after checking it loads. Entries that would land
    outside the folder, links and oversized archives are refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError("this file is not a zip archive") from None
    members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
        raise ValueError(f"the archive unpacks to more than {MAX_ZIP_BYTES / 1e9:.0f} GB")
    tops = {m.filename.split("/", 1)[0] for m in members}
    strip = len(tops) == 1 and all("/" in m.filename for m in members)  # one top folder: its content
    with _writing_set(name, replace) as folder:
        for member in members:
            inside = member.filename.split("/", 1)[1] if strip else member.filename
            target = (folder / inside).resolve()
            if (
                not target.is_relative_to(folder.resolve())
                or (member.external_attr >> 16) & 0o170000 == 0o120000
            ):
                raise ValueError(
                    f"the archive entry {member.filename!r} points outside the dataset or is a link"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        dataset = load_dataset(folder)  # raises on anything that is not an accepted layout
        if not (folder / "manifest.csv").is_file():  # saved sets are read through a manifest
            _write_manifest(folder, dataset)
    return load_dataset(name)


def link_dataset(name: str, source: str | Path, replace: bool = False) -> Dataset:
    """Save a dataset that lies elsewhere on this machine (a manifest CSV, a LibriSpeech folder, a folder of
    audio + .txt pairs) under `name` without copying its audio: the saved manifest lists the files by
    absolute path, with their ids and texts. Moving the source folder breaks the set (said on loading)."""
    dataset = load_dataset(Path(source).expanduser())  # raises on anything that is not an accepted layout
    with _writing_set(name, replace) as folder:
        _write_manifest(folder, dataset, absolute=True)
    return load_dataset(name)


@contextlib.contextmanager
def _writing_set(name: str, replace: bool) -> Iterator[Path]:
    """A temporary folder beside the saved set `name` to write it into, renamed into place when the block
    ends without an error, so a failure leaves any earlier set as it was; removed in any case."""
    folder = user_datasets_dir() / check_dataset_name(name)
    if folder.exists() and not replace:
        raise ValueError(f"a dataset named {name!r} exists already: choose another name, or replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = folder.with_name(f".{name}.old{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def delete_dataset(name: str) -> None:
    """Remove the saved set `name` (bundled sets cannot be removed)."""
    folder = user_datasets_dir() / check_dataset_name(name)
    if not (folder / "manifest.csv").is_file():
        raise ValueError(f"there is no saved dataset named {name!r}")
    shutil.rmtree(folder)


def _write_manifest(root: Path, dataset: Dataset, absolute: bool = False) -> None:
    """root/manifest.csv (id,path,text,speaker) of `dataset`: paths relative to root, or absolute."""
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "text", "speaker"])
        for utt in dataset.utterances:
            path = utt.path.resolve() if absolute else utt.path.resolve().relative_to(root.resolve())
            writer.writerow([utt.id, path.as_posix(), utt.text, utt.speaker])


# ----------------------------------------------------------------------------- audio of a dataset

PACK_WINDOW_SECONDS = 30.0  # Whisper's window
PACK_GAP_SECONDS = 0.3  # silence between packed utterances: a sentence pause


def load_waves(dataset: Dataset) -> list[np.ndarray]:
    """Decode every utterance of a dataset to 16 kHz mono float32."""
    return [load_audio(u.path) for u in dataset.utterances]


def pack_groups(
    lengths: list[int], window_seconds: float = PACK_WINDOW_SECONDS, gap_seconds: float = PACK_GAP_SECONDS
) -> list[list[int]]:
    """Which utterances (by index, in order) share each window of `pack_utterances`, from their lengths in
    samples: consecutive ones while they fit with a gap between them; a longer one alone."""
    limit, gap = int(window_seconds * SAMPLE_RATE), int(gap_seconds * SAMPLE_RATE)
    packs: list[list[int]] = []
    length = 0
    for index, samples in enumerate(lengths):
        if packs and length + gap + samples <= limit:
            packs[-1].append(index)
            length += gap + samples
        else:
            packs.append([index])
            length = samples
    return packs


def pack_utterances(
    waves: list[np.ndarray],
    texts: list[str],
    ids: list[str],
    window_seconds: float = PACK_WINDOW_SECONDS,
    gap_seconds: float = PACK_GAP_SECONDS,
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Join consecutive utterances, in order, with `gap_seconds` of silence into windows of at most
    `window_seconds`; returns (windows, joined references, ids joined by "+"). Longer clips stay alone."""
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    packs = pack_groups([len(w) for w in waves], window_seconds, gap_seconds)
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
