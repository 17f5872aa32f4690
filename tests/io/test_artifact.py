"""Saving and loading compressed models: bitwise-identical round trips, compact sizes, clear errors."""

import copy
import dataclasses
import json

import pytest
import torch
from conftest import tiny_whisper_config
from safetensors.torch import load_file
from torch import nn

from core.compress.lowrank import LowRankLinear
from core.compress.quant import Int8DynamicLinear, QuantConfig, quantize
from core.compress.registry import register, registered
from core.compress.technique import Technique
from core.io.artifact import WEIGHTS_FILE, load_weights, save_weights

pytestmark = pytest.mark.usefixtures("one_thread", "pair_technique_registered")


class PairLinear(nn.Module):
    """Stand-in low-rank layer (first: in -> rank, no bias; second: rank -> out)
    following the layout contract."""

    layout_kind = "test_pair_linear"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x):
        return self.second(self.first(x))

    def layout(self) -> dict:
        return {
            "in": self.first.in_features,
            "out": self.second.out_features,
            "rank": self.first.out_features,
            "bias": self.second.bias is not None,
        }

    @classmethod
    def from_layout(cls, layout: dict) -> "PairLinear":
        return cls(layout["in"], layout["out"], layout["rank"], layout["bias"])


@dataclasses.dataclass(frozen=True)
class PairConfig:
    rank: int = 2


def pair_record(modules=(PairLinear,)) -> Technique:
    """A technique record that writes PairLinear layers: what makes the artifact able to load them."""
    return Technique(
        name="test_pair",
        config=PairConfig,
        apply=lambda module, config: (module, []),
        describe=lambda config: f"pair rank {config.rank}",
        knobs=("rank",),
        modules=modules,
    )


@pytest.fixture(scope="module")
def pair_technique_registered():
    with registered(pair_record()):
        yield


def low_rank_classes():
    """The stand-in and core.compress.lowrank.LowRankLinear."""
    return [PairLinear, LowRankLinear]


def make_low_rank(cls, linear: nn.Linear, rank: int) -> nn.Module:
    """A low-rank pair of class `cls` holding the rank-r SVD of `linear`."""
    bias = linear.bias is not None
    for build in (
        lambda: cls(linear.in_features, linear.out_features, rank, bias=bias),
        lambda: cls.from_layout(
            {"in": linear.in_features, "out": linear.out_features, "rank": rank, "bias": bias}
        ),
    ):
        try:
            module = build()
            break
        except (TypeError, KeyError):
            continue
    else:
        pytest.fail(f"cannot construct {cls.__name__}: adapt make_low_rank to its constructor")
    u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
    with torch.no_grad():
        module.first.weight.copy_(s[:rank, None] * vh[:rank])
        module.second.weight.copy_(u[:, :rank])
        if bias:
            module.second.bias.copy_(linear.bias)
    return module


def short_whisper(seed: int = 0, **sizes) -> nn.Module:
    """tiny_whisper's architecture with a 100-frame window, so a forward pass takes milliseconds."""
    from transformers import WhisperForConditionalGeneration

    config = tiny_whisper_config(**sizes)
    config.max_source_positions = 50
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(config).eval()


def logits(model):
    frames = model.config.max_source_positions * 2
    features = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[model.config.vocab_size - 3, 3, 17, 42, 99]])
    with torch.inference_mode():
        return model(input_features=features, decoder_input_ids=ids).logits


def fresh_skeleton(model: nn.Module, seed: int = 123) -> nn.Module:
    torch.manual_seed(seed)
    return type(model)(model.config).eval()


def round_trip(model: nn.Module, folder) -> tuple[nn.Module, dict, dict]:
    sizes = save_weights(model, folder)
    layout = json.loads((folder / "layout.json").read_text())
    return load_weights(fresh_skeleton(model), folder), sizes, layout


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return a.dtype == b.dtype and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    return torch.equal(a, b)


# ----------------------------------------------------------------------------- on tiny_whisper


def test_plain_model_round_trip(tiny_whisper, tmp_path):
    loaded, sizes, layout = round_trip(tiny_whisper, tmp_path)
    assert torch.equal(logits(loaded), logits(tiny_whisper))
    assert layout["modules"] == {}
    assert all(k.endswith("fc1.bias") for k in layout["sparse"])  # random init leaves biases at exactly 0
    assert layout["ties"] == {"proj_out.weight": "model.decoder.embed_tokens.weight"}
    assert "proj_out.weight" not in load_file(str(tmp_path / WEIGHTS_FILE))  # stored once
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight
    assert sizes["total"] == sum(sizes["files"].values())
    assert sum(sizes["groups"].values()) + sizes["overhead"] == sizes["total"]
    assert sizes["groups"]["embedding"] == 120 * 32 * 4


def test_four_bit_model_round_trip(tiny_whisper, tmp_path):
    quantized, _ = quantize(tiny_whisper, QuantConfig(bits=4, granularity="group", group_size=24))
    loaded, sizes, layout = round_trip(quantized, tmp_path)
    assert torch.equal(logits(loaded), logits(quantized))
    assert layout["modules"]["model.decoder.embed_tokens"]["kind"] == "quant_embedding"
    assert layout["modules"]["model.encoder.layers.0.fc1"] == {
        "kind": "quant_linear",
        "in": 32,
        "out": 128,
        "bias": True,
        "bits": 4,
        "symmetric": True,
        "granularity": "group",
        "group_size": 24,
    }
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight
    plain = save_weights(tiny_whisper, tmp_path / "plain")
    assert sizes["groups"]["encoder.ffn"] < 0.3 * plain["groups"]["encoder.ffn"]
    assert set(sizes["kinds"]) >= {"quant_linear", "quant_embedding"} and "linear" not in sizes["kinds"]


def test_int8_dynamic_round_trip(tiny_whisper, tmp_path):
    quantized, _ = quantize(tiny_whisper, QuantConfig(backend="int8_dynamic"))
    loaded, _, layout = round_trip(quantized, tmp_path)
    assert torch.equal(logits(loaded), logits(quantized))
    assert isinstance(loaded.proj_out, Int8DynamicLinear)
    assert loaded.proj_out.codes is loaded.model.decoder.embed_tokens.codes
    assert layout["ties"] == {
        "proj_out.codes": "model.decoder.embed_tokens.codes",
        "proj_out.scale": "model.decoder.embed_tokens.scale",
    }


def test_zeroed_weights_are_stored_sparse(tiny_whisper, tmp_path):
    pruned = copy.deepcopy(tiny_whisper)
    with torch.no_grad():
        for name, module in pruned.named_modules():
            if isinstance(module, nn.Linear) and "layers" in name:
                weight = module.weight
                weight[weight.abs() < weight.abs().flatten().quantile(0.75)] = 0.0
        pruned.model.encoder.layers[0].fc1.weight[0, :4] = -0.0  # kept bit-exact (stays in the values)
    dense = save_weights(tiny_whisper, tmp_path / "dense")
    loaded, sizes, layout = round_trip(pruned, tmp_path / "sparse")
    assert "model.encoder.layers.0.fc1.weight" in layout["sparse"] and sizes["sparse_tensors"] >= 32
    assert "model.encoder.conv1.weight" not in layout["sparse"]  # dense where sparse would not pay
    assert sizes["total"] < 0.8 * dense["total"]
    assert sizes["groups"]["encoder.ffn"] < 0.5 * dense["groups"]["encoder.ffn"]
    assert all(bits_equal(loaded.state_dict()[k], v) for k, v in pruned.state_dict().items())
    assert torch.equal(logits(loaded), logits(pruned))


@pytest.mark.parametrize("cls", low_rank_classes())
def test_low_rank_modules_round_trip(tiny_whisper, tmp_path, cls):
    model = copy.deepcopy(tiny_whisper)
    for layer in model.model.encoder.layers:
        layer.fc1 = make_low_rank(cls, layer.fc1, rank=8)
    attention = model.model.decoder.layers[1].self_attn
    attention.q_proj = make_low_rank(cls, attention.q_proj, rank=4)
    loaded, _, layout = round_trip(model, tmp_path / "plain")
    assert type(loaded.model.encoder.layers[1].fc1) is cls
    assert layout["modules"]["model.encoder.layers.0.fc1"]["kind"] == cls.layout_kind
    assert torch.equal(logits(loaded), logits(model))
    # quantizing after factorizing: the inner Linears become QuantLinears inside the pair
    quantized, reports = quantize(model, QuantConfig(bits=4))
    assert "model.encoder.layers.0.fc1.first" in [r.name for r in reports]
    loaded, _, layout = round_trip(quantized, tmp_path / "quantized")
    assert layout["modules"]["model.encoder.layers.0.fc1.second"]["kind"] == "quant_linear"
    assert torch.equal(logits(loaded), logits(quantized))


# ----------------------------------------------------------------------------- every quantization variant


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(bits=8),
        QuantConfig(bits=4),
        QuantConfig(bits=4, granularity="group", group_size=24),
        QuantConfig(bits=3, granularity="tensor"),
        QuantConfig(bits=2, symmetric=False),
        QuantConfig(bits=3, symmetric=False, granularity="group", group_size=20, method="mse"),
        QuantConfig(bits=5, groups=("conv", "embedding", "decoder.ffn")),
        QuantConfig(bits=6, groups=("positions", "encoder.ffn")),
        QuantConfig(bits=3, granularity="group", group_size=16, symmetric=False, scale_dtype="float16"),
        QuantConfig(bits=16),
        QuantConfig(backend="int8_dynamic", granularity="tensor", groups=("encoder.ffn", "embedding")),
        QuantConfig(bits=4, symmetric=False, granularity="group", group_size=16, entropy_code=True),
        QuantConfig(backend="int8_dynamic", entropy_code=True),
        QuantConfig(
            bits=4,
            symmetric=False,
            outlier_columns=2,
            groups=("embedding", "encoder.ffn", "conv"),
            entropy_code=True,
        ),
    ],
    ids=lambda c: f"{c.bits}b-{c.granularity}-{'sym' if c.symmetric else 'asym'}-{c.method}-{c.backend}",
)
def test_quantized_round_trip_is_bitwise(tiny_whisper, config, tmp_path):
    quantized, _ = quantize(tiny_whisper, config)
    loaded, _, _ = round_trip(quantized, tmp_path)
    assert torch.equal(logits(loaded), logits(quantized))
    state = loaded.state_dict()
    assert all(bits_equal(state[k], v) for k, v in quantized.state_dict().items())


def test_meta_device_skeleton_like_models_py(tiny_whisper, tmp_path):
    """core.models builds the skeleton on the meta device, then to_empty (ties broken, memory garbage)."""
    from transformers import WhisperForConditionalGeneration

    quantized, _ = quantize(tiny_whisper, QuantConfig(bits=4, symmetric=False))
    save_weights(quantized, tmp_path)
    with torch.device("meta"):
        skeleton = WhisperForConditionalGeneration(quantized.config)
    loaded = load_weights(skeleton.to_empty(device="cpu").eval(), tmp_path)
    assert torch.equal(logits(loaded), logits(quantized))
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight


def test_structurally_pruned_shapes_round_trip(tmp_path):
    model = short_whisper()
    layer = model.model.encoder.layers[0]
    with torch.no_grad():
        fc1, fc2 = layer.fc1, layer.fc2
        layer.fc1 = nn.Linear(32, 100)
        layer.fc1.weight.copy_(fc1.weight[:100]), layer.fc1.bias.copy_(fc1.bias[:100])
        layer.fc2 = nn.Linear(100, 32)
        layer.fc2.weight.copy_(fc2.weight[:, :100]), layer.fc2.bias.copy_(fc2.bias)
        attn = layer.self_attn  # keep 2 of 4 heads (head_dim 8)
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(attn, name)
            new = nn.Linear(32, 16, bias=old.bias is not None)
            new.weight.copy_(old.weight[:16])
            if old.bias is not None:
                new.bias.copy_(old.bias[:16])
            setattr(attn, name, new)
        out = nn.Linear(16, 32)
        out.weight.copy_(attn.out_proj.weight[:, :16]), out.bias.copy_(attn.out_proj.bias)
        attn.out_proj = out
    attn.num_heads = 2
    attn.layout_attrs = {"num_heads": 2}
    loaded, _, layout = round_trip(model, tmp_path)
    assert layout["modules"]["model.encoder.layers.0.fc1"] == {
        "kind": "linear",
        "in": 32,
        "out": 100,
        "bias": True,
    }
    assert layout["modules"]["model.encoder.layers.0.self_attn.k_proj"] == {
        "kind": "linear",
        "in": 32,
        "out": 16,
        "bias": False,
    }
    assert len(layout["modules"]) == 6 and layout["attrs"] == {
        "model.encoder.layers.0.self_attn": {"num_heads": 2}
    }
    assert loaded.model.encoder.layers[0].self_attn.num_heads == 2
    assert torch.equal(logits(loaded), logits(model))


def test_four_bit_artifact_is_under_a_fifth_of_fp32(tmp_path):
    model = short_whisper(vocab_size=512, d_model=64)
    model.config.max_source_positions = 16
    model.model.encoder.embed_positions = nn.Embedding(16, 64)  # quantized layers dominate the parameters
    fp32 = save_weights(model, tmp_path / "fp32")
    quantized, _ = quantize(
        model,
        QuantConfig(
            bits=4,
            groups=(
                "encoder.attention",
                "encoder.ffn",
                "decoder.attention",
                "decoder.ffn",
                "embedding",
                "conv",
            ),
        ),
    )
    four = save_weights(quantized, tmp_path / "int4")
    assert four["total"] < 0.2 * fp32["total"], (four, fp32)


def peaked_whisper() -> nn.Module:
    """short_whisper with heavy-tailed weights (outliers set each row's range): most codes sit near zero."""
    model = short_whisper(vocab_size=4096)  # a large token table, as in real models
    laplace = torch.distributions.Laplace(0.0, 0.3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(laplace.sample(parameter.shape) ** 3)
    return model


def test_entropy_coded_codes_are_smaller_and_load_bitwise(tmp_path):
    model = peaked_whisper()
    config = QuantConfig(bits=4, symmetric=False)
    packed, _ = quantize(model, config)
    coded, _ = quantize(model, dataclasses.replace(config, entropy_code=True))
    packed_sizes = save_weights(packed, tmp_path / "packed")
    loaded, coded_sizes, layout = round_trip(coded, tmp_path / "coded")
    assert coded_sizes["total"] < packed_sizes["total"]
    assert coded_sizes["coded_tensors"] == len(layout["coded"]) > 0
    stored, raw = load_file(tmp_path / "coded" / WEIGHTS_FILE), packed.state_dict()
    assert all(f"{name}@deflate" in stored and name not in stored for name in layout["coded"])
    table = "model.decoder.embed_tokens.codes"  # the largest: a Huffman table's cost hardly shows
    assert stored[f"{table}@deflate"].numel() < 0.9 * raw[table].numel()
    state = loaded.state_dict()
    assert all(bits_equal(state[k], v) for k, v in coded.state_dict().items())
    assert all(bits_equal(a, b) for a, b in zip(packed.state_dict().values(), coded.state_dict().values()))
    assert "entropy-coded" in repr(coded.model.encoder.layers[0].fc1)
    assert "coded" not in json.loads(
        (tmp_path / "packed" / "layout.json").read_text()
    )  # old files stay as they were


def test_save_leaves_the_model_untouched(tmp_path):
    quantized, _ = quantize(short_whisper(), QuantConfig(backend="int8_dynamic"))
    before = logits(quantized)
    save_weights(quantized, tmp_path)
    assert torch.equal(logits(quantized), before)
    assert quantized.proj_out.codes is quantized.model.decoder.embed_tokens.codes


# ----------------------------------------------------------------------------- broken folders


@pytest.fixture
def saved(tmp_path):
    quantized, _ = quantize(short_whisper(), QuantConfig(bits=4))
    save_weights(quantized, tmp_path)
    return tmp_path


def edit_layout(folder, change):
    layout = json.loads((folder / "layout.json").read_text())
    change(layout)
    (folder / "layout.json").write_text(json.dumps(layout))


def test_missing_files(saved):
    (saved / "layout.json").unlink()
    with pytest.raises(ValueError, match="needs speech_lab.safetensors and layout.json"):
        load_weights(short_whisper(), saved)
    with pytest.raises(ValueError, match="is not a saved model"):
        load_weights(short_whisper(), saved / "nowhere")


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda f: (f / "layout.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "layout.json").write_text("[]"), "is not a speech-lab-layout file"),
        (lambda f: edit_layout(f, lambda d: d.update(version=99)), "version 99"),
        (
            lambda f: edit_layout(
                f, lambda d: d["modules"]["model.encoder.layers.0.fc1"].update(kind="sparkle")
            ),
            "unknown kind 'sparkle'",
        ),
        (
            lambda f: edit_layout(f, lambda d: d["modules"]["model.encoder.layers.0.fc1"].pop("bits")),
            "lacks 'bits'",
        ),
        (
            lambda f: edit_layout(f, lambda d: d["modules"]["model.encoder.layers.0.fc1"].update(bits=11)),
            "bad layout",
        ),
        (
            lambda f: edit_layout(f, lambda d: d["modules"]["model.encoder.layers.0.fc1"].update(out=99)),
            "wrong shape/dtype.*fc1",
        ),
        (
            lambda f: edit_layout(
                f,
                lambda d: d["modules"].update(
                    {"model.nothing.here": {"kind": "linear", "in": 1, "out": 1, "bias": False}}
                ),
            ),
            "does not exist",
        ),
        (
            lambda f: edit_layout(f, lambda d: d["ties"].update({"proj_out.weight": "model.no.weight"})),
            "tie source",
        ),
        (lambda f: edit_layout(f, lambda d: d["ties"].update({"proj_out.weight": 3})), "'ties' must map"),
        (
            lambda f: edit_layout(f, lambda d: d["attrs"].update({"model.encoder": {"forward": 1}})),
            "only set existing plain attributes",
        ),
        (
            lambda f: edit_layout(
                f, lambda d: d["sparse"].update({"model.encoder.conv1.weight": [32, 80, 3]})
            ),
            "missing its mask",
        ),
        (
            lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:5000]),
            "not a readable safetensors file",
        ),
        (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x00" * 64), "not a readable safetensors file"),
    ],
)
def test_broken_folders_raise_value_error(saved, break_it, message):
    break_it(saved)
    with pytest.raises(ValueError, match=message):
        load_weights(short_whisper(), saved)


def test_weights_of_another_model_are_refused(saved, tmp_path):
    save_weights(short_whisper(), tmp_path / "plain")
    (saved / WEIGHTS_FILE).write_bytes((tmp_path / "plain" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="does not match layout.json.*missing"):
        load_weights(short_whisper(), saved)


def test_corrupt_sparse_entry(tmp_path):
    model = short_whisper()
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight[:, 4:] = 0
    save_weights(model, tmp_path)
    edit_layout(tmp_path, lambda d: d["sparse"].update({"model.encoder.layers.0.fc1.weight": [128, 16]}))
    with pytest.raises(ValueError, match="sparse tensor model.encoder.layers.0.fc1.weight"):
        load_weights(short_whisper(), tmp_path)


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda data: data[: len(data) // 2], "decodes to .* bytes, expected"),
        (lambda data: b"\x00" * 8 + data[8:], "not valid deflate data"),
    ],
)
def test_corrupt_entropy_coded_entry(tmp_path, break_it, message):
    from safetensors.torch import save_file

    quantized, _ = quantize(peaked_whisper(), QuantConfig(bits=4, entropy_code=True))
    save_weights(quantized, tmp_path)
    stored = load_file(tmp_path / WEIGHTS_FILE)
    name = next(k for k in stored if k.endswith("@deflate"))
    broken = break_it(stored[name].numpy().tobytes())
    stored[name] = torch.frombuffer(bytearray(broken), dtype=torch.uint8)
    save_file(stored, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=f"{name} does not match its checksum"):
        load_weights(short_whisper(), tmp_path)
    edit_layout(
        tmp_path, lambda d: d.pop("checksums")
    )  # as written before checksums: the decoder's own check
    with pytest.raises(ValueError, match=f"coded tensor {name.removesuffix('@deflate')} .*{message}"):
        load_weights(short_whisper(), tmp_path)


def test_outlier_index_out_of_range_is_refused(tmp_path):
    from safetensors.torch import save_file

    quantized, _ = quantize(short_whisper(), QuantConfig(bits=4, outlier_columns=1, groups=("encoder.ffn",)))
    save_weights(quantized, tmp_path)
    stored = load_file(tmp_path / WEIGHTS_FILE)
    stored["model.encoder.layers.0.fc1.outlier_index"] = torch.tensor([999])
    save_file(stored, str(tmp_path / WEIGHTS_FILE))
    edit_layout(tmp_path, lambda d: d.pop("checksums"))  # as written before checksums: the layer's own check
    with pytest.raises(ValueError, match="outlier_index holds columns outside"):
        load_weights(short_whisper(), tmp_path)


def test_unregistered_replacement_cannot_be_saved(tmp_path):
    class Mystery(nn.Module):
        def forward(self, x):
            return x

    model = short_whisper()
    model.model.encoder.layers[0].fc2 = Mystery()
    with pytest.raises(ValueError, match="Mystery.*has no layout"):
        save_weights(model, tmp_path)


def test_register_layout_checks_the_contract():
    class NoLayout(nn.Module):
        layout_kind = "test_no_layout"

    with pytest.raises(ValueError, match="needs a str layout_kind"):
        pair_record((NoLayout,))

    class Clash(PairLinear):
        layout_kind = "quant_linear"

    with pytest.raises(ValueError, match="already taken"):
        register(dataclasses.replace(pair_record(), name="test_clash", modules=(Clash,)))
    with pytest.raises(ValueError, match="already taken"):
        register(
            dataclasses.replace(
                pair_record(),
                name="test_clash",
                modules=(type("Linearish", (PairLinear,), {"layout_kind": "linear"}),),
            )
        )


def test_a_flipped_byte_in_the_weights_is_refused_by_tensor_name(tmp_path):
    """One changed byte of a stored tensor (here a bias) loads as a broken model without a checksum."""
    import json

    from conftest import random_tiny_en

    from core.io.folders import load_model, save_model

    save_model(random_tiny_en("tiny", layers=1), tmp_path / "m")
    layout = json.loads((tmp_path / "m" / "layout.json").read_text())
    name = "model.decoder.layer_norm.bias"
    assert name in layout["checksums"]
    weights = tmp_path / "m" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    start = 8 + header + json.loads(data[8 : 8 + header])[name]["data_offsets"][0]
    data[start + 1] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"tensor {name} does not match its checksum"):
        load_model(tmp_path / "m")
