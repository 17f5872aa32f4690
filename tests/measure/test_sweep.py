"""Sweeps: grid parsing and errors, caching (no model runs for stored points), resume after a kill."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.compress.recipe import Recipe
from core.compress.registry import TECHNIQUES
from core.measure.store import Store
from core.measure.sweep import SweepSettings, expand_grid, run_sweep
from core.models import EncoderCache, SpeechModel
from core.models.whisper import WhisperDecoding, speech_model

TESTS = Path(__file__).resolve().parent
FAST = SweepSettings(latency_runs=0)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------- helpers shared with test_sensitivity


def tiny_speech_model(module) -> SpeechModel:
    """A SpeechModel around the random tiny Whisper: tokens decode to words "w<id>"."""
    decoding = WhisperDecoding(prompt=(117,), eot=116, suppress=(), suppress_at_begin=(), max_length=64)
    model = speech_model("tiny-random", module, None, decoding, {})
    model.decode = lambda ids: " ".join(f"w{i}" for i in ids if i < 116)
    return model


def tiny_dataset(folder: Path, n: int = 4):
    """n one-second sine clips with made-up transcripts, as a manifest CSV."""
    from core.data import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,text"]
    for i in range(n):
        t = np.arange(16000) / 16000
        sf.write(
            folder / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32), 16000
        )
        lines.append(f"clip{i}.wav,w{i} w{i + 1} w{i + 2}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(folder / "manifest.csv")


def recipes_for(*sparsities: float) -> list[Recipe]:
    return [
        Recipe.from_json({"steps": [{"prune": {"sparsity": s}}]} if s else {"steps": []}) for s in sparsities
    ]


class Counter:
    """Counts SpeechModel.transcribe and Recipe.apply calls (the expensive work a cache hit must skip)."""

    def __init__(self, monkeypatch):
        self.transcribe = self.apply = 0
        transcribe, apply = SpeechModel.transcribe, Recipe.apply

        def counted_transcribe(model, *args, **kwargs):
            self.transcribe += 1
            return transcribe(model, *args, **kwargs)

        def counted_apply(recipe, module, *args):
            self.apply += 1
            return apply(recipe, module, *args)

        monkeypatch.setattr(SpeechModel, "transcribe", counted_transcribe)
        monkeypatch.setattr(Recipe, "apply", counted_apply)


@pytest.fixture
def setup(tiny_whisper, tmp_path):
    return (
        tiny_speech_model(tiny_whisper),
        tiny_dataset(tmp_path / "data"),
        Store(tmp_path / "results.sqlite"),
    )


# ----------------------------------------------------------------------- grids


def test_grid_expands_in_fixed_step_order_with_off_values():
    grid = {
        "quantize.bits": [16, 8, 4],
        "prune.sparsity": [0, 0.2, 0.4],
        "low_rank.energy": [1.0, 0.95],
        "quantize.granularity": "group",
    }
    recipes = expand_grid(grid)
    assert len(recipes) == 18
    assert recipes[0] == {"steps": []}  # 16 bits, sparsity 0, energy 1.0: every step off
    assert {
        "steps": [
            {"prune": {"sparsity": 0.4}},
            {"low_rank": {"energy": 0.95}},
            {"quantize": {"bits": 4, "granularity": "group"}},
        ]
    } in recipes
    assert all(list(step)[0] in ("prune", "low_rank", "quantize") for r in recipes for step in r["steps"])
    orders = {tuple(list(step)[0] for step in r["steps"]) for r in recipes}
    assert ("prune", "low_rank", "quantize") in orders and ("quantize", "prune") not in orders


def test_grid_fixed_options_groups_and_special_values():
    grid = {
        "prune.sparsity": [0.5, "off"],
        "prune.groups": ["encoder.ffn", "decoder.ffn"],
        "quantize.bits": ["fp16", None, 8],
    }
    recipes = expand_grid(grid)
    assert recipes[0] == {
        "steps": [
            {"prune": {"sparsity": 0.5, "groups": ["encoder.ffn", "decoder.ffn"]}},
            {"quantize": {"bits": 16}},
        ]
    }  # "fp16" means fp16 storage
    assert {"steps": []} in recipes and len(recipes) == 6
    by_groups = expand_grid({"prune.sparsity": 0.5, "prune.groups": [["encoder.ffn"], ["decoder.ffn"]]})
    assert [r["steps"][0]["prune"]["groups"] for r in by_groups] == [["encoder.ffn"], ["decoder.ffn"]]


def test_grid_duplicates_collapse_and_sampling_is_a_seeded_subset():
    assert (
        len(expand_grid({"quantize.bits": [16, 32, "off"], "quantize.granularity": ["tensor", "group"]})) == 1
    )
    grid = {"prune.sparsity": [0, 0.2, 0.4], "quantize.bits": [16, 8, 4], "low_rank.energy": [1.0, 0.95]}
    full = expand_grid(grid)
    picked = expand_grid(grid, sample=5, seed=3)
    assert len(picked) == 5 and all(r in full for r in picked)
    assert picked == expand_grid(grid, sample=5, seed=3) != expand_grid(grid, sample=5, seed=4)
    assert len(expand_grid(grid, sample=100)) == len(full)


@pytest.mark.parametrize(
    "grid, key",
    [
        ({"prune.sparsity": [0.1], "distill.alpha": [1]}, "distill.alpha"),
        ({"quantize": [8]}, "quantize"),
        ({"quantize.bits": []}, "quantize.bits"),
        ({"prune.sparsity": [0.5], "quantize.granularity": "group"}, "quantize.granularity"),
        ({"low_rank.energy": [0.9], "low_rank.rank": [8]}, "low_rank.energy"),
    ],
)
def test_invalid_grid_structure_names_the_key(grid, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        expand_grid(grid)


def test_grid_recipes_are_real_recipes():
    from core.measure.sweep import grid_recipes

    grid = {
        "prune.sparsity": [0, 0.2, 0.4],
        "quantize.bits": [16, 8, 4],
        "low_rank.energy": [1.0, 0.95],
        "quantize.granularity": "group",
    }
    recipes = grid_recipes(grid)
    assert len(recipes) == 18 and all(isinstance(r, Recipe) for r in recipes)
    assert recipes[0].is_empty
    assert recipes[-1].describe() == "prune 40% · SVD 95% energy · 4-bit group 64"


@pytest.mark.parametrize(
    "grid, key",
    [
        ({"quantize.bits": [8, 5.5]}, "quantize.bits"),
        ({"prune.sparsity": [0.5, 1.5]}, "prune.sparsity"),
        ({"quantize.bits": [16, 8], "quantize.colour": "red"}, "quantize.colour"),
        ({"low_rank.rank_fraction": [0.5], "low_rank.groups": ["conv"]}, "low_rank.groups"),
        ({"prune.sparsity": [0.5], "prune.scope": ["layer", "everywhere"]}, "prune.scope"),
    ],
)
def test_invalid_grid_values_name_the_key(grid, key):
    from core.measure.sweep import grid_recipes

    with pytest.raises(ValueError, match=f"grid key '{key}'"):
        grid_recipes(grid)


def test_invalid_combination_names_the_point():
    from core.measure.sweep import grid_recipes

    with pytest.raises(ValueError, match="grid point .*int8_dynamic"):
        grid_recipes({"quantize.bits": [8, 4], "quantize.backend": "int8_dynamic"})


def test_load_grid_errors(tmp_path):
    from core.measure.sweep import load_grid

    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_grid(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_grid(tmp_path / "list.json")
    with pytest.raises(ValueError, match="not found"):
        load_grid(tmp_path / "missing.json")


# ----------------------------------------------------------------------- packed evaluation


def test_pack_utterances_fills_30_second_windows_in_order():
    from core.data import pack_utterances

    seconds = [10, 10, 12, 35, 1, 2]
    waves = [np.full(16000 * s, i + 1, dtype=np.float32) for i, s in enumerate(seconds)]
    windows, refs, ids = pack_utterances(waves, [f"t{i}" for i in range(6)], [f"u{i}" for i in range(6)])
    assert ids == ["u0+u1", "u2", "u3", "u4+u5"]  # u3 is longer than a window: alone
    assert refs == ["t0 t1", "t2", "t3", "t4 t5"]
    gap = int(0.3 * 16000)
    assert [len(w) for w in windows] == [16000 * 20 + gap, 16000 * 12, 16000 * 35, 16000 * 3 + gap]
    assert (windows[0][16000 * 10 : 16000 * 10 + gap] == 0).all() and windows[0][-1] == 2


def test_packed_evaluation_of_the_bundled_model_on_three_clips():
    """The one test on the real tiny.en: packed windows transcribe all three sentences."""
    from core.data import Dataset, load_dataset
    from core.io.folders import load_model
    from core.measure.evaluate import evaluate

    quick = load_dataset("quick")
    three = Dataset("quick3", quick.utterances[:3])
    result = evaluate(load_model(), three, latency_runs=0, packed=True).to_dict()
    assert result["packed"] and result["n_utterances"] == 3 and len(result["rows"]) == 1
    assert result["rows"][0]["id"] == "+".join(u.id for u in three.utterances)
    assert result["wer"] <= 0.2, result["rows"][0]["hypothesis"]


# ----------------------------------------------------------------------- running


def test_second_run_is_served_from_the_store_without_running_the_model(setup, monkeypatch):
    model, dataset, store = setup
    counter = Counter(monkeypatch)
    first = list(run_sweep(model, dataset, recipes_for(0, 0.3, 0.6), store, FAST))
    assert [p.cached for p in first] == [False] * 3 and len(store) == 3
    assert counter.apply == 3 and counter.transcribe > 0
    assert first[0].result["packed"] and first[0].rows[0]["id"] == "clip0+clip1+clip2+clip3"
    assert first[0].result["n_utterances"] == 4 and first[0].size_bytes > first[2].size_bytes

    counter.apply = counter.transcribe = 0
    again = list(run_sweep(model, dataset, recipes_for(0, 0.3, 0.6), store, FAST))
    assert counter.apply == 0 and counter.transcribe == 0
    assert [p.cached for p in again] == [True] * 3
    assert [p.to_json() for p in again] == [p.to_json() for p in first]


def test_cached_points_come_first_and_duplicates_run_once(setup, monkeypatch):
    model, dataset, store = setup
    list(run_sweep(model, dataset, recipes_for(0.5), store, FAST))
    counter = Counter(monkeypatch)
    points = list(run_sweep(model, dataset, recipes_for(0.2, 0.5, 0.2), store, FAST))
    assert [(p.recipe["steps"][0]["prune"]["sparsity"], p.cached) for p in points] == [
        (0.5, True),
        (0.2, False),
    ]
    assert counter.apply == 1


def test_abandoned_generator_resumes_with_only_the_missing_points(setup, monkeypatch):
    model, dataset, store = setup
    counter = Counter(monkeypatch)
    sweep = run_sweep(model, dataset, recipes_for(0, 0.2, 0.4, 0.6), store, FAST)
    next(sweep), next(sweep)
    sweep.close()  # the page stopped iterating: cancel
    assert len(store) == 2 and counter.apply == 2
    points = list(run_sweep(model, dataset, recipes_for(0, 0.2, 0.4, 0.6), store, FAST))
    assert [p.cached for p in points] == [True, True, False, False]
    assert counter.apply == 4 and len(store) == 4


def test_settings_and_data_are_part_of_the_key(setup, tmp_path, monkeypatch):
    model, dataset, store = setup
    list(run_sweep(model, dataset, recipes_for(0.3), store, FAST))
    counter = Counter(monkeypatch)
    unpacked = next(
        run_sweep(model, dataset, recipes_for(0.3), store, SweepSettings(packed=False, latency_runs=0))
    )
    assert not unpacked.cached and len(unpacked.rows) == 4 and not unpacked.result["packed"]
    other_data = tiny_dataset(tmp_path / "other", n=3)
    assert not next(run_sweep(model, other_data, recipes_for(0.3), store, FAST)).cached
    with_latency = next(run_sweep(model, dataset, recipes_for(0.3), store, SweepSettings(latency_runs=1)))
    assert not with_latency.cached and with_latency.latency_ms > 0
    assert with_latency.settings["threads"] == torch.get_num_threads()
    assert with_latency.latency.runs == 1 and counter.apply == 3
    monkeypatch.setattr("core.measure.sweep.code_version", lambda: "edited")  # the measuring code changed
    assert not next(run_sweep(model, dataset, recipes_for(0.3), store, FAST)).cached


def test_encoder_reuse_is_exact(setup, tmp_path):
    model, dataset, store = setup
    decoder_only = Recipe.from_json({"steps": [{"quantize": {"bits": 3, "groups": ["decoder.ffn"]}}]})
    cache = EncoderCache()
    list(run_sweep(model, dataset, recipes_for(0), store, FAST, encoder_cache=cache))  # fills the cache
    reused = next(run_sweep(model, dataset, [decoder_only], store, FAST, encoder_cache=cache))
    assert reused.timings["encoder_reused"] == 1
    fresh = next(
        run_sweep(
            model,
            dataset,
            [decoder_only],
            Store(tmp_path / "other.sqlite"),
            SweepSettings(latency_runs=0, reuse_encoder=False),
        )
    )
    assert fresh.timings["encoder_reused"] == 0
    assert [r["hypothesis"] for r in reused.rows] == [r["hypothesis"] for r in fresh.rows]
    encoder_too = Recipe.from_json({"steps": [{"quantize": {"bits": 3, "groups": ["encoder.ffn"]}}]})
    assert (
        next(run_sweep(model, dataset, [encoder_too], store, FAST, encoder_cache=cache)).timings[
            "encoder_reused"
        ]
        == 0
    )
    assert len(cache.outputs) == 1  # only the base encoder's outputs are kept


KILL_SCRIPT = """
import sys, time, torch
sys.path[:0] = [{tests!r}, {tests!r} + "/.."]
from conftest import tiny_whisper_config
from transformers import WhisperForConditionalGeneration
from core.data import load_dataset
from core.measure.store import Store
from core.measure.sweep import run_sweep, SweepSettings
from test_sweep import recipes_for, tiny_speech_model
torch.set_num_threads(1)
torch.manual_seed(0)
model = tiny_speech_model(WhisperForConditionalGeneration(tiny_whisper_config()).eval())
for point in run_sweep(model, load_dataset({manifest!r}), recipes_for(0, 0.2, 0.4, 0.6, 0.8), Store({db!r}),
                       SweepSettings(latency_runs=0)):
    print("stored", point.key, flush=True)
    time.sleep(0.3)
"""


def test_resume_after_the_process_is_killed(setup, tmp_path, monkeypatch):
    model, dataset, store = setup
    script = KILL_SCRIPT.format(
        tests=str(TESTS), manifest=str(tmp_path / "data" / "manifest.csv"), db=str(store.path)
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=TESTS.parents[1]
    )
    done = [child.stdout.readline().split()[1] for _ in range(2)]
    child.send_signal(signal.SIGKILL)  # mid-sweep: possibly in the middle of the third point
    child.wait()
    assert child.returncode == -signal.SIGKILL
    survivors = Store(store.path)
    assert set(done) <= {p.key for p in survivors.points()} and len(survivors) < 5
    kept = len(survivors)
    counter = Counter(monkeypatch)
    points = list(run_sweep(model, dataset, recipes_for(0, 0.2, 0.4, 0.6, 0.8), survivors, FAST))
    assert [p.cached for p in points[:kept]] == [True] * kept and len(points) == 5
    assert counter.apply == 5 - kept and len(survivors) == 5


# ----------------------------------------------------------------------- command line


def test_cli_pareto_and_export(tmp_path, capsys):
    from test_store import make_point

    from core.cli import main

    db = tmp_path / "r.sqlite"
    with Store(db) as store:
        for key, wer, size, latency in (
            ("a", 0.10, 150e6, 400),
            ("b", 0.12, 40e6, 300),
            ("c", 0.30, 20e6, 500),
            ("d", 0.35, 45e6, 450),
        ):
            point = make_point(key, wer=wer, size=int(size), latency=latency)
            point.label = f"recipe {key}"
            store.put(point)
    assert main(["pareto", "--store", str(db)]) == 0
    out = capsys.readouterr().out
    assert "3 of 4 points on the front (WER vs size)" in out
    assert "recipe a" in out and "recipe c" in out and "recipe d" not in out
    assert out.index("recipe c") < out.index("recipe b") < out.index("recipe a")  # by size
    assert main(["pareto", "--store", str(db), "--x", "latency"]) == 0
    out = capsys.readouterr().out
    assert "recipe c" not in out and "2 of 4 points" in out
    assert main(["export", "--store", str(db), "--format", "csv", "--out", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().count("\n") == 5
    assert main(["export", "--store", str(db), "--format", "json", "--dataset", "nope"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_sweep_rejects_a_bad_grid_before_loading_anything(tmp_path, capsys):
    from core.cli import main

    (tmp_path / "grid.json").write_text(json.dumps({"quantize.bits": [8, 4], "quantize.colour": "red"}))
    assert main(["sweep", "--grid", str(tmp_path / "grid.json"), "--store", str(tmp_path / "r.sqlite")]) == 2
    assert "'quantize.colour'" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()


def test_a_grid_reuses_the_steps_its_recipes_share(setup, monkeypatch):
    """prune 30% then 8/4-bit: pruning runs once, and each result equals a fresh apply of the whole recipe."""
    from core.compress.recipe import apply_recipe
    from core.measure.sweep import apply_reusing

    model, _, _ = setup
    calls = []
    prune = TECHNIQUES["prune"]
    counting = dataclasses.replace(
        prune, apply=lambda module, config: calls.append(config) or prune.apply(module, config)
    )
    monkeypatch.setitem(TECHNIQUES, "prune", counting)
    grid = [
        Recipe.from_json({"steps": [{"prune": {"sparsity": 0.3}}, {"quantize": {"bits": bits}}]})
        for bits in (8, 4)
    ]
    reuse: dict = {}
    reused = [apply_reusing(model, recipe, reuse) for recipe in grid]
    assert len(calls) == 1 and len(reuse) == 2
    for recipe, variant in zip(grid, reused):
        fresh = apply_recipe(model, recipe)[0]
        assert variant.name == fresh.name
        assert all(
            torch.equal(a, b)
            for a, b in zip(variant.module.state_dict().values(), fresh.module.state_dict().values())
        )
    assert len(calls) == 3


def test_a_huge_grid_is_counted_not_expanded():
    """6 × 10^10 points: refused unless sampled, and a sample builds only the points it draws."""
    import itertools
    import time

    from core.measure.sweep import _combination

    axes = [[1, 2], [3, 4, 5], [6, 7]]
    assert [_combination(axes, i) for i in range(12)] == list(itertools.product(*axes))
    grid = {
        "prune.sparsity": [round(i / 100_000, 5) for i in range(60_000)],
        "quantize.bits": [2, 3, 4, 5, 6, 7, 8, 16],
        "quantize.group_size": list(range(1, 126)),
        "quantize.granularity": "group",
        "quantize.method": ["minmax", "mse"] * 500,
    }
    with pytest.raises(ValueError, match=r"the grid has 60,000,000,000 points .* \(--sample N\)"):
        expand_grid(grid)
    start = time.perf_counter()
    recipes = expand_grid(grid, sample=7, seed=1)
    assert len(recipes) == 7 and time.perf_counter() - start < 5
    assert recipes == expand_grid(grid, sample=7, seed=1)  # seeded


def test_distillation_steps_are_bounded():
    from core.train.distill import DistillConfig

    with pytest.raises(ValueError, match=r"steps = 200000 is out of range; allowed: an integer in 1..20000"):
        DistillConfig(steps=200_000)


# ----------------------------------------------------------------------- latency beside the baseline


def test_a_point_stores_its_latency_timed_in_turns_with_the_baseline(setup, monkeypatch, tmp_path):
    model, dataset, store = setup
    timed = []  # which model each transcription ran on, in order
    transcribe = SpeechModel.transcribe

    def recorded(self, *args, **kwargs):
        timed.append("baseline" if self.module is model.module else "variant")
        return transcribe(self, *args, **kwargs)

    monkeypatch.setattr(SpeechModel, "transcribe", recorded)
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * cpus, 0.0, 0.0))  # six sessions on the machine
    point = next(run_sweep(model, dataset, recipes_for(0.5), store, SweepSettings(latency_runs=2)))
    # one warm-up of the baseline (once per process), then baseline, variant, baseline, variant
    assert timed[-5:] == ["baseline", "baseline", "variant", "baseline", "variant"]
    assert "baseline" not in timed[:-5]  # the evaluation itself runs the variant only
    latency = point.result["latency"]
    assert latency["ratio"] == point.latency_ratio == point.result["latency_ratio"] > 0
    assert latency["ratio_of"] == "median of per-clip ratios" and len(latency["per_clip"]) == 2
    base_ms, variant_ms = zip(*latency["per_clip"])
    assert point.latency_ms == pytest.approx(sorted(variant_ms)[0] / 2 + sorted(variant_ms)[1] / 2)
    assert latency["baseline_ms"] > 0 and latency["baseline_warmup"] == 1
    assert point.contended and latency["load_average"] == 3.0 * cpus and latency["cpus"] == cpus
    back = Store(store.path).get(point.key)  # another session reads the same facts
    assert back.latency_ratio == point.latency_ratio and back.contended

    timed.clear()  # the next point: the baseline is warm already, so no more warm-up than its timed runs
    next(run_sweep(model, dataset, recipes_for(0.3), store, SweepSettings(latency_runs=2)))
    assert timed.count("baseline") == 2
    timed.clear()  # the baseline point itself is timed alone: ratio 1, no second model
    base_point = next(run_sweep(model, dataset, recipes_for(0), store, SweepSettings(latency_runs=2)))
    assert base_point.latency_ratio == 1.0 and timed.count("baseline") == 0
    assert base_point.result["latency"]["baseline_ms"] == base_point.latency_ms


def test_a_sweep_into_a_store_that_cannot_be_written_stops_before_measuring(setup, monkeypatch):
    from test_store import read_only_connections

    model, dataset, store = setup
    list(run_sweep(model, dataset, recipes_for(0.2), store, FAST))
    read_only_connections(monkeypatch)
    read_only = Store(store.path)
    counter = Counter(monkeypatch)
    assert next(run_sweep(model, dataset, recipes_for(0.2), read_only, FAST)).cached  # stored: no write
    with pytest.raises(ValueError, match="cannot be written"):
        list(run_sweep(model, dataset, recipes_for(0.2, 0.4), read_only, FAST))
    assert counter.apply == 0 and counter.transcribe == 0  # refused before the work, not after it
