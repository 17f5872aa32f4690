"""Model folders: load the bundled default, a lab folder (converted or compressed) or a Hugging Face
checkpoint, and write a (compressed) model as a folder that loads back.

A lab folder holds the family's own files (config.json, tokenizer or processor files), speech_lab.json
(family, decoding facts, name, recipe) and the weights, either a plain model.safetensors (a converted
model) or model.safetensors + layout.json as written by core.io.artifact (a compressed model).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.io.artifact import LAYOUT_FILE, WEIGHTS_FILE, load_weights, save_weights
from core.models import BASE_MODEL, DEFAULT_MODEL, FAMILIES, META_FILE, SpeechModel, family_named
from core.models.ct2 import base_whisper_folder, bundled_whisper_folder


def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> SpeechModel:
    """Load the bundled default, a folder (ours or Hugging Face), or a Hugging Face hub id."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        return load_folder(bundled_whisper_folder(), name)
    if name == BASE_MODEL:
        return load_folder(base_whisper_folder(), name)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / META_FILE).exists():
            return load_folder(path, name)
        if not (path / "config.json").exists():
            raise ValueError(
                f"folder {name} has no config.json: it is neither a Hugging Face model folder "
                "nor a model exported by this lab"
            )
        return load_hf(str(path), name)
    if path.exists():
        raise ValueError(f"{name} is a file; give a model folder, a Hugging Face id or '{DEFAULT_MODEL}'")
    if name.startswith((".", "~", "/")) or name.count("/") > 1:  # a path, not an "owner/model" hub id
        raise ValueError(f"model folder {name} does not exist")
    return load_hf(name, name)


def load_folder(folder: Path, name: str) -> SpeechModel:
    """Load a folder in our format (a converted default or a compressed artifact); ValueError naming the file
    when speech_lab.json or the weights cannot be read."""
    from safetensors import SafetensorError

    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder / META_FILE} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / META_FILE} must hold a JSON object, not {type(meta).__name__}")
    family = family_named(meta.get("kind", "whisper"))
    skeleton = family.skeleton(folder)
    if (folder / LAYOUT_FILE).exists():
        module = load_weights(skeleton, folder)
    else:
        try:
            module = family.load_plain(skeleton, folder)
        except (OSError, SafetensorError) as exc:
            raise ValueError(f"{folder} holds no readable weights file ({exc})") from None
    return family.from_folder(name, module.eval(), folder, meta)


def save_model(model: SpeechModel, folder: str | Path, extra_meta: dict | None = None) -> int:
    """Write a model (compressed or not) as a folder that `load_model` reads; returns its bytes.

    The family's config and tokenizer files + speech_lab.json (family, decoding facts, name, recipe) +
    the weights as written by `core.io.artifact.save_weights` (packed integers, sparse where smaller)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": model.kind,
        "name": model.name,
        **model.family.save_files(model, folder),
        **(extra_meta or {}),
    }
    save_weights(model.module, folder)
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def weights_bytes(folder: str | Path) -> int:
    """Bytes of the weight files of a saved folder (what every size in the lab compares)."""
    return sum((Path(folder) / name).stat().st_size for name in (WEIGHTS_FILE, LAYOUT_FILE))


def load_hf(name: str, label: str) -> SpeechModel:
    """A Hugging Face checkpoint of a known family, from a local folder or the hub cache."""
    from transformers import AutoConfig, AutoProcessor

    try:
        config = AutoConfig.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
    except OSError as exc:
        raise ValueError(
            f"cannot load model '{name}': it is not a local folder, not in the Hugging "
            f"Face cache, and the hub is unreachable or has no such model ({exc})"
        ) from exc
    for family in FAMILIES:
        if family.accepts(config):
            return family.from_hf(name, label, config, processor)
    raise ValueError(
        f"model '{name}' is a {config.model_type}; supported: Whisper and wav2vec2-style CTC models"
    )
