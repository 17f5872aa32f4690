"""Where the lab keeps its files on the user's machine: converted models (cache) and results (data).

Both can be moved with environment variables, read when a path is asked for (never at import):
SPEECH_LAB_CACHE (else $XDG_CACHE_HOME/speech-compression-lab) and SPEECH_LAB_DATA (else
$XDG_DATA_HOME/speech-compression-lab).
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "speech-compression-lab"


def cache_dir() -> Path:
    """Per-user cache for converted weights: $SPEECH_LAB_CACHE,
    else $XDG_CACHE_HOME/speech-compression-lab."""
    if os.environ.get("SPEECH_LAB_CACHE"):
        return Path(os.environ["SPEECH_LAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / APP


def data_dir() -> Path:
    """Per-user data folder (results store, datasets): $SPEECH_LAB_DATA,
    else $XDG_DATA_HOME/speech-compression-lab."""
    if os.environ.get("SPEECH_LAB_DATA"):
        return Path(os.environ["SPEECH_LAB_DATA"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / APP


MODEL_ROOTS_ENV = "SPEECH_LAB_MODEL_ROOTS"  # on a shared server: the folders model paths may point into


def check_model_path(name: str) -> None:
    """On a shared server ($SPEECH_LAB_MODEL_ROOTS set, folders separated by os.pathsep), a model given as a
    path must lie inside one of those folders, the cache or the data folder; ValueError otherwise, before
    anything is loaded, and the same whether the folder exists or not. Without the variable (one user on
    their own machine) any path is fine. Bundled names and Hugging Face ids are not paths."""
    roots = os.environ.get(MODEL_ROOTS_ENV)
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "~", os.sep)) or name.count("/") > 1 or path.exists()
    if not roots or not looks_like_path:
        return
    allowed = [Path(r).expanduser().resolve() for r in roots.split(os.pathsep) if r]
    allowed += [cache_dir().resolve(), data_dir().resolve()]
    if not any(path.resolve().is_relative_to(root) for root in allowed):
        raise ValueError(
            f"on this server, model folders must be inside {', '.join(str(r) for r in allowed)} "
            f"(set by {MODEL_ROOTS_ENV})"
        )
