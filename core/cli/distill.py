"""`distill`: train a smaller student, or fine-tune a compressed model back, either one optionally in
short-context mode and optionally quantized after training (`--then`); options left out take DistillConfig's
defaults, except the validation split: 20% of the training voices are held out unless `--held-out 0`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import DEFAULT_MODEL, add_store_arg, writable_store

CONFIG_OPTIONS = {
    "steps": "steps",
    "temperature": "temperature",
    "alpha": "alpha",
    "lr": "learning_rate",
    "batch_size": "batch_size",
    "warmup": "warmup_steps",
    "seed": "seed",
    "eval_every": "eval_every",
    "held_out": "held_out",
    "patience": "patience",
}  # command-line option -> DistillConfig field
HELD_OUT = 0.2  # the CLI's validation split: a fifth of the training voices (4 of the bundled train's 20)


def run(args: argparse.Namespace) -> None:
    """Train a student (smaller, or a compressed model to recover), write it, store its point."""
    from core.compress.recipe import Recipe  # lazy: --help
    from core.data import load_dataset  # lazy: --help
    from core.io.folders import load_model  # lazy: --help
    from core.measure.sweep import SweepSettings  # lazy: --help
    from core.train.distill import (  # lazy: --help
        CHECKPOINT,
        DistillConfig,
        StudentSpec,
        distill,
        format_progress,
        judge_student,
        publish_student,
        training_facts,
    )

    recipe = Recipe.load(args.recipe).to_json() if args.recipe else None
    then = Recipe.load(args.then).to_json() if args.then else None
    context = {"floor_seconds": args.context_floor} if args.context_floor is not None else {}
    spec = StudentSpec(
        args.student_decoder_layers,
        args.student_encoder_layers,
        recipe,
        context if args.short_context or args.context_floor is not None else None,
        then,
    )
    given = {
        field: getattr(args, option)
        for option, field in CONFIG_OPTIONS.items()
        if getattr(args, option) is not None
    }
    given.setdefault("held_out", HELD_OUT)
    if isinstance(given["held_out"], float) and given["held_out"].is_integer():
        given["held_out"] = int(given["held_out"])  # a count of voices
    if "warmup_steps" not in given:  # the default warm-up, but never all of a short run
        given["warmup_steps"] = min(DistillConfig.warmup_steps, given.get("steps", DistillConfig.steps) - 1)
    # a short-context student's encoder learns the short window unless frozen on purpose (measured on quick:
    # 7.8% WER trained, 14.9% frozen, both 150 steps)
    train_encoder = args.train_encoder or (spec.short_context is not None and not args.freeze_encoder)
    config = DistillConfig(pseudo_labels=args.pseudo_labels, train_encoder=train_encoder, **given)
    store = None if args.no_store else writable_store(args.store)  # refused before training, not after
    train, eval_set = load_dataset(args.dataset), load_dataset(args.eval_dataset)
    teacher = load_model(args.teacher)
    student, after = spec.build(teacher)
    wers, progresses = [], []
    try:
        for progress in distill(
            student, teacher, train, config, eval_set, checkpoint=Path(args.out) / CHECKPOINT
        ):
            print(format_progress(progress), flush=True)
            progresses.append(progress)
            if progress.stage == "eval":
                wers.append(progress.wer)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: run the same command again to resume from {Path(args.out) / CHECKPOINT}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    facts = training_facts(progresses)
    _, point = publish_student(
        student,
        after,
        teacher,
        spec,
        config,
        Path(args.out),
        wers,
        eval_set,
        store,
        SweepSettings(latency_runs=args.latency_runs),
        training=facts,
    )
    if wers:
        was = f"{100 * wers[0]:.2f}% before training → " if len(wers) > 1 else ""
        mode = "one clip per window" if spec.short_context is not None else "packed windows"
        print(f"WER on {eval_set.name} ({mode}): {was}{100 * wers[-1]:.2f}% after (reported, not chosen on)")
    verdict = judge_student(facts["validation"], facts["teacher_validation_wer"], facts["kept_step"])
    if verdict.good is not None:
        print(("good enough: " if verdict.good else "not good enough, iterate: ") + verdict.reason)
        if verdict.suggestion:
            print(f"next: {verdict.suggestion}")
    if not after.is_empty:
        print(f"after training: {after.describe()}")
    print(f"wrote {args.out}; load it with --model {args.out}")
    if point is not None:
        print(
            f"stored on the Pareto plots of {teacher.name}: {point.label}: WER {100 * point.wer:.2f}%, "
            f"{point.size_bytes / 1e6:.2f} MB" + (f", {point.latency_ms:.0f} ms" if point.latency_ms else "")
        )


def add_command(commands) -> None:
    """Register `distill` on the CLI's subparsers."""
    p = commands.add_parser(
        "distill",
        help="knowledge distillation into a smaller student, or recovery "
        "fine-tuning of a compressed model (see README)",
    )
    p.add_argument(
        "--teacher",
        default=DEFAULT_MODEL,
        help="teacher: 'whisper-tiny.en', 'whisper-base', a model folder or a Hugging Face id",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--student-decoder-layers", type=int, help="smaller student: decoder layers to keep")
    shape.add_argument(
        "--recipe", type=Path, help="recovery: fine-tune the teacher compressed by this recipe"
    )
    p.add_argument(
        "--student-encoder-layers", type=int, help="smaller student: encoder layers (default: all)"
    )
    p.add_argument(
        "--short-context",
        action="store_true",
        help="the student's encoder sees only the clip, not a 30 s window (alone: the teacher's shape); "
        "the output folder remembers it",
    )
    p.add_argument(
        "--context-floor", type=float, help="short context: the fewest seconds the encoder sees (default 1)"
    )
    p.add_argument("--steps", type=int, help="optimizer steps (default 200)")
    p.add_argument("--out", type=Path, required=True, help="output folder; rerun the same command to resume")
    p.add_argument("--dataset", default="train", help="training data: 'train' (bundled) or any dataset path")
    p.add_argument(
        "--eval-dataset",
        default="quick",
        help="WER reported before/after training, never used for choosing (packed windows; short "
        "context: one clip per window)",
    )
    p.add_argument("--temperature", type=float, help="softens both distributions (default 2)")
    p.add_argument("--alpha", type=float, help="weight of the hard-label loss (default 0.5)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, help="30 s windows (short context: clips) per step (default 4)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 10)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument(
        "--then",
        type=Path,
        help="a recipe JSON run on the trained student (e.g. 4-bit quantization); the stored point has the "
        "size after it",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        help="validate (held-out voices) and report (--eval-dataset) every N steps (default 0: before and "
        "after only)",
    )
    p.add_argument(
        "--held-out",
        type=float,
        help=f"voices of the training data held out for validation: a fraction below 1 or a count "
        f"(default {HELD_OUT}; 0: none); the best student on them is kept",
    )
    p.add_argument(
        "--patience",
        type=int,
        help="stop after N validations without improvement (needs --eval-every; default 0: never)",
    )
    p.add_argument("--pseudo-labels", action="store_true", help="hard labels from the teacher's transcripts")
    p.add_argument(
        "--train-encoder", action="store_true", help="train the encoder too (slower; on with --short-context)"
    )
    p.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="with --short-context: keep the encoder frozen (faster to train, measured far less accurate)",
    )
    add_store_arg(p)
    p.add_argument("--no-store", action="store_true", help="do not add the student to the Pareto store")
    p.add_argument("--latency-runs", type=int, default=2, help="timed latency runs for the stored point")
    p.set_defaults(run=run)
