"""Quantization: bit packing, error bounds, scale layouts, configs, the tied embedding and the int8 kernel."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from torch import nn

from core.compress.packing import pack_bits, packed_nbytes, unpack_bits
from core.compress.quant import (
    Int8DynamicLinear,
    QuantConfig,
    QuantConv1d,
    QuantEmbedding,
    QuantLinear,
    QuantPositions,
    dequantize_tensor,
    fake_quantize,
    outlier_columns,
    quantize,
    quantize_row,
    quantize_tensor,
    quiet_torch_quantization,
)
from core.compress.report import relative_error
from core.models import DEFAULT_GROUPS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def inputs():
    torch.manual_seed(1)
    return torch.randn(1, 80, 3000), torch.tensor([[116, 3, 17, 42, 99]])


def logits(model, inputs):
    with torch.inference_mode():
        return model(input_features=inputs[0], decoder_input_ids=inputs[1]).logits


def element_scale(scale, granularity, group_size, shape):
    """Each weight's own scale, broadcast to the weight's shape."""
    if granularity == "group":
        return scale.repeat_interleave(group_size, dim=1)[:, : shape[1]]
    return scale.expand(shape)


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 13, 1001])
def test_pack_round_trip(bits, count):
    codes = torch.randint(0, 2**bits, (count,), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(count, bits)
    assert torch.equal(unpack_bits(packed, bits, count), codes)


def test_four_bit_codes_sit_two_per_byte_low_nibble_first():
    assert pack_bits(torch.tensor([1, 2, 3, 4, 5, 6, 7, 8], dtype=torch.uint8), 4).tolist() == [
        0x21,
        0x43,
        0x65,
        0x87,
    ]
    assert packed_nbytes(1000, 3) == 375  # 3 bits per code, no waste beyond the last 8-code block


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match="need 3"):
        unpack_bits(torch.zeros(4, dtype=torch.uint8), 3, 8)


# ----------------------------------------------------------------------------- codes, scales, errors


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_round_to_nearest_error_is_at_most_half_a_step(bits, symmetric, granularity):
    torch.manual_seed(bits)
    weight = torch.randn(12, 100)  # 100 columns: groups of 32 leave a remainder of 4
    config = QuantConfig(bits=bits, symmetric=symmetric, granularity=granularity, group_size=32)
    codes, scale, zero = quantize_tensor(weight, config)
    assert codes.shape == weight.shape and codes.dtype == torch.uint8 and int(codes.max()) < 2**bits
    restored = dequantize_tensor(codes, scale, zero, bits, granularity, 32)
    bound = element_scale(scale, granularity, 32, weight.shape) / 2
    assert ((weight - restored).abs() <= bound * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_mse_search_never_loses_to_minmax(bits, symmetric, granularity):
    torch.manual_seed(0)
    weight = torch.distributions.StudentT(3.0).sample((16, 96))  # heavy tails: clipping pays
    errors = {}
    for method in ("minmax", "mse"):
        config = QuantConfig(
            bits=bits, symmetric=symmetric, granularity=granularity, group_size=32, method=method
        )
        errors[method] = (fake_quantize(weight, config) - weight).square().sum().item()
    assert errors["mse"] <= errors["minmax"] * (1 + 1e-6)
    if bits <= 3:
        assert errors["mse"] < 0.95 * errors["minmax"]


def test_scale_shapes_per_granularity():
    weight = torch.randn(10, 100)
    for granularity, shape in [("tensor", (1, 1)), ("channel", (10, 1)), ("group", (10, 4))]:
        for symmetric in (True, False):
            config = QuantConfig(bits=4, symmetric=symmetric, granularity=granularity, group_size=32)
            _, scale, zero = quantize_tensor(weight, config)
            assert scale.shape == shape and scale.dtype == torch.float32
            assert zero is None if symmetric else (zero.shape == shape and zero.dtype == torch.uint8)
            module = QuantLinear.from_float(nn.Linear(100, 10), config)
            assert module.scale.shape == shape
            assert module.codes.numel() == packed_nbytes(1000, 4) == 500


def test_symmetric_and_asymmetric():
    torch.manual_seed(0)
    positive = torch.rand(8, 64) + 0.5  # one-sided: asymmetric uses every level, symmetric half of them
    sym = QuantConfig(bits=4, symmetric=True)
    asym = QuantConfig(bits=4, symmetric=False)
    assert (fake_quantize(positive, asym) - positive).norm() < 0.6 * (
        fake_quantize(positive, sym) - positive
    ).norm()
    _, _, zero = quantize_tensor(positive, asym)
    assert (zero == 0).all()  # range [0, max]: zero point at the bottom
    pruned = torch.randn(8, 64) * (torch.rand(8, 64) > 0.5)
    for config in (sym, asym, QuantConfig(bits=2, symmetric=False, method="mse")):
        assert (fake_quantize(pruned, config)[pruned == 0] == 0).all()  # zero is exactly representable


def test_fp16_scales_take_half_the_bytes_and_fit_the_codes():
    torch.manual_seed(0)
    linear = nn.Linear(128, 16)
    full = QuantLinear.from_float(
        linear, QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False)
    )
    half = QuantLinear.from_float(
        linear,
        QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False, scale_dtype="float16"),
    )
    assert half.scale.dtype == torch.float16 and half.scale.nbytes * 2 == full.scale.nbytes
    assert torch.equal(half.scale.float(), full.scale.half().float())  # the same scales, rounded
    step = element_scale(half.scale.float(), "group", 32, (16, 128))
    # codes rounded to the fp16 scales: half a step, plus what the range lost to rounding 15 steps down
    assert ((half.weight - linear.weight).abs() <= step * (0.5 + 15 * 2**-11) + 1e-7).all()
    assert "fp16 scales" in repr(half)


def test_sixteen_bits_is_fp16_storage():
    torch.manual_seed(0)
    linear = nn.Linear(20, 6)
    module = QuantLinear.from_float(linear, QuantConfig(bits=16))
    assert set(module.state_dict()) == {"weight_fp16", "bias"}
    assert module.weight_fp16.dtype == torch.float16
    x = torch.randn(3, 20)
    assert torch.equal(module(x), F.linear(x, linear.weight.half().float(), linear.bias))


def test_quantize_row_is_a_staircase():
    torch.manual_seed(0)
    row = torch.randn(200)
    stairs = quantize_row(row, QuantConfig(bits=3))
    assert stairs.shape == row.shape and len(stairs.unique()) <= 8
    grouped = quantize_row(row, QuantConfig(bits=2, granularity="group", group_size=50, symmetric=False))
    assert all(len(grouped[i : i + 50].unique()) <= 4 for i in range(0, 200, 50))
    assert (quantize_row(row, QuantConfig(bits=8)) - row).abs().max() < 0.02


def test_outlier_columns_are_kept_and_free_the_rows_ranges():
    """One dimension far larger than the rest, as in tiny.en's token embedding: kept in fp16, the other
    weights get a range of their own."""
    torch.manual_seed(0)
    table = nn.Embedding(200, 32)
    with torch.no_grad():
        table.weight[:, 7] *= 12
        table.weight[:, 20] *= 4
    assert outlier_columns(table.weight, 1).tolist() == [7]
    assert outlier_columns(table.weight, 2).tolist() == [7, 20]  # the next pick ignores column 7
    plain = QuantEmbedding.from_float(table, QuantConfig(bits=4))
    kept = QuantEmbedding.from_float(table, QuantConfig(bits=4, outlier_columns=2))
    assert torch.equal(kept.weight[:, [7, 20]], table.weight[:, [7, 20]].half().float())
    assert relative_error(table.weight, kept.weight) < 0.5 * relative_error(table.weight, plain.weight)
    assert torch.equal(kept.weight, fake_quantize(table.weight, QuantConfig(bits=4, outlier_columns=2)))
    assert kept.outlier_values.nbytes == 200 * 2 * 2 and "+2 fp16 columns" in repr(kept)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 0}, "quantize.bits must be one of 2..8 or 16, got 0"),
        ({"bits": 1}, "quantize.bits"),
        ({"bits": 12}, "quantize.bits"),
        ({"bits": True}, "quantize.bits"),
        ({"symmetric": "yes"}, "quantize.symmetric"),
        ({"granularity": "row"}, "quantize.granularity must be one of"),
        ({"group_size": 0}, "quantize.group_size must be an integer in 1..8192, got 0"),
        ({"method": "gptq"}, "quantize.method must be one of"),  # GPTQ is its own switch: gptq=true
        ({"groups": ("attention",)}, "quantize.groups"),
        ({"groups": ()}, "quantize.groups"),
        ({"groups": "embedding"}, "quantize.groups"),
        ({"backend": "cuda"}, "quantize.backend must be one of"),
        ({"backend": "int8_dynamic", "bits": 4}, "needs bits=8"),
        ({"backend": "int8_dynamic", "symmetric": False}, "needs bits=8"),
        ({"backend": "int8_dynamic", "granularity": "group"}, "needs bits=8"),
        ({"backend": "int8_dynamic", "scale_dtype": "float16"}, "float32 scales"),
        ({"scale_dtype": "bfloat16"}, "quantize.scale_dtype must be one of"),
        ({"entropy_code": "yes"}, "quantize.entropy_code must be true or false"),
        ({"outlier_columns": -1}, "quantize.outlier_columns must be an integer from 0 to 64"),
        ({"outlier_columns": 65}, "quantize.outlier_columns"),
        ({"outlier_columns": True}, "quantize.outlier_columns"),
        ({"backend": "int8_dynamic", "outlier_columns": 1}, "outlier_columns must be 0"),
    ],
)
def test_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_config_defaults_and_list_groups():
    assert QuantConfig().groups == DEFAULT_GROUPS + ("embedding",)
    assert QuantConfig(groups=["conv"]).groups == ("conv",)


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize(
    "make",
    [
        lambda c: QuantLinear.from_float(nn.Linear(37, 11), c),
        lambda c: QuantEmbedding.from_float(nn.Embedding(19, 37, padding_idx=2), c),
        lambda c: QuantConv1d.from_float(nn.Conv1d(5, 7, 3, stride=2, padding=1), c),
    ],
)
@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(bits=3, granularity="group", group_size=16, symmetric=False),
        QuantConfig(bits=5, granularity="tensor"),
        QuantConfig(bits=16),
    ],
)
def test_skeleton_from_layout_reloads_exactly(make, config):
    torch.manual_seed(0)
    module = make(config)
    rebuilt = type(module).from_layout(module.layout())
    rebuilt.load_state_dict(module.state_dict())  # the dequantized cache is rebuilt by a post-load hook
    assert "weight" not in module.state_dict()
    assert torch.equal(rebuilt.weight, module.weight)
    x = (
        torch.randint(0, 19, (4, 6))
        if isinstance(module, QuantEmbedding)
        else torch.randn(2, 5, 9)
        if isinstance(module, QuantConv1d)
        else torch.randn(4, 37)
    )
    assert torch.equal(rebuilt(x), module(x))


def test_quantize_leaves_the_input_model_untouched(tiny_whisper):
    before = {k: v.clone() for k, v in tiny_whisper.state_dict().items()}
    classes = [type(m) for m in tiny_whisper.modules()]
    for config in (
        QuantConfig(bits=4),
        QuantConfig(backend="int8_dynamic"),
        QuantConfig(bits=2, groups=("conv",)),
    ):
        quantized, _ = quantize(tiny_whisper, config)
        assert quantized is not tiny_whisper
    after = tiny_whisper.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert classes == [type(m) for m in tiny_whisper.modules()]
    assert tiny_whisper.proj_out.weight is tiny_whisper.model.decoder.embed_tokens.weight


def test_reports_one_per_layer(tiny_whisper):
    errors = {}
    for bits in (2, 4, 8):
        model, reports = quantize(tiny_whisper, QuantConfig(bits=bits))
        assert len(reports) == 2 * 6 + 2 * 10 + 1  # every Linear of the 4 default groups + the embedding
        assert all(
            r.technique == "quantize" and r.bits == bits and r.params_after == r.params_before
            for r in reports
        )
        assert all(isinstance(model.get_submodule(r.name), (QuantLinear, QuantEmbedding)) for r in reports)
        table = next(r for r in reports if r.group == "embedding")
        assert table.name == "model.decoder.embed_tokens" and "proj_out shares this table" in table.note
        errors[bits] = sum(r.rel_error for r in reports) / len(reports)
    assert 0 < errors[8] < errors[4] < errors[2]


def test_tied_embedding_uses_the_quantized_table_in_both_places(tiny_whisper, inputs):
    config = QuantConfig(bits=4, groups=("embedding",))
    quantized, _ = quantize(tiny_whisper, config)
    table = quantized.model.decoder.embed_tokens
    assert isinstance(table, QuantEmbedding)
    assert quantized.proj_out.weight is table.weight  # the same tensor: stored once, read twice
    assert not any(k.startswith("proj_out") for k in quantized.state_dict())
    dequantized = fake_quantize(tiny_whisper.model.decoder.embed_tokens.weight, config)
    assert torch.equal(table.weight, dequantized)
    reference = copy.deepcopy(tiny_whisper)  # float model whose (tied) table is the dequantized one
    with torch.no_grad():
        reference.model.decoder.embed_tokens.weight.copy_(dequantized)
    assert torch.equal(logits(quantized, inputs), logits(reference, inputs))


def test_int8_dynamic_keeps_the_tie_and_includes_the_output_projection(tiny_whisper):
    quantized, reports = quantize(tiny_whisper, QuantConfig(backend="int8_dynamic"))
    table, head = quantized.model.decoder.embed_tokens, quantized.proj_out
    assert isinstance(head, Int8DynamicLinear) and isinstance(table, QuantEmbedding)
    assert head.codes is table.codes and head.scale is table.scale
    assert not any(k.startswith("proj_out") for k in quantized.state_dict())
    hidden = torch.randn(3, 32)
    assert torch.allclose(head(hidden), F.linear(hidden, table.weight), atol=0.02)
    assert isinstance(quantized.model.encoder.layers[0].fc1, Int8DynamicLinear)
    assert "int8 kernel" in reports[0].note


def test_int8_dynamic_is_close_to_fp32(tiny_whisper, inputs):
    reference = logits(tiny_whisper, inputs)
    quantized, _ = quantize(tiny_whisper, QuantConfig(backend="int8_dynamic", method="mse"))
    out = logits(quantized, inputs)
    assert (out - reference).norm() / reference.norm() < 0.02
    assert (out.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.8


def test_int8_path_raises_no_deprecation_warnings():
    """torch warns once per process, so check in a fresh one with every warning made an error."""
    code = (
        "import torch; from torch import nn; from core.compress.quant import Int8DynamicLinear, QuantConfig; "
        "m = Int8DynamicLinear.from_float(nn.Linear(8, 4), QuantConfig(backend='int8_dynamic')); "
        "m(torch.randn(2, 8))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_int8_linear_runs_the_torch_dynamic_quantized_linear():
    """Same codes in torch.ao's dynamic Linear give bitwise the same output: it is that kernel."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    ours = Int8DynamicLinear.from_float(linear, QuantConfig(backend="int8_dynamic"))
    with quiet_torch_quantization():
        import torch.ao.nn.quantized.dynamic as dynamic

        theirs = dynamic.Linear(64, 48, dtype=torch.qint8)
        codes = ours.int8_codes()
        assert codes.dtype == torch.int8 and int(codes.min()) >= -128
        qweight = torch._make_per_channel_quantized_tensor(
            codes, ours.scale.reshape(-1).double(), torch.zeros(48, dtype=torch.long), 0
        )
        theirs.set_weight_bias(qweight, linear.bias.detach())
    x = torch.randn(5, 7, 64)
    assert torch.equal(ours(x), theirs(x))
    assert (ours(x) - linear(x)).norm() / linear(x).norm() < 0.02
    assert torch.equal(copy.deepcopy(ours)(x), ours(x))


def test_conv_group_quantizes_the_front_end(tiny_whisper, inputs):
    quantized, reports = quantize(tiny_whisper, QuantConfig(bits=8, groups=("conv",)))
    assert [r.name for r in reports] == ["model.encoder.conv1", "model.encoder.conv2"]
    assert isinstance(quantized.model.encoder.conv2, QuantConv1d)
    reference = logits(tiny_whisper, inputs)
    assert (logits(quantized, inputs) - reference).norm() / reference.norm() < 0.02


def test_positions_group_quantizes_both_position_tables(tiny_whisper, inputs):
    config = QuantConfig(bits=8, groups=("positions",))
    quantized, reports = quantize(tiny_whisper, config)
    assert [r.name for r in reports] == ["model.encoder.embed_positions", "model.decoder.embed_positions"]
    assert isinstance(quantized.model.decoder.embed_positions, QuantPositions)  # called with position ids
    assert type(quantized.model.encoder.embed_positions) is QuantEmbedding
    reference = copy.deepcopy(tiny_whisper)  # the float model holding the dequantized tables
    with torch.no_grad():
        for side in ("encoder", "decoder"):
            table = getattr(reference.model, side).embed_positions.weight
            table.copy_(fake_quantize(table, config))
    assert torch.equal(logits(quantized, inputs), logits(reference, inputs))
    assert not torch.equal(logits(quantized, inputs), logits(tiny_whisper, inputs))


def test_int8_blockers_name_what_keeps_codes_off_the_int8_kernels():
    from core.compress.quant import int8_blockers

    assert int8_blockers(8, True, "channel") == []
    assert int8_blockers(4, False, "group", "float16") == [
        "4 bits",
        "asymmetric codes",
        "group scales",
        "float16 scales",
    ]
