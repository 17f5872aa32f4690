"""Export a Whisper SpeechModel as a CTranslate2 folder that `ctranslate2.models.Whisper` loads as is.

The spec is filled by CTranslate2's own Hugging Face Whisper loader (ctranslate2 4.8.5), run over the
lab's module: it names and fuses the variables exactly as `ct2-transformers-converter` does. Our loader
only changes where each weight comes from:
  * an 8-bit symmetric quantized layer (QuantLinear, Int8DynamicLinear, QuantEmbedding, QuantConv1d,
    per-channel or per-tensor scales) is written as CTranslate2's own int8 weight: `weight` = our
    unsigned code - 128 and `weight_scale` = 1 / our scale, per output row (CTranslate2 reads
    w = weight / weight_scale), so the lab's rounding is what runs;
  * a 16-bit layer is written as float16, every float layer as float32.
Nothing is requantized: a recipe whose weights CTranslate2 cannot hold exactly (other bit widths,
group scales, zero points, fp16 outlier columns, low-rank factors, a quantized position table, pruned
heads) raises ValueError naming the layer and the nearest option CTranslate2 has.

CTranslate2 runs int8 weights with int8 activations (quantized at each call), so its logits differ
slightly from the lab's fp32 forward; load with compute_type="float32" to run the same weights in float.
It runs a model in one compute type, inferred from the saved weights unless compute_type is given, and
converts layers stored otherwise when it loads (float16 on a CPU without fast float16 runs as float32).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from ctranslate2.converters import utils as ct2_utils
from ctranslate2.converters.transformers import WhisperLoader
from ctranslate2.specs import common_spec
from torch import nn

from core.audio import SAMPLE_RATE
from core.compress.quant import QuantPositions, QuantWeight
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
from core.models.whisper import ATTENTION, WhisperDecoding, token_cap

INT8_HINT = (
    "CTranslate2 stores int8 per output row: use quantize bits 8, granularity channel (or tensor), "
    "symmetric, outlier_columns 0 (or bits 16 for float16)"
)
LANGUAGE_TOKEN = re.compile(r"<\|[a-z]{2,3}\|>")  # "<|en|>", "<|haw|>": Whisper's language tokens


# ----------------------------------------------------------------------------- what CTranslate2 can hold


def inexpressible(model: SpeechModel) -> list[str]:
    """One line per layer of `model` that CTranslate2 cannot hold exactly: what it is, and the nearest
    option CTranslate2 has. Empty when the model exports as is."""
    if model.kind != "whisper":
        return [f"{model.name} is a {model.kind} model: the CTranslate2 export writes Whisper models only"]
    problems = []
    technique_of = {cls: t.name for t in TECHNIQUES.values() for cls in t.modules}
    for name, module in model.module.named_modules():
        if isinstance(module, QuantPositions):
            problems.append(
                f"{name}: a quantized position table; CTranslate2 keeps position encodings in float: "
                "leave 'positions' out of quantize.groups"
            )
        elif isinstance(module, QuantWeight):
            problem = _quant_problem(module)
            if problem:
                problems.append(f"{name}: {problem}; {INT8_HINT}")
        elif type(module) in technique_of:
            problems.append(
                f"{name}: a {type(module).__name__} (from the {technique_of[type(module)]} step); "
                "CTranslate2 keeps one dense weight matrix per layer: leave that step out of the recipe "
                "(prune 'unstructured' or 'neurons' and quantize bits 8 export as they are)"
            )
    heads = {"encoder": model.module.config.encoder_attention_heads}
    heads["decoder"] = model.module.config.decoder_attention_heads
    for block in attention_blocks(model.module):
        side = block.group.split(".")[0]
        if block.heads != heads[side]:
            problems.append(
                f"{block.name}: {block.heads} attention heads where the model has {heads[side]}; "
                "CTranslate2 has one head count per encoder and decoder: prune with structure "
                "'neurons' or 'unstructured' instead of 'heads'"
            )
    return problems


def _quant_problem(module: QuantWeight) -> str | None:
    if module.bits == 16:
        return None
    if module.bits != 8:
        return f"{module.bits}-bit codes"
    if not module.symmetric:
        return "asymmetric codes (zero points)"
    if module.granularity == "group":
        return f"group scales (one per {module.group_size} columns)"
    if module.outlier_columns:
        return f"{module.outlier_columns} fp16 outlier columns beside the codes"
    return None


def check_expressible(model: SpeechModel) -> None:
    """ValueError listing what of `model` CTranslate2 cannot hold exactly (see `inexpressible`)."""
    refuse(inexpressible(model), "in CTranslate2 format")


# ----------------------------------------------------------------------------- weights, CTranslate2's way


def ct2_weight(module: QuantWeight) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight, weight_scale or None) of a quantized layer in CTranslate2's convention: int8 values and
    one float32 scale per output row with w = weight / weight_scale; float16 for a 16-bit layer."""
    if module.bits == 16:
        return module.weight_fp16.detach().numpy().reshape(module.weight_shape), None
    codes = (module.unpacked_codes().to(torch.int16) - 128).to(torch.int8).numpy()
    rows = module.weight_shape[0]
    scale = (1.0 / module.scale.detach().double().reshape(-1)).float().numpy()
    if scale.size == 1:  # a per-tensor scale is the same scale on every row
        scale = np.full(rows, scale[0], dtype=np.float32)
    return codes.reshape(module.weight_shape), np.ascontiguousarray(scale)


def _float(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().copy()


class LabWhisperLoader(WhisperLoader):
    """CTranslate2's Whisper loader, reading the lab's layers: int8 codes + scales where the lab quantized
    to 8 bits, float16 where it stored fp16, float32 elsewhere; the generation config from the lab's
    decoding facts. Every variable is a numpy array, so CTranslate2's fusing concatenates them as they are.
    """

    def __init__(self, module: nn.Module, decoding: WhisperDecoding):
        super().__init__()
        self.decoding = decoding
        # A Linear tied to a quantized table (fake backend) holds that table's dequantized weight buffer.
        self.owner_of_weight = {
            id(m.weight): m for m in module.modules() if isinstance(m, QuantWeight) and "weight" in m._buffers
        }

    def _set_weight(self, spec, module: nn.Module) -> None:
        owner = module if isinstance(module, QuantWeight) else self.owner_of_weight.get(id(module.weight))
        if owner is None:
            spec.weight = _float(module.weight)
            return
        spec.weight, scale = ct2_weight(owner)
        if scale is not None:
            spec.weight_scale = scale

    def set_linear(self, spec, module, quant_type=common_spec.Quantization.CT2):
        self._set_weight(spec, module)
        if getattr(module, "bias", None) is not None:
            spec.bias = _float(module.bias)

    def set_embeddings(self, spec, module):
        self._set_weight(spec, module)

    def set_conv1d(self, spec, module):
        self.set_linear(spec, module)

    def set_layer_norm(self, spec, module):
        spec.gamma, spec.beta = _float(module.weight), _float(module.bias)

    def set_position_encodings(self, spec, module):
        spec.encodings = _float(module.weight)[getattr(module, "offset", 0) :]

    def set_attention(self, spec, attention, self_attention=False):
        """As CTranslate2's: q, k, v fused (self-attention) or q alone and k, v fused (cross-attention);
        int8 scales are fused along with the rows they scale."""
        split = [common_spec.LinearSpec() for _ in range(3)]
        for layer_spec, name in zip(split, ATTENTION[:3]):
            self.set_linear(layer_spec, getattr(attention, name))
        parts = [split] if self_attention else [split[:1], split[1:]]
        for fused, layers in zip(spec.linear, parts):
            _fuse(fused, layers)
        self.set_linear(spec.linear[-1], getattr(attention, ATTENTION[3]))

    def set_config(self, config, model, tokenizer):
        decoding = self.decoding
        config.suppress_ids = [i for i in decoding.suppress if i < decoding.eot]  # non-speech symbols
        config.suppress_ids_begin = list(decoding.suppress_at_begin)
        vocabulary = tokenizer.get_vocab()
        config.lang_ids = sorted(i for token, i in vocabulary.items() if LANGUAGE_TOKEN.fullmatch(token))
        layers, heads = model.config.decoder_layers, model.config.decoder_attention_heads
        config.alignment_heads = [
            [layer, head] for layer in range(layers // 2, layers) for head in range(heads)
        ]


def _fuse(spec, layers: list) -> None:
    dtypes = {layer.weight.dtype for layer in layers}
    if len(dtypes) > 1:
        raise ValueError(
            f"attention projections stored as {sorted(str(d) for d in dtypes)}: CTranslate2 fuses them into "
            "one matrix of one type: quantize them together"
        )
    ct2_utils.fuse_linear(spec, layers)
    scales = [layer.weight_scale for layer in layers if not isinstance(layer.weight_scale, str)]
    if scales:
        spec.weight_scale = np.concatenate(scales)


# ----------------------------------------------------------------------------- the folder


def readme_text(model: SpeechModel, folder: Path) -> str:
    """How to load the folder: five lines (ctranslate2, and faster-whisper if installed)."""
    prompt = list(model.decoding.prompt)
    mels = model.module.config.num_mel_bins
    return f"""{model.name}, exported by Speech Compression Lab for CTranslate2 4.8.5 (WhisperSpec).
Its int8 layers hold the lab's own codes (w = int8 / weight_scale, one scale per output row).
mel: Whisper log-mel features of a 30 s window, numpy float32 of shape (1, {mels}, 3000).

import ctranslate2, tokenizers
model = ctranslate2.models.Whisper("{folder}")  # compute_type="float32": the int8 layers in float
result = model.generate(ctranslate2.StorageView.from_array(mel), [{prompt}], beam_size=1)
print(tokenizers.Tokenizer.from_file("{folder}/tokenizer.json").decode(result[0].sequences_ids[0]))
from faster_whisper import WhisperModel; print(list(WhisperModel("{folder}").transcribe("a.wav")[0]))
"""


def export_ct2(model: SpeechModel, folder: str | Path) -> Path:
    """Write `model` (a Whisper SpeechModel, compressed or not) as a CTranslate2 model folder; returns it.

    ValueError, before anything is written, if CTranslate2 cannot hold the model exactly."""
    from transformers import WhisperFeatureExtractor

    check_expressible(model)
    folder = Path(folder)
    with torch.no_grad():
        spec = LabWhisperLoader(model.module, model.decoding)(model.module, model.tokenizer)
    spec.validate()
    spec.optimize(quantization=None)  # aliases the tied projection; no conversion of any weight
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    model.tokenizer.save(str(folder / "tokenizer.json"))
    WhisperFeatureExtractor(feature_size=model.module.config.num_mel_bins).save_pretrained(folder)
    (folder / README_FILE).write_text(readme_text(model, folder))
    write_export_facts(folder, model, "ct2")
    return folder


# ----------------------------------------------------------------------------- running it


def load(folder: Path, threads: int) -> Deployed:
    """The folder running in CTranslate2 on `threads` threads: the lab's features, prompt, suppressed
    tokens and token cap, greedy (beam 1) through `ctranslate2.models.Whisper.generate`, the engine itself
    (not faster-whisper's pipeline around it)."""
    import ctranslate2
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    facts = export_facts(folder)
    decoding = WhisperDecoding.from_json(facts["decoding"])
    engine = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=threads, inter_threads=1)
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def window_text(window: np.ndarray) -> str:
        cap = token_cap(decoding, len(window) / SAMPLE_RATE)
        mel = extractor([window], sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        mel = mel[..., : context_frames(facts, window)]  # the engine takes a short input as it comes
        result = engine.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(mel, dtype=np.float32)),
            [list(decoding.prompt)],
            beam_size=1,
            # CTranslate2 4.8.5 stops after max_length // 2 new tokens behind Whisper's prompt (measured),
            # so ask for twice the cap (within the decoder's positions) and cut at the cap
            max_length=min(2 * (cap + len(decoding.prompt)), decoding.max_length),
            suppress_tokens=list(decoding.suppress),
        )
        ids = [i for i in result[0].sequences_ids[0][:cap] if i < decoding.eot]
        return tokenizer.decode(ids).strip()

    return running(RUNTIME, folder, threads, window_text)


RUNTIME = Runtime(
    name="ct2",
    title="CTranslate2 4.8.5",
    package="ctranslate2",
    files=("model.bin", "config.json", "vocabulary.json"),  # what ctranslate2.models.Whisper reads
    inexpressible=inexpressible,
    export=export_ct2,
    load=load,
)
