"""The command line end to end on the real bundled model: compress → reload → same transcripts; evaluate."""

import json
from pathlib import Path

import pytest

from core.audio import load_audio
from core.cli import main
from core.compress.recipe import Recipe
from core.data import load_dataset
from core.io.folders import load_model

RECIPE = {
    "steps": [
        {"prune": {"sparsity": 0.2, "structure": "neurons", "groups": ["encoder.ffn", "decoder.ffn"]}},
        {"low_rank": {"energy": 0.98, "groups": ["decoder.ffn"]}},
        {
            "quantize": {
                "bits": 4,
                "granularity": "group",
                "group_size": 64,
                "groups": ["encoder.attention", "encoder.ffn", "decoder.attention", "decoder.ffn"],
            }
        },
        {"quantize": {"bits": 8, "groups": ["embedding"]}},  # the tied table: stored once, 8-bit
    ]
}


@pytest.fixture(scope="module")
def clips():
    dataset = load_dataset("quick")
    return [load_audio(u.path) for u in dataset.utterances[:3]]


def test_compress_export_reload_gives_identical_transcripts(tmp_path, clips, capsys):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(RECIPE))
    assert main(["compress", "--recipe", str(recipe_file), "--out", str(tmp_path / "small")]) == 0
    assert "wrote" in capsys.readouterr().out

    base = load_model()
    in_memory = base.with_module(Recipe.from_json(RECIPE).apply(base.module)[0])
    reloaded = load_model(tmp_path / "small")
    assert reloaded.transcribe(clips) == in_memory.transcribe(clips)

    size = sum(f.stat().st_size for f in (tmp_path / "small").iterdir())
    assert size < 151_060_302 / 4  # fp32 safetensors of tiny.en: 151 MB
    meta = json.loads((tmp_path / "small" / "speech_lab.json").read_text())
    assert meta["recipe"] == RECIPE and meta["report"]


def test_evaluate_with_recipe_writes_json(tmp_path, capsys):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps({"steps": [{"quantize": {"bits": 8}}]}))
    manifest = tmp_path / "two.csv"
    quick = load_dataset("quick").utterances[:2]
    manifest.write_text("path,text\n" + "".join(f'{u.path},"{u.text}"\n' for u in quick))
    out = tmp_path / "result.json"
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                str(manifest),
                "--recipe",
                str(recipe_file),
                "--json",
                str(out),
                "--latency-runs",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "WER" in printed and "latency" in printed
    result = json.loads(out.read_text())
    for key in ("wer", "cer", "n_utterances", "size_bytes", "latency_ms", "rows"):
        assert key in result
    assert result["n_utterances"] == 2 and len(result["rows"]) == 2
    assert result["size_bytes"] < 50_000_000  # 8-bit: about 42 MB


def test_invalid_recipe_is_refused_with_the_key_named(tmp_path, capsys):
    recipe_file = tmp_path / "bad.json"
    recipe_file.write_text(json.dumps({"steps": [{"quantize": {"bits": 0}}]}))
    assert main(["compress", "--recipe", str(recipe_file), "--out", str(tmp_path / "x")]) == 2
    assert "bits" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_transcribe_reports_bad_audio_clearly(tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    assert main(["transcribe", str(bad)]) == 2
    assert "notes.wav" in capsys.readouterr().err


def test_transcribe_warns_when_a_file_has_no_speech(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    noise = tmp_path / "hiss.wav"
    sf.write(noise, (0.1 * np.random.default_rng(0).standard_normal(3 * 16000)).astype(np.float32), 16000)
    hello = Path(__file__).resolve().parents[2] / "assets" / "samples" / "hello.wav"
    assert main(["transcribe", str(noise), str(hello)]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("no speech detected") == 1 and "hiss.wav" in printed.err
    assert "short test" in printed.out


def test_building_the_command_line_does_not_import_torch():
    """`python -m core --help` stays instant: every command module imports torch only when it runs."""
    import subprocess
    import sys

    code = "import sys; from core.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_sensitivity_and_measured_budget_on_one_group(tmp_path, capsys):
    """`sensitivity` then `budget --measure --verify` on the real model,
    limited to the conv group and two clips."""
    manifest = tmp_path / "two.csv"
    quick = load_dataset("quick").utterances[:2]
    manifest.write_text("path,text\n" + "".join(f'{u.path},"{u.text}"\n' for u in quick))
    common = [
        "--groups",
        "conv",
        "--dataset",
        str(manifest),
        "--store",
        str(tmp_path / "r.sqlite"),
        "--latency-runs",
        "0",
    ]
    assert main(["sensitivity", *common]) == 0
    table = capsys.readouterr().out
    assert "conv" in table and "5-bit channel" in table and "MB saved" in table
    out = tmp_path / "plan.json"
    assert (
        main(
            [
                "budget",
                "--max-mb",
                "150",
                "--signal",
                "wer",
                "--measure",
                "--candidates",
                "2",
                "--verify",
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "measured WER" in printed and "(measured)" in printed and "measured: WER" in printed
    plan = Recipe.load(out)
    assert [config.groups for _, config in plan.steps] == [("conv",)]


def test_divergence_budget_on_one_group(tmp_path, capsys):
    """`budget` by size defaults to the divergence allocation: probes every quantizer on the group, measures
    the best candidates together, and the table is cached for the next run."""
    manifest = tmp_path / "two.csv"
    quick = load_dataset("quick").utterances[:2]
    manifest.write_text("path,text\n" + "".join(f'{u.path},"{u.text}"\n' for u in quick))
    common = [
        "--groups",
        "conv",
        "--dataset",
        str(manifest),
        "--store",
        str(tmp_path / "r.sqlite"),
        "--latency-runs",
        "0",
        "--max-mb",
        "150.5",
    ]
    out = tmp_path / "plan.json"
    assert main(["budget", "--measure", "--candidates", "2", "--verify", "--out", str(out), *common]) == 0
    captured = capsys.readouterr()
    assert "divergence" in captured.out and "(measured)" in captured.out and "measured: WER" in captured.out
    assert (
        "17/18" in captured.err and "(0 cached)" in captured.err
    )  # 1 baseline + 5 bit widths + 4 quantizers x 3
    plan = Recipe.load(out)
    assert [config.groups for _, config in plan.steps] == [("conv",)]
    assert main(["budget", *common]) == 0
    captured = capsys.readouterr()
    assert "18/18 (18 cached)" in captured.err and "(estimated)" in captured.out
    assert main(["budget", "--signal", "divergence", "--max-ms", "100", *common[:-2]]) == 2
    assert "needs --signal wer" in capsys.readouterr().err


def nothing_is_loaded(monkeypatch) -> None:
    """Loading a model or a dataset (the first work a command does) fails the test."""
    import core.data
    import core.io.folders

    def loaded(*args, **kwargs):
        raise AssertionError("work started before the store was checked")

    monkeypatch.setattr(core.io.folders, "load_model", loaded)
    monkeypatch.setattr(core.data, "load_dataset", loaded)


def writing_commands(tmp_path: Path, store: Path) -> list[list[str]]:
    """Every command that writes points to the store, as a user would type it."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"quantize.bits": [8, 4]}))
    return [
        ["sweep", "--grid", str(grid), "--store", str(store)],
        ["sensitivity", "--groups", "conv", "--store", str(store)],
        ["budget", "--max-mb", "30", "--groups", "conv", "--store", str(store)],
        ["distill", "--student-decoder-layers", "1", "--steps", "2", "--out", str(tmp_path / "s"), "--store",
         str(store)],
    ]  # fmt: skip


def test_a_store_that_cannot_be_written_stops_every_writing_command_at_once(tmp_path, capsys, monkeypatch):
    from core.measure.store import Store

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "measure"))
    from test_store import read_only_connections

    store = tmp_path / "results.sqlite"
    Store(store).close()
    read_only_connections(monkeypatch)  # as a read-only file or mount, even for root
    nothing_is_loaded(monkeypatch)
    for command in writing_commands(tmp_path, store):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"error: results store {store} cannot be written ("), (command, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (command, err)
    assert not (tmp_path / "s").exists()  # distill did not start training either
    assert main(["pareto", "--store", str(store)]) == 0  # reading it still works


def test_a_mistyped_store_path_is_reported_not_created(tmp_path, capsys, monkeypatch):
    nothing_is_loaded(monkeypatch)
    typo = tmp_path / "resluts" / "results.sqlite"
    for command in writing_commands(tmp_path, typo):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err == (
            f"error: results store {typo}: the folder {typo.parent} does not exist; create it or give "
            "another path\n"
        ), command
    assert not typo.parent.exists()
