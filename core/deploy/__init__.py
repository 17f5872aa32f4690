"""Deployment: write a (compressed) SpeechModel in another runtime's own format, so it runs there.

One module per runtime, each defining `RUNTIME` (core/deploy/runtime.py: how to export, what the runtime
cannot hold, how to load and transcribe with the runtime's own API):
  * `ct2.py`  CTranslate2 (and faster-whisper): the lab's 8-bit codes as CTranslate2's int8 weights;
  * `onnx.py` ONNX Runtime: hand-built encoder/decoder graphs, the lab's block-wise codes as MatMulNBits,
    8-bit rows as MatMulInteger, low-rank factors as two MatMuls, any head count or width per layer;
  * `ggml.py` whisper.cpp: the lab's codes as ggml's q4_0 / q4_1 / q5_0 / q5_1 / q8_0 blocks, bit for bit;
  * `hf.py`   Hugging Face transformers: the compressed model as a plain float checkpoint that
    `from_pretrained` loads (codes dequantized, low-rank pairs multiplied back): for compatibility, with
    none of the size gain (the lab's own folders refuse `from_pretrained`, see core.io.folders).
A recipe a runtime cannot hold exactly is refused with the layer and the nearest option; nothing is
requantized silently. This layer sits on core.io (and so may use core.models and core.compress), below
core.measure (which evaluates an exported folder inside its runtime: core/measure/deployment.py).
"""
