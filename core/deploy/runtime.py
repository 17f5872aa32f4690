"""A deployment runtime as one record: how to write a model for it, and how to run what was written.

Each runtime module (ct2.py, onnx.py, ggml.py, hf.py) defines `RUNTIME = Runtime(...)`; `runtime(name)`
finds it (imported on first use, so importing this module loads no runtime library). An exported folder
carries `speech_lab_export.json` naming its runtime, so `detect(folder)` tells which runtime runs it and the
lab can evaluate it there: `load(folder, threads)` gives a `Deployed` whose `transcribe` is what a user
of that runtime would write (its own API, its own thread count), and whose size is the bytes of the
files that runtime loads.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.audio import SAMPLE_RATE
from core.io.folders import EXPORT_FILE
from core.models import SpeechModel, whisper
from core.models.base import transcribe_in_windows

README_FILE = "README.txt"  # how to load the folder with the runtime's own API
MODULES = {
    "ct2": "core.deploy.ct2",
    "onnx": "core.deploy.onnx",
    "ggml": "core.deploy.ggml",
    "hf": "core.deploy.hf",  # Hugging Face transformers: a plain float checkpoint (no size gain)
}


@dataclass(frozen=True)
class Deployed:
    """An exported folder loaded in its runtime: transcribe 16 kHz mono float waves there."""

    name: str
    runtime: str  # a key of MODULES
    folder: Path
    threads: int
    transcribe: Callable[[list[np.ndarray]], list[str]]
    files: tuple[Path, ...]  # what the runtime loads: the size of the deployment
    parameters: int = 0  # weights the runtime holds (0 where unknown)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass(frozen=True)
class Runtime:
    """One deployment target."""

    name: str  # "ct2", "onnx", "ggml": the export --format and the results store's runtime key
    title: str  # what users call it, with the version the exporter was written for
    package: str  # the pip package that runs it
    files: tuple[str, ...]  # the files of an exported folder the runtime loads: the deployment's size
    inexpressible: Callable[[SpeechModel], list[str]]  # one line per layer it cannot hold exactly
    export: Callable[[SpeechModel, Path], Path]  # writes the folder; ValueError if inexpressible
    load: Callable[[Path, int], Deployed]  # (folder, threads) -> the model running in the runtime
    extra_files: tuple[str, ...] = ()  # files it also loads when an export has them (e.g. external data)

    def model_files(self, folder: Path) -> tuple[Path, ...]:
        """The files of `folder` this runtime loads (those present)."""
        return tuple(Path(folder) / f for f in self.files + self.extra_files if (Path(folder) / f).is_file())


def runtime(name: str) -> Runtime:
    """The runtime called `name` (ValueError naming the known ones otherwise)."""
    if name not in MODULES:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name]).RUNTIME


def export_facts(folder: Path) -> dict | None:
    """The exporter's facts about a folder (speech_lab_export.json), or None if it has none."""
    path = Path(folder) / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(facts, dict) or facts.get("format") not in MODULES:
        raise ValueError(f"{path} names no known runtime (format must be one of {', '.join(MODULES)})")
    return facts


def detect(folder: str | Path) -> str | None:
    """The runtime an exported folder is for, or None for a folder the lab loads itself."""
    facts = export_facts(Path(folder)) if Path(folder).is_dir() else None
    return facts["format"] if facts else None


def write_export_facts(folder: Path, model: SpeechModel, fmt: str, **extra) -> None:
    """Record what was exported and for which runtime (read back by `detect` and the runtime's loader)."""
    decoding = model.decoding.to_json() if model.decoding is not None else None  # None: a CTC model
    facts = {"name": model.name, "format": fmt, "decoding": decoding}
    facts["parameters"] = model.num_parameters()
    policy = getattr(model.family, "short_context", None)  # only families with a fixed window have one
    facts["short_context"] = policy(model.module) if policy else None  # None: the full 30 s window
    (folder / EXPORT_FILE).write_text(json.dumps({**facts, **extra}, indent=1))


def record_origin(folder: Path, model: str, recipe: dict | None) -> None:
    """Note in the export facts which lab model (name or folder) and recipe the export was made from, so
    the lab can evaluate the same weights itself beside the runtime (`evaluate --model FOLDER --parity`)."""
    facts = export_facts(folder)
    facts["origin"] = {"model": model, "recipe": recipe}
    (Path(folder) / EXPORT_FILE).write_text(json.dumps(facts, indent=1))


def context_frames(facts: dict, window: np.ndarray) -> int:
    """Encoder input frames for `window` under the exported model's short-context policy (3000 without)."""
    return whisper.context_frames(facts.get("short_context"), len(window) / SAMPLE_RATE)


def load_deployed(folder: str | Path, threads: int) -> Deployed:
    """An exported folder loaded in the runtime it was written for, running on `threads` threads."""
    folder = Path(folder)
    name = detect(folder)
    if name is None:
        raise ValueError(f"{folder} is not a folder exported by `python -m core export --format ...`")
    return runtime(name).load(folder, threads)


def by_windows(window_text: Callable[[np.ndarray], str]) -> Callable[[list[np.ndarray]], list[str]]:
    """A `transcribe(waves)` from a function that transcribes one window of at most 30 s: longer audio is
    cut into overlapping windows and their texts joined where they agree, exactly as the lab's own
    SpeechModel.transcribe does (core.models.base.transcribe_in_windows)."""
    return lambda waves: transcribe_in_windows(waves, lambda windows: [window_text(w) for w in windows])


def refuse(problems: list[str], where: str) -> None:
    """ValueError listing (up to eight of) `problems`: what of a model `where` (e.g. "in CTranslate2
    format") cannot hold exactly. Exporters call it before writing anything: nothing is converted silently."""
    if problems:
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(
            f"this model cannot be written exactly {where} (nothing is converted silently):\n  "
            + "\n  ".join(problems[:8])
            + more
        )


def running(
    target: Runtime, folder: Path, threads: int, window_text: Callable[[np.ndarray], str]
) -> Deployed:
    """The Deployed model of an exported `folder` whose runtime transcribes one window with `window_text`."""
    facts = export_facts(folder)
    return Deployed(
        name=facts["name"],
        runtime=target.name,
        folder=folder,
        threads=threads,
        transcribe=by_windows(window_text),
        files=target.model_files(folder),
        parameters=facts.get("parameters", 0),
    )
