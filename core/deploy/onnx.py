"""Export a Whisper SpeechModel as two ONNX graphs that ONNX Runtime 1.31.1 runs on CPU, and run them there.

The graphs are written by hand with onnx.helper (no tracing), so each weight lands in the format chosen
for it and nothing is requantized:
  * a float layer is a float32 MatMul weight (stored transposed, (in, out)); a 16-bit layer is stored as
    float16 and Cast to float32 (ONNX Runtime folds the Cast once, when it loads the graph);
  * an 8-bit layer with one scale per output row (or per tensor) is ONNX Runtime's dynamic int8 pattern,
    what `onnxruntime.quantization.quantize_dynamic` writes and ONNX Runtime fuses into one kernel: the
    activation quantized per call (DynamicQuantizeLinear), multiplied by the weight's codes
    (MatMulInteger), scaled per output column (Mul). The codes are the lab's uint8 codes with their zero
    point (128 when symmetric) rather than int8: on x86 without VNNI (AVX2) ONNX Runtime's uint8 x int8
    kernel adds pairs of products in int16 and saturates on full-range codes, uint8 x uint8 is exact. Like
    CTranslate2 and the lab's int8_dynamic backend, its logits differ slightly from the lab's fp32
    forward over the same weights;
  * any other 2-, 4- or 8-bit layer is a com.microsoft MatMulNBits: the lab's codes packed low bits
    first within blocks of `block_size` columns (B: uint8 (out, blocks, block_size * bits / 8)), one
    float32 scale per block, zero points packed the same way when asymmetric, none when symmetric (its
    default 2**(bits-1) is the lab's symmetric zero). A lab group of g columns is g / block_size blocks
    sharing a scale, and a per-row scale is repeated over the row's blocks, so every group size that
    is a multiple of 16 is held exactly. 4-bit blocks run on float activations (accuracy_level 0: the
    lab's own arithmetic); 2- and 8-bit blocks on int8 activations (accuracy_level 4), since ONNX Runtime
    1.31 would otherwise dequantize the whole matrix on every call (20-40x slower for one token);
  * a low-rank layer is its two factors, each written as above;
  * the token table is stored once: the lookup reads the very weights the output projection multiplies
    (GatherBlockQuantized over the MatMulNBits blocks; else a Gather of columns of the table kept as
    (dim, vocab), the layout of the projection's MatMul or MatMulInteger).
What ONNX Runtime cannot hold exactly is refused, naming the layer and the nearest option: 3-, 5-, 6-,
7-bit codes, groups that are not whole 16..256-column blocks, fp16 outlier columns, a quantized (below
16 bits) convolution or position table, and layers of techniques this exporter does not know.

encoder.onnx maps the log-mel window to every decoder layer's cross-attention keys and values (computed
once per clip, as CTranslate2 does); decoder.onnx maps new tokens, those and the past self-attention
keys/values to the next-token logits and the present keys/values. Greedy decoding runs in Python with
the lab's own loop (core.models.whisper.greedy_loop), so the tokens differ only where the logits do.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from core.audio import SAMPLE_RATE
from core.compress.lowrank import LowRankLinear
from core.compress.quant import QuantConv1d, QuantPositions, QuantWeight
from core.compress.registry import TECHNIQUES
from core.deploy.runtime import (
    EXPORT_FILE,
    README_FILE,
    Deployed,
    Runtime,
    context_frames,
    export_facts,
    refuse,
    running,
    write_export_facts,
)
from core.models import SpeechModel
from core.models.whisper import WhisperDecoding, greedy_loop, token_cap

ORT_VERSION = "1.31.1"
OPSET, IR_VERSION = 21, 10  # ONNX Runtime 1.31 reads IR <= 13; onnx 1.23 would write 14 by default
FILES = ("encoder.onnx", "decoder.onnx")
MS = "com.microsoft"
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what the CPU MatMulNBits kernel accepts (power of two)
NBITS = (2, 4, 8)  # MatMulNBits bit widths on CPU (3, 5, 6, 7 are refused by its kernel)
ACCURACY_LEVEL = {2: 4, 4: 0, 8: 4}  # MatMulNBits activations: 0 float, 4 int8 (see the docstring)
# Hugging Face WhisperForConditionalGeneration's module names (the lab's Whisper keeps them): the graphs'
# initializers are named by these paths, e.g. "model.decoder.layers.0.fc1.weight_B"
ENCODER, DECODER, OUTPUT = "model.encoder", "model.decoder", "proj_out"
TOKENS, POSITIONS, CROSS = "embed_tokens", "embed_positions", "encoder_attn"


# ----------------------------------------------------------------------------- what ONNX Runtime can hold


def inexpressible(model: SpeechModel) -> list[str]:
    """One line per layer of `model` that ONNX Runtime cannot hold exactly: what it is, and the nearest
    option it has. Empty when the model exports as is."""
    if model.kind != "whisper":
        return [f"{model.name} is a {model.kind} model: the ONNX export writes Whisper models only"]
    problems = []
    config = model.module.config
    if config.activation_function != "gelu":
        problems.append(f"activation {config.activation_function!r}: the ONNX export writes Whisper's 'gelu'")
    technique_of = {cls: t.name for t in TECHNIQUES.values() for cls in t.modules}
    for name, module in model.module.named_modules():
        if isinstance(module, QuantWeight):
            problem = quant_problem(module)
            if problem:
                problems.append(f"{name}: {problem}")
        elif type(module) in technique_of and not isinstance(module, LowRankLinear):
            problems.append(
                f"{name}: a {type(module).__name__} (from the {technique_of[type(module)]} step); the ONNX "
                "export writes float, quantized and low-rank layers only: leave that step out of the recipe"
            )
    return problems


def quant_problem(layer: QuantWeight) -> str | None:
    """Why ONNX Runtime cannot hold this quantized layer exactly, with the nearest option; None if it can."""
    if layer.bits == 16:
        return None
    if isinstance(layer, QuantPositions):
        return (
            f"a {layer.bits}-bit position table; ONNX Runtime's quantized ops are matrix products and "
            "lookups of token rows: leave 'positions' out of quantize.groups (or use bits 16)"
        )
    if isinstance(layer, QuantConv1d):
        return (
            f"a {layer.bits}-bit convolution; ONNX Runtime's Conv runs float weights: leave 'conv' out of "
            "quantize.groups (or use bits 16)"
        )
    if layer.outlier_columns:
        return (
            f"{layer.outlier_columns} fp16 outlier columns beside the codes; MatMulNBits holds codes, "
            "scales and zero points only: use quantize.outlier_columns 0"
        )
    if layer.bits not in NBITS:
        nearest = min(NBITS, key=lambda b: (abs(b - layer.bits), -b))
        return (
            f"{layer.bits}-bit codes; ONNX Runtime {ORT_VERSION} runs 2-, 4- and 8-bit codes on CPU "
            f"(MatMulNBits): use quantize.bits {nearest}"
        )
    if block_size(layer) is None:
        nearest = min(BLOCK_SIZES, key=lambda b: abs(math.log2(b / layer.group_size)))
        return (
            f"groups of {layer.group_size} columns; MatMulNBits scales blocks of 16, 32, 64, 128 or 256 "
            f"columns (a group must be whole blocks): use quantize.group_size {nearest}"
        )
    return None


def check_expressible(model: SpeechModel) -> None:
    """ValueError listing what of `model` ONNX Runtime cannot hold exactly (see `inexpressible`)."""
    refuse(inexpressible(model), "for ONNX Runtime")


# ----------------------------------------------------------------------------- weights, ONNX Runtime's way


def weight_format(layer: nn.Module) -> str:
    """How a layer's weight is written: "float32", "float16", "int8" (MatMulInteger) or "blocks"
    (MatMulNBits)."""
    if not isinstance(layer, QuantWeight):
        return "float32"
    if layer.bits == 16:
        return "float16"
    if layer.bits == 8 and (layer.granularity != "group" or layer.group_size >= columns(layer)):
        return "int8"
    return "blocks"


def columns(layer: QuantWeight) -> int:
    return math.prod(layer.weight_shape[1:])


def block_size(layer: QuantWeight) -> int | None:
    """The MatMulNBits block holding the layer's scales exactly: a power-of-two divisor (16..256) of its
    group size, or, with one scale per row, the block that takes the fewest bytes; None if there is none."""
    cols = columns(layer)
    if layer.granularity == "group" and layer.group_size < cols:
        fits = [b for b in BLOCK_SIZES if layer.group_size % b == 0]
        return max(fits) if fits else None
    return min(BLOCK_SIZES, key=lambda b: (-(-cols // b) * (b * layer.bits // 8 + 5), -b))


def per_block(values: torch.Tensor, layer: QuantWeight, size: int, count: int) -> np.ndarray:
    """A layer's scales or zero points (one per tensor, row or group) repeated to one per block of
    `size` columns: (rows, count). A group of g columns is g / size blocks (block_size divides g)."""
    values = values.detach().numpy().reshape(values.shape[0], -1)
    if values.shape[1] > 1:
        values = np.repeat(values, layer.group_size // size, axis=1)[:, :count]
    return np.ascontiguousarray(np.broadcast_to(values, (layer.weight_shape[0], count)))


def blocks(layer: QuantWeight, size: int) -> dict[str, np.ndarray]:
    """The layer's codes in MatMulNBits' layout: B (rows, blocks, size * bits / 8), scales (rows, blocks)
    float32, and when asymmetric the zero points packed (rows, ceil(blocks * bits / 8)) and, for
    GatherBlockQuantized, one a byte (rows, blocks, 1). Padding codes are the zero point: they decode to 0."""
    rows, cols, bits = layer.weight_shape[0], columns(layer), layer.bits
    count = -(-cols // size)
    scales = per_block(layer.scale.float(), layer, size, count).astype(np.float32)
    if layer.zero is None:
        zero = np.full((rows, count), 2 ** (bits - 1), dtype=np.uint8)
    else:
        zero = per_block(layer.zero, layer, size, count).astype(np.uint8)
    codes = np.repeat(zero, size, axis=1)
    codes[:, :cols] = layer.unpacked_codes().numpy()
    packed = {"B": pack_rows(codes, bits).reshape(rows, count, size * bits // 8), "scales": scales}
    if layer.zero is not None:
        packed["zero_points"] = pack_rows(zero, bits, fill=2 ** (bits - 1))  # as onnxruntime pads
        packed["zero_points_unpacked"] = zero.reshape(rows, count, 1)
    return packed


def pack_rows(codes: np.ndarray, bits: int, fill: int = 0) -> np.ndarray:
    """Unsigned codes (rows, n) as bytes (rows, ceil(n * bits / 8)), low bits first (bits 2, 4 or 8); a
    last byte's unused bits hold `fill`."""
    per = 8 // bits
    rows, n = codes.shape
    padded = np.full((rows, -(-n // per) * per), fill, dtype=np.uint8)
    padded[:, :n] = codes
    grouped = padded.reshape(rows, -1, per)
    packed = grouped[:, :, 0].copy()
    for i in range(1, per):
        packed |= grouped[:, :, i] << (bits * i)
    return packed


def int8_weight(layer: QuantWeight) -> dict[str, np.ndarray]:
    """An 8-bit per-row (or per-tensor) layer as MatMulInteger's B (in, out): the lab's uint8 codes as
    they are, with their zero point (128 when symmetric) and scale per output column (or one for all).
    uint8 x uint8, not int8 weights: on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernel sums
    pairs of products in int16 and saturates on full-range codes; uint8 x uint8 is exact."""
    scale = layer.scale.detach().float().numpy().reshape(-1)
    if layer.zero is None:
        zero = np.array(2 ** (layer.bits - 1), dtype=np.uint8)
    else:
        zero = layer.zero.numpy().reshape(-1)
    return {
        "B": np.ascontiguousarray(layer.unpacked_codes().numpy().T),
        "scale": scale if scale.size > 1 else scale.reshape(()),
        "zero_point": zero if zero.size > 1 else zero.reshape(()),
    }


def float_weight(layer: nn.Module) -> np.ndarray:
    """A float layer's weight as stored: float32, or float16 for a 16-bit quantized layer."""
    if isinstance(layer, QuantWeight):
        return layer.weight_fp16.detach().numpy().reshape(layer.weight_shape)
    return layer.weight.detach().float().numpy()


# ----------------------------------------------------------------------------- the graph builder


class Graph:
    """An ONNX graph being written: nodes in order and initializers by name (a name is stored once, so
    two ops reading one weight share it). `op` returns its output name(s)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.memo: dict[str, object] = {}

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None, **attributes):
        names = [out] if out else [f"{op_type}_{len(self.nodes)}_{i}" for i in range(outputs)]
        inputs = list(inputs)
        while inputs and inputs[-1] == "":  # trailing optional inputs left out
            inputs.pop()
        domain = MS if op_type in ("MatMulNBits", "GatherBlockQuantized") else ""
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain, **attributes))
        return names[0] if len(names) == 1 else names

    def const(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.array(array, order="C"), name)  # keeps 0-d
        return name

    def ints(self, *values: int) -> str:
        """A constant int64 vector (shapes, axes, slice bounds)."""
        return self.const("ints_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values))

    def scalar(self, value: int | float) -> str:
        """A constant scalar: int64 for an int, float32 for a float."""
        array = np.array(value, dtype=np.int64 if isinstance(value, int) else np.float32)
        return self.const(f"scalar_{array.dtype}_{value}".replace("-", "m"), array)

    def once(self, key: str, make):
        """make() the first time `key` is asked for, the same result after (a weight's initializers)."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def nbytes(self) -> int:
        return sum(len(t.raw_data) for t in self.initializers.values())

    def model(self, name: str, inputs: list, outputs: list, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, list(self.initializers.values()), doc)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
        return helper.make_model(
            graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="speech-compression-lab"
        )


def tensor(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def keys(name: str, attention: nn.Module, length: str) -> onnx.ValueInfoProto:
    """A graph input or output holding one attention's keys or values: (batch, heads, length, head_dim)."""
    return tensor(name, TensorProto.FLOAT, ["batch", attention.num_heads, length, attention.head_dim])


# ----------------------------------------------------------------------------- layers


def dense(g: Graph, layer: nn.Module, name: str, transpose: bool = False) -> str:
    """A float (or 16-bit) weight as a float32 tensor: (in, out) for MatMul when `transpose`."""

    def make() -> str:
        weight = float_weight(layer)
        stored = g.const(f"{name}.weight", weight.T if transpose else weight)
        return g.op("Cast", stored, to=TensorProto.FLOAT) if weight.dtype == np.float16 else stored

    return g.once(f"{name}:dense:{transpose}", make)


def nbits(g: Graph, layer: QuantWeight, name: str) -> dict:
    """The initializers of a MatMulNBits layer (shared by every op reading it) and its attributes."""

    def make() -> dict:
        size = block_size(layer)
        data = blocks(layer, size)
        gather_zero = data.pop("zero_points_unpacked", None)  # written only where a lookup reads it
        names = {key: g.const(f"{name}.weight_{key}", value) for key, value in data.items()}
        return {**names, "block_size": size, "gather_zero": gather_zero}

    return g.once(f"{name}:nbits", make)


def int8(g: Graph, layer: QuantWeight, name: str) -> dict:
    """The initializers of an int8 (MatMulInteger) layer: B (in, out), scale, zero point if asymmetric."""
    return g.once(
        f"{name}:int8", lambda: {k: g.const(f"{name}.weight_{k}", v) for k, v in int8_weight(layer).items()}
    )


def matmul(g: Graph, x: str, layer: nn.Module, name: str) -> str:
    """x @ W^T (no bias) in the format `weight_format` chose for the layer."""
    kind = weight_format(layer)
    if kind == "blocks":
        weight = nbits(g, layer, name)
        rows, cols = layer.weight_shape[0], columns(layer)
        return g.op(
            "MatMulNBits",
            x,
            weight["B"],
            weight["scales"],
            weight.get("zero_points", ""),
            K=cols,
            N=rows,
            bits=layer.bits,
            block_size=weight["block_size"],
            accuracy_level=ACCURACY_LEVEL[layer.bits],
        )
    if kind == "int8":  # onnxruntime.quantization.quantize_dynamic's pattern, fused by ONNX Runtime
        weight = int8(g, layer, name)
        q, q_scale, q_zero = g.op("DynamicQuantizeLinear", x, outputs=3)
        product = g.op("MatMulInteger", q, weight["B"], q_zero, weight["zero_point"])
        scale = g.op("Mul", q_scale, weight["scale"])
        return g.op("Mul", g.op("Cast", product, to=TensorProto.FLOAT), scale)
    return g.op("MatMul", x, dense(g, layer, name, transpose=True))


def linear(g: Graph, x: str, layer: nn.Module, name: str) -> str:
    """A Linear layer of any kind the lab writes (float, quantized, or a low-rank pair of them)."""
    if isinstance(layer, LowRankLinear):
        return linear(g, linear(g, x, layer.first, f"{name}.first"), layer.second, f"{name}.second")
    y = matmul(g, x, layer, name)
    if layer.bias is None:
        return y
    return g.op("Add", y, g.const(f"{name}.bias", layer.bias.detach().float().numpy()))


def layer_norm(g: Graph, x: str, norm: nn.LayerNorm, name: str) -> str:
    weight = g.const(f"{name}.weight", norm.weight.detach().float().numpy())
    bias = g.const(f"{name}.bias", norm.bias.detach().float().numpy())
    return g.op("LayerNormalization", x, weight, bias, axis=-1, epsilon=float(norm.eps))


def gelu(g: Graph, x: str) -> str:
    return g.op("Gelu", x)  # exact (erf), as Hugging Face's "gelu"


def conv(g: Graph, x: str, layer: nn.Module, name: str) -> str:
    padding = layer.padding[0]
    bias = g.const(f"{name}.bias", layer.bias.detach().float().numpy())
    return g.op(
        "Conv",
        x,
        dense(g, layer, name),
        bias,
        kernel_shape=[layer.kernel_size[0]],
        strides=[layer.stride[0]],
        pads=[padding, padding],
        dilations=[layer.dilation[0]],
        group=layer.groups,
    )


# ----------------------------------------------------------------------------- attention


def split_heads(g: Graph, x: str, heads: int, head_dim: int, out: str | None = None) -> str:
    """(batch, n, heads * head_dim) -> (batch, heads, n, head_dim)."""
    return g.op("Transpose", g.op("Reshape", x, g.ints(0, 0, heads, head_dim)), perm=[0, 2, 1, 3], out=out)


def merge_heads(g: Graph, x: str) -> str:
    return g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 1, 3]), g.ints(0, 0, -1))


def attend(g: Graph, q: str, k: str, v: str, mask: str | None = None) -> str:
    """softmax(q k^T + mask) v over (batch, heads, n, head_dim); q is already scaled."""
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    if mask is not None:
        scores = g.op("Add", scores, mask)
    return g.op("MatMul", g.op("Softmax", scores, axis=-1), v)


def queries(g: Graph, h: str, attention: nn.Module, name: str) -> str:
    """Scaled queries, as Hugging Face's WhisperAttention: q_proj(h) * head_dim ** -0.5, split in heads."""
    scaling = np.array(attention.head_dim**-0.5, dtype=np.float32)
    q = g.op("Mul", linear(g, h, attention.q_proj, f"{name}.q_proj"), g.const(f"{name}.scaling", scaling))
    return split_heads(g, q, attention.num_heads, attention.head_dim)


def keys_values(g: Graph, h: str, attention: nn.Module, name: str, out: tuple = (None, None)) -> tuple:
    heads, head_dim = attention.num_heads, attention.head_dim
    k = split_heads(g, linear(g, h, attention.k_proj, f"{name}.k_proj"), heads, head_dim, out[0])
    v = split_heads(g, linear(g, h, attention.v_proj, f"{name}.v_proj"), heads, head_dim, out[1])
    return k, v


def output(g: Graph, o: str, attention: nn.Module, name: str) -> str:
    return linear(g, merge_heads(g, o), attention.out_proj, f"{name}.out_proj")


def feed_forward(g: Graph, h: str, up: nn.Module, down: nn.Module, name: str) -> str:
    return linear(g, gelu(g, linear(g, h, up, f"{name}.fc1")), down, f"{name}.fc2")


# ----------------------------------------------------------------------------- the token table


def tied(projection: nn.Module, embedding: nn.Module) -> bool:
    """True when the output projection reads the token table's own storage (Whisper ties them)."""
    if isinstance(projection, QuantWeight):  # Int8DynamicLinear.tied_to aliases the table's codes
        codes = getattr(embedding, "codes", None)
        return codes is not None and projection.codes.data_ptr() == codes.data_ptr()
    return projection.weight.data_ptr() == embedding.weight.data_ptr()


def embed_tokens(g: Graph, tokens: str, embedding: nn.Module, name: str) -> str:
    """Token rows (batch, n, dim), read from the same stored table as the output projection."""
    kind = weight_format(embedding)
    dim = embedding.embedding_dim
    if kind == "blocks":
        weight = nbits(g, embedding, name)
        scales = g.op("Reshape", weight["scales"], g.ints(0, 0, 1))  # (vocab, blocks, 1): folded at load
        rows = g.op(
            "GatherBlockQuantized",
            weight["B"],
            tokens,
            scales,
            ""
            if weight["gather_zero"] is None
            else g.const(f"{name}.weight_gather_zero", weight["gather_zero"]),
            bits=embedding.bits,
            block_size=weight["block_size"],
            gather_axis=0,
            quantize_axis=2,
        )
        rows = g.op("Reshape", rows, g.ints(0, 0, -1))  # (batch, n, blocks * block_size)
        if -(-dim // weight["block_size"]) * weight["block_size"] != dim:
            rows = g.op("Slice", rows, g.ints(0), g.ints(dim), g.ints(2))
        return rows
    if kind == "int8":  # the table is stored (dim, vocab) for MatMulInteger: gather columns
        weight = int8(g, embedding, name)
        picked = g.op("Gather", weight["B"], tokens, axis=1)  # (dim, batch, n)
        rows = g.op("Cast", g.op("Transpose", picked, perm=[1, 2, 0]), to=TensorProto.FLOAT)
        zero, scale = weight["zero_point"], weight["scale"]
        if embedding.zero is not None and embedding.zero.numel() > 1:
            zero = g.op("Unsqueeze", g.op("Gather", zero, tokens), g.ints(-1))
        if embedding.scale.numel() > 1:
            scale = g.op("Unsqueeze", g.op("Gather", scale, tokens), g.ints(-1))
        return g.op("Mul", g.op("Sub", rows, g.op("Cast", zero, to=TensorProto.FLOAT)), scale)
    table = dense(g, embedding, name, transpose=True)  # (dim, vocab): the output projection's MatMul layout
    return g.op("Transpose", g.op("Gather", table, tokens, axis=1), perm=[1, 2, 0])


def token_logits(g: Graph, hidden: str, embedding: nn.Module, projection: nn.Module, name: str) -> str:
    """Logits (batch, vocab) = hidden (batch, dim) @ table^T, from the one stored table when tied."""
    if not tied(projection, embedding):
        return linear(g, hidden, projection, OUTPUT)
    logits = matmul(g, hidden, embedding, name)
    if getattr(projection, "bias", None) is not None:
        logits = g.op("Add", logits, g.const(f"{OUTPUT}.bias", projection.bias.detach().float().numpy()))
    return logits


# ----------------------------------------------------------------------------- the two graphs


def causal_mask(g: Graph, past: str, total: str) -> str:
    """(n, past + n) added to the self-attention scores: 0 where new token i may look (positions up to
    past + i), the lowest float32 after."""
    first, end = g.op("Squeeze", past), g.op("Squeeze", total)
    position = g.op("Unsqueeze", g.op("Range", first, end, g.scalar(1)), g.ints(1))  # (n, 1)
    later = g.op("Greater", g.op("Range", g.scalar(0), end, g.scalar(1)), position)
    return g.op("Where", later, g.scalar(float(np.finfo(np.float32).min)), g.scalar(0.0))


def encoder_graph(model: SpeechModel) -> tuple[onnx.ModelProto, int]:
    """mel (batch, n_mels, frames) -> cross_k_i, cross_v_i (batch, heads, frames / 2, head_dim) for every
    decoder layer i: the encoder, then each cross-attention's keys and values of its output."""
    part = model.module.get_submodule
    encoder, decoder = part(ENCODER), part(DECODER)
    g = Graph()
    x = gelu(g, conv(g, "mel", encoder.conv1, f"{ENCODER}.conv1"))
    x = gelu(g, conv(g, x, encoder.conv2, f"{ENCODER}.conv2"))
    x = g.op("Transpose", x, perm=[0, 2, 1])  # (batch, audio, dim)
    audio = g.op("Shape", x, start=1, end=2)
    positions = dense(g, part(f"{ENCODER}.{POSITIONS}"), f"{ENCODER}.{POSITIONS}")  # (1500, dim)
    x = g.op("Add", x, g.op("Slice", positions, g.ints(0), audio, g.ints(0)))
    for i, layer in enumerate(encoder.layers):
        name = f"{ENCODER}.layers.{i}"
        h = layer_norm(g, x, layer.self_attn_layer_norm, f"{name}.self_attn_layer_norm")
        attention = layer.self_attn
        k, v = keys_values(g, h, attention, f"{name}.self_attn")
        o = attend(g, queries(g, h, attention, f"{name}.self_attn"), k, v)
        x = g.op("Add", x, output(g, o, attention, f"{name}.self_attn"))
        h = layer_norm(g, x, layer.final_layer_norm, f"{name}.final_layer_norm")
        x = g.op("Add", x, feed_forward(g, h, layer.fc1, layer.fc2, name))
    x = layer_norm(g, x, encoder.layer_norm, f"{ENCODER}.layer_norm")
    outputs = []
    for i in range(len(decoder.layers)):
        name = f"{DECODER}.layers.{i}.{CROSS}"
        attention = part(name)
        keys_values(g, x, attention, name, out=(f"cross_k_{i}", f"cross_v_{i}"))
        outputs += [keys(f"cross_{kv}_{i}", attention, "audio") for kv in "kv"]
    mel = tensor("mel", TensorProto.FLOAT, ["batch", model.module.config.num_mel_bins, "frames"])
    doc = f"{model.name}: Whisper encoder, then every cross-attention's keys/values (Speech Compression Lab)"
    return g.model("encoder", [mel], outputs, doc), g.nbytes()


def decoder_graph(model: SpeechModel) -> tuple[onnx.ModelProto, int]:
    """tokens (batch, n), cross_k_i/cross_v_i, past_k_i/past_v_i (batch, heads, past, head_dim) -> logits
    (batch, vocab) of the last token, present_k_i/present_v_i (batch, heads, past + n, head_dim)."""
    part = model.module.get_submodule
    decoder = part(DECODER)
    embedding, projection = part(f"{DECODER}.{TOKENS}"), part(OUTPUT)
    g = Graph()
    past = g.op("Shape", "past_k_0", start=2, end=3)  # (1,): how many tokens the cache holds
    total = g.op("Add", past, g.op("Shape", "tokens", start=1, end=2))
    x = embed_tokens(g, "tokens", embedding, f"{DECODER}.{TOKENS}")
    positions = dense(g, part(f"{DECODER}.{POSITIONS}"), f"{DECODER}.{POSITIONS}")
    x = g.op("Add", x, g.op("Slice", positions, past, total, g.ints(0)))
    mask = causal_mask(g, past, total)
    inputs, outputs = [tensor("tokens", TensorProto.INT64, ["batch", "tokens"])], []
    for i, layer in enumerate(decoder.layers):
        name = f"{DECODER}.layers.{i}"
        own, cross = layer.self_attn, part(f"{name}.{CROSS}")
        inputs += [keys(f"cross_{kv}_{i}", cross, "audio") for kv in "kv"]
        inputs += [keys(f"past_{kv}_{i}", own, "past") for kv in "kv"]
        outputs += [keys(f"present_{kv}_{i}", own, "length") for kv in "kv"]

        h = layer_norm(g, x, layer.self_attn_layer_norm, f"{name}.self_attn_layer_norm")
        k, v = keys_values(g, h, own, f"{name}.self_attn")
        k = g.op("Concat", f"past_k_{i}", k, axis=2, out=f"present_k_{i}")
        v = g.op("Concat", f"past_v_{i}", v, axis=2, out=f"present_v_{i}")
        o = attend(g, queries(g, h, own, f"{name}.self_attn"), k, v, mask)
        x = g.op("Add", x, output(g, o, own, f"{name}.self_attn"))

        h = layer_norm(g, x, part(f"{name}.{CROSS}_layer_norm"), f"{name}.{CROSS}_layer_norm")
        o = attend(g, queries(g, h, cross, f"{name}.{CROSS}"), f"cross_k_{i}", f"cross_v_{i}")
        x = g.op("Add", x, output(g, o, cross, f"{name}.{CROSS}"))

        h = layer_norm(g, x, layer.final_layer_norm, f"{name}.final_layer_norm")
        x = g.op("Add", x, feed_forward(g, h, layer.fc1, layer.fc2, name))
    last = g.op("Gather", x, g.scalar(-1), axis=1)  # (batch, dim): the last token only
    last = layer_norm(g, last, decoder.layer_norm, f"{DECODER}.layer_norm")
    logits = token_logits(g, last, embedding, projection, f"{DECODER}.{TOKENS}")
    g.op("Identity", logits, out="logits")
    outputs.insert(0, tensor("logits", TensorProto.FLOAT, ["batch", model.module.config.vocab_size]))
    doc = f"{model.name}: Whisper decoder step with self-attention cache (Speech Compression Lab)"
    return g.model("decoder", inputs, outputs, doc), g.nbytes()


# ----------------------------------------------------------------------------- the folder


def readme_text(model: SpeechModel, folder: Path) -> str:
    """How to run the folder with onnxruntime alone: Whisper's greedy loop in a dozen lines."""
    mels = model.module.config.num_mel_bins
    return f"""{model.name}, exported by Speech Compression Lab for ONNX Runtime {ORT_VERSION} (CPU).
encoder.onnx: mel (1, {mels}, frames) -> cross_k_i, cross_v_i (1, heads, frames / 2, head_dim): every decoder
layer's cross-attention keys and values. decoder.onnx: tokens (1, n), cross_*, past_k_i/past_v_i (1, heads,
past, head_dim) -> logits (1, vocab) of the last token, present_k_i/present_v_i (the next call's past).
Quantized layers hold the lab's own codes (MatMulNBits blocks, or int8 MatMulInteger weights).

import json, numpy as np, onnxruntime, soundfile, tokenizers
from transformers import WhisperFeatureExtractor
folder = "{folder}"
decoding = json.load(open(f"{{folder}}/speech_lab_export.json"))["decoding"]  # prompt, eot, suppressed ids
wave = soundfile.read("a.wav", dtype="float32")[0]  # 16 kHz mono, at most 30 s
mel = WhisperFeatureExtractor.from_pretrained(folder)(wave, sampling_rate=16000, return_tensors="np")
encoder, decoder = (onnxruntime.InferenceSession(f"{{folder}}/{{f}}.onnx") for f in ("encoder", "decoder"))
cross = dict(zip((o.name for o in encoder.get_outputs()), encoder.run(None, {{"mel": mel.input_features}})))
past = {{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in decoder.get_inputs()
        if i.name.startswith("past")}}
tokens, text = np.array([decoding["prompt"]]), []
while len(text) < 100:
    logits, *present = decoder.run(None, {{"tokens": tokens, **cross, **past}})
    past = dict(zip(past, present))
    logits[0, decoding["suppress"] + (decoding["suppress_at_begin"] if not text else [])] = -np.inf
    token = int(logits[0].argmax())
    if token == decoding["eot"]:
        break
    text.append(token)
    tokens = np.array([[token]])
print(tokenizers.Tokenizer.from_file(f"{{folder}}/tokenizer.json").decode(text))
"""


def save_graph(graph: onnx.ModelProto, nbytes: int, path: Path) -> list[Path]:
    """Write one graph; over protobuf's 2 GB its weights go to a `.data` file beside it. The files written."""
    if nbytes < 1_900_000_000:
        onnx.save_model(graph, path)
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(graph, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [path, data]


def weight_formats(model: SpeechModel) -> dict[str, int]:
    """How many stored weights went into each format (for speech_lab_export.json; a tied table once)."""
    part = model.module.get_submodule
    skip = part(OUTPUT) if tied(part(OUTPUT), part(f"{DECODER}.{TOKENS}")) else None
    counts: dict[str, int] = {}
    for module in model.module.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, QuantWeight)) and module is not skip:
            kind = weight_format(module)
            if kind == "blocks":
                kind = f"MatMulNBits {module.bits}-bit"
            elif kind == "int8":
                kind = "int8 MatMulInteger"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def export_onnx(model: SpeechModel, folder: str | Path) -> Path:
    """Write `model` (a Whisper SpeechModel, compressed or not) as an ONNX Runtime folder; returns it.

    ValueError, before anything is written, if ONNX Runtime cannot hold the model exactly."""
    from transformers import WhisperFeatureExtractor

    check_expressible(model)
    folder = Path(folder)
    with torch.no_grad():  # both graphs built before anything is written
        graphs = {file: build(model) for file, build in zip(FILES, (encoder_graph, decoder_graph))}
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for file, (graph, nbytes) in graphs.items():
        files += save_graph(graph, nbytes, folder / file)
    model.tokenizer.save(str(folder / "tokenizer.json"))
    WhisperFeatureExtractor(feature_size=model.module.config.num_mel_bins).save_pretrained(folder)
    (folder / README_FILE).write_text(readme_text(model, folder))
    write_export_facts(
        folder,
        model,
        "onnx",
        files=[f.name for f in files],
        onnxruntime=ORT_VERSION,
        opset=OPSET,
        weights=weight_formats(model),
    )
    return folder


# ----------------------------------------------------------------------------- running the folder


def decode_window(
    encoder, decoder, mel: np.ndarray, decoding: WhisperDecoding, max_new_tokens: int
) -> list[int]:
    """Greedy tokens of one (1, n_mels, frames) window: the encoder once, then the decoder step by step
    with its self-attention keys/values fed back (present -> past), under the lab's greedy rule."""
    cross = dict(zip((o.name for o in encoder.get_outputs()), encoder.run(None, {"mel": mel})))
    past_names = [i.name for i in decoder.get_inputs() if i.name.startswith("past_")]
    shapes = {i.name: i.shape for i in decoder.get_inputs()}
    past = {n: np.zeros((1, shapes[n][1], 0, shapes[n][3]), dtype=np.float32) for n in past_names}

    def step(tokens: torch.Tensor) -> np.ndarray:
        logits, *present = decoder.run(None, {"tokens": tokens.numpy().astype(np.int64), **cross, **past})
        past.update(zip(past_names, present))
        return logits

    return greedy_loop(step, 1, decoding, max_new_tokens)[0]


def load(folder: str | Path, threads: int) -> Deployed:
    """An exported folder in ONNX Runtime (CPU, `threads` intra-op threads, graph optimizations on)."""
    import onnxruntime  # the runtime itself: only when a folder is run
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    folder = Path(folder)
    facts = export_facts(folder)
    if not facts or facts["format"] != "onnx":
        raise ValueError(f"{folder} is not an ONNX Runtime folder written by export_onnx (no {EXPORT_FILE})")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    encoder, decoder = (
        onnxruntime.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
        for file in FILES
    )
    decoding = WhisperDecoding.from_json(facts["decoding"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    extractor = WhisperFeatureExtractor.from_pretrained(folder)

    def window_text(window: np.ndarray) -> str:
        mel = extractor(window, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        mel = mel[..., : context_frames(facts, window)]  # the encoder graph's frame axis is dynamic
        cap = token_cap(decoding, len(window) / SAMPLE_RATE)
        tokens = decode_window(encoder, decoder, mel.astype(np.float32), decoding, cap)
        return tokenizer.decode([t for t in tokens if t < decoding.eot])

    return running(RUNTIME, folder, threads, window_text)


RUNTIME = Runtime(
    name="onnx",
    title=f"ONNX Runtime {ORT_VERSION}",
    package="onnxruntime",
    files=FILES,
    inexpressible=inexpressible,
    export=export_onnx,
    load=load,
    extra_files=tuple(f"{f}.data" for f in FILES),  # only past protobuf's 2 GB (save_graph)
)
