"""whisper.cpp export: the lab's codes land in ggml-model.bin as ggml's own blocks, bit for bit (checked by
hand, by gguf.quants' reference decoder and by the dequantizer of the very ggml library pywhispercpp runs),
whisper.cpp 1.8.5 loads the file and decodes the lab's tokens; recipes it cannot hold are refused."""

from __future__ import annotations

import ctypes
import json
import math
import struct
from pathlib import Path

import _pywhispercpp as pw
import numpy as np
import pytest
import pywhispercpp
import torch
from conftest import REPO, random_tiny_en
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from core.audio import load_audio
from core.compress.quant import QuantConfig, QuantLinear
from core.compress.recipe import Recipe, apply_recipe
from core.deploy.ggml import (
    MODEL_FILE,
    RUNTIME,
    decoding_params,
    export_ggml,
    inexpressible,
    lab_codes,
    pack_blocks,
    tensors,
    whispercpp_quantize,
    write_ggml,
)
from core.deploy.runtime import detect, load_deployed
from core.io.folders import load_model
from core.metrics import score

MATRICES = ["encoder.attention", "encoder.ffn", "decoder.attention", "decoder.ffn", "embedding"]
F16 = {"steps": [{"quantize": {"bits": 16, "groups": MATRICES + ["conv"]}}]}  # every weight in 16 bits


def ggml_recipe(bits: int, symmetric: bool = True, **more) -> dict:
    """The lab's settings that ggml's q4_0 ... q8_0 blocks hold as they are."""
    settings = {"granularity": "group", "group_size": 32, "scale_dtype": "float16", "groups": MATRICES}
    return {"steps": [{"quantize": {"bits": bits, "symmetric": symmetric, **settings, **more}}]}


Q8_0 = ggml_recipe(8)
TYPES = {"q4_0": (4, True), "q4_1": (4, False), "q5_0": (5, True), "q5_1": (5, False), "q8_0": (8, True)}


def ggml_library() -> ctypes.CDLL:
    """The ggml library pywhispercpp's whisper.cpp runs on (its dequantize_row_* and quantize functions)."""
    libs = Path(pywhispercpp.__file__).parent.parent / "pywhispercpp.libs"
    (path,) = libs.glob("libggml-base*.so*")
    return ctypes.CDLL(str(path))


def ggml_dequantize(blocks: np.ndarray, type_name: str, shape: tuple[int, int]) -> np.ndarray:
    """ggml's own dequantize_row_<type> over the blocks: the values whisper.cpp multiplies with."""
    function = getattr(ggml_library(), f"dequantize_row_{type_name}")
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    source = np.ascontiguousarray(blocks, dtype=np.uint8)
    out = np.zeros(math.prod(shape), np.float32)
    function(source.ctypes.data, out.ctypes.data, out.size)
    return out.reshape(shape)


def read_ggml(path: Path) -> tuple[list[int], np.ndarray, list[bytes], dict]:
    """A ggml whisper file read back as whisper_model_load reads it: hyper-parameters, mel filters,
    vocabulary, and name -> (ggml type, shape outermost first, raw data) (sizes from gguf's table)."""
    data = path.read_bytes()
    magic, *hparams = struct.unpack_from("<I11i", data)
    assert magic == 0x67676D6C
    n_mel, n_fft = struct.unpack_from("<ii", data, 48)
    filters = np.frombuffer(data, "<f4", n_mel * n_fft, 56).reshape(n_mel, n_fft)
    position = 56 + 4 * n_mel * n_fft
    (count,) = struct.unpack_from("<i", data, position)
    position += 4
    vocabulary = []
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, position)
        vocabulary.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    found = {}
    while position < len(data):
        n_dims, length, ttype = struct.unpack_from("<3i", data, position)
        dims = struct.unpack_from(f"<{n_dims}i", data, position + 12)
        position += 12 + 4 * n_dims
        name = data[position : position + length].decode()
        position += length
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        nbytes = math.prod(dims) // block * size
        found[name] = (GGMLQuantizationType(ttype), tuple(reversed(dims)), data[position : position + nbytes])
        position += nbytes
    return hparams, filters, vocabulary, found


def decoded(entry) -> np.ndarray:
    """A tensor of the file as float32 values, through gguf's reference decoder."""
    ttype, shape, raw = entry
    return dequantize(np.frombuffer(raw, np.uint8).reshape(shape[0], -1), ttype).reshape(shape)


def whispercpp_tokens(folder: Path, model, features: torch.Tensor) -> list[tuple[int, float]]:
    """(token, probability) whisper.cpp's greedy decoding gives on the lab's own log-mel features (set in its
    context instead of its own mel), with the runtime's decoding parameters."""
    context = pw.whisper_init_from_file_with_params(
        str(folder / MODEL_FILE), pw.whisper_context_default_params()
    )
    params = pw.whisper_full_default_params(pw.whisper_sampling_strategy.WHISPER_SAMPLING_GREEDY)
    for key, value in decoding_params(model.decoding, 1).items():
        setattr(params, key, value)
    mel = np.ascontiguousarray(features[0].numpy(), dtype=np.float32)
    assert pw.whisper_set_mel(context, mel, mel.shape[1], mel.shape[0]) == 0
    assert pw.whisper_full(context, params, np.zeros(0, np.float32), 0) == 0  # no samples: the mel set
    tokens = []
    for segment in range(pw.whisper_full_n_segments(context)):
        for i in range(pw.whisper_full_n_tokens(context, segment)):
            data = pw.whisper_full_get_token_data(context, segment, i)
            if data.id < model.decoding.eot:
                tokens.append((data.id, data.p))
    pw.whisper_free(context)
    return tokens


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer Whisper (width 64, 4 heads) with tiny.en's vocabulary and decoding facts."""
    return random_tiny_en("tiny-random", layers=2, d_model=64)


# ----------------------------------------------------------------------------- blocks


def test_blocks_are_laid_out_as_ggml_common_h_says():
    # q4_0: d = 0.5 (fp16 0x3800), value j in the low nibble of byte j, value j + 16 in its high nibble
    codes = np.array([list(range(16)) + list(range(15, -1, -1))], np.uint8)
    expected = bytes.fromhex("0038" + "f0e1d2c3b4a5968778695a4b3c2d1e0f")
    assert pack_blocks(codes, np.array([[0.5]]), None, "q4_0").tobytes() == expected
    # q5_1: d = 0.25 (0x3400), m = -16 x 0.25 = -4 (0xc400), the 5th bits of values 16..31 set in qh
    codes = np.arange(32, dtype=np.uint8)[None]
    expected = bytes.fromhex("0034" + "00c4" + "0000ffff" + "00112233445566778899aabbccddeeff")
    assert pack_blocks(codes, np.array([[0.25]]), np.array([[16]]), "q5_1").tobytes() == expected
    # q8_0: d = 2 (0x4000), int8 values code - 128
    codes = (128 + np.arange(-16, 16))[None].astype(np.uint8)
    expected = bytes.fromhex("0040" + "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff" + "000102030405060708090a0b0c0d0e0f")
    assert pack_blocks(codes, np.array([[2.0]]), None, "q8_0").tobytes() == expected


@pytest.mark.parametrize("type_name", list(TYPES))
def test_blocks_decode_to_the_labs_weights_in_gguf_and_in_ggml_itself(type_name):
    bits, symmetric = TYPES[type_name]
    torch.manual_seed(0)
    linear = torch.nn.Linear(70, 6)  # 70 columns: a partial last group of 6
    with torch.no_grad():
        linear.weight.mul_(torch.linspace(0.01, 300, 70))
    config = QuantConfig(bits, symmetric, "group", 32, method="mse", scale_dtype="float16")  # mse: codes clip
    layer = QuantLinear.from_float(linear, config)
    lab = layer.dequantize().numpy()
    blocks = pack_blocks(*lab_codes(layer, 6, 96), type_name)  # padded to 96 columns, as a pruned fc2
    assert blocks.shape == (6, 3 * GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]][1])
    gguf_values = dequantize(blocks, GGMLQuantizationType[type_name.upper()])
    for values in (gguf_values, ggml_dequantize(blocks, type_name, (6, 96))):
        if symmetric:  # d = scale, q = code: ggml computes the lab's (code - 2^(bits-1)) x scale exactly
            np.testing.assert_array_equal(values[:, :70], lab)
            np.testing.assert_array_equal(values[:, 70:], 0)
        else:  # m = -zero x scale rounded to float16
            scale = layer.scale.float().numpy().repeat(32, axis=1)
            zero = layer.zero.float().numpy().repeat(32, axis=1)
            bound = (zero * scale * 2.0**-11)[:, :70] + 1e-7
            assert np.all(np.abs(values[:, :70] - lab) <= bound)
            assert np.abs(values[:, 70:]).max() <= bound.max()


def test_whispercpp_quantize_rounds_as_ggml_s_own_quantizer():
    """The benchmark's reference is ggml_quantize_chunk's bytes (what whisper.cpp's quantize tool calls)."""
    library = ggml_library()
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.ggml_quantize_chunk.argtypes = [ctypes.c_int, pointer, pointer, size, size, size, pointer]
    library.ggml_quantize_chunk.restype = ctypes.c_size_t
    weight = np.random.default_rng(0).normal(0, 0.05, (8, 96)).astype(np.float32)
    for type_name in TYPES:
        ours = whispercpp_quantize(weight, type_name)
        theirs = np.zeros(ours.size, np.uint8)
        source = weight.astype(np.float16).astype(np.float32)  # the tool reads the float16 model
        ttype = GGMLQuantizationType[type_name.upper()].value
        written = library.ggml_quantize_chunk(ttype, source.ctypes.data, theirs.ctypes.data, 0, 8, 96, None)
        assert written == ours.size and np.array_equal(ours.reshape(-1), theirs), type_name


# ----------------------------------------------------------------------------- the file, in whisper.cpp


def test_random_whisper_round_trip_through_whisper_cpp(tiny, tmp_path):
    wave = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    features = tiny.features([wave])
    for name, recipe in (("f16", F16), ("q8_0", Q8_0)):
        model = apply_recipe(tiny, Recipe.from_json(recipe))[0]
        assert inexpressible(model) == []
        folder = export_ggml(model, tmp_path / name)
        hparams, filters, vocabulary, found = read_ggml(folder / MODEL_FILE)
        assert hparams == [51864, 1500, 64, 4, 2, 64, 64, 4, 2, 80, {"f16": 1, "q8_0": 2007}[name]]
        assert filters.shape == (80, 201) and len(vocabulary) == 50256
        assert vocabulary[220] == b" " and vocabulary[15496] == b"Hello"
        assert len(found) == 11 + 15 * 2 + 24 * 2  # whisper_model_load: 10 + 15 + 15 layers + 24 layers
        matrix = GGMLQuantizationType.F16 if name == "f16" else GGMLQuantizationType.Q8_0
        assert found["decoder.blocks.1.cross_attn.key.weight"][:2] == (matrix, (64, 64))
        assert found["decoder.token_embedding.weight"][:2] == (matrix, (51864, 64))
        assert found["encoder.conv1.weight"][:2] == (GGMLQuantizationType.F16, (64, 80, 3))
        assert found["encoder.conv2.bias"][:2] == (GGMLQuantizationType.F32, (64, 1))
        assert found["decoder.positional_embedding"][:2] == (GGMLQuantizationType.F32, (64, 64))
        layers = dict(model.module.named_modules())
        np.testing.assert_array_equal(
            decoded(found["encoder.blocks.0.mlp.2.weight"]), layers["model.encoder.layers.0.fc2"].dequantize()
        )
        facts = json.loads((folder / "speech_lab_export.json").read_text())
        assert facts["format"] == "ggml" and facts["type"] == name and detect(folder) == "ggml"
        assert "pywhispercpp" in (folder / "README.txt").read_text()

        deployed = load_deployed(folder, 1)
        assert deployed.files == (folder / MODEL_FILE,) and deployed.size_bytes() > 1e6
        assert isinstance(deployed.transcribe([wave])[0], str)
        # greedy on the lab's features: whisper.cpp decodes the lab's tokens (a random model repeats one
        # token; the bundled model's transcript below is the strong check), with the lab's probabilities
        with torch.no_grad():
            lab = model.greedy(model.encode(features), 28)[0]
            logits = model.decoder_logits(
                model.encode(features), torch.tensor([[*model.decoding.prompt, *lab]])
            )
        logits[..., list(model.decoding.suppress)] = -math.inf
        logits[0, len(model.decoding.prompt) - 1, list(model.decoding.suppress_at_begin)] = -math.inf
        probabilities = logits.softmax(-1)[0, len(model.decoding.prompt) - 1 :]
        theirs = whispercpp_tokens(folder, model, features)
        assert lab and [t for t, _ in theirs[: len(lab)]] == lab
        lab_p = [float(probabilities[i, t]) for i, t in enumerate(lab)]
        np.testing.assert_allclose([p for _, p in theirs[: len(lab)]], lab_p, rtol=0.02)


def test_a_float_model_is_refused_for_the_cpu_runtime_its_f32_file_would_crash(tiny, tmp_path):
    problems = inexpressible(tiny)
    assert len(problems) == 1 and "issue #2557" in problems[0] and "→ f16" in problems[0]
    with pytest.raises(ValueError, match="aborts on them"):
        export_ggml(tiny, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    # the f32 file itself is whisper.cpp's format: it loads (running it would abort in ggml's im2col)
    folder = tmp_path / "f32"
    folder.mkdir()
    with torch.no_grad():
        write_ggml(folder / MODEL_FILE, tiny, "f32", tensors(tiny, "f32"))
    context = pw.whisper_init_from_file_with_params(
        str(folder / MODEL_FILE), pw.whisper_context_default_params()
    )
    assert pw.whisper_model_ftype(context) == 0 and pw.whisper_model_n_text_state(context) == 64
    pw.whisper_free(context)
    (folder / "speech_lab_export.json").write_text(
        json.dumps({"name": "x", "format": "ggml", "decoding": {}})
    )
    with pytest.raises(ValueError, match="issue #2557"):
        RUNTIME.load(folder, 1)


@pytest.fixture(scope="module")
def tiny_en():
    return load_model("whisper-tiny.en")


def test_bundled_tiny_en_transcribes_hello_in_whisper_cpp(tiny_en, tmp_path):
    wave = load_audio(REPO / "assets" / "samples" / "hello.wav")
    reference = (REPO / "assets" / "samples" / "hello.txt").read_text().strip()
    features = tiny_en.features([wave])
    sizes = {}
    for name, recipe in (("f16", F16), ("q8_0", Q8_0)):
        model = apply_recipe(tiny_en, Recipe.from_json(recipe))[0]
        folder = RUNTIME.export(model, tmp_path / name)
        deployed = RUNTIME.load(folder, 1)
        text = deployed.transcribe([wave])[0]
        assert score([reference], [text]).wer == 0, text
        with torch.no_grad():
            lab = model.greedy(model.encode(features), 60)[0]
        assert [t for t, _ in whispercpp_tokens(folder, model, features)] == lab  # the very tokens
        sizes[name] = deployed.size_bytes()
    assert 70e6 < sizes["f16"] < 80e6 and 40e6 < sizes["q8_0"] < 46e6  # 37.8 M weights, 2 and 34/32 bytes


# ----------------------------------------------------------------------------- what whisper.cpp cannot hold


@pytest.mark.parametrize(
    "steps, says",
    [
        ([{"quantize": {"bits": 8, "granularity": "group", "group_size": 64, "groups": MATRICES}}], "per 64"),
        ([{"quantize": {"bits": 4, "groups": MATRICES}}], "one scale per output row"),
        (ggml_recipe(8, symmetric=False)["steps"], "8-bit asymmetric codes"),
        (ggml_recipe(6)["steps"], "6-bit symmetric codes"),
        (ggml_recipe(4, scale_dtype="float32")["steps"], "float32 scales"),
        (ggml_recipe(4, outlier_columns=2)["steps"], "2 fp16 outlier columns"),
        (ggml_recipe(8, groups=["decoder.ffn"])["steps"], "one weight type for every matrix"),
        (ggml_recipe(8, groups=MATRICES + ["positions"])["steps"], "quantized position table"),
        (ggml_recipe(8, groups=MATRICES + ["conv"])["steps"], "convolutions in float16"),
        ([{"low_rank": {"rank": 8}}] + ggml_recipe(8)["steps"], "LowRankLinear"),
        ([{"prune": {"sparsity": 0.5, "structure": "heads"}}] + ggml_recipe(8)["steps"], "attention heads"),
    ],
)
def test_recipes_whisper_cpp_cannot_hold_are_refused_with_the_nearest_type(tiny, tmp_path, steps, says):
    model = apply_recipe(tiny, Recipe.from_json({"steps": steps}))[0]
    with pytest.raises(ValueError, match=says) as error:
        export_ggml(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    if "quantize" in steps[-1] and steps[-1]["quantize"].get("group_size") == 64:
        assert "use quantize bits 8, granularity group, group_size 32, scale_dtype float16" in str(
            error.value
        )
        assert "→ q8_0" in str(error.value)
    if steps[-1]["quantize"].get("bits") == 4 and "granularity" not in steps[-1]["quantize"]:
        assert "→ q4_0" in str(error.value)


def test_pruned_neurons_and_a_shallower_decoder_export_as_they_are(tiny, tmp_path):
    steps = [{"prune": {"sparsity": 0.3, "structure": "neurons"}}] + ggml_recipe(4, symmetric=False)["steps"]
    model = apply_recipe(tiny, Recipe.from_json({"steps": steps}))[0]
    student = tiny.with_module(tiny.family.smaller(tiny.module, [0], [0, 1]))  # one decoder layer
    student = apply_recipe(student, Recipe.from_json(Q8_0))[0]
    layers = dict(model.module.named_modules())
    kept = layers["model.encoder.layers.1.fc1"].weight_shape[0]
    assert kept < 256 and inexpressible(model) == [] and inexpressible(student) == []
    folder = export_ggml(model, tmp_path / "pruned")
    hparams, _, _, found = read_ggml(folder / MODEL_FILE)
    assert hparams[-1] == 2003  # q4_1
    up, down = (
        decoded(found["encoder.blocks.1.mlp.0.weight"]),
        decoded(found["encoder.blocks.1.mlp.2.weight"]),
    )
    assert up.shape == (256, 64) and down.shape == (64, 256)
    assert not up[kept:].any() and not decoded(found["encoder.blocks.1.mlp.0.bias"])[kept:].any()
    np.testing.assert_allclose(up[:kept], layers["model.encoder.layers.1.fc1"].dequantize(), atol=1e-3)
    notes = json.loads((folder / "speech_lab_export.json").read_text())["notes"]
    assert any("padded with zero neurons" in n for n in notes) and any("q4_1 offsets" in n for n in notes)
    features = tiny.features([np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)])
    with torch.no_grad():
        lab = model.greedy(model.encode(features), 28)[0]
    assert [t for t, _ in whispercpp_tokens(folder, model, features)][: len(lab)] == lab

    folder = export_ggml(student, tmp_path / "student")
    assert read_ggml(folder / MODEL_FILE)[0][8] == 1 and RUNTIME.load(folder, 1).transcribe([np.zeros(8000)])


def test_requantize_writes_a_float_model_as_whisper_cpp_s_quantize_tool_would(tiny, tmp_path):
    folder = export_ggml(tiny, tmp_path / "q5_0", requantize="q5_0")
    _, _, _, found = read_ggml(folder / MODEL_FILE)
    fc1 = dict(tiny.module.named_modules())["model.decoder.layers.0.fc1"].weight.detach().numpy()
    assert found["decoder.blocks.0.mlp.0.weight"][2] == whispercpp_quantize(fc1, "q5_0").tobytes()
    facts = json.loads((folder / "speech_lab_export.json").read_text())
    assert facts["type"] == "q5_0" and facts["weights"] == "whisper.cpp's reference quantizer"
    assert isinstance(RUNTIME.load(folder, 1).transcribe([np.zeros(16000, np.float32)])[0], str)
    with pytest.raises(ValueError, match="needs one of"):
        export_ggml(apply_recipe(tiny, Recipe.from_json(Q8_0))[0], tmp_path / "no", requantize="q5_0")
    assert not (tmp_path / "no").exists()
