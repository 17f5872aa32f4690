"""Results store: keys, round trip, filters, export, location, and the memoized model identity."""

import csv
import hashlib
import io
import json
import sqlite3

import pytest
import torch

from core.measure import store as store_module
from core.measure.store import (
    Point,
    Store,
    canonical_json,
    default_store_path,
    export_points,
    model_identity,
    point_key,
    weights_hash,
)


def make_point(
    key: str = "k1",
    wer: float = 0.25,
    size: int = 1000,
    latency: float | None = 12.5,
    dataset_fingerprint: str = "fp",
    settings: dict | None = None,
) -> Point:
    return Point(
        key=key,
        model="tiny",
        model_id="m" * 64,
        recipe={"steps": [{"prune": {"sparsity": 0.5}}]},
        label="prune 50%",
        dataset="quick",
        dataset_fingerprint=dataset_fingerprint,
        settings=settings or {"packed": True},
        wer=wer,
        cer=0.1,
        size_bytes=size,
        latency_ms=latency,
        parameters=42,
        result={"wer": wer, "n_utterances": 2, "wer_ci95": [0.1, 0.4]},
        rows=[
            {"id": "a", "hypothesis": "hello", "reference": "hello", "wer": 0.0},
            {"id": "b", "hypothesis": "wold", "reference": "world", "wer": 1.0},
        ],
        timings={"total": 1.5},
        machine={"cpu": "x86_64", "threads": 2, "torch": torch.__version__},
    )


def test_point_key_is_canonical_and_covers_every_part():
    recipe = {"steps": [{"quantize": {"bits": 4, "granularity": "channel"}}]}
    reordered = {"steps": [{"quantize": {"granularity": "channel", "bits": 4}}]}
    key = point_key("model", recipe, "data", {"packed": True, "latency_runs": 2})
    assert key == point_key("model", reordered, "data", {"latency_runs": 2, "packed": True})
    assert len(key) == 64
    others = {
        point_key("model2", recipe, "data", {"packed": True, "latency_runs": 2}),
        point_key("model", {"steps": []}, "data", {"packed": True, "latency_runs": 2}),
        point_key("model", recipe, "data2", {"packed": True, "latency_runs": 2}),
        point_key("model", recipe, "data", {"packed": False, "latency_runs": 2}),
    }
    assert key not in others and len(others) == 4
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_round_trip_and_filters(tmp_path):
    path = tmp_path / "results.sqlite"
    with Store(path) as store:
        point = make_point()
        store.put(point)
        store.put(make_point("k2", wer=0.5, dataset_fingerprint="other"))
        assert len(store) == 2 and "k1" in store and "nope" not in store
        back = store.get("k1")
    assert back.cached and not point.cached
    assert back.to_json() == point.to_json()  # every field, rows and nested JSON included
    with Store(path) as store:  # a new connection (another session) sees both
        assert [p.key for p in store.points()] == ["k1", "k2"]
        assert [p.key for p in store.points(dataset_fingerprint="other")] == ["k2"]
        assert [p.key for p in store.points(settings={"packed": True})] == ["k1", "k2"]
        assert store.points(settings={"packed": False}) == []
        assert set(store.get_many(["k1", "k2", "k3"])) == {"k1", "k2"}
        assert store.delete("k2") and not store.delete("k2")
        assert store.get("k2") is None


def test_a_student_is_its_own_kind_of_point_and_old_stores_are_read_as_such(tmp_path):
    import dataclasses

    student = {"spec": {"decoder_layers": 2}, "config": {"steps": 5}, "folder": "/models/student"}
    point = dataclasses.replace(make_point("s1"), recipe={"steps": []}, student=student)
    with Store(tmp_path / "new.sqlite") as store:
        store.put(point)
        back = store.get("s1")
        assert (
            back.is_student and back.student == student and back.flat()["student_folder"] == "/models/student"
        )
        assert not store.get_many(["s1"])["s1"].recipe["steps"]
    # a store from before students had their own column kept them as a "distill" entry of the recipe
    old = tmp_path / "old.sqlite"
    with Store(old) as store:
        store.put(make_point("k1"))
    with sqlite3.connect(old) as conn:
        conn.execute("ALTER TABLE points DROP COLUMN student")
        recipe = {"steps": [], "distill": {"student": {"decoder_layers": 1}, "config": {}, "folder": "/s"}}
        conn.execute("UPDATE points SET recipe = ? WHERE key = 'k1'", (json.dumps(recipe),))
    with Store(old) as store:  # the column is added back, the old entry read as a student
        back = store.get("k1")
    assert back.is_student and back.student == {"spec": {"decoder_layers": 1}, "config": {}, "folder": "/s"}
    assert back.recipe == {"steps": []} and not make_point().is_student


def test_put_replaces_a_point_with_the_same_key(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        store.put(make_point(wer=0.25))
        store.put(make_point(wer=0.125))
        assert len(store) == 1 and store.get("k1").wer == 0.125


def test_measures_round_trip_apart_from_points(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        assert store.get_measure("m1") is None
        store.put_measure("m1", {"divergence": 0.25, "size_bytes": 10})
        store.put_measure("m1", {"divergence": 0.125, "size_bytes": 10})  # replaced, not added
        assert len(store) == 0  # not a WER point
    with Store(tmp_path / "r.sqlite") as store:  # another session
        assert store.get_measure("m1") == {"divergence": 0.125, "size_bytes": 10}


def test_store_uses_wal_journal(tmp_path):
    Store(tmp_path / "r.sqlite").close()
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_export_csv_and_json(tmp_path):
    points = [make_point("k1", latency=None), make_point("k2", wer=0.5)]
    rows = list(csv.DictReader(io.StringIO(export_points(points, "csv"))))
    assert [r["key"] for r in rows] == ["k1", "k2"]
    assert rows[0]["latency_ms"] == "" and float(rows[1]["wer"]) == 0.5
    assert json.loads(rows[0]["recipe"]) == {"steps": [{"prune": {"sparsity": 0.5}}]}
    records = json.loads(export_points(points, "json"))
    assert records[1]["rows"][1]["hypothesis"] == "wold" and "cached" not in records[1]
    with pytest.raises(ValueError, match="csv or json"):
        export_points(points, "xml")


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECH_LAB_DATA", str(tmp_path / "data"))
    assert default_store_path() == tmp_path / "data" / "results.sqlite"
    monkeypatch.delenv("SPEECH_LAB_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "speech-compression-lab" / "results.sqlite"
    store = Store()
    assert store.path.parent.is_dir()
    store.close()


def test_weights_hash_is_memoized_per_module(tiny_whisper, monkeypatch):
    first = weights_hash(tiny_whisper)
    calls = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(store_module.hashlib, "sha256", lambda *a: calls.append(1) or real_sha256(*a))
    assert weights_hash(tiny_whisper) == first
    assert calls == []  # nothing rehashed


def test_weights_hash_follows_weight_changes(tiny_whisper):
    import copy

    first = weights_hash(tiny_whisper)
    twin = copy.deepcopy(tiny_whisper)
    assert weights_hash(twin) == first  # content, not object identity
    weight = twin.model.encoder.layers[0].fc1.weight
    original = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] = original + 1.0  # in place: the version counter moves
    changed = weights_hash(twin)
    assert changed != first
    with torch.no_grad():
        weight[0, 0] = original
    assert weights_hash(twin) == first
    fc2 = twin.model.decoder.layers[0].fc2
    fc2.weight = torch.nn.Parameter(torch.zeros_like(fc2.weight))
    assert weights_hash(twin) not in (first, changed)  # a replaced parameter is seen too


def test_model_identity_ignores_the_display_name(tiny_whisper):
    from core.models.whisper import WhisperDecoding, speech_model

    decoding = WhisperDecoding(prompt=(117,), eot=116, suppress=(), suppress_at_begin=(), max_length=64)
    model = speech_model("a", tiny_whisper, None, decoding, {})
    assert model_identity(model) == model_identity(model.with_module(tiny_whisper, name="b"))
    other = speech_model("a", tiny_whisper, None, WhisperDecoding((117,), 116, (5,), ()), {})
    assert model_identity(other) != model_identity(model)


def test_a_store_that_cannot_be_used_is_refused_before_any_work(tmp_path):
    (tmp_path / "garbage.sqlite").write_bytes(b"not a database at all " * 100)
    (tmp_path / "truncated.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)
    (tmp_path / "folder.sqlite").mkdir()
    for name, message in [
        ("garbage.sqlite", "cannot be used .*not a store written by the lab"),
        ("truncated.sqlite", "cannot be used"),
        ("folder.sqlite", "is a folder"),
        ("typo/points.sqlite", "the folder .*typo does not exist"),
    ]:
        with pytest.raises(ValueError, match=message):
            Store(tmp_path / name)
    assert not (tmp_path / "typo").exists()  # a mistyped path is reported, not created
    assert (tmp_path / "garbage.sqlite").read_bytes().startswith(b"not a database")  # left as it was


def read_only_connections(monkeypatch) -> None:
    """Open every store through SQLite's read-only mode: writes then fail as they do on a read-only file or
    mount, even for root (who is not stopped by a file's permissions)."""
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        store_module.sqlite3,
        "connect",
        lambda path, **kwargs: real_connect(f"file:{path}?mode=ro", uri=True, **kwargs),
    )


def test_a_store_that_cannot_be_written_is_refused_before_any_work_but_still_reads(tmp_path, monkeypatch):
    path = tmp_path / "results.sqlite"
    with Store(path, writable=True) as store:  # a writable store passes the check ...
        store.put(make_point("k1"))
        store.check_writable()
        assert len(store) == 1 and store.get_measure("") is None  # ... which leaves nothing behind
    read_only_connections(monkeypatch)
    with pytest.raises(ValueError, match=r"results store .*results.sqlite cannot be written \(.*readonly"):
        Store(path, writable=True)
    with Store(path) as store:  # reading needs no write: `pareto` and `export` work on it
        assert [p.key for p in store.points()] == ["k1"]
        with pytest.raises(ValueError, match="cannot be written") as error:
            store.check_writable()
        assert "\n" not in str(error.value)
        with pytest.raises(ValueError, match="cannot be written"):  # a write is one clear line, not sqlite's
            store.put(make_point("k2"))
        with pytest.raises(ValueError, match="cannot be written"):
            store.put_measure("m", {"divergence": 0.5})
    monkeypatch.undo()
    with Store(path) as store:
        assert len(store) == 1  # nothing was written


def test_a_store_that_cannot_be_created_is_reported_as_unwritable(tmp_path, monkeypatch):
    read_only_connections(monkeypatch)  # as a folder that cannot be written: the file cannot be created
    with pytest.raises(ValueError, match=r"cannot be written \(unable to open database file\)"):
        Store(tmp_path / "new.sqlite")
    assert not (tmp_path / "new.sqlite").exists()


def test_an_old_point_without_a_paired_latency_still_loads(tmp_path):
    """Points stored before latencies were timed beside the baseline: no ratio, no contention facts."""
    old = make_point("old")
    old.result["latency"] = {  # as measure_latency kept it: one model, alone
        "median_ms": 12.5, "min_ms": 11.0, "max_ms": 14.0, "runs": 2, "threads": 2, "clip_seconds": 1.5,
        "warmup": 0,
    }  # fmt: skip
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        store.put(old)
    with sqlite3.connect(path) as conn:  # exactly the JSON an old version wrote
        assert "ratio" not in json.loads(conn.execute("SELECT result FROM points").fetchone()[0])["latency"]
    with Store(path) as store:
        back = store.get("old")
    assert back.latency.median_ms == 12.5 and back.latency_ratio is None and not back.contended
    assert back.flat()["latency_ratio"] is None and back.flat()["contended"] is False
    row = next(csv.DictReader(io.StringIO(export_points([back], "csv"))))
    assert row["latency_ratio"] == "" and row["latency_ms"] == "12.5"
    assert make_point().latency_ratio is None  # measured without latency at all


def test_a_point_carries_its_paired_latency_through_the_store(tmp_path):
    point = make_point("new")
    point.result["latency"] = {
        "median_ms": 10.0, "min_ms": 9.0, "max_ms": 11.0, "runs": 2, "threads": 2, "clip_seconds": 1.5,
        "baseline_ms": 20.0, "ratio": 0.5, "ratio_of": "median of per-clip ratios",
        "per_clip": [[19.0, 9.0], [21.0, 11.0]], "load_average": 12.0, "cpus": 4, "contended": True,
    }  # fmt: skip
    with Store(tmp_path / "r.sqlite") as store:
        store.put(point)
        back = store.get("new")
    assert back.latency_ratio == 0.5 and back.contended and back.latency.median_ms == 10.0
    assert back.flat()["latency_ratio"] == 0.5 and back.flat()["contended"] is True
