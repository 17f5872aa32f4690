"""ONNX Runtime export: the lab's codes land in MatMulNBits blocks (or int8 MatMulInteger weights) byte for
byte as onnxruntime's own quantizer lays them out, the two graphs compute the lab's logits and decode the
lab's tokens, the bundled tiny.en transcribes hello.wav in ONNX Runtime, and recipes it cannot hold are
refused before anything is written."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import REPO, random_tiny_en
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits
from torch import nn

from core.audio import load_audio
from core.compress.packing import pack_bits
from core.compress.quant import QuantConfig, QuantLinear
from core.compress.recipe import Recipe, apply_recipe
from core.deploy.onnx import Graph, block_size, blocks, decode_window, export_onnx, inexpressible
from core.deploy.runtime import detect, load_deployed, runtime
from core.io.folders import load_model
from core.metrics import score
from core.models import GROUPS
from core.models.whisper import smaller

Q4_G32 = {"quantize": {"bits": 4, "granularity": "group", "group_size": 32}}
INT8 = {"quantize": {"bits": 8}}


def recipe(*steps: dict) -> Recipe:
    return Recipe.from_json({"steps": list(steps)})


def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def sessions(folder):
    return [
        onnxruntime.InferenceSession(str(folder / f), providers=["CPUExecutionProvider"])
        for f in ("encoder.onnx", "decoder.onnx")
    ]


def onnx_logits(folder, features: torch.Tensor, steps: list[list[int]]) -> tuple[np.ndarray, dict]:
    """The decoder's last-token logits after feeding `steps` (token lists), one call each, keeping the
    cache; and the encoder's outputs."""
    encoder, decoder = sessions(folder)
    cross = dict(zip([o.name for o in encoder.get_outputs()], encoder.run(None, {"mel": features.numpy()})))
    past = {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in decoder.get_inputs()
        if i.name.startswith("past")
    }
    for tokens in steps:
        logits, *present = decoder.run(None, {"tokens": np.array([tokens]), **cross, **past})
        past = dict(zip(past, present))
    return logits[0], cross


def lab_logits(model, states: torch.Tensor, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model.decoder_logits(states, torch.tensor([tokens]))[0, -1].numpy()


def initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def nodes(path, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op_type]


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer Whisper (width 64) with tiny.en's vocabulary and decoding facts."""
    return random_tiny_en("tiny-random", layers=2, d_model=64)


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny-random")


@pytest.fixture(scope="module")
def features(tiny):
    rng = np.random.default_rng(0)
    return tiny.features([rng.normal(0, 0.1, 16000 * 3).astype(np.float32)])


# ----------------------------------------------------------------------------- MatMulNBits' layout


def matmul_nbits(layer: QuantLinear) -> onnxruntime.InferenceSession:
    """One MatMulNBits node holding `layer`'s codes as the exporter packs them (float activations)."""
    size = block_size(layer)
    data = blocks(layer, size)
    g = Graph()
    inputs = [g.const("B", data["B"]), g.const("scales", data["scales"])]
    if "zero_points" in data:
        inputs.append(g.const("zero_points", data["zero_points"]))
    out, k = layer.out_features, layer.in_features
    y = g.op("MatMulNBits", "x", *inputs, K=k, N=out, bits=layer.bits, block_size=size, accuracy_level=0)
    g.op("Identity", y, out="y")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    return session(g.model("one", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], ""))


@pytest.mark.parametrize(
    "bits, symmetric, granularity, group_size",
    [
        (4, True, "group", 32),
        (4, False, "group", 32),
        (4, True, "group", 128),
        (4, False, "group", 128),
        (4, True, "group", 48),  # three 16-column blocks a group, sharing its scale
        (4, True, "channel", 64),  # one scale a row, repeated over the row's blocks
        (2, False, "group", 64),
        (8, True, "group", 16),
    ],
)
def test_matmulnbits_computes_x_times_the_labs_dequantized_weight(bits, symmetric, granularity, group_size):
    torch.manual_seed(0)
    linear = nn.Linear(200, 24)  # 200 columns: the last block is padding
    config = QuantConfig(bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
    layer = QuantLinear.from_float(linear, config)
    x = torch.randn(3, 200)
    y = matmul_nbits(layer).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(y, (x @ layer.dequantize().T).numpy(), atol=2e-5)


def grid_layer(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, group: int) -> QuantLinear:
    """A 4-bit group-wise QuantLinear holding exactly these codes, scales and zero points."""
    rows, cols = codes.shape
    layer = QuantLinear(
        cols, rows, bias=False, bits=4, symmetric=zeros is None, granularity="group", group_size=group
    )
    layer.codes.copy_(pack_bits(torch.from_numpy(codes), 4))
    layer.scale.copy_(torch.from_numpy(scales))
    if zeros is not None:
        layer.zero.copy_(torch.from_numpy(zeros))
    layer.refresh()
    return layer


@pytest.mark.parametrize("symmetric", [True, False])
def test_packed_bytes_are_what_onnxruntimes_quantizer_writes(symmetric):
    """A weight exactly on a 4-bit grid both quantizers reproduce: onnxruntime's (quantize_matmul_4bits,
    what MatMulNBitsQuantizer calls) gives the very bytes we write from the lab's codes. Asymmetric: the
    lab's min-max rounding finds the same codes. Symmetric: onnxruntime maps a block's largest magnitude to
    code 0 (-8 x scale), which the lab's rounding (largest -> +-7) never picks, so the lab layer is given
    those codes; the lab decodes them the same, (code - 8) x scale."""
    rng = np.random.default_rng(0)
    rows, cols, group = 16, 96, 32
    codes = rng.integers(0, 16, (rows, cols)).astype(np.uint8)
    scales = 2.0 ** rng.integers(-8, -3, (rows, cols // group))  # powers of two: exact arithmetic
    zeros = None if symmetric else rng.integers(1, 15, (rows, cols // group)).astype(np.uint8)
    for block in range(cols // group):
        part = codes[:, block * group : (block + 1) * group]
        part[:, 0] = 0  # each block reaches its range ends, so both quantizers find this grid
        if not symmetric:
            part[:, 1] = 15
    layer = grid_layer(codes, scales.astype(np.float32), zeros, group)
    if not symmetric:  # the lab's own min-max rounding finds this grid
        linear = nn.Linear(cols, rows, bias=False)
        linear.weight.data.copy_(layer.dequantize())
        config = QuantConfig(bits=4, symmetric=False, granularity="group", group_size=group)
        relearned = QuantLinear.from_float(linear, config)
        assert torch.equal(relearned.codes, layer.codes) and torch.equal(relearned.zero, layer.zero)
        assert torch.equal(relearned.scale, layer.scale)

    ours = blocks(layer, block_size(layer))
    weight = np.ascontiguousarray(layer.dequantize().numpy().T)  # MatMul's B: (in, out)
    k_blocks = cols // group
    packed = np.zeros((rows, k_blocks, group // 2), dtype=np.uint8)
    ort_scales = np.zeros((rows, k_blocks), dtype=np.float32)
    ort_zeros = np.zeros((rows, (k_blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, weight, ort_scales, ort_zeros, group, rows, cols, symmetric)
    assert block_size(layer) == group
    assert ours["B"].tobytes() == packed.tobytes()
    assert ours["scales"].tobytes() == ort_scales.tobytes()
    if not symmetric:
        assert ours["zero_points"].tobytes() == ort_zeros.tobytes()


# ----------------------------------------------------------------------------- the graphs against the lab


def test_float_export_computes_the_labs_logits_and_tokens(tiny, features, tiny_folder):
    folder = tiny_folder
    assert {"encoder.onnx", "decoder.onnx", "tokenizer.json", "preprocessor_config.json", "README.txt"} <= {
        f.name for f in folder.iterdir()
    }
    assert detect(folder) == "onnx"
    with torch.no_grad():
        states = tiny.encode(features)
    prompt = list(tiny.decoding.prompt)
    # the prompt in one call, then three tokens at once over the cache: positions and the causal mask
    logits, cross = onnx_logits(folder, features, [prompt, [11, 220, 50256]])
    np.testing.assert_allclose(logits, lab_logits(tiny, states, prompt + [11, 220, 50256]), atol=1e-4)
    attention = tiny.module.get_submodule("model.decoder.layers.1.encoder_attn")
    keys = attention.k_proj(states).view(1, -1, attention.num_heads, attention.head_dim).transpose(1, 2)
    np.testing.assert_allclose(cross["cross_k_1"], keys.detach().numpy(), atol=1e-4)

    deployed = load_deployed(folder, 2)
    assert deployed.files == (folder / "encoder.onnx", folder / "decoder.onnx")
    assert deployed.parameters == tiny.num_parameters()
    waves = [np.random.default_rng(0).normal(0, 0.1, 16000 * n).astype(np.float32) for n in (3, 35)]
    assert deployed.transcribe(waves) == tiny.transcribe(waves)  # 35 s: two windows, texts joined
    with torch.no_grad():
        lab = tiny.greedy(states, 20)[0]
    assert lab and decode_window(*sessions(folder), features.numpy(), tiny.decoding, 20) == lab


@pytest.mark.parametrize(
    "step, atol, ops",
    [
        (Q4_G32, 1e-4, {"MatMulNBits": 33, "GatherBlockQuantized": 1}),  # the lab's arithmetic: exact
        ({"quantize": {"bits": 4, "granularity": "channel", "symmetric": False}}, 1e-4, {"MatMulNBits": 33}),
        ({"quantize": {"bits": 16, "groups": list(GROUPS)}}, 1e-4, {"Cast": 32 + 1 + 2 + 2}),
        (INT8, 1.5e-2, {"MatMulInteger": 33, "DynamicQuantizeLinear": 33}),  # int8 activations, as ORT runs
        ({"quantize": {"bits": 8, "granularity": "group", "group_size": 48}}, 1.5e-2, {"MatMulNBits": 33}),
        ({"quantize": {"bits": 8, "symmetric": False}}, 1.5e-2, {"MatMulInteger": 33}),
        ({"quantize": {"bits": 8, "backend": "int8_dynamic"}}, 3e-2, {"MatMulInteger": 33}),
        ({"quantize": {"bits": 2, "granularity": "group", "group_size": 64}}, 1.5e-2, {"MatMulNBits": 33}),
    ],
)
def test_quantized_exports_compute_the_labs_logits(tiny, features, tmp_path, step, atol, ops):
    model = apply_recipe(tiny, recipe(step))[0]
    folder = export_onnx(model, tmp_path / "q")
    with torch.no_grad():
        states = model.encode(features)
    prompt = list(model.decoding.prompt)
    logits, _ = onnx_logits(folder, features, [prompt, [11, 220]])
    np.testing.assert_allclose(logits, lab_logits(model, states, prompt + [11, 220]), atol=atol)
    for op, count in ops.items():  # every matrix and the token table in the chosen format
        assert sum(len(nodes(folder / f, op)) for f in ("encoder.onnx", "decoder.onnx")) == count, op


def test_the_token_table_is_stored_once_and_the_codes_are_the_labs(tiny, tmp_path):
    model = apply_recipe(tiny, recipe(Q4_G32))[0]
    decoder = export_onnx(model, tmp_path / "q4") / "decoder.onnx"
    table = "model.decoder.embed_tokens.weight_B"
    (gather,) = nodes(decoder, "GatherBlockQuantized")
    logits = [n for n in nodes(decoder, "MatMulNBits") if n.input[1] == table]
    assert gather.input[0] == table and len(logits) == 1  # the lookup and the output projection share it
    layer = model.module.get_submodule("model.decoder.embed_tokens")
    stored = initializers(decoder)[table]
    assert stored.shape == (layer.num_embeddings, 64 // 32, 16)
    assert stored.tobytes() == layer.codes.numpy().tobytes()  # 64 columns: blocks are the lab's own bytes

    model = apply_recipe(tiny, recipe(INT8))[0]
    folder = export_onnx(model, tmp_path / "int8")
    weights = initializers(folder / "encoder.onnx")
    fc1 = model.module.get_submodule("model.encoder.layers.0.fc1")
    assert np.array_equal(weights["model.encoder.layers.0.fc1.weight_B"], fc1.unpacked_codes().numpy().T)
    np.testing.assert_array_equal(weights["model.encoder.layers.0.fc1.weight_scale"], fc1.scale.reshape(-1))
    assert weights["model.encoder.layers.0.fc1.weight_zero_point"] == 128
    (gather,) = [n for n in nodes(folder / "decoder.onnx", "Gather") if n.input[0].endswith("weight_B")]
    assert gather.input[0] == "model.decoder.embed_tokens.weight_B"
    assert "model.decoder.embed_tokens.weight" not in initializers(folder / "decoder.onnx")


def test_pruned_low_rank_and_shallower_models_export(tiny, features, tmp_path):
    steps = (
        {"prune": {"sparsity": 0.5, "structure": "heads"}},
        {"prune": {"sparsity": 0.5, "structure": "neurons"}},
        {"low_rank": {"rank": 8, "groups": ["decoder.ffn", "encoder.attention"]}},
        {"quantize": {"bits": 4, "granularity": "group", "group_size": 16, "groups": ["decoder.ffn"]}},
    )
    pruned = apply_recipe(tiny, recipe(*steps))[0]
    shallow = tiny.with_module(smaller(tiny.module, decoder_layers=[1], encoder_layers=[0, 1]))
    for name, model in (("pruned", pruned), ("shallow", shallow)):
        assert not inexpressible(model)
        folder = export_onnx(model, tmp_path / name)
        with torch.no_grad():
            states = model.encode(features)
        prompt = list(model.decoding.prompt)
        logits, _ = onnx_logits(folder, features, [prompt, [11]])
        np.testing.assert_allclose(logits, lab_logits(model, states, prompt + [11]), atol=1e-4)
    attention = pruned.module.get_submodule("model.encoder.layers.0.self_attn")
    assert attention.num_heads == 2  # head pruning really changed the head count the graph reads
    encoder = onnx.load(str(tmp_path / "pruned" / "encoder.onnx"))
    assert (
        len(encoder.graph.output) == 2 * 2
        and len(onnx.load(str(tmp_path / "shallow" / "encoder.onnx")).graph.output) == 2
    )


def test_short_input_runs_over_its_own_frames(tiny, tiny_folder):
    """300 frames (3 s without padding): the encoder sees 150 positions, as Whisper would with a table cut
    to that length."""
    folder = tiny_folder
    features = tiny.features([np.random.default_rng(1).normal(0, 0.1, 16000 * 3).astype(np.float32)])[
        ..., :300
    ]
    short = copy.deepcopy(tiny.module)  # the reference: Hugging Face's encoder, its table cut to 150 rows
    encoder = short.get_submodule("model.encoder")
    encoder.config.max_source_positions = 150
    table = encoder.get_submodule("embed_positions")
    table.weight = nn.Parameter(table.weight[:150].detach().clone())
    table.num_embeddings = 150
    with torch.no_grad():
        states = encoder(features).last_hidden_state
    prompt = list(tiny.decoding.prompt)
    logits, cross = onnx_logits(folder, features, [prompt])
    assert cross["cross_v_0"].shape == (1, 4, 150, 16)
    np.testing.assert_allclose(logits, lab_logits(tiny, states, prompt), atol=1e-4)


# ----------------------------------------------------------------------------- the bundled tiny.en


@pytest.fixture(scope="module")
def tiny_en():
    return load_model("whisper-tiny.en")


@pytest.fixture(scope="module")
def tiny_en_folder(tiny_en, tmp_path_factory):
    return export_onnx(tiny_en, tmp_path_factory.mktemp("onnx") / "tiny-en")


@pytest.fixture(scope="module")
def hello():
    wave = load_audio(REPO / "assets" / "samples" / "hello.wav")
    return wave, (REPO / "assets" / "samples" / "hello.txt").read_text().strip()


def test_bundled_float_export_transcribes_hello(tiny_en, tiny_en_folder, hello):
    wave, reference = hello
    folder = tiny_en_folder
    deployed = runtime("onnx").load(folder, 2)
    text = deployed.transcribe([wave])[0]
    assert score([reference], [text]).wer == 0
    # README.txt's snippet, run as a user would run it, prints the same transcript
    snippet = (folder / "README.txt").read_text().split("\n\n", 1)[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet.replace('"a.wav"', repr(str(REPO / "assets" / "samples" / "hello.wav"))), {})
    assert out.getvalue().strip() == text
    facts = json.loads((folder / "speech_lab_export.json").read_text())
    assert facts["format"] == "onnx" and facts["weights"] == {"float32": len(tiny_en.layers())}


def test_bundled_4bit_export_transcribes_hello_as_the_lab_does(tiny_en, tiny_en_folder, hello, tmp_path):
    step = {"quantize": {"bits": 4, "granularity": "group", "group_size": 32, "method": "mse"}}
    model = apply_recipe(tiny_en, recipe(step))[0]
    wave, reference = hello
    folder = export_onnx(model, tmp_path / "tiny-en-q4")
    text = load_deployed(folder, 2).transcribe([wave])[0]
    assert text == model.transcribe([wave])[0]  # the very transcript the lab's 4-bit model gives
    assert score([reference], [text]).wer <= 0.1  # "of this speech lab": one word, in the lab too
    onnx_runtime = runtime("onnx")
    size, float_size = (
        sum(f.stat().st_size for f in onnx_runtime.model_files(f)) for f in (folder, tiny_en_folder)
    )
    assert size < 0.25 * float_size  # 4-bit blocks (and their float32 scales) in place of float32 weights


# ----------------------------------------------------------------------------- refused recipes


@pytest.mark.parametrize(
    "step, layer, says",
    [
        ({"quantize": {"bits": 3, "granularity": "group", "group_size": 32}}, "fc1", "use quantize.bits 4"),
        ({"quantize": {"bits": 6}}, "fc1", "use quantize.bits 8"),
        (
            {"quantize": {"bits": 4, "granularity": "group", "group_size": 24}},
            "fc1",
            "quantize.group_size 32",
        ),
        (
            {"quantize": {"bits": 4, "outlier_columns": 2, "groups": ["embedding"]}},
            "embed_tokens",
            "outlier_columns 0",
        ),
        ({"quantize": {"bits": 8, "groups": ["positions"]}}, "embed_positions", "leave 'positions' out"),
        ({"quantize": {"bits": 8, "groups": ["conv"]}}, "conv1", "leave 'conv' out"),
    ],
)
def test_recipes_onnx_runtime_cannot_hold_are_refused(tiny, tmp_path, step, layer, says):
    model = apply_recipe(tiny, recipe(step))[0]
    with pytest.raises(ValueError, match="cannot be written exactly for ONNX Runtime") as error:
        export_onnx(model, tmp_path / "out")
    assert says in str(error.value) and layer in str(error.value)
    assert not (tmp_path / "out").exists()
