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
