"""Export a Whisper SpeechModel as a whisper.cpp model file (ggml-model.bin), and run it with pywhispercpp.

The file is whisper.cpp's own ggml format, as whisper.cpp 1.8.5 reads it (src/whisper.cpp,
`whisper_model_load`) and its models/convert-h5-to-ggml.py writes it from a Hugging Face checkpoint:
  * the magic 0x67676d6c and eleven int32 hyper-parameters (n_vocab, n_audio_ctx, n_audio_state,
    n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype); ftype
    is the file's weight type (0 f32, 1 f16, 2 q4_0, 3 q4_1, 8 q5_0, 9 q5_1, 7 q8_0), plus 1000 x
    GGML_QNT_VERSION (2) for a quantized file, as whisper.cpp's `quantize` tool writes it;
  * the mel filter bank (int32 n_mel, int32 201, then n_mel x 201 float32): transformers'
    WhisperFeatureExtractor filters, the ones the lab computes its features with;
  * the vocabulary below the end-of-text token as raw bytes (the byte-level BPE strings mapped back through
    GPT-2's bytes_to_unicode); whisper.cpp names the special tokens from the end-of-text token on itself;
  * each tensor as int32 n_dims, name length and type, its dims innermost first, its name and its data,
    under OpenAI's names (encoder.blocks.0.attn.query.weight, decoder.token_embedding.weight, ...).
whisper.cpp has ONE weight type for every matrix (attention and feed-forward projections and the token
embedding, which is also the output projection); the two convolutions are float16 in every file but an
f32 one, the positions, biases and layer norms float32. Its feed-forward blocks have 4 x n_state neurons.

The lab's codes are written as ggml's own blocks of 32 values, bit for bit: nothing is requantized.
  * symmetric 4/5/8-bit codes in groups of 32 with float16 scales -> q4_0 / q5_0 / q8_0 with d = scale and
    q = code (q8_0 holds code - 128): ggml computes (q - 8) d, (q - 16) d and q d, the lab's
    (code - 2^(bits-1)) scale, exactly;
  * asymmetric 4/5-bit codes -> q4_1 / q5_1 with d = scale, q = code and m = -zero x scale rounded to
    float16 (ggml's type for m): ggml computes q d + m, within 2^-11 x zero x scale (under 1% of a
    quantization step) of the lab's (code - zero) scale, not exactly;
  * matrices stored in 16 bits (quantize bits 16 on every matrix) -> f16, exactly.
The one conversion whisper.cpp forces is recorded in speech_lab_export.json and README.txt: beside f16 or
quantized matrices it reads the convolutions as float16, so float32 convolutions are rounded to float16
(exact when the recipe stored them in 16 bits too). A float model is refused: whisper.cpp's f32 file
keeps the convolutions in float32, and 1.8.5's CPU backend aborts on them (ggml's im2col takes float16
kernels only, whisper.cpp issue #2557; `write_ggml(path, model, "f32", tensors(model, "f32"))` still
writes that file, which whisper.cpp loads). Other recipes the format cannot hold (other bit widths, group
sizes or scale types, outlier columns, matrices stored in different types, low-rank factors, pruned heads,
a quantized position table) raise ValueError naming the layer and the nearest option whisper.cpp has.
A distilled student (fewer layers) exports as it is; a neuron-pruned feed-forward block is padded back to
4 x n_state with zero neurons, which compute exactly nothing (zero weights and bias, GELU(0) = 0), so the
file holds and runs the unpruned width.

`whispercpp_quantize` rounds float weights the way whisper.cpp's own `quantize` tool does (ggml's
reference rounding, through gguf.quants, from the float16 model it reads), and `export_ggml(...,
requantize="q5_0")` writes a float model that way: what a whisper.cpp user gets, to compare with the
lab's codes.

Running the file: `load` transcribes through pywhispercpp's Model, as its users do (its own mel, its own
greedy loop, n_threads threads), set to decode as the lab does: greedy without timestamps, temperature
fallback or no-speech skipping, the non-speech tokens suppressed when the lab suppresses them, each 30 s
window capped at the lab's token cap. whisper.cpp also stops a window after n_text_ctx / 2 - 4 tokens
(220 for Whisper's 448 positions) and has no loop stop.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.audio import SAMPLE_RATE
from core.compress.quant import QuantWeight
from core.compress.registry import TECHNIQUES
from core.deploy.runtime import (
    README_FILE,
    Deployed,
    Runtime,
    context_frames,
    export_facts,
    refuse,
    running,
    write_export_facts,
)
from core.models import SpeechModel, attention_blocks
from core.models.whisper import WhisperDecoding, token_cap

MODEL_FILE = "ggml-model.bin"
MAGIC = 0x67676D6C  # GGML_FILE_MAGIC, "ggml"
QNT_VERSION = 2  # GGML_QNT_VERSION: a quantized file's ftype is its type + 1000 x QNT_VERSION
BLOCK = 32  # values per block in ggml's q4_0, q4_1, q5_0, q5_1 and q8_0 (QK4_0 = ... = QK8_0 = 32)
AUDIO_POSITIONS = 1500  # whisper.cpp reads 30 s windows: 3000 mel frames, 1500 encoder positions
# name: (ggml_type, ggml_ftype, bits, symmetric, bytes per 32 values), as ggml.h and ggml-common.h say
TYPES = {
    "f32": (0, 0, 32, True, 4 * BLOCK),
    "f16": (1, 1, 16, True, 2 * BLOCK),
    "q4_0": (2, 2, 4, True, 18),  # block_q4_0 {fp16 d; uint8 qs[16]}
    "q4_1": (3, 3, 4, False, 20),  # block_q4_1 {fp16 d, m; uint8 qs[16]}
    "q5_0": (6, 8, 5, True, 22),  # block_q5_0 {fp16 d; uint8 qh[4]; uint8 qs[16]}
    "q5_1": (7, 9, 5, False, 24),  # block_q5_1 {fp16 d, m; uint8 qh[4]; uint8 qs[16]}
    "q8_0": (8, 7, 8, True, 34),  # block_q8_0 {fp16 d; int8 qs[32]}
}
QUANT_TYPES = {(t[2], t[3]): name for name, t in TYPES.items() if name.startswith("q")}
NEAREST_BITS = {2: 4, 3: 4, 4: 4, 5: 5, 6: 8, 7: 8, 8: 8}  # the ggml width that keeps at least the lab's
MATRIX_GROUPS = "encoder.attention, encoder.ffn, decoder.attention, decoder.ffn and embedding"

# Where whisper.cpp's tensors come from: OpenAI's names (whisper.cpp's) for Hugging Face's modules, as
# whisper.cpp's models/convert-h5-to-ggml.py maps them. Kinds: how the module is written.
TOP = {
    "encoder.positional_embedding": ("model.encoder.embed_positions", "positions", "positions"),
    "encoder.conv1": ("model.encoder.conv1", "conv", "conv"),
    "encoder.conv2": ("model.encoder.conv2", "conv", "conv"),
    "encoder.ln_post": ("model.encoder.layer_norm", "norm", ""),
    "decoder.positional_embedding": ("model.decoder.embed_positions", "positions", "positions"),
    "decoder.token_embedding": ("model.decoder.embed_tokens", "table", "embedding"),
    "decoder.ln": ("model.decoder.layer_norm", "norm", ""),
}
BLOCK_PARTS = {  # whisper.cpp's name in a block: (Hugging Face's name in the layer, kind, group suffix)
    "attn.query": ("self_attn.q_proj", "linear", "attention"),
    "attn.key": ("self_attn.k_proj", "key", "attention"),
    "attn.value": ("self_attn.v_proj", "linear", "attention"),
    "attn.out": ("self_attn.out_proj", "linear", "attention"),
    "attn_ln": ("self_attn_layer_norm", "norm", ""),
    "cross_attn.query": ("encoder_attn.q_proj", "linear", "attention"),
    "cross_attn.key": ("encoder_attn.k_proj", "key", "attention"),
    "cross_attn.value": ("encoder_attn.v_proj", "linear", "attention"),
    "cross_attn.out": ("encoder_attn.out_proj", "linear", "attention"),
    "cross_attn_ln": ("encoder_attn_layer_norm", "norm", ""),
    "mlp.0": ("fc1", "up", "ffn"),
    "mlp.2": ("fc2", "down", "ffn"),
    "mlp_ln": ("final_layer_norm", "norm", ""),
}
MATRIX_KINDS = ("linear", "key", "up", "down", "table")
OUTPUT = "proj_out"  # Hugging Face's output projection: whisper.cpp computes logits with the token table


def plan(config) -> list[tuple[str, str, str, str]]:
    """(whisper.cpp name, Hugging Face module name, kind, group) of every module whisper.cpp reads, for a
    Whisper config: the encoder blocks have no cross-attention."""
    entries = [(name, module, kind, group) for name, (module, kind, group) in TOP.items()]
    for side, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(layers):
            for part, (module, kind, group) in BLOCK_PARTS.items():
                if side == "encoder" and part.startswith("cross_"):
                    continue
                entries.append(
                    (
                        f"{side}.blocks.{i}.{part}",
                        f"model.{side}.layers.{i}.{module}",
                        kind,
                        f"{side}.{group}",
                    )
                )
    return entries


# ----------------------------------------------------------------------------- what whisper.cpp can hold


def matrix_type(module: nn.Module) -> tuple[str | None, str | None]:
    """(ggml type, None) for a matrix whisper.cpp can hold exactly, else (None, what it is)."""
    if isinstance(module, QuantWeight):
        if module.bits == 16:
            return "f16", None
        what = []
        if (module.bits, module.symmetric) not in QUANT_TYPES:
            what.append(f"{module.bits}-bit {'symmetric' if module.symmetric else 'asymmetric'} codes")
        if module.granularity != "group":
            what.append("one scale per output row" if module.granularity == "channel" else "one scale in all")
        elif module.group_size != BLOCK:
            what.append(f"one scale per {module.group_size} columns")
        if module.scale_dtype != "float16":
            what.append(f"{module.scale_dtype} scales")
        if module.outlier_columns:
            what.append(f"{module.outlier_columns} fp16 outlier columns beside the codes")
        if what:
            return None, ", ".join(what)
        return QUANT_TYPES[(module.bits, module.symmetric)], None
    if type(module) in (nn.Linear, nn.Embedding):
        return "f32", None
    return None, f"a {type(module).__name__}"


def nearest_hint(module: QuantWeight) -> str:
    """The whisper.cpp type nearest to a quantized layer's settings, as the recipe that writes it."""
    bits = NEAREST_BITS[module.bits]
    symmetric = module.symmetric or bits == 8
    asymmetric = "" if symmetric else ", symmetric false"
    return (
        f"use quantize bits {bits}{asymmetric}, granularity group, group_size 32, scale_dtype float16 "
        f"(outlier_columns 0) → {QUANT_TYPES[(bits, symmetric)]}"
    )


def inexpressible(model: SpeechModel, requantize: str | None = None) -> list[str]:
    """One line per layer (or setting) of `model` that whisper.cpp cannot hold: what it is and the nearest
    option whisper.cpp has. Empty when the model exports as is (with `requantize`: as whisper.cpp's
    quantize tool would round it, see `export_ggml`)."""
    if model.kind != "whisper":
        return [f"{model.name} is a {model.kind} model: the whisper.cpp export writes Whisper models only"]
    config = model.module.config
    modules = dict(model.module.named_modules())
    technique_of = {cls: t.name for t in TECHNIQUES.values() for cls in t.modules}
    problems, types = [], {}
    width = 4 * config.d_model
    for ggml_name, name, kind, group in plan(config):
        module = modules.get(name)
        if module is None:
            problems.append(f"{name}: missing; whisper.cpp needs {ggml_name}")
        elif kind in MATRIX_KINDS:
            found, what = matrix_type(module)
            if found is not None:
                types[name] = (found, group)
            elif isinstance(module, QuantWeight):
                problems.append(f"{name}: {what}; {nearest_hint(module)}")
            elif type(module) in technique_of:
                problems.append(
                    f"{name}: {what} (from the {technique_of[type(module)]} step); whisper.cpp keeps one "
                    "dense matrix per layer: leave that step out of the recipe (prune 'unstructured' or "
                    "'neurons' and quantize in groups of 32 export as they are)"
                )
            else:
                problems.append(f"{name}: {what}; whisper.cpp reads a dense matrix for {ggml_name}")
        elif kind == "conv" and isinstance(module, QuantWeight) and module.bits != 16:
            problems.append(
                f"{name}: {module.bits}-bit codes; whisper.cpp keeps the convolutions in float16 (float32 in "
                "an f32 file): leave 'conv' out of quantize.groups (or quantize it with bits 16)"
            )
        elif kind == "positions" and isinstance(module, QuantWeight):
            problems.append(
                f"{name}: a quantized position table; whisper.cpp keeps positional embeddings in float32: "
                "leave 'positions' out of quantize.groups"
            )
        if kind == "up" and name in types and _rows(module) > width:
            problems.append(
                f"{name}: {_rows(module)} neurons; whisper.cpp's feed-forward blocks have 4 x n_state = "
                f"{width}: prune neurons to at most that"
            )
    problems += _type_problems(types)
    if requantize is None and types and {t for t, _ in types.values()} == {"f32"}:
        problems.append(
            f"{model.name}: float32 matrices; whisper.cpp's f32 file keeps its convolutions in float32 too, "
            "and 1.8.5's CPU backend aborts on them (ggml's im2col takes float16 kernels only, whisper.cpp "
            f"issue #2557): use quantize bits 16 on {MATRIX_GROUPS} and conv → f16 (exact), or quantize bits "
            f"8, granularity group, group_size 32, scale_dtype float16 on {MATRIX_GROUPS} → q8_0"
        )
    problems += _shape_problems(model, modules, set(types.values()))
    return problems


def _rows(module: nn.Module) -> int:
    return (module.weight_shape if isinstance(module, QuantWeight) else module.weight.shape)[0]


def _type_problems(types: dict[str, tuple[str, str]]) -> list[str]:
    """Lines for the matrices not in the file's one weight type (the most common quantized type, else f32)."""
    counts = Counter(t for t, _ in types.values())
    quantized = [t for t, _ in counts.most_common() if t != "f32"]
    target = quantized[0] if quantized else "f32"
    return [
        f"{name}: {found} where the file's one matrix type would be {target}; whisper.cpp has one weight "
        f"type for every matrix: quantize {MATRIX_GROUPS} together with the same settings (add '{group}' "
        "to quantize.groups)"
        for name, (found, group) in types.items()
        if found != target
    ]


def _shape_problems(model: SpeechModel, modules: dict[str, nn.Module], types: set) -> list[str]:
    config, problems = model.module.config, []
    heads = {"encoder": config.encoder_attention_heads, "decoder": config.decoder_attention_heads}
    for block in attention_blocks(model.module):
        side = block.group.split(".")[0]
        if block.heads != heads[side]:
            problems.append(
                f"{block.name}: {block.heads} attention heads where the model has {heads[side]}; "
                "whisper.cpp has one head count per encoder and decoder: prune with structure "
                "'neurons' or 'unstructured' instead of 'heads'"
            )
    quantized = {t for t, _ in types if t.startswith("q")}
    if quantized and config.d_model % BLOCK:
        problems.append(
            f"{model.name}: width {config.d_model} is not a multiple of ggml's 32-value block: use "
            "quantize bits 16 → f16"
        )
    if config.max_source_positions != AUDIO_POSITIONS:
        problems.append(
            f"{model.name}: {config.max_source_positions} audio positions; whisper.cpp reads 30 s windows "
            f"({AUDIO_POSITIONS} positions)"
        )
    if config.activation_function != "gelu" or getattr(config, "scale_embedding", False):
        problems.append(
            f"{model.name}: activation {config.activation_function!r}"
            f"{', scaled embeddings' if getattr(config, 'scale_embedding', False) else ''}; whisper.cpp "
            "runs Whisper's GELU blocks on unscaled embeddings"
        )
    table, output = modules.get(TOP["decoder.token_embedding"][0]), modules.get(OUTPUT)
    if table is not None and output is not None and not _tied(table, output):
        problems.append(
            f"{OUTPUT}: an output projection apart from the token embedding; whisper.cpp computes the "
            "logits with the token embedding: keep the two tied"
        )
    expected = whispercpp_prompt(config.vocab_size)
    if tuple(model.decoding.prompt) != expected or model.decoding.eot != expected[0] - 1:
        problems.append(
            f"{model.name}: prompt {list(model.decoding.prompt)} (end of text {model.decoding.eot}); "
            f"whisper.cpp starts an English transcript of a {config.vocab_size}-token vocabulary with "
            f"{list(expected)} (end of text {expected[0] - 1})"
        )
    try:
        vocabulary_bytes(model.tokenizer, model.decoding.eot)
    except ValueError as exc:
        problems.append(f"{model.name}: {exc}")
    return problems


def _tied(table: nn.Module, output: nn.Module) -> bool:
    """True when the output projection computes with the token table (the same tensor, or its codes)."""
    if getattr(output, "bias", None) is not None:
        return False
    weight = getattr(output, "weight", None)
    if isinstance(weight, torch.Tensor) and isinstance(getattr(table, "weight", None), torch.Tensor):
        return weight is table.weight or torch.equal(weight, table.weight)
    return isinstance(table, QuantWeight) and getattr(output, "codes", None) is getattr(table, "codes", False)


def whispercpp_prompt(vocab_size: int) -> tuple[int, ...]:
    """The prompt whisper.cpp 1.8.5 starts an English transcript without timestamps with: its special
    token ids follow from the vocabulary size (multilingual from 51865 tokens, one more per language)."""
    if vocab_size < 51865:
        return (50257, 50362)
    shift = vocab_size - 51765 - 1 - 98  # languages beyond whisper.cpp's base count of 98
    return (50258, 50259, 50358 + shift, 50362 + shift)  # start, <|en|>, transcribe, no timestamps


def check_expressible(model: SpeechModel, requantize: str | None = None) -> None:
    """ValueError listing what of `model` whisper.cpp cannot hold (see `inexpressible`)."""
    refuse(inexpressible(model, requantize), "in whisper.cpp's ggml format")


def weight_type(model: SpeechModel) -> str:
    """The file's one matrix type ("f32", "f16", "q4_0", ...) of an expressible model."""
    modules = dict(model.module.named_modules())
    types = {
        matrix_type(modules[name])[0]
        for _, name, kind, _ in plan(model.module.config)
        if kind in MATRIX_KINDS
    }
    (found,) = types
    return found


# ----------------------------------------------------------------------------- ggml's blocks


def pack_blocks(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, type_name: str) -> np.ndarray:
    """ggml blocks (rows, bytes per row) of unsigned codes (rows, cols), with one float16 scale and, for
    q4_1/q5_1, one zero point per 32 columns, laid out as ggml-common.h's block_q4_0 ... block_q8_0: the
    scale d (and m = -zero x scale), the 5th bits (qh, bit j for value j), then the low nibbles (value j
    in the low and value j + 16 in the high nibble of byte j) or, for q8_0, the int8 values code - 128."""
    _, _, bits, symmetric, _ = TYPES[type_name]
    rows, cols = codes.shape
    if cols % BLOCK:
        raise ValueError(f"{cols} columns: ggml blocks hold 32 values")
    q = np.ascontiguousarray(codes, dtype=np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    scale = np.asarray(scale).reshape(rows, -1, 1)
    parts = [scale.astype(np.float16).view(np.uint8)]
    if not symmetric:
        offset = -(np.asarray(zero).reshape(rows, -1, 1).astype(np.float32) * scale.astype(np.float32))
        parts.append(offset.astype(np.float16).view(np.uint8))
    if bits == 8:
        parts.append((q.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if bits == 5:
            parts.append(np.packbits((q >> 4) & 1, axis=-1, bitorder="little"))
        half = BLOCK // 2
        parts.append((q[..., :half] & 0x0F) | ((q[..., half:] & 0x0F) << 4))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def lab_codes(module: QuantWeight, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The layer's codes (rows, cols), float16 scales and zero points (None: symmetric) per 32 columns,
    padded with blocks of value 0 (the block's zero point, scale 0) to `rows` x `cols`."""
    codes = module.unpacked_codes().numpy()
    r, c = codes.shape
    blocks = cols // BLOCK
    scale = np.zeros((rows, blocks), np.float16)
    scale[:r, : -(-c // BLOCK)] = module.scale.detach().numpy().reshape(r, -1)
    zero = np.full((rows, blocks), 2 ** (module.bits - 1) if module.symmetric else 0, np.uint8)
    if not module.symmetric:
        zero[:r, : -(-c // BLOCK)] = module.zero.numpy().reshape(r, -1)
    padded = np.repeat(zero, BLOCK, axis=1)  # a padded value is its block's zero point: exactly 0
    padded[:r, :c] = codes
    return padded, scale, None if module.symmetric else zero


def whispercpp_quantize(weight: np.ndarray, type_name: str, from_float16: bool = True) -> np.ndarray:
    """ggml blocks (rows, bytes per row) of a float matrix (rows, cols) rounded as whisper.cpp's `quantize`
    tool rounds it (ggml's reference quantize_row_*_ref, through gguf.quants' numpy port: d = the block's
    signed absolute maximum / -8 for q4_0, ... ; not the lab's rounding). `from_float16`: round to float16
    first, as the tool reads whisper.cpp's float16 model files. Needs `pip install gguf`."""
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize
    except ImportError as exc:
        raise ImportError("whispercpp_quantize needs the gguf package: pip install gguf==0.19.0") from exc
    data = np.asarray(weight, dtype=np.float32)
    if from_float16:
        data = data.astype(np.float16).astype(np.float32)
    return quantize(data, GGMLQuantizationType[type_name.upper()])


# ----------------------------------------------------------------------------- the file


def byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the byte each character of a byte-level BPE token stands for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + n): b for n, b in enumerate(others)})
    return chars


def vocabulary_bytes(tokenizer, count: int) -> list[bytes]:
    """The bytes of tokens 0 .. count - 1 of a byte-level BPE `tokenizers.Tokenizer`."""
    by_id = {i: token for token, i in tokenizer.get_vocab(with_added_tokens=False).items()}
    decoder = byte_decoder()
    missing = [i for i in range(count) if i not in by_id]
    if missing:
        raise ValueError(
            f"the tokenizer has no token {missing[0]}: whisper.cpp needs tokens 0 .. {count - 1}"
        )
    try:
        return [bytes(decoder[c] for c in by_id[i]) for i in range(count)]
    except KeyError as exc:
        raise ValueError(f"token {exc} is not byte-level BPE: whisper.cpp reads GPT-2 byte tokens") from exc


def mel_filters(n_mels: int) -> np.ndarray:
    """(n_mels, 201) float32: the mel filter bank of the lab's features (transformers' Whisper extractor)."""
    from transformers import WhisperFeatureExtractor

    return np.ascontiguousarray(WhisperFeatureExtractor(feature_size=n_mels).mel_filters.T, dtype=np.float32)


def _float(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _matrix(module: nn.Module, wtype: str, rows: int, cols: int, requantize: str | None) -> np.ndarray:
    """A matrix's data padded to rows x cols: float32 / float16 values, or ggml blocks of the lab's codes
    (of whisper.cpp's own rounding with `requantize`)."""
    if wtype in ("f32", "f16"):
        weight = module.weight_fp16 if isinstance(module, QuantWeight) else module.weight
        data = np.zeros((rows, cols), np.float32 if wtype == "f32" else np.float16)
        data[: weight.shape[0], : weight.shape[1]] = _float(weight)
        return whispercpp_quantize(data, requantize) if requantize else data
    return pack_blocks(*lab_codes(module, rows, cols), wtype)


def tensors(
    model: SpeechModel, wtype: str, requantize: str | None = None
) -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray]]:
    """(whisper.cpp name, ggml type, shape outermost first, data) of each tensor of the file, matrices in
    `wtype` (or quantized as `requantize`), a neuron-pruned feed-forward block padded with zero neurons."""
    config = model.module.config
    modules = dict(model.module.named_modules())
    width = 4 * config.d_model
    matrix_type_name = requantize or wtype
    conv_type = np.float32 if matrix_type_name == "f32" else np.float16
    for ggml_name, name, kind, _ in plan(config):
        module = modules[name]
        if kind == "positions":
            yield ggml_name, "f32", tuple(module.weight.shape), _float(module.weight)
        elif kind == "norm":
            yield f"{ggml_name}.weight", "f32", tuple(module.weight.shape), _float(module.weight)
            yield f"{ggml_name}.bias", "f32", tuple(module.bias.shape), _float(module.bias)
        elif kind == "conv":
            weight = module.weight_fp16 if isinstance(module, QuantWeight) else module.weight
            data = _float(weight).astype(conv_type)
            yield f"{ggml_name}.weight", "f32" if conv_type is np.float32 else "f16", data.shape, data
            bias = _float(module.bias).reshape(-1, 1)  # whisper.cpp's conv bias is (n_state, 1)
            yield f"{ggml_name}.bias", "f32", bias.shape, bias
        else:
            rows, cols = module.weight_shape if isinstance(module, QuantWeight) else module.weight.shape
            rows, cols = (width if kind == "up" else rows), (width if kind == "down" else cols)
            data = _matrix(module, wtype, rows, cols, requantize)
            yield f"{ggml_name}.weight", matrix_type_name, (rows, cols), data
            if kind in ("linear", "up", "down"):
                bias = np.zeros(rows, np.float32)  # a layer without bias adds zeros
                if module.bias is not None:
                    bias[: module.bias.shape[0]] = _float(module.bias)
                yield f"{ggml_name}.bias", "f32", bias.shape, bias


def write_ggml(path: Path, model: SpeechModel, file_type: str, items) -> None:
    """Write whisper.cpp's ggml file: magic, hyper-parameters, mel filters, vocabulary, then the tensors."""
    config = model.module.config
    ftype = TYPES[file_type][1] + (1000 * QNT_VERSION if file_type.startswith("q") else 0)
    hparams = (
        config.vocab_size,
        config.max_source_positions,
        config.d_model,
        config.encoder_attention_heads,
        config.encoder_layers,
        config.max_target_positions,
        config.d_model,
        config.decoder_attention_heads,
        config.decoder_layers,
        config.num_mel_bins,
        ftype,
    )
    filters = mel_filters(config.num_mel_bins)
    vocabulary = vocabulary_bytes(model.tokenizer, model.decoding.eot)
    with open(path, "wb") as out:
        out.write(struct.pack("<I11i", MAGIC, *hparams))
        out.write(struct.pack("<ii", *filters.shape) + filters.astype("<f4").tobytes())
        out.write(struct.pack("<i", len(vocabulary)))
        out.write(b"".join(struct.pack("<I", len(token)) + token for token in vocabulary))
        for name, type_name, shape, data in items:
            encoded = name.encode()
            dims = tuple(reversed(shape))  # ggml's ne: innermost first
            out.write(struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), TYPES[type_name][0], *dims))
            out.write(encoded + np.ascontiguousarray(data).tobytes())


def notes(model: SpeechModel, wtype: str, file_type: str) -> list[str]:
    """What of the model the file does not hold bit for bit, and the exact rewrites (neuron padding)."""
    modules = dict(model.module.named_modules())
    found = []
    convs = [name for _, name, kind, _ in plan(model.module.config) if kind == "conv"]
    if file_type != "f32" and not all(isinstance(modules[name], QuantWeight) for name in convs):
        found.append(
            "encoder.conv1.weight, encoder.conv2.weight: float32 rounded to float16 (whisper.cpp 1.8.5 reads "
            f"the convolutions in float16 beside {file_type} matrices)"
        )
    if wtype in ("q4_1", "q5_1"):
        found.append(f"{wtype} offsets m = -zero x scale rounded to float16: within 2^-11 x zero x scale")
    if wtype != file_type:
        found.append(f"matrices rounded to {file_type} by whisper.cpp's reference quantizer, not the lab's")
    width = 4 * model.module.config.d_model
    for _, name, kind, _ in plan(model.module.config):
        if kind == "up" and _rows(modules[name]) < width:
            found.append(
                f"{name}: {_rows(modules[name])} neurons padded with zero neurons to {width} (exact)"
            )
    return found


def readme_text(model: SpeechModel, folder: Path, file_type: str) -> str:
    """How to load the file: five lines with pywhispercpp (and the whisper.cpp command line)."""
    return f"""{model.name}, exported by Speech Compression Lab for whisper.cpp 1.8.5 ({file_type} matrices).
Greedy, without timestamps or temperature fallback, as the lab decodes; a.wav: 16 kHz mono 16-bit.

from pywhispercpp.model import Model
model = Model("{folder / MODEL_FILE}", n_threads=4, redirect_whispercpp_logs_to=None)
segments = model.transcribe("a.wav", no_timestamps=True, temperature_inc=0.0, print_progress=False)
print(" ".join(segment.text for segment in segments))
# or whisper.cpp's own command line: whisper-cli -m {folder / MODEL_FILE} -f a.wav -nt
"""


def export_ggml(model: SpeechModel, folder: str | Path, requantize: str | None = None) -> Path:
    """Write `model` (a Whisper SpeechModel, compressed or not) as a whisper.cpp folder (ggml-model.bin,
    README.txt, speech_lab_export.json); returns it. ValueError, before anything is written, if whisper.cpp
    cannot hold the model. `requantize` ("q4_0", ..., "q8_0"): round a float model's matrices the way
    whisper.cpp's own `quantize` tool does (see `whispercpp_quantize`) instead of writing them in float."""
    check_expressible(model, requantize)
    wtype = weight_type(model)
    if requantize is not None and (requantize not in QUANT_TYPES.values() or wtype != "f32"):
        raise ValueError(
            f"requantize={requantize!r} rounds a float model's matrices as whisper.cpp's quantize tool does: "
            f"it needs one of {sorted(QUANT_TYPES.values())} and a float model (this one's are {wtype}; the "
            "lab's own codes are written as they are without requantize)"
        )
    file_type = requantize or wtype
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        write_ggml(folder / MODEL_FILE, model, file_type, tensors(model, wtype, requantize))
    (folder / README_FILE).write_text(readme_text(model, folder, file_type))
    weights = "whisper.cpp's reference quantizer" if requantize else "the lab's"
    write_export_facts(
        folder,
        model,
        "ggml",
        type=file_type,
        file=MODEL_FILE,
        weights=weights,
        notes=notes(model, wtype, file_type),
    )
    return folder


# ----------------------------------------------------------------------------- running it


def header_type(path: Path) -> str:
    """The matrix type ("f32", "f16", "q4_0", ...) a ggml whisper file's header names."""
    with open(path, "rb") as source:
        magic, *hparams = struct.unpack("<I11i", source.read(48))
    types = {t[1]: name for name, t in TYPES.items()}
    if magic != MAGIC or hparams[-1] % 1000 not in types:
        raise ValueError(f"{path} is not a whisper.cpp ggml model file")
    return types[hparams[-1] % 1000]


def decoding_params(decoding: WhisperDecoding, threads: int) -> dict:
    """pywhispercpp Model parameters that decode as the lab does: one greedy pass without timestamps,
    temperature fallback, previous-text prompt or no-speech skipping; the blank and end-of-text tokens
    suppressed at the start, the non-speech symbols when the lab suppresses them (whisper.cpp's own list)."""
    return {
        "n_threads": threads,
        "language": "en",
        "no_context": True,
        "no_timestamps": True,
        "single_segment": True,
        "print_progress": False,
        "print_realtime": False,
        "print_timestamps": False,
        "temperature": 0.0,
        "temperature_inc": 0.0,
        "no_speech_thold": 1.0,  # a probability never exceeds 1: no window is dropped as silence
        "suppress_blank": True,
        "suppress_nst": any(token < decoding.eot for token in decoding.suppress),
        "greedy": {"best_of": 1},
    }


def audio_ctx(facts: dict, window: np.ndarray) -> int:
    """whisper.cpp's `audio_ctx` for a window: the encoder positions a short-context model uses (half its
    frames), or 0 (whisper.cpp's default: all 1500) for a model exported with the full window."""
    frames = context_frames(facts, window)
    return frames // 2 if facts.get("short_context") else 0


def load(folder: Path, threads: int) -> Deployed:
    """The folder running in whisper.cpp (pywhispercpp's Model) on `threads` threads: its own mel and
    greedy loop on each 30 s window, capped at the lab's token cap for the window."""
    from pywhispercpp.model import Model
    from pywhispercpp.utils import redirect_stderr

    folder = Path(folder)
    if header_type(folder / MODEL_FILE) == "f32":  # refused here: whisper.cpp would abort the process
        raise ValueError(
            f"{folder / MODEL_FILE} is an f32 file: whisper.cpp 1.8.5's CPU backend aborts on its float32 "
            "convolutions (whisper.cpp issue #2557); export the model quantized (bits 16 → f16, or q8_0)"
        )
    facts = export_facts(folder)
    decoding = WhisperDecoding.from_json(facts["decoding"])
    engine = Model(
        str(folder / MODEL_FILE), redirect_whispercpp_logs_to=None, **decoding_params(decoding, threads)
    )

    def window_text(window: np.ndarray) -> str:
        cap = token_cap(decoding, len(window) / SAMPLE_RATE)
        # whisper.cpp ends a window once the token after max_tokens is out: cap - 1 gives cap tokens
        with redirect_stderr(to=None):  # whisper.cpp's own warnings (e.g. a window under 100 ms)
            segments = engine.transcribe(
                np.ascontiguousarray(window, np.float32),
                max_tokens=max(cap - 1, 1),
                audio_ctx=audio_ctx(facts, window),
            )
        return " ".join(segment.text.strip() for segment in segments)

    return running(RUNTIME, folder, threads, window_text)


RUNTIME = Runtime(
    name="ggml",
    title="whisper.cpp 1.8.5 (pywhispercpp 1.5.1)",
    package="pywhispercpp",
    files=(MODEL_FILE,),
    inexpressible=inexpressible,
    export=export_ggml,
    load=load,
)
