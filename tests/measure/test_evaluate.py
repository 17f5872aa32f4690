"""Evaluation facts: what a timing depends on, and how a busy machine is marked."""

from __future__ import annotations

import pytest


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


class FakeClock:
    """A clock the fake models move: each transcription takes its model's cost times the machine's slowness
    at that moment (`slowness[i]` for the i-th timed pair, after `warmups` untimed calls), so the noise is
    fully under the test's control."""

    def __init__(self, slowness: list[float], warmups: int = 0):
        self.now, self.slowness, self.warmups, self.log = 0.0, slowness, warmups, []

    def perf_counter(self) -> float:
        return self.now


class SleepyModel:
    """A model whose transcription "sleeps" `seconds` on the fake clock (scaled by the machine's slowness)."""

    def __init__(self, name: str, seconds: float, clock: FakeClock):
        self.name, self.seconds, self.clock = name, seconds, clock

    def transcribe(self, waves):
        calls = len(self.clock.log)
        warm = calls < self.clock.warmups
        self.clock.log.append(f"{self.name} warm-up" if warm else self.name)
        self.clock.now += self.seconds * (
            1.0 if warm else self.clock.slowness[(calls - self.clock.warmups) // 2]
        )
        return [""]


def test_paired_latency_interleaves_clip_by_clip_and_takes_the_median_ratio(monkeypatch):
    import os

    import numpy as np

    from core.measure import evaluate as evaluate_module
    from core.measure.evaluate import measure_latency, measure_paired_latency

    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0 * cpus, 0.0, 0.0))
    clock = FakeClock(slowness=[1.0, 3.0, 1.0, 5.0], warmups=2)  # the load comes and goes between clips
    monkeypatch.setattr(evaluate_module, "time", clock)
    baseline, variant = SleepyModel("baseline", 0.040, clock), SleepyModel("variant", 0.020, clock)
    clips = [np.zeros(16000, dtype=np.float32)] * 4
    paired = measure_paired_latency(variant, baseline, clips, warmup=1, baseline_warmup=1)
    assert clock.log == ["baseline warm-up", "variant warm-up"] + ["baseline", "variant"] * 4
    assert [ms for pair in paired.per_clip for ms in pair] == pytest.approx(
        [40, 20, 120, 60, 40, 20, 200, 100]
    )
    assert paired.ratio == pytest.approx(0.5)  # every pair shared its moment's load: exactly 2× faster
    assert paired.variant.median_ms == pytest.approx(40) and paired.baseline.median_ms == pytest.approx(80)
    assert paired.variant.runs == 4 and paired.variant.clip_seconds == 1.0
    assert paired.contended and paired.load_average == 2.0 * cpus and paired.cpus == cpus
    stored = paired.to_json()
    assert stored["ratio"] == pytest.approx(0.5) and stored["ratio_of"] == "median of per-clip ratios"
    assert stored["baseline_ms"] == pytest.approx(80) and stored["contended"] and len(stored["per_clip"]) == 4
    assert evaluate_module.Latency.from_json(stored) == paired.variant  # still reads as the variant's Latency

    # the same two models timed apart, as two points measured at different times were: the load of the
    # moment decides, and here makes the faster model look slower
    clock.log, clock.slowness, clock.warmups = (
        [],
        [1.0, 4.0],
        0,
    )  # the baseline's two runs, then the variant's
    alone_base = measure_latency(baseline, clips[0], runs=2, warmup=0)
    alone_variant = measure_latency(variant, clips[0], runs=2, warmup=0)
    assert alone_variant.median_ms / alone_base.median_ms > 1.5


def test_a_model_is_its_own_baseline_at_ratio_one(monkeypatch):
    import numpy as np

    from core.measure import evaluate as evaluate_module
    from core.measure.evaluate import measure_paired_latency

    clock = FakeClock(slowness=[1.0] * 3)
    monkeypatch.setattr(evaluate_module, "time", clock)
    model = SleepyModel("model", 0.010, clock)
    paired = measure_paired_latency(model, None, [np.zeros(8000, dtype=np.float32)] * 3)
    assert len(clock.log) == 3  # timed once per clip, not twice
    assert paired.ratio == 1.0 and paired.baseline == paired.variant
    assert paired.variant.median_ms == pytest.approx(10)
    with pytest.raises(ValueError, match="at least one clip"):
        measure_paired_latency(model, None, [])


def test_clips_without_speech_are_named_in_the_result_and_the_printout(tiny_whisper, tmp_path):
    """Whisper writes words for noise ("You"): evaluate names such clips instead of scoring them silently."""
    import numpy as np
    import soundfile as sf
    from conftest import REPO
    from test_sweep import tiny_speech_model

    from core.cli.evaluate import format_result
    from core.data import load_dataset
    from core.measure.evaluate import evaluate

    noise = np.random.default_rng(0).normal(0, 0.3, 16000 * 2).astype(np.float32)
    sf.write(tmp_path / "noise.wav", noise, 16000)
    hello = REPO / "assets" / "samples" / "hello.wav"
    (tmp_path / "set.csv").write_text(f"path,text\n{hello},hello there\n{tmp_path / 'noise.wav'},nothing\n")
    result = evaluate(tiny_speech_model(tiny_whisper), load_dataset(tmp_path / "set.csv"), latency_runs=0)
    summary = result.to_dict()
    assert summary["no_speech"] == [result.scores.rows[1].id]  # the noise, not the speech
    assert "no speech    1 clip(s) sound like noise or silence" in format_result(summary)
