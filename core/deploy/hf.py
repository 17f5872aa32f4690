"""Export a (compressed) SpeechModel as a standard Hugging Face transformers checkpoint, and run it there.

The lab's own folders (core.io.folders) hold packed weights that transformers cannot read, and refuse
`from_pretrained` on purpose. This export writes what any transformers user loads with
`from_pretrained` or `pipeline("automatic-speech-recognition", model=OUT)`: the family's stock module,
built from the model's config, holding the compressed model's weights as plain float32 tensors:
  * quantized layers (any bits, scales, zero points, outlier columns, int8 kernels, quantized position
    tables): their dequantized weight, exactly the float weight the lab computes with;
  * pruned weights: zeros (dense: this format has no sparse storage);
  * low-rank pairs: multiplied back into one matrix (second @ first, in float64);
  * structurally removed heads and neurons: zero rows of the query/key/value and up projections and
    zero columns of the output and down projections, so each layer has the config's widths again; a
    removed unit's output weights are zero, so it adds nothing: the outputs are the lab's;
  * a distilled student with fewer layers: its own config's layer counts.
So the model computes what the lab's does (up to the float rounding of multiplied-back low-rank pairs and
of wav2vec2's weight-normed convolution, stored as g and v; and the int8 kernels round activations, which
transformers does not), at the size of an uncompressed float model: the export is for compatibility, not
for deploying small (ct2, onnx, ggml). Every export is loaded back with `from_pretrained` and checked:
no missing, unexpected or changed tensor.

With the weights: config.json, generation_config.json (Whisper: the lab's prompt, suppressed tokens
and length, so a plain `model.generate(features)` decodes greedily as the lab does, except that the lab
also stops a decoding loop early), the processor's files, and
speech_lab_export.json + README.txt as every export has. Refused (nothing written): a model in
short-context mode, because transformers' Whisper encoder takes exactly the 30 s window (3000 frames).

In the lab (`evaluate --model OUT`) the folder runs in transformers: Whisper through
`AutoModelForSpeechSeq2Seq.from_pretrained` + `generate` (greedy, the lab's token cap per clip), a CTC
model through the family's own `from_pretrained` and its argmax decoding.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from core.audio import SAMPLE_RATE
from core.compress.lowrank import LowRankLinear
from core.compress.quant import QuantWeight
from core.compress.registry import TECHNIQUES
from core.deploy.runtime import (
    README_FILE,
    Deployed,
    Runtime,
    export_facts,
    refuse,
    running,
    write_export_facts,
)
from core.io.folders import HF_MARK, load_hf
from core.models import META_FILE, SpeechModel, attention_blocks, ffn_blocks, whisper
from core.models.whisper import WhisperDecoding, token_cap

TITLE = "Hugging Face transformers 5.24"
FULL_FRAMES = 3000  # the log-mel frames of a 30 s window: all that transformers' Whisper encoder takes
NO_TIMESTAMPS = "<|notimestamps|>"
LANGUAGE_TOKEN = re.compile(r"<\|[a-z]{2,3}\|>")  # "<|en|>", "<|haw|>": Whisper's language tokens
TASKS = ("transcribe", "translate")
SHORT_CONTEXT_HINT = (
    "transformers' Whisper encoder takes exactly the 30 s window (3000 frames), so a model in short-context "
    "mode cannot run as it does in the lab; export it without the short_context step, or add "
    '{"short_context": {"floor_seconds": 30}} to the recipe to run the same weights on full windows'
)


# ----------------------------------------------------------------------------- what a stock module can hold


def _stock(model: SpeechModel, device: str = "meta") -> nn.Module:
    """The family's stock module built from (a clean copy of) the model's config: the layout transformers
    builds on `from_pretrained`; on the meta device unless `device` is given (then uninitialised)."""
    config = copy.deepcopy(model.module.config)
    for lab_only in ("short_context", HF_MARK):  # the lab's own keys: transformers has no use for them
        if hasattr(config, lab_only):
            delattr(config, lab_only)
    with torch.device("meta"):
        module = type(model.module)(config)
    if device == "meta":
        return module
    module = module.to_empty(device=device)
    module.tie_weights()  # as from_pretrained does: a tied weight is one tensor, saved once
    return module


def _paddable(model: SpeechModel) -> set[str]:
    """Layers that structured pruning narrows, whose missing units come back exactly as zeros."""
    names = set()
    for block in attention_blocks(model.module):
        names |= {f"{block.name}.{p}" for p in (block.query, block.key, block.value, block.out)}
    for block in ffn_blocks(model.module):
        names |= {f"{block.name}.{block.up}", f"{block.name}.{block.down}"}
    return names


def _weight_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The dense weight's shape of a lab layer, without computing it (None: no dense form known)."""
    if isinstance(module, QuantWeight):
        return tuple(module.weight_shape)
    if isinstance(module, LowRankLinear):
        return (module.out_features, module.in_features)
    known = {cls for t in TECHNIQUES.values() for cls in t.modules}
    weight = getattr(module, "weight", None)
    if type(module) in known or not isinstance(weight, torch.Tensor):
        return None
    return tuple(weight.shape)


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """The float weight a lab layer computes with: a low-rank pair multiplied back; a quantized layer's
    `weight`, which is its dequantized codes (the cached copy it computes with, or computed on demand)."""
    if isinstance(module, LowRankLinear):
        return (_dense_weight(module.second).double() @ _dense_weight(module.first).double()).float()
    return module.weight.detach().float()


def _bias(module: nn.Module) -> torch.Tensor | None:
    if isinstance(module, LowRankLinear):
        module = module.second
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, torch.Tensor) else None


def _entries(model: SpeechModel, stock: nn.Module) -> tuple[dict, list[str]]:
    """(stock tensor name -> (lab module, attribute)) for every tensor the stock module saves, and one line
    per tensor the lab model cannot fill. Parametrized weights (wav2vec2's weight-normed positional
    convolution) are listed under the parametrized module's path and attribute."""
    entries, problems = {}, []
    technique_of = {cls: t.name for t in TECHNIQUES.values() for cls in t.modules}
    paddable = _paddable(model)
    targets = []
    for path, module in stock.named_modules():
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                targets.append((path, attr, tuple(getattr(module, attr).shape)))
    for name, tensor in stock.state_dict().items():
        if ".parametrizations." not in f".{name}":
            path, _, attr = name.rpartition(".")
            targets.append((path, attr, tuple(tensor.shape)))
    for path, attr, shape in targets:
        name = f"{path}.{attr}" if path else attr
        try:
            owner = model.module.get_submodule(path)
        except AttributeError:
            problems.append(f"{name}: the model has no module {path} where transformers expects one")
            continue
        if attr == "weight":
            have = _weight_shape(owner)
            if have is None:
                step = technique_of.get(type(owner))
                problems.append(
                    f"{path}: a {type(owner).__name__}"
                    + (f" (from the {step} step)" if step else "")
                    + " has no known plain float form; leave that step out of the recipe"
                )
                continue
        elif attr == "bias":
            bias = _bias(owner)
            have = None if bias is None else tuple(bias.shape)
        else:
            value = getattr(owner, attr, None)
            have = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        if have is None:
            problems.append(f"{name}: the model has no such tensor")
        elif have != shape and not (
            path in paddable and len(have) == len(shape) and all(h <= s for h, s in zip(have, shape))
        ):
            problems.append(
                f"{name}: shape {list(have)} where transformers' {type(stock).__name__} has {list(shape)}"
            )
        else:
            entries[name] = (owner, attr)
    return entries, problems


def _vocabulary(model: SpeechModel) -> dict[str, int]:
    return model.tokenizer.get_vocab(with_added_tokens=True)


def prompt_parts(model: SpeechModel) -> dict | None:
    """How transformers' Whisper `generate` builds the lab's prompt: {"start", "language", "task"} (the
    last two None for an English-only model); None if it cannot (it always ends in <|notimestamps|>)."""
    vocabulary = _vocabulary(model)
    names = {i: t for t, i in vocabulary.items()}
    prompt = [names.get(i) for i in model.decoding.prompt]
    if len(prompt) == 2 and prompt[1] == NO_TIMESTAMPS:
        return {"start": model.decoding.prompt[0], "language": None, "task": None}
    if (
        len(prompt) == 4
        and prompt[3] == NO_TIMESTAMPS
        and LANGUAGE_TOKEN.fullmatch(prompt[1] or "")
        and prompt[2] in {f"<|{t}|>" for t in TASKS}
    ):
        return {"start": model.decoding.prompt[0], "language": prompt[1], "task": prompt[2][2:-2]}
    return None


def inexpressible(model: SpeechModel) -> list[str]:
    """One line per part of `model` that a stock transformers checkpoint cannot hold or run as the lab
    does; empty when it exports."""
    if getattr(model.module, "config", None) is None:
        return [f"{model.name}: its module has no Hugging Face config, so transformers cannot build it"]
    problems = []
    policy = getattr(model.family, "short_context", lambda module: None)(model.module)
    if policy and whisper.context_frames(policy, 0.0) < FULL_FRAMES:
        problems.append(f"short-context mode {policy}: {SHORT_CONTEXT_HINT}")
    if model.kind == whisper.NAME and prompt_parts(model) is None:
        problems.append(
            f"decoding prompt {list(model.decoding.prompt)}: transformers' Whisper generate builds its "
            "prompt from <|startoftranscript|>, a language and a task token, and <|notimestamps|>"
        )
    return problems + _entries(model, _stock(model))[1]


def check_expressible(model: SpeechModel) -> None:
    """ValueError listing what of `model` a transformers checkpoint cannot hold (see `inexpressible`)."""
    refuse(inexpressible(model), "as a Hugging Face transformers checkpoint")


# ----------------------------------------------------------------------------- the checkpoint


def _fit(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`value` zero-padded at the end of each dimension to `shape` (a structurally pruned layer)."""
    if value.shape == shape:
        return value
    padded = torch.zeros(shape, dtype=value.dtype)
    padded[tuple(slice(0, n) for n in value.shape)] = value
    return padded


def _value(owner: nn.Module, attr: str) -> torch.Tensor:
    if attr == "weight":
        return _dense_weight(owner)
    if attr == "bias":
        return _bias(owner).float()
    value = getattr(owner, attr).detach()
    return value.float() if value.is_floating_point() else value


@torch.no_grad()
def dense_module(model: SpeechModel) -> nn.Module:
    """The family's stock module holding `model`'s weights as plain float tensors (see the module
    docstring); ValueError listing what it cannot hold."""
    check_expressible(model)
    stock = _stock(model, device="cpu")
    holders: dict[int, list[tuple[str, torch.Tensor]]] = {}  # stock tensor -> (name, value) written into it
    for name, (owner, attr) in _entries(model, stock)[0].items():
        path, _, _ = name.rpartition(".")
        target = stock.get_submodule(path)
        value = _value(owner, attr)
        if parametrize.is_parametrized(target, attr):
            setattr(target, attr, value)  # through the parametrization's right_inverse (weight norm: g, v)
            continue
        tensor = getattr(target, attr)
        value = _fit(value.to(tensor.dtype), tensor.shape)
        tensor.copy_(value)
        holders.setdefault(id(tensor), []).append((name, value))
    for tied in holders.values():  # a tied tensor (token embedding = output projection) holds one value
        if any(not torch.equal(value, tied[0][1]) for _, value in tied[1:]):
            raise ValueError(
                f"{' and '.join(n for n, _ in tied)}: transformers ties them, but this model holds different "
                "values in them"
            )
    buffers = dict(model.module.named_buffers())
    for path, module in stock.named_modules():  # non-persistent buffers: uninitialised, so the lab's
        for attr in module._non_persistent_buffers_set:
            source = buffers.get(f"{path}.{attr}" if path else attr)
            if source is not None and source.shape == getattr(module, attr).shape:
                getattr(module, attr).copy_(source)
    return stock.eval()


def generation_config(model: SpeechModel, config):
    """A Whisper generation config: greedy `generate` from the lab's prompt, with its suppressed tokens,
    end token and length (what the lab's greedy loop does, short of its loop stop)."""
    from transformers import GenerationConfig

    decoding, parts, vocabulary = model.decoding, prompt_parts(model), _vocabulary(model)
    fields = {
        "decoder_start_token_id": parts["start"],
        "bos_token_id": config.bos_token_id,
        "eos_token_id": decoding.eot,
        "pad_token_id": decoding.eot if config.pad_token_id is None else config.pad_token_id,
        "max_length": decoding.max_length,
        "suppress_tokens": sorted(decoding.suppress),
        "begin_suppress_tokens": list(decoding.suppress_at_begin),
        "num_beams": 1,
        "do_sample": False,
        # Whisper's own keys (kept because the config is not "from the model config"):
        "no_timestamps_token_id": vocabulary[NO_TIMESTAMPS],  # generate appends it to the prompt itself
        "return_timestamps": False,
        "is_multilingual": parts["language"] is not None,
    }
    if parts["language"] is not None:
        fields["lang_to_id"] = {t: i for t, i in vocabulary.items() if LANGUAGE_TOKEN.fullmatch(t)}
        fields["task_to_id"] = {t: vocabulary[f"<|{t}|>"] for t in TASKS if f"<|{t}|>" in vocabulary}
        fields["language"], fields["task"] = parts["language"], parts["task"]
    return GenerationConfig(**fields)


def _whisper_processor(model: SpeechModel, folder: Path):
    """A WhisperProcessor around the lab's tokenizer and the lab's log-mel settings."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    model.tokenizer.save(str(folder / "tokenizer.json"))
    end = {i: t for t, i in _vocabulary(model).items()}[model.decoding.eot]
    tokenizer = WhisperTokenizer.from_pretrained(folder, pad_token=end)
    extractor = WhisperFeatureExtractor(feature_size=model.module.config.num_mel_bins)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _check_loads(stock: nn.Module, folder: Path) -> None:
    """Load the folder back with transformers' own from_pretrained: every tensor found, none left over,
    each as written. ValueError otherwise."""
    loaded, info = type(stock).from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    written = stock.state_dict()
    changed = [k for k, v in loaded.state_dict().items() if k in written and not torch.equal(v, written[k])]
    if changed:
        bad["changed"] = changed
    if bad:
        raise ValueError(f"transformers does not load {folder} back as written: {bad}")


def readme_text(model: SpeechModel, folder: Path) -> str:
    """How to load the folder with transformers."""
    by_hand = ""
    if model.kind == whisper.NAME:
        by_hand = f"""
# or by hand, greedy from the lab's prompt (generation_config.json):
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
processor = AutoProcessor.from_pretrained("{folder}")
model = AutoModelForSpeechSeq2Seq.from_pretrained("{folder}")
features = processor(wave, sampling_rate=16000, return_tensors="pt").input_features
print(processor.batch_decode(model.generate(features), skip_special_tokens=True)[0])
"""
    return f"""{model.name}, exported by Speech Compression Lab as a Hugging Face transformers checkpoint
(written with {TITLE}). The weights are the lab's compressed model as plain float32 tensors: codes
dequantized, pruned weights as zeros, low-rank pairs multiplied back, removed heads and neurons as zero
rows and columns. It computes what the lab's model does, at the size of an uncompressed float model (to
deploy small, export to ct2, onnx or ggml instead).
wave: 16 kHz mono float32 numpy array.

from transformers import pipeline
asr = pipeline("automatic-speech-recognition", model="{folder}")
print(asr(wave)["text"])
{by_hand}"""


def export_hf(model: SpeechModel, folder: str | Path) -> Path:
    """Write `model` (compressed or not) as a Hugging Face transformers checkpoint folder; returns it.

    ValueError, before anything is written, if a stock transformers model cannot hold it."""
    folder = Path(folder)
    if (folder / META_FILE).exists():
        raise ValueError(f"{folder} holds a lab model ({META_FILE}): write the export into another folder")
    stock = dense_module(model)
    folder.mkdir(parents=True, exist_ok=True)
    if model.kind == whisper.NAME:
        _whisper_processor(model, folder).save_pretrained(folder)
        stock.generation_config = generation_config(model, stock.config)
    else:
        model.tokenizer.save_pretrained(folder)  # a CTC model's processor (feature extractor + vocabulary)
    stock.save_pretrained(folder)
    _check_loads(stock, folder)
    (folder / README_FILE).write_text(readme_text(model, folder))
    parameters = sum(t.numel() for t in {id(t): t for t in stock.state_dict().values()}.values())
    write_export_facts(folder, model, "hf", kind=model.kind, parameters=parameters)
    return folder


# ----------------------------------------------------------------------------- running it


def _pinned(transcribe, threads: int):
    """`transcribe` running on `threads` torch threads (transformers computes with torch)."""

    def run(waves: list[np.ndarray]) -> list[str]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return transcribe(waves)
        finally:
            torch.set_num_threads(before)

    return run


def load(folder: Path, threads: int) -> Deployed:
    """The folder running in transformers on `threads` torch threads: Whisper through
    `AutoModelForSpeechSeq2Seq.from_pretrained` and its `generate` (greedy, the lab's token cap per
    clip), decoded by the saved processor; a CTC model through its family's `from_pretrained`."""
    folder = Path(folder)
    facts = export_facts(folder)
    if facts.get("kind", whisper.NAME) == whisper.NAME:
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        processor = AutoProcessor.from_pretrained(folder)
        module = AutoModelForSpeechSeq2Seq.from_pretrained(folder).eval()
        decoding = WhisperDecoding.from_json(facts["decoding"])

        def window_text(window: np.ndarray) -> str:
            features = processor(window, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            cap = token_cap(decoding, len(window) / SAMPLE_RATE)  # the lab's cap on new tokens
            ids = module.generate(features, max_length=len(decoding.prompt) + cap)
            return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    else:
        lab = load_hf(str(folder), facts["name"])

        def window_text(window: np.ndarray) -> str:
            return lab.transcribe([window])[0]

    deployed = running(RUNTIME, folder, threads, window_text)
    return replace(deployed, transcribe=_pinned(deployed.transcribe, threads))


RUNTIME = Runtime(
    name="hf",
    title=TITLE,
    package="transformers",
    files=("model.safetensors", "config.json"),  # what from_pretrained reads for the model
    inexpressible=inexpressible,
    export=export_hf,
    load=load,
    extra_files=("generation_config.json",),  # Whisper's
)
