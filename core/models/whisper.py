"""The Whisper family (Hugging Face `WhisperForConditionalGeneration`): everything that knows its
module names.

Mel padding convention (kept identical for every model we compare): the waveform is padded with
silence to the full 30 s window *before* the log-mel, as OpenAI and Hugging Face do; Whisper sees a
3000-frame window. A model in short-context mode (`short_context` on its config, set by the
`short_context` technique, remembered in config.json) sees only the first frames of that window, as
many as the clip needs (rounded up, with a floor): the encoder's cost falls with the clip's length.
Decoding is greedy with a key/value cache and a loop stop.
The token embedding `model.decoder.embed_tokens.weight` IS the output projection `proj_out.weight`.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.audio import SAMPLE_RATE
from core.models.base import AttentionBlock, FeedForwardBlock, SpeechModel, materialize

NAME = "whisper"
GENERATIVE = True
TOKENS_PER_SECOND = 8  # generous speaking-rate cap, so a broken model cannot loop to 448 tokens
TOKEN_MARGIN = 12
LOOP_REPEATS, LOOP_MIN_TOKENS = 3, 12  # a decoding loop: an n-gram 3+ times in a row over 12+ tokens
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
FRAMES_PER_SECOND = 100  # log-mel frames per second of audio (a hop of 160 samples at 16 kHz)


@dataclass(frozen=True)
class WhisperDecoding:
    """What greedy decoding needs beyond the weights: prompt, end token, suppressed tokens."""

    prompt: tuple[int, ...]
    eot: int
    suppress: tuple[int, ...]
    suppress_at_begin: tuple[int, ...]
    max_length: int = 448

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> WhisperDecoding:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def check(self, vocab_size: int, max_positions: int) -> None:
        """ValueError naming the field when a token id is outside the vocabulary or the lengths do not fit
        the decoder (e.g. an end token of -1 would end every transcript before it starts)."""
        ids = {"eot": (self.eot,), "prompt": self.prompt, "suppress": self.suppress}
        ids["suppress_at_begin"] = self.suppress_at_begin
        for name, values in ids.items():
            bad = [
                v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size
            ]
            if bad:
                raise ValueError(
                    f"decoding.{name}: token ids {bad[:3]} are outside the vocabulary (0..{vocab_size - 1})"
                )
        if not self.prompt:
            raise ValueError("decoding.prompt: empty; Whisper starts from <|startoftranscript|>")
        if not isinstance(self.max_length, int) or not len(self.prompt) < self.max_length <= max_positions:
            raise ValueError(
                f"decoding.max_length = {self.max_length!r}: must exceed the prompt and be at most the "
                f"decoder's {max_positions} positions"
            )


# ----------------------------------------------------------------------------- the family interface


def handles(module: nn.Module) -> bool:
    from transformers import WhisperForConditionalGeneration

    return isinstance(module, WhisperForConditionalGeneration)


def layer_group(name: str, module: nn.Module) -> str | None:
    """The group of a layer by its qualified name (Hugging Face's usual names), or None if it is not
    compressible. Layers inside a replaced layer (the two factors of a low-rank pair) stay in their
    layer's group."""
    side = "decoder" if "decoder" in name else "encoder"
    if isinstance(module, nn.Embedding):
        return "embedding" if "embed_tokens" in name else "positions" if "embed_positions" in name else None
    if isinstance(module, nn.Conv1d):
        return "conv"
    if not isinstance(module, nn.Linear):
        return None
    if name.endswith(("proj_out", "lm_head")):
        return None  # tied to the token embedding (Whisper) or a head we keep dense
    if "attn" in name or "attention" in name:
        return f"{side}.attention"
    if any(key in name for key in ("fc1", "fc2", "feed_forward", "ffn", "mlp")):
        return f"{side}.ffn"
    return None


def _set_heads(attention: nn.Module, heads: int) -> None:
    """Hugging Face's WhisperAttention reshapes keys/values with `num_heads` and queries/output with -1."""
    attention.num_heads = heads
    attention.layout_attrs = {**getattr(attention, "layout_attrs", {}), "num_heads": heads}


def attention_blocks(module: nn.Module) -> list[AttentionBlock]:
    blocks = []
    for name, m in module.named_modules():
        if all(hasattr(m, p) for p in ATTENTION) and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            group = f"{'decoder' if 'decoder' in name else 'encoder'}.attention"
            blocks.append(AttentionBlock(name, group, *ATTENTION, m.num_heads, m.head_dim, _set_heads))
    return blocks


def ffn_blocks(module: nn.Module) -> list[FeedForwardBlock]:
    return [
        FeedForwardBlock(name, f"{'decoder' if 'decoder' in name else 'encoder'}.ffn", "fc1", "fc2")
        for name, m in module.named_modules()
        if hasattr(m, "fc1") and hasattr(m, "fc2")
    ]


def encoder(module: nn.Module) -> nn.Module:
    return module.model.encoder


def encode(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Encoder states (batch, frames / 2, d) of log-mel `features` (batch, mels, frames) of any even frame
    count up to the full window: Hugging Face's encoder forward with the position table sliced to the frames
    given (its own forward refuses anything but 3000 frames)."""
    encoder = module.model.encoder
    hidden = nn.functional.gelu(encoder.conv2(nn.functional.gelu(encoder.conv1(features)))).permute(0, 2, 1)
    if hidden.shape[1] > module.config.max_source_positions:
        raise ValueError(
            f"the encoder takes at most {2 * module.config.max_source_positions} frames, "
            f"got {features.shape[-1]}"
        )
    hidden = hidden + encoder.embed_positions(torch.arange(hidden.shape[1], device=hidden.device))
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def short_context(module: nn.Module) -> dict | None:
    """The short-context policy this module runs with ({"floor_seconds", "step_seconds"}), or None."""
    return getattr(module.config, "short_context", None) or None


def set_short_context(module: nn.Module, policy: dict | None) -> None:
    """Record the short-context policy on the module's config (saved in config.json with the weights)."""
    module.config.short_context = dict(policy) if policy else None


def context_frames(policy: dict | None, seconds: float, full: int = 3000) -> int:
    """Encoder input frames for a clip of `seconds` under a short-context `policy` (None: the full window):
    the clip's length rounded up to a whole number of steps, at least the floor, even (the convolutions
    halve it), at most the full window."""
    if not policy:
        return full
    step = policy["step_seconds"]
    wanted = max(policy["floor_seconds"], step * math.ceil(seconds / step - 1e-9))
    return min(full, 2 * math.ceil(wanted * FRAMES_PER_SECOND / 2))


def encoder_input(model: SpeechModel, windows: list[np.ndarray]) -> torch.Tensor:
    """Log-mel features of a batch of windows, cut to the frames the model's context needs for the longest."""
    features = model.features(windows)
    seconds = max(len(w) for w in windows) / SAMPLE_RATE
    return features[..., : context_frames(short_context(model.module), seconds, features.shape[-1])]


def decoder_logits(module: nn.Module, states: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-token logits (batch, tokens, vocab) for `inputs` over encoder `states`."""
    hidden = module.model.decoder(input_ids=inputs, encoder_hidden_states=states).last_hidden_state
    return module.proj_out(hidden)


def over_audio(name: str) -> bool:
    """True for Linear layers that run once per audio frame (encoder, cross-attention keys/values)."""
    return ".encoder." in f".{name}" or "encoder_attn.k_proj" in name or "encoder_attn.v_proj" in name


def parameter_part(name: str) -> tuple[str | None, bool]:
    """(side: "encoder", "decoder" or None, is an embedding) of a parameter: what distillation may train."""
    side = (
        "decoder"
        if name.startswith("model.decoder.")
        else "encoder"
        if name.startswith("model.encoder.")
        else None
    )
    return side, "embed_tokens" in name or "embed_positions" in name or name.startswith("proj_out")


def vocab_size(module: nn.Module) -> int:
    return module.config.vocab_size


def token_room(model: SpeechModel) -> int:
    """Tokens a transcript may take after the prompt."""
    return min(model.decoding.max_length, model.module.config.max_target_positions) - len(
        model.decoding.prompt
    )


def label_tokens(model: SpeechModel, text: str) -> list[int]:
    """Whisper's text tokens for a transcript (with the leading space Whisper emits)."""
    return model.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids


def transcribe(model: SpeechModel, windows: list[np.ndarray]) -> list[str]:
    states = model.encode(encoder_input(model, windows))
    max_new = [token_cap(model.decoding, len(w) / SAMPLE_RATE) for w in windows]
    tokens = greedy_decode(model.module, states, model.decoding, max(max_new))
    return [model.decode(seq[:cap]) for seq, cap in zip(tokens, max_new)]


def calibration_batch(model: SpeechModel, window: np.ndarray, text: str) -> dict:
    prompt = list(model.decoding.prompt)
    return {
        "input_features": model.features([window]),
        "decoder_input_ids": torch.tensor([(prompt + label_tokens(model, text))[: token_room(model)]]),
    }


def smaller(module: nn.Module, decoder_layers: list[int], encoder_layers: list[int]) -> nn.Module:
    """A copy of `module` keeping only the listed encoder and decoder layers; the tie stays."""
    from transformers import WhisperForConditionalGeneration

    config = copy.deepcopy(module.config)
    kept = {"encoder": encoder_layers, "decoder": decoder_layers}
    config.encoder_layers, config.decoder_layers = len(encoder_layers), len(decoder_layers)
    with torch.device("meta"):
        student = WhisperForConditionalGeneration(config)
    student = student.to_empty(device="cpu")
    source = module.state_dict()
    state = {}
    for name in student.state_dict():
        parts = name.split(".")
        if len(parts) > 3 and parts[2] == "layers":  # model.{encoder,decoder}.layers.{i}.…
            parts[3] = str(kept[parts[1]][int(parts[3])])
        state[name] = source[".".join(parts)].clone()
    student.load_state_dict(state)
    student.proj_out.weight = student.model.decoder.embed_tokens.weight
    return student


def layer_counts(module: nn.Module) -> dict[str, int]:
    return {"encoder": module.config.encoder_layers, "decoder": module.config.decoder_layers}


# ----------------------------------------------------------------------------- decoding


def ends_in_loop(tokens: list[int], repeats: int = LOOP_REPEATS, min_tokens: int = LOOP_MIN_TOKENS) -> bool:
    """True when `tokens` ends with one n-gram repeated back to back at least `repeats` times and over at
    least `min_tokens` tokens: a decoding loop ("the the the ...") that would otherwise run to the cap."""
    for n in range(1, len(tokens) // repeats + 1):
        if tokens[-1] != tokens[-1 - n]:
            continue  # the cheap test first: most n fail here
        span = n * max(repeats, -(-min_tokens // n))
        if span <= len(tokens) and tokens[-span:] == tokens[-n:] * (span // n):
            return True
    return False


def greedy_decode(
    module: nn.Module, states: torch.Tensor, decoding: WhisperDecoding, max_new_tokens: int
) -> list[list[int]]:
    """Greedy Whisper decoding over encoder `states` with a key/value cache; the new tokens of each item
    (see `greedy_loop` for the stopping rules)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(inputs: torch.Tensor) -> torch.Tensor:
        hidden = module.model.decoder(
            input_ids=inputs, encoder_hidden_states=states, past_key_values=cache, use_cache=True
        ).last_hidden_state
        return module.proj_out(hidden[:, -1])

    return greedy_loop(step, states.shape[0], decoding, max_new_tokens)


def greedy_loop(
    step: Callable[[torch.Tensor], torch.Tensor], batch: int, decoding: WhisperDecoding, max_new_tokens: int
) -> list[list[int]]:
    """Whisper's greedy loop over any decoder: `step(inputs)` takes the new tokens (batch, n) (the prompt
    first, then one token at a time), keeps its own cache and returns the next-token logits (batch, vocab).
    Suppressed tokens never win; an item stops at end-of-text, or once it ends in a loop (`ends_in_loop`):
    greedy decoding seldom leaves one, and the tokens a broken model would add up to the cap only cost time
    (and inflate WER). Shared by the lab's module and the deployment runtimes that decode in Python."""
    inputs = torch.tensor([list(decoding.prompt)] * batch)
    suppress = torch.tensor(decoding.suppress, dtype=torch.long)
    suppress_begin = torch.tensor(decoding.suppress_at_begin, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    for index in range(max_new_tokens):
        logits = torch.as_tensor(step(inputs)).float().clone()
        logits[:, suppress] = -math.inf
        if index == 0:
            logits[:, suppress_begin] = -math.inf
        next_tokens = logits.argmax(-1)
        next_tokens[done] = decoding.eot
        for i, token in enumerate(next_tokens.tolist()):
            if not done[i] and token != decoding.eot:
                out[i].append(token)
                done[i] = ends_in_loop(out[i])
        done |= next_tokens == decoding.eot
        if done.all():
            break
        inputs = next_tokens[:, None]
    return out


def token_cap(decoding: WhisperDecoding, seconds: float) -> int:
    """New tokens a clip of `seconds` may take: a generous speaking rate, within the decoder's length."""
    return min(
        decoding.max_length - len(decoding.prompt), math.ceil(seconds * TOKENS_PER_SECOND) + TOKEN_MARGIN
    )


# ----------------------------------------------------------------------------- building models


def features_for(n_mels: int) -> Callable[[list[np.ndarray]], torch.Tensor]:
    """Log-mel features over the full 30 s window (audio padded before the mel, OpenAI/HF style)."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return lambda waves: extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def speech_model(
    name: str, module: nn.Module, tokenizer, decoding: WhisperDecoding, source: dict
) -> SpeechModel:
    """A SpeechModel around a Whisper module, a `tokenizers.Tokenizer` and its decoding facts."""
    decode = lambda ids: tokenizer.decode([i for i in ids if i < decoding.eot])  # noqa: E731
    return SpeechModel(
        name=name,
        family=sys.modules[__name__],
        module=module,
        tokenizer=tokenizer,
        decoding=decoding,
        features=features_for(module.config.num_mel_bins),
        decode=decode,
        source=source,
    )


def skeleton(folder: Path) -> nn.Module:
    """The module built from a folder's config.json, with uninitialised weights (to be loaded)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig.from_pretrained(folder)
    with torch.device("meta"):
        module = WhisperForConditionalGeneration(config)
    return materialize(module, folder)


def load_plain(module: nn.Module, folder: Path) -> nn.Module:
    """Load a plain model.safetensors (as converted from CTranslate2: proj_out left out, re-tied)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(
            f"{folder / 'model.safetensors'} does not match its config.json: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    module.proj_out.weight = module.model.decoder.embed_tokens.weight
    return module


def from_folder(name: str, module: nn.Module, folder: Path, meta: dict) -> SpeechModel:
    """A SpeechModel from a lab folder's tokenizer.json and decoding facts around loaded weights."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    try:
        decoding = WhisperDecoding.from_json(meta["decoding"])
        decoding.check(module.config.vocab_size, module.config.max_target_positions)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{folder}: the decoding facts in its speech_lab.json are not usable ({exc})"
        ) from None
    return speech_model(
        meta.get("name", name), module.eval(), tokenizer, decoding, {"folder": str(folder), "meta": meta}
    )


def save_files(model: SpeechModel, folder: Path) -> dict:
    """Write config.json and tokenizer.json; returns the metadata that `from_folder` needs back."""
    model.module.config.save_pretrained(folder)
    model.tokenizer.save(str(folder / "tokenizer.json"))
    return {"decoding": model.decoding.to_json()}


def from_hf(name: str, label: str, config, processor) -> SpeechModel:
    """A Hugging Face Whisper checkpoint (folder or hub id) with its tokenizer's special tokens."""
    from transformers import WhisperForConditionalGeneration

    module = WhisperForConditionalGeneration.from_pretrained(name).eval()
    tokenizer = processor.tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    multilingual = config.vocab_size >= 51865
    names = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    prompt = [tokenizer.convert_tokens_to_ids(t) for t in (names if multilingual else names[:1] + names[3:])]
    generation = module.generation_config
    suppress = set(getattr(generation, "suppress_tokens", None) or []) | set(
        range(eot + 1, config.vocab_size)
    )
    decoding = WhisperDecoding(
        prompt=tuple(prompt),
        eot=eot,
        suppress=tuple(sorted(suppress)),
        suppress_at_begin=tuple(getattr(generation, "begin_suppress_tokens", None) or [eot]),
        max_length=config.max_target_positions,
    )
    return speech_model(label, module, tokenizer.backend_tokenizer, decoding, {"hf": name})


def accepts(config) -> bool:
    """True for a Hugging Face config this family loads."""
    return config.model_type == "whisper"
