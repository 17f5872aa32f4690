"""Results store: every evaluated (model, recipe, dataset, settings) point, kept in SQLite across sessions.

A point's key is a sha256 over the base model's content (weights, structure, decoding facts), the
canonical recipe JSON, the dataset fingerprint and the evaluation settings, so the same point is never
computed twice, whichever process or session asks. Each point is written in one transaction (WAL
journal): a process killed mid-sweep loses at most the point in flight.
A trained student (core.train.distill) is a point of its base model too: its `student` field names the
folder it was written to, and its recipe holds only the steps run after training.
Measurements that are not WER points (a divergence from the base model) sit in a second table, keyed alike.

Location: `$SPEECH_LAB_DATA/results.sqlite`, else `$XDG_DATA_HOME/speech-compression-lab/results.sqlite`
(default `~/.local/share/speech-compression-lab/results.sqlite`); tests pass a path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import threading
import weakref
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.measure.evaluate import Latency
from core.paths import data_dir

STORE_FILE = "results.sqlite"
FLAT_FIELDS = (
    "key",
    "created",
    "model",
    "label",
    "dataset",
    "wer",
    "cer",
    "size_bytes",
    "latency_ms",
    "parameters",
    "n_utterances",
    "eval_seconds",
    "threads",
    "cpu",
    "torch",
    "recipe",
    "settings",
    "model_id",
    "dataset_fingerprint",
    "student_folder",
    "runtime",
    "latency_ratio",
    "contended",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    model_id TEXT NOT NULL,
    recipe TEXT NOT NULL,
    label TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL,
    wer REAL NOT NULL,
    cer REAL,
    size_bytes INTEGER,
    latency_ms REAL,
    parameters INTEGER,
    result TEXT NOT NULL,
    rows TEXT NOT NULL,
    timings TEXT NOT NULL,
    machine TEXT NOT NULL,
    student TEXT
);
CREATE INDEX IF NOT EXISTS points_by_context ON points (model_id, dataset_fingerprint, settings);
CREATE TABLE IF NOT EXISTS measures (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    value TEXT NOT NULL
);
"""


def default_store_path() -> Path:
    """$SPEECH_LAB_DATA/results.sqlite, else
    $XDG_DATA_HOME (default ~/.local/share)/speech-compression-lab/."""
    return data_dir() / STORE_FILE


def canonical_json(obj) -> str:
    """One spelling per value (sorted keys, no spaces), so equal recipes and settings hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def point_key(model_id: str, recipe: dict, dataset_fingerprint: str, settings: dict) -> str:
    """The store key of one point: sha256 over model content, canonical recipe, dataset and settings."""
    payload = {"model": model_id, "recipe": recipe, "dataset": dataset_fingerprint, "settings": settings}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# ----------------------------------------------------------------------------- model identity

# Hashing tiny.en's weights takes ~0.1 s, so it is memoized per module object. The memo is checked
# against each tensor's storage pointer and in-place version counter, so a module whose weights are
# changed or replaced is hashed again. Weak keys: a module that is garbage-collected leaves the memo.
_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_hash(module) -> str:
    """sha256 over a torch module's structure (module types) and state-dict tensors; memoized per module."""
    import torch

    state = module.state_dict(keep_vars=True)
    guard = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    memo = _HASHES.get(module)
    if memo is not None and memo[0] == guard:
        return memo[1]
    digest = hashlib.sha256()
    for name, sub in module.named_modules():
        digest.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__};".encode())
    seen: dict[tuple[int, int], str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        alias = (tensor.data_ptr(), tensor.numel())
        header = f"{name}:{tensor.dtype}:{tuple(tensor.shape)}"
        if alias in seen and tensor.numel():  # tied weights (Whisper's output projection) hash once
            digest.update(f"{header}=tied:{seen[alias]};".encode())
            continue
        seen[alias] = name
        digest.update(f"{header};".encode())
        data = tensor.cpu().contiguous().reshape(-1)
        digest.update(memoryview(data.view(torch.uint8).numpy()) if data.numel() else b"")
    value = digest.hexdigest()
    _HASHES[module] = (guard, value)
    return value


def model_identity(model) -> str:
    """Content identity of a SpeechModel: its kind, decoding facts and weights (not its display name)."""
    decoding = model.decoding.to_json() if getattr(model, "decoding", None) else None
    payload = {"kind": model.kind, "decoding": decoding, "weights": weights_hash(model.module)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# ----------------------------------------------------------------------------- points


@dataclass
class Point:
    """One evaluated point: what was evaluated, what it measured, how long it took and where."""

    key: str
    model: str  # display name of the base model
    model_id: str  # `model_identity` of the base model
    recipe: dict  # canonical recipe JSON ({"steps": []} for the uncompressed model)
    label: str  # human-readable recipe
    dataset: str
    dataset_fingerprint: str
    settings: dict  # evaluation settings that are part of the key
    wer: float
    cer: float | None
    size_bytes: int | None
    latency_ms: float | None
    parameters: int | None
    result: dict  # the full evaluation (core.measure.evaluate.EvalResult.to_dict()) without its rows
    rows: list[dict]  # per-utterance (or per-pack) scores
    timings: dict  # seconds spent: apply, evaluate, latency, total
    machine: dict  # CPU, threads, torch version
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    student: dict | None = None  # a trained student: {"folder", "spec", "config"} (core.train.distill)
    cached: bool = False  # True when read back from the store rather than computed just now

    @property
    def latency(self) -> Latency | None:
        """How the latency was measured (None when it was not)."""
        data = self.result.get("latency")
        return Latency.from_json(data) if data else None

    @property
    def latency_ratio(self) -> float | None:
        """This point's latency over its baseline's, both timed in the same run clip by clip (the median of
        the per-clip ratios, core.measure.evaluate.measure_paired_latency; below 1 is faster); None for a
        point stored before latencies were paired, or measured without latency."""
        return (self.result.get("latency") or {}).get("ratio")

    @property
    def contended(self) -> bool:
        """The machine was busier than its CPUs while this point was timed (load average over the CPU
        count), so its milliseconds are inflated; a same-run `latency_ratio` still holds better."""
        latency = self.result.get("latency") or {}
        return bool(latency["contended"] if "contended" in latency else self.machine.get("contended"))

    @property
    def runtime(self) -> str:
        """Where it was measured: "lab" (the lab's PyTorch runtime) or a deployment runtime's name
        ("ct2", "onnx", "ggml"; part of the key through the settings, see core.measure.deployment)."""
        return self.settings.get("runtime", "lab")

    @property
    def is_student(self) -> bool:
        """A trained model (loaded from its folder), not the base model with `recipe` applied."""
        return self.student is not None

    def flat(self) -> dict:
        """One flat row for tables and CSV (recipe and settings as canonical JSON)."""
        return {
            "key": self.key,
            "created": self.created,
            "model": self.model,
            "label": self.label,
            "dataset": self.dataset,
            "wer": self.wer,
            "cer": self.cer,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            "parameters": self.parameters,
            "n_utterances": self.result.get("n_utterances"),
            "eval_seconds": self.timings.get("total"),
            "threads": self.machine.get("threads"),
            "cpu": self.machine.get("cpu"),
            "torch": self.machine.get("torch"),
            "recipe": canonical_json(self.recipe),
            "settings": canonical_json(self.settings),
            "model_id": self.model_id,
            "dataset_fingerprint": self.dataset_fingerprint,
            "student_folder": self.student["folder"] if self.student else None,
            "runtime": self.runtime,
            "latency_ratio": self.latency_ratio,
            "contended": self.contended,
        }

    def to_json(self) -> dict:
        """Everything, JSON-ready (the `cached` flag is not part of the record)."""
        out = asdict(self)
        out.pop("cached")
        return out


_JSON_COLUMNS = ("recipe", "settings", "result", "rows", "timings", "machine", "student")
_COLUMNS = (
    "key",
    "created",
    "model",
    "model_id",
    "recipe",
    "label",
    "dataset",
    "dataset_fingerprint",
    "settings",
    "wer",
    "cer",
    "size_bytes",
    "latency_ms",
    "parameters",
    "result",
    "rows",
    "timings",
    "machine",
    "student",
)


# sqlite error names (sqlite3.Error.sqlite_errorname, extended codes included) that mean the store cannot be
# written here and now, as opposed to a file that is not a store at all
_UNWRITABLE = (
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_AUTH",
    "SQLITE_FULL",
    "SQLITE_IOERR",
)
_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")


class Store:
    """A SQLite file of points; safe to share between threads of one process and between processes."""

    def __init__(self, path: str | Path | None = None, writable: bool = False):
        """Open (or create) the store; ValueError, before any work is done, when `path` is in a folder that
        does not exist (a mistyped path is reported, not created), is a folder, or is not a usable SQLite
        file (garbage, truncated, another program's database). `writable=True` (whoever is about to
        measure points): also ValueError when a point could not be written now (`check_writable`)."""
        self.path = Path(path) if path is not None else default_store_path()
        if path is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.parent.is_dir():
            raise ValueError(
                f"results store {self.path}: the folder {self.path.parent} does not exist; create it or give "
                "another path"
            )
        if self.path.is_dir():
            raise ValueError(f"results store {self.path} is a folder; give a file path (e.g. points.sqlite)")
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
            with self._conn:
                self._conn.executescript(_SCHEMA)
                columns = {row[1] for row in self._conn.execute("PRAGMA table_info(points)")}
                if "student" not in columns:  # a store written before students had their own field
                    self._conn.execute("ALTER TABLE points ADD COLUMN student TEXT")
        except sqlite3.DatabaseError as exc:
            if _cannot_write(exc):
                raise self._unwritable(exc) from None
            raise ValueError(
                f"results store {self.path} cannot be used ({exc}): it is not a store written by the lab, "
                "or it is damaged; move it away or give another path"
            ) from None
        if writable:
            self.check_writable()

    def check_writable(self) -> None:
        """ValueError (one line) unless a point can be written now. A row is written in a transaction that
        takes the write lock and is rolled back: a read-only file (its permissions, a read-only mount, a
        read-only connection) fails here as a real write would, whoever the user (root included); beginning
        a transaction alone does not fail. Waits like a write for another process's write to finish."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("INSERT OR REPLACE INTO measures VALUES ('', '', '')")  # rolled back
            except sqlite3.Error as exc:
                raise self._unwritable(exc) from None
            finally:
                if self._conn.in_transaction:
                    self._conn.rollback()

    def _unwritable(self, exc: sqlite3.Error) -> ValueError:
        """The one-line error for a store that cannot be written (`exc` says why)."""
        if getattr(exc, "sqlite_errorname", "").startswith(_BUSY):
            return ValueError(
                f"results store {self.path} cannot be written now ({exc}): another process holds it; try "
                "again when it is done, or give another path"
            )
        return ValueError(
            f"results store {self.path} cannot be written ({exc}): check the permissions of the file and its "
            "folder, or give another path"
        )

    def put(self, point: Point) -> None:
        """Write one point in its own transaction (replacing a point with the same key); ValueError (one
        line) when the store cannot be written."""
        record = point.to_json()
        values = [
            canonical_json(record[c]) if c in _JSON_COLUMNS and record[c] is not None else record[c]
            for c in _COLUMNS
        ]
        try:
            with self._lock, self._conn:
                self._conn.execute(
                    f"INSERT OR REPLACE INTO points ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                    values,
                )
        except sqlite3.OperationalError as exc:
            if _cannot_write(exc):
                raise self._unwritable(exc) from None
            raise

    def get(self, key: str) -> Point | None:
        """The stored point with this key, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, Point]:
        """Stored points by key (keys not in the store are simply absent from the result)."""
        found: dict[str, Point] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = f"SELECT {', '.join(_COLUMNS)} FROM points WHERE key IN ({', '.join('?' * len(chunk))})"
            found.update((p.key, p) for p in self._select(query, chunk))
        return found

    def points(
        self,
        model_id: str | None = None,
        dataset_fingerprint: str | None = None,
        settings: dict | None = None,
    ) -> list[Point]:
        """Stored points, oldest first, optionally only those of one model, dataset and settings."""
        where, args = [], []
        for column, value in (
            ("model_id", model_id),
            ("dataset_fingerprint", dataset_fingerprint),
            ("settings", canonical_json(settings) if settings is not None else None),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(f"SELECT {', '.join(_COLUMNS)} FROM points{clause} ORDER BY created, rowid", args)

    def put_measure(self, key: str, value: dict) -> None:
        """Keep one measurement that is not a WER point (e.g. a divergence), in its own transaction."""
        created = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with self._lock, self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO measures (key, created, value) VALUES (?, ?, ?)",
                    (key, created, canonical_json(value)),
                )
        except sqlite3.OperationalError as exc:
            if _cannot_write(exc):
                raise self._unwritable(exc) from None
            raise

    def get_measure(self, key: str) -> dict | None:
        """The measurement stored under `key`, or None."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM measures WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete(self, key: str) -> bool:
        """Forget one point (e.g. to force a re-measurement); True if it was there."""
        with self._lock, self._conn:
            return self._conn.execute("DELETE FROM points WHERE key = ?", (key,)).rowcount > 0

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM points WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _select(self, query: str, args: list) -> list[Point]:
        with self._lock:
            rows = self._conn.execute(query, args).fetchall()
        points = []
        for row in rows:
            record = {
                c: json.loads(v) if c in _JSON_COLUMNS and v is not None else v for c, v in zip(_COLUMNS, row)
            }
            if "distill" in record["recipe"]:  # written before students had their own field
                old = record["recipe"].pop("distill")
                record["student"] = {
                    "spec": old.get("student"),
                    "config": old.get("config"),
                    "folder": old.get("folder"),
                }
            points.append(Point(**record, cached=True))
        return points


def _cannot_write(exc: sqlite3.Error) -> bool:
    """The error says the store cannot be written (read-only, no permission, disk full, locked), not that
    the file is no store."""
    return getattr(exc, "sqlite_errorname", "").startswith(_UNWRITABLE + _BUSY)


def export_points(points: list[Point], format: str = "csv") -> str:
    """Points as CSV (one flat row each, no per-utterance rows) or JSON (everything, a list of records)."""
    if format == "json":
        return json.dumps([p.to_json() for p in points], indent=1, ensure_ascii=False)
    if format != "csv":
        raise ValueError(f"unknown export format {format!r}; expected csv or json")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FLAT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for point in points:
        writer.writerow(point.flat())
    return out.getvalue()
