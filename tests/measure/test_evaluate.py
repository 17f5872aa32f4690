"""Evaluation facts: what a timing depends on, and how a busy machine is marked."""

from __future__ import annotations


def test_a_timing_under_contention_is_marked(monkeypatch):
    import os

    from core.cli.evaluate import format_result
    from core.measure.evaluate import machine_facts

    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * cpus, 0.0, 0.0))
    busy = machine_facts(2)
    assert busy["contended"] and busy["load_average"] == 3.0 * cpus and busy["threads"] == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert not machine_facts()["contended"]
    result = {
        "model": "m", "dataset": "d", "n_utterances": 1, "n_words": 3, "wer": 0.0, "wer_ci95": [0.0, 0.0],
        "raw_wer": 0.0, "cer": 0.0, "looped": 0, "size_bytes": 10, "parameters": 1, "latency": None,
        "by_length": [], "eval_seconds": 1.0, "machine": busy,
    }  # fmt: skip
    assert "the machine was busy, so the times are inflated" in format_result(result)
    assert "busy" not in format_result({**result, "machine": machine_facts()})
