"""Shared fixtures: small randomly initialised models so unit tests run in seconds."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Results of the tests never land in the user's results store (pages and CLI read SPEECH_LAB_DATA).
os.environ["SPEECH_LAB_DATA"] = tempfile.mkdtemp(prefix="speech-lab-test-data-")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parent.parent
SHARED_AUDIO = REPO.parent / "shared" / "audio"


def tiny_whisper_config(vocab_size: int = 120, d_model: int = 32, layers: int = 2, heads: int = 4):
    """A Whisper config small enough to build in milliseconds; special ids fit the small vocabulary."""
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=vocab_size - 4,
        bos_token_id=vocab_size - 4,
        eos_token_id=vocab_size - 4,
        decoder_start_token_id=vocab_size - 3,
    )


@pytest.fixture
def tiny_whisper():
    """A tiny random Hugging Face Whisper (tied embedding/output projection), in eval mode."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    return WhisperForConditionalGeneration(tiny_whisper_config()).eval()


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread skips OpenMP hand-offs, which dominate here and crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LETTERS = "abcdefgh"
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(LETTERS)}}


def save_tiny_wav2vec2(folder: Path) -> None:
    """A randomly initialised wav2vec2-CTC (2 layers of width 32, 2 heads) and its processor, as Hugging
    Face saves them: what `load_model` gets from a downloaded checkpoint."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(), tokenizer=tokenizer).save_pretrained(
        folder
    )
    config = Wav2Vec2Config(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(folder)


TINY_EN_VOCAB = (
    51864  # the bundled English tokenizer's vocabulary: real transcripts tokenize, special tokens exist
)


def random_tiny_en(name: str, layers: int = 2, d_model: int = 32):
    """A random Whisper with tiny.en's vocabulary, tokenizer and decoding facts, as a SpeechModel: small
    enough to train or export in seconds, real enough to decode text and be found by other runtimes."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    from core.models.ct2 import bundled_whisper_folder
    from core.models.whisper import WhisperDecoding, speech_model

    torch.manual_seed(0)
    config = tiny_whisper_config(vocab_size=TINY_EN_VOCAB, d_model=d_model, layers=layers)
    config.pad_token_id = config.bos_token_id = config.eos_token_id = 50256
    config.decoder_start_token_id = 50257
    module = WhisperForConditionalGeneration(config).eval()
    module.proj_out.weight = module.model.decoder.embed_tokens.weight
    decoding = WhisperDecoding(
        prompt=(50257, 50362),
        eot=50256,
        suppress=tuple(range(50257, TINY_EN_VOCAB)),
        suppress_at_begin=(220, 50256),
        max_length=64,
    )
    tokenizer = Tokenizer.from_file(str(bundled_whisper_folder() / "tokenizer.json"))
    return speech_model(name, module, tokenizer, decoding, {})
