"""The Compress page's numbers as text (ui.tables), on plain data: card deltas, the WER interval and the
per-layer table."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from core.compress.report import LayerReport
from ui.tables import (
    LAYER_COLUMNS,
    LAYER_HELP,
    MISSING,
    Delta,
    human_bytes,
    layer_rows,
    layer_sizes,
    owner,
    size_delta,
    speed_delta,
    tensor_bytes,
    wer_delta,
    wer_interval_text,
)


def test_a_wer_change_that_rounds_to_zero_is_neutral():
    for wer in (0.05, 0.0504, 0.0496):
        assert wer_delta(wer, 0.05) == Delta("±0.0 pts", "off", "off")


def test_worse_wer_is_red_and_up_better_is_green_and_down():
    assert wer_delta(0.08, 0.05) == Delta("+3.0 pts", "red", "up")
    assert wer_delta(0.03, 0.05) == Delta("-2.0 pts", "green", "down")
    assert wer_delta(0.03, 0.05).metric_kwargs() == {
        "delta": "-2.0 pts",
        "delta_color": "green",
        "delta_arrow": "down",
    }


def test_speed_arrows_follow_the_words():
    assert speed_delta(1.25) == Delta("1.25× faster", "green", "up")
    assert speed_delta(0.8) == Delta("1.25× slower", "red", "down")
    assert speed_delta(1.004) == speed_delta(0.996) == Delta("1.00× (same speed)")
    assert speed_delta(None) == speed_delta(0.0) == Delta(None)


def test_size_arrows_follow_the_words():
    assert size_delta(100, 50) == Delta("2.00× smaller", "green", "down")
    assert size_delta(100, 200) == Delta("2.00× larger", "red", "up")
    assert size_delta(100, 100) == Delta("same size")
    assert size_delta(None, 100) == Delta(None)


def test_wer_interval_says_what_it_was_measured_on_and_whether_the_baseline_is_inside():
    result = {"wer_ci95": [0.0274, 0.1605], "n_utterances": 16, "n_words": 154}
    inside = wer_interval_text(result, 0.06)
    assert inside.startswith("95% interval of this WER: 2.7–16.1% over 16 utterances (154 words)")
    assert "inside it: the difference is within the noise of 16 utterances" in inside
    outside = wer_interval_text(result, 0.01)
    assert "1.0% lies outside it: the difference is larger than the noise" in outside
    assert wer_interval_text({"wer": 0.1}, 0.05) is None  # a point stored without an interval


def test_human_bytes_in_the_size_card_s_units():
    assert human_bytes(1_500) == "1.5 KB"
    assert human_bytes(589_824) == "590 KB"
    assert human_bytes(2_359_296) == "2.4 MB"


def test_a_factorized_layer_s_parts_belong_to_their_layer():
    layers = ["model.encoder.layers.0.fc1", "model.encoder.layers.0.fc2"]
    assert owner("model.encoder.layers.0.fc1.first", layers) == "model.encoder.layers.0.fc1"
    assert owner("model.encoder.layers.0.fc2", layers) == "model.encoder.layers.0.fc2"
    assert owner("somewhere.else", layers) == "somewhere.else"


def test_layer_rows_are_readable_and_follow_the_model_order():
    fc1, fc2 = "model.encoder.layers.0.fc1", "model.encoder.layers.0.fc2"
    reports = [
        LayerReport(fc2, "encoder.ffn", "prune", 1000, 1000, sparsity=0.3, rel_error=0.05),
        LayerReport(fc1, "encoder.ffn", "low_rank", 1000, 400, rank=8, rel_error=0.1, note="rank 8"),
        LayerReport(
            fc1 + ".first", "encoder.ffn", "quantize", 200, 200, bits=4, rel_error=0.02, note="4-bit"
        ),
        LayerReport(
            fc1 + ".second", "encoder.ffn", "quantize", 200, 200, bits=4, rel_error=0.03, note="4-bit"
        ),
    ]
    rows = layer_rows([asdict(r) for r in reports], [fc1, fc2], {fc1: (4000, 1_200), fc2: (4000, 4000)})
    assert [list(row) for row in rows] == [list(LAYER_COLUMNS)] * 2
    factorized, pruned = rows
    assert factorized == {
        "layer": "encoder.layers.0.fc1",
        "group": "encoder.ffn",
        "technique": "low_rank → quantize",
        "params": "1,000 → 400",
        "bits": "4",
        "sparsity": MISSING,
        "rank": "8",
        "size": "4.0 KB → 1.2 KB",
        "error": "10.0% → 3.0%",
        "note": "rank 8; 4-bit",
    }
    assert pruned["technique"] == "prune" and pruned["sparsity"] == "30.0%"
    assert pruned["bits"] == pruned["rank"] == pruned["note"] == MISSING
    assert not any(value is None or value == "None" for row in rows for value in row.values())
    assert set(LAYER_HELP) == set(LAYER_COLUMNS)


def test_layer_rows_without_sizes_or_known_layers():
    report = LayerReport("model.decoder.fc1", "decoder.ffn", "quantize", 10_000, 10_000, bits=8)
    (row,) = layer_rows([asdict(report)])
    assert row["size"] == MISSING and row["params"] == "10,000 → 10,000" and row["error"] == MISSING


def test_tensor_bytes_counts_a_shared_tensor_once():
    layer = nn.Linear(4, 3)
    assert tensor_bytes(layer) == (12 + 3) * 4
    pair = nn.Module()
    pair.a = nn.Linear(4, 3, bias=False)
    pair.b = nn.Linear(4, 3, bias=False)
    pair.b.weight = pair.a.weight  # tied, like an embedding and its output projection
    assert tensor_bytes(pair) == 12 * 4
    half = nn.Linear(4, 3).to(torch.float16)
    assert tensor_bytes(half) == (12 + 3) * 2


def test_layer_sizes_of_a_layer_before_and_after():
    base, small = nn.Sequential(nn.Linear(8, 8)), nn.Sequential(nn.Linear(8, 2))
    assert layer_sizes(base, small, ["0", "missing"]) == {"0": ((64 + 8) * 4, (16 + 2) * 4)}
