"""The kinds of long work a job can be: a frozen spec (plain JSON fields) and one `run(context)`.

A spec names everything by value or by name (model name or folder, dataset name, recipe JSON), never by
a Python object, so the worker process can build it again from the board, and equal requests from two
sessions are one job. Each `run` reports progress through its JobContext (which raises Cancelled when the
user cancelled) and returns a JSON result; what it measures goes to the results store as it is measured,
so a job run again after its worker was killed starts where the store and its checkpoint left off.

Adding a kind: one dataclass here with `kind`, `describe()` and `run()`, and one line in KINDS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch

from core.compress.recipe import Recipe, apply_recipe
from core.data import Dataset, load_dataset, load_waves, saved_stamp
from core.io.folders import load_model
from core.measure.deployment import measure_deployed
from core.measure.evaluate import evaluate
from core.measure.executors import Executor
from core.measure.sensitivity import divergence_plan, run_sensitivity, search_budget, sensitivity_plan
from core.measure.store import Store, canonical_json, model_identity
from core.measure.sweep import SweepSettings, code_version, run_sweep
from core.models import EncoderCache
from core.train.distill import (
    CHECKPOINT,
    DistillConfig,
    StudentSpec,
    distill,
    format_progress,
    publish_student,
    training_facts,
)


class Cancelled(Exception):
    """The user cancelled the job (raised from JobContext.report, or by the worker's signal handler)."""


class JobContext:
    """What a running job may do: report progress (raising Cancelled when asked to stop), log, publish a
    partial result, and open the results store."""

    def __init__(self, board, job_id: str, store_path: Path, loaded: dict | None = None):
        """`loaded`: models and datasets kept by the worker between its jobs (see `load`)."""
        self.board, self.job_id, self.store_path = board, job_id, store_path
        self.loaded = {} if loaded is None else loaded

    def report(self, done: int, total: int, stage: str, computed: bool = False) -> None:
        """`computed`: this unit was computed now (not read from the store), so it counts for the ETA."""
        if self.board.progress(self.job_id, done, total, stage, computed):
            raise Cancelled()

    def log(self, line: str) -> None:
        self.board.append_log(self.job_id, line)

    def publish(self, partial: dict) -> None:
        """A result so far (e.g. a training curve), readable while the job runs."""
        self.board.set_partial(self.job_id, partial)

    def store(self) -> Store:
        return Store(self.store_path)

    def load(self, model: str, dataset: str) -> tuple:
        """(model, dataset, waves), kept for the worker's next job (the last two models and datasets): a
        page's jobs follow one another on the same model. Jobs never change a loaded model in place
        (recipes apply to copies)."""
        if model not in self.loaded:
            self.loaded[model] = load_model(model)
        data_key = (dataset, saved_stamp(dataset))  # a set saved again under its name is read again
        if data_key not in self.loaded:
            data = load_dataset(dataset)
            self.loaded[data_key] = (data, load_waves(data))
        for name in list(self.loaded)[:-4]:  # the oldest go first
            self.loaded.pop(name)
        return self.loaded[model], *self.loaded[data_key]


@dataclass(frozen=True)
class Measuring:
    """How points are measured and where: sweep settings, torch threads (part of a point's store key when
    latency is measured) and the point executor."""

    packed: bool = True
    latency_runs: int = 2
    threads: int | None = None  # None: the worker's default
    executor: str = "local"
    address: str | None = None
    workers: int = 1

    def settings(self) -> SweepSettings:
        return SweepSettings(packed=self.packed, latency_runs=self.latency_runs)

    def points_executor(self) -> Executor:
        return Executor(self.executor, self.address, self.workers)

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)


@dataclass(frozen=True)
class SweepJob:
    """Measure recipes (a grid's points) of `model` on `dataset`; stored points come back at once."""

    kind: ClassVar[str] = "sweep"
    model: str
    dataset: str
    recipes: tuple = ()  # recipe JSON objects
    measuring: Measuring = field(default_factory=Measuring)

    def describe(self) -> str:
        return f"sweep of {len(self.recipes)} recipes · {self.model} · {self.dataset}"

    def run(self, context: JobContext) -> dict:
        self.measuring.apply_threads()
        model, dataset, waves = context.load(self.model, self.dataset)
        total, keys = len(self.recipes), []
        context.report(0, total, "loaded the model; measuring")
        points = run_sweep(
            model,
            dataset,
            list(self.recipes),
            context.store(),
            self.measuring.settings(),
            waves,
            executor=self.measuring.points_executor(),
        )
        for point in points:
            keys.append(point.key)
            context.report(len(keys), total, point.label, computed=not point.cached)
            if not point.cached:
                context.log(f"{point.label}: WER {100 * point.wer:.2f}%, {point.size_bytes / 1e6:.2f} MB")
        return {"points": keys}


@dataclass(frozen=True)
class SensitivityJob:
    """Probe each layer group alone (core.measure.sensitivity), then optionally search a size budget."""

    kind: ClassVar[str] = "sensitivity"
    model: str
    dataset: str
    groups: tuple = ()  # () = every group probed by default
    signal: str = "wer"
    budget_mb: float | None = None  # with `measured_budget`: measure the budget search's candidates too
    measured_budget: bool = False
    measuring: Measuring = field(default_factory=Measuring)

    def describe(self) -> str:
        budget = f" + measured {self.budget_mb:g} MB budget" if self.measured_budget else ""
        groups = f"{len(self.groups)} groups" if self.groups else "the default groups"
        return f"sensitivity ({self.signal}) of {groups}{budget} · {self.model}"

    def plan(self) -> list:

        groups = tuple(self.groups) or None  # none given: the default groups
        return (divergence_plan if self.signal == "divergence" else sensitivity_plan)(groups)

    def run(self, context: JobContext) -> dict:
        self.measuring.apply_threads()
        model, dataset, waves = context.load(self.model, self.dataset)
        store, plan, cache, rows = context.store(), self.plan(), EncoderCache(), []
        settings = self.measuring.settings()
        measured = run_sensitivity(
            model,
            dataset,
            store,
            plan,
            settings,
            waves,
            cache,
            self.signal,
            executor=self.measuring.points_executor(),
        )
        for row in measured:
            rows.append(row)
            context.report(len(rows) - 1, len(plan), row.label, computed=True)
        result = {"rows": [row.to_json() for row in rows]}
        if self.measured_budget and self.budget_mb:
            context.report(len(plan), len(plan), "budget search: measuring candidates")
            plan_found = search_budget(
                model,
                dataset,
                store,
                rows,
                self.signal,
                max_bytes=self.budget_mb * 1e6,
                measured=True,
                settings=settings,
                waves=waves,
                encoder_cache=cache,
                announce=lambda label: context.log(f"budget: measuring {label}"),
            )
            result["budget"] = {"recipe": plan_found.recipe.to_json(), "label": plan_found.recipe.describe()}
        return result


@dataclass(frozen=True)
class DistillJob:
    """Train a student (core.train.distill) with checkpoints, then write it and store its point.

    Its partial result, published as it trains (and its result): "history" rows [step, loss, CE, KL,
    seconds], "validation" rows [step, loss, WER] on the held-out voices, "evals" rows [step, WER] on the
    report set (the last one: the kept student, at its step), "teacher_wer" on the held-out voices, and
    once done "kept_step" and "stopped_early"."""

    kind: ClassVar[str] = "distill"
    teacher: str
    student: dict  # core.train.distill.StudentSpec fields
    config: dict  # core.train.distill.DistillConfig fields
    folder: str
    train: str = "train"
    train_utterances: int | None = None  # the first N of `train`
    eval_dataset: str = "quick"
    measuring: Measuring = field(default_factory=Measuring)

    def describe(self) -> str:

        return f"{StudentSpec(**self.student).describe(self.config.get('steps', 0))} · {self.teacher}"

    def run(self, context: JobContext) -> dict:
        self.measuring.apply_threads()
        spec, config = StudentSpec(**self.student), DistillConfig(**self.config)
        teacher = load_model(self.teacher)
        train, eval_set = load_dataset(self.train), load_dataset(self.eval_dataset)
        train_waves, eval_waves = load_waves(train), load_waves(eval_set)
        if self.train_utterances:
            count = self.train_utterances
            train = Dataset(f"{train.name}[:{count}]", train.utterances[:count])
            train_waves = train_waves[:count]
        student, after = spec.build(teacher)
        folder = Path(self.folder)
        history, evals, progresses = [], [], []
        partial = {"history": history, "evals": evals, "validation": [], "teacher_wer": None}
        for progress in distill(
            student, teacher, train, config, eval_set, folder / CHECKPOINT, train_waves, eval_waves
        ):
            progresses.append(progress)
            computed = progress.stage == "train"
            if progress.stage == "train":
                history.append(
                    [progress.step, progress.loss, progress.cross_entropy, progress.kl, progress.seconds]
                )
            if progress.stage == "eval":
                at = progress.step if progress.kept_step is None else progress.kept_step
                evals.append([at, progress.wer])
            if progress.stage == "validate":
                facts = training_facts(progresses)
                partial.update(validation=facts["validation"], teacher_wer=facts["teacher_validation_wer"])
            if progress.stage != "train" or progress.step % 10 == 0 or progress.step == progress.steps:
                context.log(format_progress(progress))
                context.publish(partial)
            context.report(
                progress.step, progress.steps, f"{progress.stage} · step {progress.step}", computed
            )
        facts = training_facts(progresses)
        partial.update(kept_step=facts["kept_step"], stopped_early=facts["stopped_early"])
        context.publish(partial)
        context.report(config.steps, config.steps, "writing the student and measuring its point")
        _, point = publish_student(
            student,
            after,
            teacher,
            spec,
            config,
            folder,
            [wer for _, wer in evals],
            eval_set,
            context.store(),
            self.measuring.settings(),
            eval_waves,
            training=facts,
        )
        return {**partial, "folder": str(folder), "point": point.key}


@dataclass(frozen=True)
class EvaluateJob:
    """`python -m core evaluate` of a model (with a recipe applied) on a dataset: one clip per window, WER
    by clip length, latency. Its result is kept on the board, so any session shows it again at once;
    `identity` (see `evaluation_identity`) makes a changed model, dataset or measuring code a new job."""

    kind: ClassVar[str] = "evaluate"
    model: str
    dataset: str
    identity: str
    recipe: dict = field(default_factory=lambda: {"steps": []})
    latency_runs: int = 5
    threads: int | None = None

    def describe(self) -> str:
        what = Recipe.from_json(self.recipe).describe() or "uncompressed"
        return f"evaluate {what} · {self.model} · {self.dataset}"

    def run(self, context: JobContext) -> dict:
        if self.threads:
            torch.set_num_threads(self.threads)
        model, dataset, waves = context.load(self.model, self.dataset)
        recipe = Recipe.from_json(self.recipe)
        context.report(0, len(waves), "applying the recipe" if not recipe.is_empty else "transcribing")
        variant = model if recipe.is_empty else apply_recipe(model, recipe)[0]

        def progress(done: int, total: int) -> None:
            context.report(done, total, f"transcribed {done} of {total} clips", computed=True)

        result = evaluate(variant, dataset, waves, self.latency_runs, progress=progress)
        return result.to_dict()


def evaluation_identity(model, dataset) -> str:
    """What an evaluation's numbers depend on besides its spec: the model's content, the dataset's
    content and the measuring code."""
    facts = canonical_json([model_identity(model), dataset.fingerprint(), code_version()])
    return hashlib.sha256(facts.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExportJob:
    """The lab's point of a recipe (or a trained student's point), then the export measured in a runtime."""

    kind: ClassVar[str] = "export"
    model: str
    recipe: dict
    runtime: str
    folder: str
    dataset: str = "quick"
    student_point: str | None = None  # store key of a trained student's point: deploy that student
    measuring: Measuring = field(default_factory=Measuring)

    def describe(self) -> str:

        what = "a trained student" if self.student_point else Recipe.from_json(self.recipe).describe()
        return f"{what} in {self.runtime} · {self.model}"

    def run(self, context: JobContext) -> dict:
        self.measuring.apply_threads()
        model, dataset, waves = context.load(self.model, self.dataset)
        store, recipe, settings = context.store(), Recipe.from_json(self.recipe), self.measuring.settings()
        stages = {"lab": 0, "export": 1, "transcribe": 2, "latency": 3}

        def report(stage: str, fraction: float) -> None:
            context.report(stages.get(stage, 2), len(stages), stage, computed=False)

        report("lab", 0.0)
        student = store.get(self.student_point) if self.student_point else None
        if self.student_point and student is None:
            raise ValueError(f"the student point {self.student_point} is not in the store")
        lab = student or next(run_sweep(model, dataset, [recipe], store, settings, waves))
        there = measure_deployed(
            model,
            recipe,
            self.runtime,
            dataset,
            store,
            self.folder,
            settings,
            waves,
            report,
            student,
            self.model,
        )
        return {"lab": lab.key, "there": there.key}


KINDS = {kind.kind: kind for kind in (SweepJob, SensitivityJob, DistillJob, EvaluateJob, ExportJob)}


def to_spec(job) -> dict:
    """A job spec as the board stores it (plain JSON)."""
    return json.loads(json.dumps(asdict(job)))


def from_spec(kind: str, spec: dict):
    """The job spec object of a board row; ValueError for an unknown kind or field."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; known: {sorted(KINDS)}")
    cls = KINDS[kind]
    names = {f.name for f in fields(cls)}
    unknown = set(spec) - names
    if unknown:
        raise ValueError(f"a {kind} job has no field(s) {sorted(unknown)}")
    values = dict(spec)
    if "measuring" in names:
        values["measuring"] = Measuring(**values.get("measuring", {}))
    for name in ("recipes", "groups"):
        if name in values:
            values[name] = tuple(values[name])
    return cls(**values)
