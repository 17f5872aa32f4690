"""Weight quantization: round-to-nearest (or clipped) b-bit codes with per-tensor/channel/group scales.

A quantized layer keeps its weight as unsigned integer codes bit-packed into uint8 (a little-endian
bit stream: two 4-bit codes a byte, 8 codes of b bits in b bytes), fp32 scales and, when
asymmetric, uint8 zero points; w ~ (code - zero) * scale, with zero = 2**(b-1) when symmetric.
Zero is always exactly representable, so pruned weights stay zero. Those buffers are the module's
state_dict, so saving it saves the compact form. For speed the forward pass uses an fp32 weight
dequantized once (`weight`, a non-persistent buffer), except in Int8DynamicLinear.

Two storage options: `outlier_columns` keeps the few weight columns that set most rows' ranges in
fp16 (`outlier_index`, `outlier_values`) and quantizes the rest; `entropy_code` has core.io.artifact
store the codes and zero points Huffman-coded (lossless, the file only).

backend="int8_dynamic" runs Linear layers as Int8DynamicLinear: int8 weights x activations
quantized per call, on the same torch.ao kernel (`quantized::linear_dynamic`) that
`torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` installs. We build
the packed weight from our own codes instead of calling quantize_dynamic, so the codes (minmax or
mse, per channel) are what the artifact stores and a reload is bit-exact. Embedding lookups and
convolutions stay on the fp32-dequantized path (8-bit storage).

The tied embedding: Whisper's output projection `proj_out.weight` IS `embed_tokens.weight`.
Quantizing the embedding (group "embedding") keeps the tie and stores the table once:
  * fake backend: `proj_out` stays an nn.Linear whose `weight` becomes a non-persistent buffer
    aliasing the QuantEmbedding's dequantized `weight` (the very same tensor object);
  * int8_dynamic: `proj_out` (51864 x 384 in tiny.en) becomes an Int8DynamicLinear whose
    `codes`/`scale` buffers are non-persistent aliases of the QuantEmbedding's, prepacked once.
core.io.artifact records such aliases as "ties" in layout.json and restores them on load.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.compress.gptq import Calibration, gptq_codes, input_hessians
from core.compress.packing import pack_bits, packed_nbytes, unpack_bits
from core.compress.report import LayerReport, relative_error, set_module, swap_layers
from core.compress.technique import Technique, conv1d_layout, groups_suffix
from core.models import DEFAULT_GROUPS, GROUPS

BITS = (2, 3, 4, 5, 6, 7, 8, 16)
GRANULARITIES = ("tensor", "channel", "group")
METHODS = ("minmax", "mse")
BACKENDS = ("fake", "int8_dynamic")
SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
MSE_SHRINKS = tuple(1.0 - 0.05 * i for i in range(11))  # clip ranges tried by method="mse": 100%..50%

MAX_GROUP_SIZE = 8192  # columns per scale; wider than any Whisper layer (a larger group only pads)


def int8_blockers(bits: int, symmetric: bool, granularity: str, scale_dtype: str = "float32") -> list[str]:
    """What keeps codes off the int8 kernels, in words ("4 bits", "group scales", ...): they take 8-bit
    symmetric codes with one float32 scale per channel or per tensor. [] when the codes can run there.
    QuantConfig refuses backend "int8_dynamic" on these, and the Compress sidebar says them."""
    blockers = [f"{bits} bits"] if bits != 8 else []
    blockers += [] if symmetric else ["asymmetric codes"]
    blockers += ["group scales"] if granularity == "group" else []
    blockers += [f"{scale_dtype} scales"] if scale_dtype != "float32" else []
    return blockers


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: bit width, scale granularity, range method, which layer groups, which kernel."""

    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"  # "tensor", "channel" (one scale per output row) or "group"
    group_size: int = 64  # columns per scale for "group"; a shorter last group takes the remainder
    method: str = "minmax"  # "minmax": range = min/max; "mse": best of MSE_SHRINKS per channel/group
    groups: tuple[str, ...] = DEFAULT_GROUPS + ("embedding",)
    backend: str = "fake"  # "fake": fp32 dequantized forward; "int8_dynamic": int8 kernels for Linear
    scale_dtype: str = "float32"  # how scales are stored: "float32" or "float16" (half the bytes per scale)
    # round with GPTQ error compensation (core.compress.gptq) instead of to nearest: needs calibration
    gptq: bool = False
    calibration: str = "train"  # dataset whose packed windows calibrate GPTQ (a bundled name or a path)
    calibration_windows: int = 16  # 30 s windows of it, spread over the set
    entropy_code: bool = False  # store codes and zero points Huffman-coded: a smaller file, the same model
    outlier_columns: int = 0  # keep this many weight columns (input dims) in fp16, out of the rows' ranges

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in BITS:
            raise ValueError(f"quantize.bits must be one of 2..8 or 16, got {self.bits!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"quantize.symmetric must be true or false, got {self.symmetric!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"quantize.granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}"
            )
        if (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or not 1 <= self.group_size <= MAX_GROUP_SIZE
        ):
            raise ValueError(
                f"quantize.group_size must be an integer in 1..{MAX_GROUP_SIZE}, got {self.group_size!r}"
            )
        if self.method not in METHODS:
            raise ValueError(f"quantize.method must be one of {list(METHODS)}, got {self.method!r}")
        if isinstance(self.groups, str) or not all(isinstance(g, str) for g in self.groups):
            raise ValueError(
                f"quantize.groups must be a list of group names from {list(GROUPS)}, got {self.groups!r}"
            )
        object.__setattr__(self, "groups", tuple(self.groups))
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups:
            raise ValueError(
                f"quantize.groups must be a non-empty subset of {list(GROUPS)}, got {list(self.groups)}"
            )
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(
                f"quantize.scale_dtype must be one of {list(SCALE_DTYPES)}, got {self.scale_dtype!r}"
            )
        if not isinstance(self.gptq, bool):
            raise ValueError(f"quantize.gptq must be true or false, got {self.gptq!r}")
        if (
            isinstance(self.outlier_columns, bool)
            or not isinstance(self.outlier_columns, int)
            or not 0 <= self.outlier_columns <= 64
        ):
            raise ValueError(
                f"quantize.outlier_columns must be an integer from 0 to 64, got {self.outlier_columns!r}"
            )
        if not isinstance(self.entropy_code, bool):
            raise ValueError(f"quantize.entropy_code must be true or false, got {self.entropy_code!r}")
        if not isinstance(self.calibration, str) or not self.calibration:
            raise ValueError(f"quantize.calibration must be a dataset name or path, got {self.calibration!r}")
        if (
            isinstance(self.calibration_windows, bool)
            or not isinstance(self.calibration_windows, int)
            or self.calibration_windows < 1
        ):
            raise ValueError(
                f"quantize.calibration_windows must be a positive integer, got {self.calibration_windows!r}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"quantize.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.backend == "int8_dynamic" and self.outlier_columns:
            raise ValueError(
                "quantize.backend 'int8_dynamic' runs whole int8 weights: outlier_columns must be 0"
            )
        if self.backend == "int8_dynamic" and int8_blockers(
            self.bits, self.symmetric, self.granularity, self.scale_dtype
        ):
            raise ValueError(
                "quantize.backend 'int8_dynamic' needs bits=8, symmetric=true, granularity "
                f"'channel' or 'tensor' and float32 scales, got bits={self.bits}, "
                f"symmetric={self.symmetric}, granularity={self.granularity!r}, "
                f"scale_dtype={self.scale_dtype!r}"
            )


# ----------------------------------------------------------------------------- codes and scales


def _scale_shape(rows: int, cols: int, granularity: str, group_size: int) -> tuple[int, int]:
    if granularity == "tensor":
        return (1, 1)
    if granularity == "channel":
        return (rows, 1)
    return (rows, -(-cols // group_size))


def _blocks(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """View a (rows, cols) matrix as (scale rows, scale columns, values per scale);
    the last group is zero-padded."""
    rows, cols = w.shape
    if granularity == "tensor":
        return w.reshape(1, 1, -1)
    if granularity == "channel":
        return w.reshape(rows, 1, cols)
    groups = -(-cols // group_size)
    return F.pad(w, (0, groups * group_size - cols)).reshape(rows, groups, group_size)


def _unblock(blocks: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return blocks.reshape(rows, -1)[:, :cols]


def _qparams(x: torch.Tensor, bits: int, symmetric: bool, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per block; zero is always exactly representable (pruned zeros stay zero)."""
    if symmetric:
        scale = x.abs().amax(-1, keepdim=True) * shrink / (2 ** (bits - 1) - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    lo = x.amin(-1, keepdim=True).clamp(max=0) * shrink
    hi = x.amax(-1, keepdim=True).clamp(min=0) * shrink
    scale = (hi - lo) / (2**bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, (-lo / scale).round().clamp(0, 2**bits - 1)


def _round(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return ((x / scale).round() + zero).clamp(0, 2**bits - 1)


def _search_qparams(x: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points of blocks x (see _blocks): the min-max range, or with method "mse" the clipped
    range of MSE_SHRINKS whose round-to-nearest error is smallest, per block."""
    shrinks = MSE_SHRINKS if config.method == "mse" else (1.0,)
    best_err = best_scale = best_zero = None
    for shrink in shrinks:
        scale, zero = _qparams(x, config.bits, config.symmetric, shrink)
        if len(shrinks) == 1:
            best_scale, best_zero = scale, zero
            break
        err = ((_round(x, scale, zero, config.bits) - zero) * scale - x).square().sum(-1, keepdim=True)
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def quantize_tensor(
    weight: torch.Tensor, config: QuantConfig, hessian: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes (uint8, weight viewed as rows x cols), scales (fp32 tensor; values fp16-exact with scale_dtype
    "float16") and zero points (uint8; None if symmetric).

    With `hessian` (the layer's input statistics, see core.compress.gptq) the codes are GPTQ's;
    else round-to-nearest."""
    if config.bits == 16:
        raise ValueError("quantize_tensor: 16 bits is stored as fp16, it has no integer codes")
    w = weight.detach().float().reshape(weight.shape[0], -1)
    x = _blocks(w, config.granularity, config.group_size)
    scale, zero = _search_qparams(x, config)
    if config.scale_dtype == "float16":  # round first, so the codes fit the scales as stored
        scale = scale.half().float()
        scale = torch.where(
            scale > 0, scale, torch.ones_like(scale)
        )  # a block too small for fp16 decodes to 0
    if hessian is None:
        codes = _unblock(_round(x, scale, zero, config.bits), *w.shape).to(torch.uint8)
    else:
        group_size = config.group_size if config.granularity == "group" else None
        codes = gptq_codes(w, hessian, scale, zero, config.bits, group_size)
    return (
        codes,
        scale.squeeze(-1).contiguous(),
        None if config.symmetric else zero.squeeze(-1).to(torch.uint8),
    )


def dequantize_tensor(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    granularity: str,
    group_size: int,
) -> torch.Tensor:
    """fp32 (rows, cols) weight from codes (rows, cols), scales and zero points
    (None: symmetric, 2**(bits-1))."""
    rows, cols = codes.shape
    x = _blocks(codes.float(), granularity, group_size)
    z = torch.full_like(scale, 2 ** (bits - 1)) if zero is None else zero.float()
    return _unblock((x - z.unsqueeze(-1)) * scale.float().unsqueeze(-1), rows, cols).contiguous()


def outlier_columns(w: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` columns of a (rows, cols) weight that most often hold their row's largest |w|, picked one
    at a time (each pick leaves the rows' maxima to the rest); sorted. Such a column sets nearly every
    row's range: in tiny.en's token embedding one of 384 dimensions is the maximum of 96% of the rows."""
    magnitude = w.detach().abs().float().clone()
    picked = []
    for _ in range(min(count, w.shape[1])):
        wins = torch.bincount(magnitude.argmax(1), minlength=w.shape[1])
        column = int(wins.argmax())
        picked.append(column)
        magnitude[:, column] = -1.0
    return torch.tensor(sorted(picked), dtype=torch.long)


def split_outliers(w: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w with its outlier columns zeroed, their indices, their values in fp16) for a (rows, cols) weight."""
    index = outlier_columns(w, count)
    inliers = w.detach().float().clone()
    values = inliers[:, index].half()
    inliers[:, index] = 0.0
    return inliers, index, values


def fake_quantize(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """The weight as the quantized model sees it (fp32, same shape)."""
    if config.bits == 16:
        return weight.detach().half().float()
    w = weight.detach().float().reshape(weight.shape[0], -1)
    if config.outlier_columns:
        w, index, values = split_outliers(w, config.outlier_columns)
    codes, scale, zero = quantize_tensor(w, config)
    restored = dequantize_tensor(codes, scale, zero, config.bits, config.granularity, config.group_size)
    if config.outlier_columns:
        restored[:, index] = values.float()
    return restored.reshape(weight.shape)


def quantize_row(weight_row: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """One weight row before -> after quantization (a staircase), with scales computed from this row alone."""
    return fake_quantize(weight_row.reshape(1, -1), config).reshape(weight_row.shape)


# ----------------------------------------------------------------------------- the int8 kernel


@contextmanager
def quiet_torch_quantization() -> Iterator[None]:
    """Silence torch 2.14's deprecation warnings for torch.ao / quantized tensors:
    the one place we use them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*quantiz.*deprecated")
        yield


class FbgemmInt8:
    """int8 weight x dynamically quantized activation Linear on torch's quantized ops (what
    quantize_dynamic runs).

    Give Int8DynamicLinear another `kernel` (a class attribute) with the same two methods to change the
    backend.
    """

    @staticmethod
    def pack(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        """Prepack signed int8 codes (out, in) with per-channel (out,) or per-tensor (1,) fp32 scales."""
        with quiet_torch_quantization():
            if scale.numel() == 1:
                qweight = torch._make_per_tensor_quantized_tensor(codes, float(scale), 0)
            else:
                zeros = torch.zeros(scale.numel(), dtype=torch.long)
                qweight = torch._make_per_channel_quantized_tensor(
                    codes, scale.reshape(-1).double(), zeros, 0
                )
            return torch.ops.quantized.linear_prepack(
                qweight, None if bias is None else bias.detach().float()
            )

    @staticmethod
    def linear(x: torch.Tensor, packed) -> torch.Tensor:
        # reduce_range=True, as torch.ao.nn.quantized.dynamic.Linear does on x86 (avoids int16 overflow)
        return torch.ops.quantized.linear_dynamic(x.float(), packed, True).to(x.dtype)


# ----------------------------------------------------------------------------- modules


def _refresh_after_load(module: QuantWeight, incompatible_keys) -> None:
    module.refresh()


class QuantWeight(nn.Module):
    """Base of the quantized modules: a weight stored as packed codes + scales (+ zero points), or as fp16."""

    float_class: type[nn.Module] = nn.Module  # the float module kind it replaces (for group lookup)

    def __init__(
        self,
        shape: tuple[int, ...],
        bits: int,
        symmetric: bool = True,
        granularity: str = "channel",
        group_size: int = 64,
        scale_dtype: str = "float32",
        entropy_code: bool = False,
        outlier_columns: int = 0,
        cache_weight: bool = True,
    ):
        super().__init__()
        QuantConfig(
            bits=bits,
            symmetric=symmetric,
            granularity=granularity,
            group_size=group_size,
            scale_dtype=scale_dtype,
            entropy_code=entropy_code,
            outlier_columns=outlier_columns,
        )  # validates
        self.weight_shape = tuple(int(s) for s in shape)
        self.bits, self.symmetric, self.granularity, self.group_size = (
            bits,
            symmetric,
            granularity,
            group_size,
        )
        self.scale_dtype, self.entropy_code = scale_dtype, entropy_code
        self.outlier_columns = outlier_columns if bits != 16 else 0
        rows, cols = self.weight_shape[0], math.prod(self.weight_shape[1:])
        if bits == 16:
            self.register_buffer("weight_fp16", torch.zeros(self.weight_shape, dtype=torch.float16))
        else:
            self.register_buffer("codes", torch.zeros(packed_nbytes(rows * cols, bits), dtype=torch.uint8))
            scale_shape = _scale_shape(rows, cols, granularity, group_size)
            self.register_buffer("scale", torch.ones(scale_shape, dtype=SCALE_DTYPES[scale_dtype]))
            self.register_buffer("zero", None if symmetric else torch.zeros(scale_shape, dtype=torch.uint8))
            if self.outlier_columns:
                count = min(self.outlier_columns, cols)
                self.register_buffer("outlier_index", torch.zeros(count, dtype=torch.long))
                self.register_buffer("outlier_values", torch.zeros(rows, count, dtype=torch.float16))
        if cache_weight:
            self.register_buffer("weight", torch.zeros(self.weight_shape), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @property
    def coded_buffers(self) -> tuple[str, ...]:
        """The uint8 buffers core.io.artifact stores Huffman-coded
        (lossless; see QuantConfig.entropy_code)."""
        return ("codes", "zero") if self.entropy_code and self.bits != 16 else ()

    def _quant_layout(self) -> dict:
        """Constructor facts for layout.json; keys at their old defaults are left out,
        so old files read the same."""
        layout = {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "granularity": self.granularity,
            "group_size": self.group_size,
        }
        if self.scale_dtype != "float32":
            layout["scale_dtype"] = self.scale_dtype
        if self.entropy_code:
            layout["entropy_code"] = True
        if self.outlier_columns:
            layout["outlier_columns"] = self.outlier_columns
        return layout

    def _encode(self, weight: torch.Tensor, config: QuantConfig, hessian: torch.Tensor | None = None) -> None:
        """Fill the storage buffers from a float weight (GPTQ codes when given the layer's input Hessian)."""
        with torch.no_grad():
            if self.bits == 16:
                self.weight_fp16.copy_(weight.detach().reshape(self.weight_shape))
                return
            w = weight.detach().float().reshape(self.weight_shape[0], -1)
            if self.outlier_columns:
                w, index, values = split_outliers(w, self.outlier_columns)
                self.outlier_index.copy_(index)
                self.outlier_values.copy_(values)
            codes, scale, zero = quantize_tensor(w, config, hessian)
            self.codes.copy_(pack_bits(codes, self.bits))
            self.scale.copy_(scale)
            if zero is not None:
                self.zero.copy_(zero)

    def unpacked_codes(self) -> torch.Tensor:
        """The unsigned codes as a (rows, cols) uint8 matrix."""
        rows, cols = self.weight_shape[0], math.prod(self.weight_shape[1:])
        return unpack_bits(self.codes, self.bits, rows * cols).reshape(rows, cols)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight these codes stand for."""
        if self.bits == 16:
            return self.weight_fp16.float()
        w = dequantize_tensor(
            self.unpacked_codes(), self.scale, self.zero, self.bits, self.granularity, self.group_size
        )
        if self.outlier_columns:
            if not bool(((self.outlier_index >= 0) & (self.outlier_index < w.shape[1])).all()):
                raise ValueError(
                    f"outlier_index holds columns outside 0..{w.shape[1] - 1}: not a valid saved weight"
                )
            w[:, self.outlier_index] = self.outlier_values.float()
        return w.reshape(self.weight_shape)

    def refresh(self) -> None:
        """Recompute the derived fp32 weight (in place, so tensors aliasing it stay valid)."""
        if "weight" in self._buffers:
            with torch.no_grad():
                self.weight.copy_(self.dequantize())


class QuantLinear(QuantWeight):
    """nn.Linear with a quantized weight; forward uses the cached dequantized fp32 weight."""

    layout_kind = "quant_linear"
    float_class = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **quant):
        super().__init__((out_features, in_features), **quant)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_float(
        cls, linear: nn.Linear, config: QuantConfig, hessian: torch.Tensor | None = None
    ) -> QuantLinear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, **_quant_args(config))
        module._encode(linear.weight, config, hessian)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        module.refresh()
        return module

    def layout(self) -> dict:
        return {
            "in": self.in_features,
            "out": self.out_features,
            "bias": self.bias is not None,
            **self._quant_layout(),
        }

    @classmethod
    def from_layout(cls, layout: dict) -> QuantLinear:
        return cls(layout["in"], layout["out"], layout["bias"], **_quant_args(layout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, {_describe(self)}"


class QuantEmbedding(QuantWeight):
    """nn.Embedding with a quantized table (one scale per token row for "channel")."""

    layout_kind = "quant_embedding"
    float_class = nn.Embedding

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, **quant):
        super().__init__((num_embeddings, embedding_dim), **quant)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx

    @classmethod
    def from_float(cls, embedding: nn.Embedding, config: QuantConfig) -> QuantEmbedding:
        if embedding.max_norm is not None:
            raise ValueError("quantize: embeddings with max_norm are not supported")
        module = cls(
            embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, **_quant_args(config)
        )
        module._encode(embedding.weight, config)
        module.refresh()
        return module

    def layout(self) -> dict:
        return {
            "num": self.num_embeddings,
            "dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            **self._quant_layout(),
        }

    @classmethod
    def from_layout(cls, layout: dict) -> QuantEmbedding:
        return cls(layout["num"], layout["dim"], layout["padding_idx"], **_quant_args(layout))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, {_describe(self)}"
        )


class QuantPositions(QuantEmbedding):
    """A quantized embedding whose float class has a forward of its own (e.g. a position table called with
    a cache length): it is called, and computes, the way that class does, over the dequantized table.

    The class is remembered from the float module when quantizing, and from the model's own module at the
    same path when core.io.artifact loads it (`adopt`), so nothing of a model family is written here."""

    layout_kind = "quant_positions"
    forward_like: type[nn.Embedding] | None = None

    @classmethod
    def from_float(cls, embedding: nn.Embedding, config: QuantConfig) -> QuantPositions:
        module = super().from_float(embedding, config)
        module.adopt(embedding)
        return module

    def adopt(self, original: nn.Module) -> None:
        """Compute like `original`'s class (the module this one replaces)."""
        if isinstance(original, nn.Embedding) and type(original).forward is not nn.Embedding.forward:
            self.forward_like = type(original)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.forward_like is None:
            return super().forward(*args, **kwargs)
        return self.forward_like.forward(self, *args, **kwargs)


class QuantConv1d(QuantWeight):
    """nn.Conv1d with a quantized kernel (one scale per output channel for "channel")."""

    layout_kind = "quant_conv1d"
    float_class = nn.Conv1d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding=0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        **quant,
    ):
        super().__init__((out_channels, in_channels // groups, kernel_size), **quant)
        # tuples, as nn.Conv1d keeps them (Hugging Face reads conv.stride[0])
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kernel_size,)
        self.stride, self.dilation, self.groups = (stride,), (dilation,), groups
        self.padding = padding if isinstance(padding, str) else (padding,)
        self.bias = nn.Parameter(torch.zeros(out_channels), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, conv: nn.Conv1d, config: QuantConfig) -> QuantConv1d:
        if conv.padding_mode != "zeros":
            raise ValueError(f"quantize: Conv1d padding_mode {conv.padding_mode!r} is not supported")
        module = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.stride[0],
            conv.padding if isinstance(conv.padding, str) else conv.padding[0],
            conv.dilation[0],
            conv.groups,
            conv.bias is not None,
            **_quant_args(config),
        )
        module._encode(conv.weight, config)
        if conv.bias is not None:
            module.bias.data.copy_(conv.bias.detach())
        module.refresh()
        return module

    def layout(self) -> dict:
        return {**conv1d_layout(self), **self._quant_layout()}

    @classmethod
    def from_layout(cls, layout: dict) -> QuantConv1d:
        return cls(
            layout["in"],
            layout["out"],
            layout["kernel"],
            layout["stride"],
            layout["padding"],
            layout["dilation"],
            layout["groups"],
            layout["bias"],
            **_quant_args(layout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"{_describe(self)}"
        )


class Int8DynamicLinear(QuantWeight):
    """Linear on real int8 kernels: int8 weight codes x activations quantized per call (fbgemm/x86).

    Same storage as an 8-bit symmetric QuantLinear (codes + scales), prepacked once for the kernel;
    `weight` is dequantized on demand (no fp32 copy is kept).
    """

    layout_kind = "int8_dynamic_linear"
    float_class = nn.Linear
    kernel = FbgemmInt8

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        granularity: str = "channel",
        entropy_code: bool = False,
    ):
        super().__init__(
            (out_features, in_features),
            bits=8,
            symmetric=True,
            granularity=granularity,
            entropy_code=entropy_code,
            cache_weight=False,
        )
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._packed = None

    @classmethod
    def from_float(
        cls, linear: nn.Linear, config: QuantConfig, hessian: torch.Tensor | None = None
    ) -> Int8DynamicLinear:
        if config.bits != 8 or not config.symmetric or config.granularity == "group":
            raise ValueError(
                "Int8DynamicLinear needs bits=8, symmetric=true, granularity 'channel' or 'tensor'"
            )
        module = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            config.granularity,
            config.entropy_code,
        )
        module._encode(linear.weight, config, hessian)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        module.refresh()
        return module

    @classmethod
    def tied_to(cls, embedding: QuantEmbedding, bias: torch.Tensor | None = None) -> Int8DynamicLinear:
        """An output projection sharing an 8-bit symmetric QuantEmbedding's codes and scales
        (stored once there)."""
        if embedding.bits != 8 or not embedding.symmetric or embedding.granularity == "group":
            raise ValueError(
                "Int8DynamicLinear.tied_to needs an 8-bit symmetric channel/tensor QuantEmbedding"
            )
        module = cls(
            embedding.embedding_dim, embedding.num_embeddings, bias is not None, embedding.granularity
        )
        for name in ("codes", "scale"):
            del module._buffers[name]
            module.register_buffer(name, getattr(embedding, name), persistent=False)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        module.refresh()
        return module

    def layout(self) -> dict:
        layout = {
            "in": self.in_features,
            "out": self.out_features,
            "bias": self.bias is not None,
            "granularity": self.granularity,
        }
        return {**layout, "entropy_code": True} if self.entropy_code else layout

    @classmethod
    def from_layout(cls, layout: dict) -> Int8DynamicLinear:
        return cls(
            layout["in"],
            layout["out"],
            layout["bias"],
            layout["granularity"],
            layout.get("entropy_code", False),
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize()

    def int8_codes(self) -> torch.Tensor:
        """Signed int8 codes (out, in): stored unsigned with offset 128."""
        return (self.unpacked_codes().to(torch.int16) - 128).to(torch.int8)

    def refresh(self) -> None:
        self._packed = self.kernel.pack(self.int8_codes(), self.scale, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.linear(x, self._packed)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, int8 {self.granularity}"
        )


QUANT_MODULES = (QuantLinear, QuantEmbedding, QuantPositions, QuantConv1d, Int8DynamicLinear)


def _quant_args(source: QuantConfig | dict) -> dict:
    keys = ("bits", "symmetric", "granularity", "group_size")
    if isinstance(source, dict):  # a layout.json entry: a key it lacks predates that key and had its default
        return {
            **{k: source[k] for k in keys},
            "scale_dtype": source.get("scale_dtype", "float32"),
            "entropy_code": source.get("entropy_code", False),
            "outlier_columns": source.get("outlier_columns", 0),
        }
    return {k: getattr(source, k) for k in keys + ("scale_dtype", "entropy_code", "outlier_columns")}


def _describe(module: QuantWeight) -> str:
    if module.bits == 16:
        return "fp16"
    group = f" g{module.group_size}" if module.granularity == "group" else ""
    scales = " fp16 scales" if module.scale_dtype == "float16" else ""
    coded = " entropy-coded" if module.entropy_code else ""
    outliers = f" +{module.outlier_columns} fp16 columns" if module.outlier_columns else ""
    return (
        f"{module.bits}-bit {module.granularity}{group} {'sym' if module.symmetric else 'asym'}{scales}"
        f"{outliers}{coded}"
    )


# ----------------------------------------------------------------------------- the verb


def _quantized(
    module: nn.Module, kind: str, config: QuantConfig, hessian: torch.Tensor | None
) -> QuantWeight:
    if kind == "embedding":
        own_forward = type(module).forward is not nn.Embedding.forward  # e.g. a position table
        return (QuantPositions if own_forward else QuantEmbedding).from_float(module, config)
    if kind == "conv":
        return QuantConv1d.from_float(module, config)
    if config.backend == "int8_dynamic":
        return Int8DynamicLinear.from_float(module, config, hessian)
    return QuantLinear.from_float(module, config, hessian)


def _tie_output(model: nn.Module, name: str, embedding: QuantEmbedding, config: QuantConfig) -> None:
    """Keep a Linear that shared the embedding's table reading the quantized table (stored once)."""
    linear = model.get_submodule(name)
    if config.backend == "int8_dynamic":
        set_module(model, name, Int8DynamicLinear.tied_to(embedding, linear.bias))
    else:
        del linear.weight
        linear.register_buffer("weight", embedding.weight, persistent=False)


def quantize(
    model: nn.Module, config: QuantConfig = QuantConfig(), calibration: Calibration | None = None
) -> tuple[nn.Module, list[LayerReport]]:
    """A copy of `model` with the layers of `config.groups` quantized; the input model is left untouched.

    `config.gptq` needs `calibration` (core.compress.gptq.calibration_for(model)): the Linear layers'
    inputs on it weight the rounding. Embeddings and convolutions are rounded to nearest: GPTQ would tune
    a tied table for the output projection and spoil it as a lookup
    (measured on tiny.en: 3-bit 52% WER -> 225%)."""
    hessians = {}
    if config.gptq and config.bits != 16:
        if calibration is None:
            raise ValueError(
                "quantize.gptq needs calibration data: apply the recipe with "
                "calibration=core.compress.gptq.calibration_for(model)"
            )
        hessians = input_hessians(model, calibration(config.calibration, config.calibration_windows))
    model = copy.deepcopy(model)

    def replace(info, old: nn.Module) -> tuple[nn.Module, LayerReport]:
        tied = [
            name
            for name, m in model.named_modules()
            if info.kind == "embedding" and isinstance(m, nn.Linear) and m.weight is old.weight
        ]
        hessian = hessians.get(info.name) if info.kind == "linear" else None
        new = _quantized(old, info.kind, config, hessian)
        for name in tied:
            _tie_output(model, name, new, config)
        note = _describe(new) + (f" {config.method}" if config.bits != 16 else "")
        if config.gptq and config.bits != 16:
            why = "gptq is for Linear layers" if info.kind != "linear" else "no calibration input reached it"
            note += " gptq" if hessian is not None else f", rounded to nearest ({why})"
        if config.backend == "int8_dynamic":
            note += ", int8 kernel" if isinstance(new, Int8DynamicLinear) else ", dequantized fp32 forward"
        if tied:
            note += f"; {', '.join(tied)} shares this table"
        return new, LayerReport(
            name=info.name,
            group=info.group,
            technique="quantize",
            params_before=info.params,
            params_after=info.params,
            bits=config.bits,
            rel_error=relative_error(old.weight, new.weight),
            note=note,
        )

    return model, swap_layers(model, config.groups, replace)


def describe(config: QuantConfig) -> str:
    if config.bits == 16:
        label = "fp16"
    else:
        label = f"{config.bits}-bit {config.granularity}"
        if config.granularity == "group":
            label += f" {config.group_size}"
        if not config.symmetric:
            label += " asym"
        if config.method != "minmax":
            label += f" {config.method}"
        if config.scale_dtype == "float16":
            label += " fp16 scales"
        if config.gptq:
            label += " gptq"
        if config.outlier_columns:
            label += f" +{config.outlier_columns} fp16 cols"
        if config.entropy_code:
            label += " entropy-coded"
    if config.backend != "fake":
        label += f" {config.backend.replace('_', ' ')}"
    return label + groups_suffix(config)


TECHNIQUE = Technique(
    name="quantize",
    config=QuantConfig,
    apply=quantize,
    describe=describe,
    knobs=("bits",),
    off={"bits": (16, 32)},
    aliases={("bits", "fp16"): 16},
    levels=("bits", (8, 6, 5, 4, 3)),
    position=30,
    keeps_float=False,
    calibrated=True,
    modules=QUANT_MODULES,
)
