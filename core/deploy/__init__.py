"""Deployment: write a (compressed) SpeechModel in another runtime's own format, so it runs there.

One module per runtime. `ct2.py` writes a Whisper model as a CTranslate2 folder (model.bin,
config.json, vocabulary.json, tokenizer.json, preprocessor_config.json, README.txt) that
`ctranslate2.models.Whisper` and faster-whisper load; the lab's 8-bit codes become CTranslate2's own
int8 weights, and a recipe the runtime cannot hold exactly is refused with the nearest option.
This layer sits on core.io (and so may use core.models and core.compress), below core.measure.
"""
