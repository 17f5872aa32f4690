"""Knowledge distillation and recovery fine-tuning: a student learns a teacher's soft labels and hard labels.

Two kinds of student, of a model family with a decoder (Whisper):
  smaller   the teacher with fewer decoder (and optionally encoder) layers, initialised from evenly spaced
            teacher layers (distil-whisper: copy the encoder, keep e.g. the first and last decoder layer);
  recovery  the teacher compressed by a recipe. Pruned weights stay zero while training, and the recipe's
            quantize steps run after training (fine-tune the float model, then quantize it).
Either one can also run a recipe after training in the same run (StudentSpec.then, e.g. quantize), so its
point on the Pareto plots is the final model's.
Loss per token, padding masked: α · CE(student, hard label) + (1 − α) · T² · KL(p_teacher ‖ p_student),
both distributions at temperature T. Hard labels are the reference transcripts, or the teacher's own
transcripts where there is no reference. A student in short-context mode (core.compress.context) learns
on clips of 1–30 s (core.data.training_clips) that its encoder sees cut to the clip, from a teacher that
hears each clip in its full 30 s window: it learns to stop where the teacher stops instead of looping.
Teacher outputs (encoder states, logits) and a frozen student encoder's outputs are computed once and
reused every epoch. Training is a generator of `Progress`, deterministic for a seed, and resumes from a
safetensors checkpoint.

Choosing happens on held-out voices of the training data (config.held_out, core.train.split), never on the
report set: at every evaluation the student's validation loss (the same loss, no gradient) and validation
WER are measured, the best student by validation is kept (its weights restored at the end) and, with
config.patience, training stops once validation stops improving. The report set (`eval_set`) only reports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.compress.advice import BROKEN_WER
from core.compress.recipe import Recipe, apply_recipe
from core.compress.registry import technique
from core.data import Dataset, load_waves, pack_utterances, training_clips
from core.io.folders import save_model
from core.measure.evaluate import evaluate
from core.measure.store import Point, Store, model_identity, weights_hash
from core.measure.sweep import SweepSettings, encoder_identity, record_student
from core.models import EncoderCache, SpeechModel, family_of
from core.train.split import describe_split, held_out_indices, subset

IGNORE = -100  # label of a position that is not scored (prompt, padding)
CHECKPOINT = "checkpoint"  # subfolder of the output folder while training runs
MAX_STEPS = 20_000  # about a day of training on a laptop CPU; more is a typo


@dataclass(frozen=True)
class DistillConfig:
    """Training knobs. Everything here changes the result,
    so a checkpoint only resumes under the same config."""

    steps: int = 200
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard-label cross-entropy; 1 − α goes to the soft labels
    learning_rate: float = 3e-4
    batch_size: int = 4  # examples per step: 30 s windows, or clips for a short-context student
    warmup_steps: int = 10
    seed: int = 0
    pseudo_labels: bool = False  # hard labels from the teacher's transcripts instead of the references
    train_encoder: bool = (
        False  # the encoder is frozen by default (distil-whisper), so its outputs are cached
    )
    train_embeddings: bool = False  # token/position embeddings (tied to the 51k-word output projection)
    eval_every: int = 0  # steps between evaluations of the student (0: before and after training only)
    checkpoint_every: int = 50
    # validation: voices of the training data held out (a fraction in (0, 1) or a count; 0: none), on which
    # the best student is chosen (and kept) and early stopping decides; the report set is never used for it
    held_out: float = 0.0
    patience: int = 0  # evaluations without a better validation before training stops (0: never stops early)

    def __post_init__(self):
        checks = {
            "steps": (
                isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS,
                f"an integer in 1..{MAX_STEPS}",
            ),
            "temperature": (0 < self.temperature <= 20, "a number in (0, 20]"),
            "alpha": (0 <= self.alpha <= 1, "a number in [0, 1]"),
            "learning_rate": (0 < self.learning_rate <= 0.1, "a number in (0, 0.1]"),
            "batch_size": (self.batch_size >= 1, "an integer ≥ 1"),
            "warmup_steps": (0 <= self.warmup_steps < self.steps, "an integer in [0, steps)"),
            "eval_every": (self.eval_every >= 0, "an integer ≥ 0"),
            "checkpoint_every": (self.checkpoint_every >= 1, "an integer ≥ 1"),
            "held_out": (
                0 <= self.held_out < 1 or float(self.held_out).is_integer(),
                "0 (no validation), a fraction of the voices in (0, 1), or a whole number of voices",
            ),
            "patience": (
                isinstance(self.patience, int) and self.patience >= 0,
                "an integer ≥ 0 (0: no early stopping)",
            ),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(
                    f"distill: {name} = {getattr(self, name)!r} is out of range; allowed: {allowed}"
                )
        if self.patience and not (self.held_out and self.eval_every):
            raise ValueError(
                "distill: patience (early stopping) needs a validation split (held_out > 0) and "
                "evaluations during training (eval_every ≥ 1)"
            )

    @property
    def validating(self) -> bool:
        return self.held_out > 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    cross_entropy: torch.Tensor
    kl: torch.Tensor


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> LossParts:
    """α · CE(student, labels) + (1 − α) · T² · KL(softmax(teacher/T) ‖ softmax(student/T)), each a mean
    over the positions whose label is not IGNORE. Logits are (..., vocab), labels (...)."""
    scored = labels != IGNORE
    if not scored.any():
        raise ValueError("distill_loss: every position is masked; there is nothing to learn from")
    student, teacher = student_logits[scored].float(), teacher_logits[scored].float()
    cross_entropy = F.cross_entropy(student, labels[scored])
    kl = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher / temperature, -1),
        log_target=True,
        reduction="batchmean",
    )
    return LossParts(alpha * cross_entropy + (1 - alpha) * temperature**2 * kl, cross_entropy, kl)


# ----------------------------------------------------------------------------- students


def spaced_layers(total: int, keep: int) -> list[int]:
    """Evenly spaced layer indices from the first to the last,
    e.g. 4 → 2 gives [0, 3], 32 → 3 gives [0, 16, 31]."""
    if not 1 <= keep <= total:
        raise ValueError(f"a student keeps between 1 and {total} layers, got {keep}")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def _check_plain(model: SpeechModel, role: str) -> None:
    """A teacher (or a student to shrink) must be an uncompressed model of a family with a decoder."""
    model.decoder(f"the {role} of a distillation")
    odd = {
        type(m).__name__
        for m in model.module.modules()
        if not type(m).__module__.startswith(("torch.", "transformers."))
    }
    if odd:
        raise ValueError(
            f"the {role} {model.name} holds compressed layers ({', '.join(sorted(odd))}); "
            "use the uncompressed model and give the compression as a recipe"
        )


def make_student(teacher: SpeechModel, decoder_layers: int, encoder_layers: int | None = None) -> SpeechModel:
    """The teacher with fewer layers, each kept layer a copy of an evenly spaced teacher layer; everything
    else (convolutions, embeddings, norms) is copied, and tied weights stay tied."""
    _check_plain(teacher, "teacher")
    counts = teacher.family.layer_counts(teacher.module)
    kept = {
        "encoder": spaced_layers(counts["encoder"], encoder_layers or counts["encoder"]),
        "decoder": spaced_layers(counts["decoder"], decoder_layers),
    }
    student = teacher.family.smaller(teacher.module, kept["decoder"], kept["encoder"])
    shape = f"decoder layers {kept['decoder']}" + (
        f", encoder layers {kept['encoder']}" if encoder_layers else ""
    )
    return teacher.with_module(student, name=f"{teacher.name} student ({shape})")


def recovery_student(teacher: SpeechModel, recipe) -> tuple[SpeechModel, object]:
    """The teacher with the recipe's steps that keep float layers (prune, low-rank) applied, and the others
    (quantize) left to run after training (as a Recipe): fine-tuning happens on float weights."""
    _check_plain(teacher, "teacher")
    train, after = split_recipe(recipe)
    return apply_recipe(teacher, train)[0], after


def split_recipe(recipe) -> tuple[Recipe, Recipe]:
    """(steps that keep float layers: prune, low-rank; the others: quantize) of a recipe, each in order."""
    recipe = Recipe.from_json(recipe)

    def part(float_layers: bool) -> Recipe:
        chosen = [
            (step, keys)
            for step, keys in zip(recipe.steps, recipe.keys)
            if technique(step[0]).keeps_float == float_layers
        ]
        return Recipe(tuple(step for step, _ in chosen), tuple(keys for _, keys in chosen))

    return part(float_layers=True), part(float_layers=False)


def joined(first: Recipe, then: Recipe) -> Recipe:
    """`first`'s steps, then `then`'s; ValueError where that order cannot work (a group quantized twice)."""
    return Recipe(first.steps + then.steps, first.keys + then.keys)


# ----------------------------------------------------------------------------- data


@dataclass
class Example:
    """One training window: the teacher's cached outputs and the hard labels."""

    features: torch.Tensor  # (mels, frames) the student's encoder input, only kept when its encoder trains
    encoder_states: torch.Tensor  # (frames, d) the frozen student encoder's output (empty if it trains)
    inputs: list[int]  # prompt + label tokens
    labels: list[int]  # IGNORE under the prompt but its last token, then label tokens + end-of-text
    teacher_logits: torch.Tensor  # (len(inputs), vocab) float16


@torch.inference_mode()
def prepare_examples(
    teacher: SpeechModel, student: SpeechModel, waves: list, texts: list[str], config: DistillConfig
) -> Iterator[Example]:
    """Pack utterances into 30 s windows (a short-context student: into clips of 1–30 s) and compute, once,
    what every epoch reuses: the teacher's encoder states and logits and, when the student encoder is frozen
    and its input or weights differ from the teacher's, its states."""
    if student.family.short_context(student.module):
        windows, references = training_clips(waves, texts, config.seed)
    else:
        windows, references, _ = pack_utterances(waves, texts, [str(i) for i in range(len(waves))])
    decoding = teacher.decoding
    same_encoder = weights_hash(student.encoder()) == weights_hash(teacher.encoder())
    room = teacher.token_room() - 1
    for window, reference in zip(windows, references):
        features = teacher.features([window])
        teacher_states = teacher.encode(features)
        if config.pseudo_labels or not reference.strip():
            tokens = teacher.greedy(teacher_states, room)[0]
        else:
            tokens = teacher.label_tokens(reference)[:room]
        inputs = list(decoding.prompt) + tokens
        labels = [IGNORE] * (len(decoding.prompt) - 1) + tokens + [decoding.eot]
        logits = teacher.decoder_logits(teacher_states, torch.tensor([inputs]))[0]
        student_features = student.encoder_input([window])
        if config.train_encoder:  # the encoder runs in every step instead
            states = torch.empty(0)
        elif same_encoder and student_features.shape == features.shape:
            states = teacher_states[0]
        else:
            states = student.encode(student_features)[0]
        yield Example(
            features=student_features[0] if config.train_encoder else torch.empty(0),
            encoder_states=states,
            inputs=inputs,
            labels=labels,
            teacher_logits=logits.to(torch.float16),
        )


def batch_order(count: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the examples in batch `step`: epochs of seeded shuffles laid end to end, so any step's
    batch is known without replaying the ones before (resume gives the same batches)."""
    size = min(batch_size, count)
    start = step * size
    order = []
    while len(order) < size:
        epoch, offset = divmod(start + len(order), count)
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order.extend(permutation[offset : offset + size - len(order)].tolist())
    return order


def collate(examples: list[Example], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, labels, teacher logits); padding is causal-safe and IGNOREd by the loss."""
    length = max(len(e.inputs) for e in examples)
    inputs = torch.full((len(examples), length), pad, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    teacher = torch.zeros(len(examples), length, examples[0].teacher_logits.shape[-1])
    for i, e in enumerate(examples):
        inputs[i, : len(e.inputs)] = torch.tensor(e.inputs)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        teacher[i, : len(e.inputs)] = e.teacher_logits.float()
    return inputs, labels, teacher


# ----------------------------------------------------------------------------- training


@dataclass
class Progress:
    """What a training generator reports: a stage, the step, and whatever was just measured."""

    stage: str  # "prepare", "train", "validate" (held-out voices), "eval" (the report set) or "done"
    step: int
    steps: int
    seconds: float
    loss: float | None = None
    cross_entropy: float | None = None
    kl: float | None = None
    learning_rate: float | None = None
    wer: float | None = None  # "eval": WER on the report set
    message: str = ""
    val_loss: float | None = None  # "validate": the distillation loss on the held-out voices
    val_wer: float | None = None  # "validate": WER on the held-out voices
    teacher_wer: float | None = None  # "validate": the teacher's WER on the held-out voices
    kept_step: int | None = None  # the final "eval" and "done": the step whose student is kept


@dataclass(frozen=True)
class Best:
    """The best validation so far (step, WER, loss) and how many evaluations have passed without beating it:
    the state of early stopping, saved with a checkpoint."""

    step: int | None = None
    wer: float | None = None
    loss: float | None = None
    waited: int = 0


def track_best(best: Best, step: int, wer: float, loss: float) -> Best:
    """`best` after a validation at `step`: a lower WER wins, at equal WER a lower loss (small validation
    sets often tie on WER); otherwise one more evaluation waited."""
    if best.step is None or (wer, loss) < (best.wer, best.loss):
        return Best(step, wer, loss, 0)
    return replace(best, waited=best.waited + 1)


def should_stop(best: Best, patience: int) -> bool:
    """Early stopping: `patience` evaluations in a row without a better validation (patience 0: never)."""
    return patience > 0 and best.waited >= patience


def trainable_parameters(module: nn.Module, config: DistillConfig) -> dict[str, nn.Parameter]:
    """The decoder (and the encoder if config.train_encoder); embeddings only if config.train_embeddings."""
    part_of = family_of(module).parameter_part
    chosen = {}
    for name, parameter in module.named_parameters():  # a tied weight appears once, under its first name
        side, is_embedding = part_of(name)
        in_part = side == "decoder" or (config.train_encoder and side == "encoder")
        if in_part and (config.train_embeddings or not is_embedding):
            chosen[name] = parameter
    return chosen


def zero_masks(parameters: dict[str, nn.Parameter], min_fraction: float = 0.01) -> dict[str, torch.Tensor]:
    """Where a weight matrix is pruned (at least `min_fraction` exact zeros), the mask of its nonzeros:
    training keeps pruned weights at zero."""
    masks = {}
    for name, parameter in parameters.items():
        if parameter.dim() >= 2:
            nonzero = parameter.detach() != 0
            if 1 - nonzero.float().mean().item() >= min_fraction:
                masks[name] = nonzero
    return masks


def learning_rate_at(step: int, config: DistillConfig) -> float:
    """Linear warm-up, then linear decay to zero at config.steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate * max(0.0, (config.steps - step) / max(1, config.steps - config.warmup_steps))


def save_checkpoint(
    folder: Path,
    step: int,
    parameters: dict[str, nn.Parameter],
    optimizer,
    config: DistillConfig,
    identity: dict,
    best: Best = Best(),
    best_weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Trainable weights and Adam state as safetensors plus a JSON of step, config and student identity, and
    with validation the best student so far (its weights, step, scores and the early-stopping count);
    written to a temporary folder and renamed, so a kill leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    tensors = {f"param.{name}": p.detach().contiguous() for name, p in parameters.items()}
    for name, weight in (best_weights or {}).items():
        tensors[f"best.{name}"] = weight.contiguous()
    for name, p in parameters.items():
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"{key}.{name}"] = torch.as_tensor(state[key]).detach().clone().contiguous()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "checkpoint.json").write_text(
        json.dumps(
            {"step": step, "config": config.to_json(), "student": identity, "best": asdict(best)}, indent=1
        )
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(
    folder: Path, parameters: dict[str, nn.Parameter], optimizer, config: DistillConfig, identity: dict
) -> tuple[int, Best, dict[str, torch.Tensor] | None]:
    """Restore weights and Adam state from `save_checkpoint`; returns the step to continue from, the best
    validation so far and its weights (None without validation).
    ValueError if the checkpoint was written for another config or student, or does not match its shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "checkpoint.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise ValueError(
            f"{folder} is not a readable distillation checkpoint ({exc}); delete it to start over"
        ) from None
    written = {**DistillConfig().to_json(), **meta.get("config", {})}  # fields added since take defaults
    if written != config.to_json() or meta.get("student") != identity:
        raise ValueError(
            f"{folder} was written by a run with other settings or another student; use the same "
            "settings to resume, or another output folder (or delete the checkpoint) to start over"
        )
    for name, p in parameters.items():
        saved = tensors.get(f"param.{name}")
        if saved is None or saved.shape != p.shape:
            raise ValueError(
                f"{folder}: weight {name} is missing or has the wrong shape; delete the checkpoint"
            )
        with torch.no_grad():
            p.copy_(saved)
        if f"exp_avg.{name}" in tensors:
            optimizer.state[p] = {key: tensors[f"{key}.{name}"] for key in ("step", "exp_avg", "exp_avg_sq")}
    best = Best(**meta.get("best", {}))
    best_weights = {name: tensors[f"best.{name}"] for name in parameters if f"best.{name}" in tensors}
    if best.step is not None and len(best_weights) != len(parameters):
        raise ValueError(f"{folder}: the best student's weights are incomplete; delete the checkpoint")
    return int(meta["step"]), best, (best_weights if best.step is not None else None)


def train_step(
    module: nn.Module,
    batch: list[Example],
    pad: int,
    parameters: dict[str, nn.Parameter],
    masks: dict[str, torch.Tensor],
    optimizer,
    rate: float,
    config: DistillConfig,
) -> LossParts:
    """One optimizer step on a batch: loss, backward, pruned weights kept at zero, clipped AdamW update."""
    module.train()
    loss = batch_loss(module, batch, pad, config)
    for group in optimizer.param_groups:
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    for name, mask in masks.items():
        parameters[name].grad.mul_(mask)
    torch.nn.utils.clip_grad_norm_(list(parameters.values()), 1.0)
    optimizer.step()
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)
    return loss


def batch_loss(module: nn.Module, batch: list[Example], pad: int, config: DistillConfig) -> LossParts:
    """The distillation loss of a batch. Examples whose encoder input differs in length (short-context clips)
    run in groups of one length, their losses weighted by scored tokens: the same loss as one batch would
    give."""
    family = family_of(module)
    by_shape: dict[tuple, list[Example]] = {}
    for e in batch:
        by_shape.setdefault(
            tuple((e.features if config.train_encoder else e.encoder_states).shape), []
        ).append(e)
    scored = sum(sum(label != IGNORE for label in e.labels) for e in batch)
    parts = []
    for same_length in by_shape.values():
        inputs, labels, teacher_logits = collate(same_length, pad)
        if config.train_encoder:
            states = family.encode(module, torch.stack([e.features for e in same_length]))
        else:
            states = torch.stack([e.encoder_states for e in same_length])
        part = distill_loss(
            family.decoder_logits(module, states, inputs),
            teacher_logits,
            labels,
            config.temperature,
            config.alpha,
        )
        parts.append((part, (labels != IGNORE).sum().item() / scored))
    return LossParts(
        *(sum(weight * getattr(part, f) for part, weight in parts) for f in LossParts.__dataclass_fields__)
    )


@torch.no_grad()
def validation_loss(module: nn.Module, examples: list[Example], pad: int, config: DistillConfig) -> float:
    """The training loss on held-out examples, no gradient, in batches of config.batch_size: a per-token
    mean over all of them (each batch weighted by its scored tokens), comparable to the training loss."""
    module.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), config.batch_size):
        batch = examples[start : start + config.batch_size]
        scored = sum(sum(label != IGNORE for label in e.labels) for e in batch)
        total += batch_loss(module, batch, pad, config).total.item() * scored
        tokens += scored
    return total / tokens


def evaluate_student(
    student: SpeechModel, dataset: Dataset, waves: list, encoder_cache: EncoderCache
) -> float:
    """WER of the student on packed windows (the sweeps' mode; a short-context student: one clip per window,
    the mode it is for), reusing encoder outputs while the encoder is frozen."""
    student.module.eval()
    scored = student.with_encoder_cache(encoder_cache, encoder_identity(student))
    packed = not student.family.short_context(student.module)
    return evaluate(scored, dataset, waves=waves, latency_runs=0, packed=packed).scores.wer


def distill(
    student: SpeechModel,
    teacher: SpeechModel,
    train: Dataset,
    config: DistillConfig = DistillConfig(),
    eval_set: Dataset | None = None,
    checkpoint: Path | None = None,
    train_waves: list | None = None,
    eval_waves: list | None = None,
) -> Iterator[Progress]:
    """Train `student` in place to imitate `teacher` on `train`, yielding Progress as it goes.

    With config.held_out, voices of `train` are held out (core.train.split): the student is validated on
    them ("validate": loss and WER, and the teacher's WER there once) before training, every
    config.eval_every steps and at the end; the best student by validation is kept (its weights restored at
    the end, "done" says which step) and config.patience stops training early. With `checkpoint` (a
    folder), the state (best student included) is saved every config.checkpoint_every steps and an existing
    checkpoint of the same run is resumed. With `eval_set`, the student's WER is reported ("eval") before
    training, every config.eval_every steps and at the end (the kept student); it never chooses anything.
    Close the generator to cancel (the last checkpoint stays)."""
    _check_plain(teacher, "teacher")
    student.decoder("the student of a distillation")
    if student.family is not teacher.family or student.tokenizer is None:
        raise ValueError(
            f"the student must be a {teacher.kind} model like its teacher; {student.name} is a "
            f"{student.kind} model"
        )
    vocab = student.family.vocab_size(student.module), teacher.family.vocab_size(teacher.module)
    if vocab[0] != vocab[1]:
        raise ValueError(f"teacher and student must share a vocabulary ({vocab[1]} vs {vocab[0]} tokens)")
    start = time.perf_counter()
    clock = lambda: time.perf_counter() - start
    torch.manual_seed(config.seed)
    identity = {
        "student": model_identity(student),
        "teacher": model_identity(teacher),
        "data": train.fingerprint(),
    }
    teacher.module.eval()
    train_waves = train_waves if train_waves is not None else load_waves(train)
    validation, validation_waves, held_out_text = None, [], ""
    if config.validating:
        kept, held = held_out_indices([u.speaker for u in train.utterances], config.held_out, config.seed)
        validation, validation_waves = subset(train, held, "held out"), [train_waves[i] for i in held]
        train, train_waves = subset(train, kept, "training"), [train_waves[i] for i in kept]
        held_out_text = describe_split(train, validation)
    yield Progress(
        "prepare",
        0,
        config.steps,
        clock(),
        message=f"caching teacher outputs on {len(train)} utterances"
        + (f" and on {held_out_text} held out for validation" if validation is not None else ""),
    )
    examples = list(
        prepare_examples(teacher, student, train_waves, [u.text for u in train.utterances], config)
    )
    held_out = (
        list(
            prepare_examples(
                teacher, student, validation_waves, [u.text for u in validation.utterances], config
            )
        )
        if validation is not None
        else []
    )
    parameters = trainable_parameters(student.module, config)
    for name, p in student.module.named_parameters():
        p.requires_grad_(name in parameters)
    masks = zero_masks(parameters)
    optimizer = torch.optim.AdamW(list(parameters.values()), lr=config.learning_rate, weight_decay=0.0)
    step, best, best_weights = 0, Best(), None
    if checkpoint is not None and (checkpoint / "checkpoint.json").exists():
        step, best, best_weights = load_checkpoint(checkpoint, parameters, optimizer, config, identity)
    yield Progress(
        "prepare",
        step,
        config.steps,
        clock(),
        message=f"{len(examples)} windows, {sum(p.numel() for p in parameters.values()):,} trainable "
        f"parameters, {len(masks)} pruned matrices kept sparse"
        + (f", {len(held_out)} held-out windows" if validation is not None else "")
        + (f", resumed at step {step}" if step else ""),
    )
    encoder_cache = EncoderCache()
    eval_waves = eval_waves if eval_waves is not None or eval_set is None else load_waves(eval_set)
    pad = teacher.decoding.eot
    teacher_wer = (
        evaluate_student(teacher, validation, validation_waves, encoder_cache)
        if validation is not None
        else None
    )
    snapshot = lambda: {name: p.detach().clone() for name, p in parameters.items()}

    def validate(at: int) -> Progress:
        """Validation loss and WER of the student now; updates the best student (and its weights)."""
        nonlocal best, best_weights
        loss = validation_loss(student.module, held_out, pad, config)
        wer = evaluate_student(student, validation, validation_waves, encoder_cache)
        best = track_best(best, at, wer, loss)
        if best.step == at:
            best_weights = snapshot()
        return Progress(
            "validate", at, config.steps, clock(), val_loss=loss, val_wer=wer, teacher_wer=teacher_wer
        )

    reported: dict[int, float] = {}  # report-set WER by step, this session

    def evaluation(at: int, kept: int | None = None) -> Progress:
        if kept is not None and kept in reported:  # the kept student was reported at its step already
            wer = reported[kept]
        else:
            wer = evaluate_student(student, eval_set, eval_waves, encoder_cache)
            reported[at if kept is None else kept] = wer
        return Progress("eval", at, config.steps, clock(), wer=wer, kept_step=kept)

    if validation is not None and step == 0:
        yield validate(0)
    if eval_set is not None and step == 0:
        yield evaluation(0)
    while step < config.steps and not should_stop(best, config.patience):
        batch = [examples[i] for i in batch_order(len(examples), step, config.batch_size, config.seed)]
        rate = learning_rate_at(step, config)
        loss = train_step(student.module, batch, pad, parameters, masks, optimizer, rate, config)
        step += 1
        due = step == config.steps or (config.eval_every and step % config.eval_every == 0)
        validated = (
            validate(step) if validation is not None and due else None
        )  # before the checkpoint: it holds best
        stopping = should_stop(best, config.patience)
        if checkpoint is not None and (
            step % config.checkpoint_every == 0 or step == config.steps or stopping
        ):
            save_checkpoint(checkpoint, step, parameters, optimizer, config, identity, best, best_weights)
        yield Progress(
            "train",
            step,
            config.steps,
            clock(),
            loss=loss.total.item(),
            cross_entropy=loss.cross_entropy.item(),
            kl=loss.kl.item(),
            learning_rate=rate,
        )
        if validated is not None:
            yield validated
        if eval_set is not None and due and step < config.steps and not stopping:
            yield evaluation(step)
    kept = step
    if validation is not None and best.step is not None:
        kept = best.step
        if kept != step:
            with torch.no_grad():
                for name, p in parameters.items():
                    p.copy_(best_weights[name])
    for p in student.module.parameters():
        p.requires_grad_(False)
    student.module.eval()
    if eval_set is not None:
        yield evaluation(step, kept)
    stopped = f"stopped early at step {step} of {config.steps}" if step < config.steps else "finished"
    chosen = (
        f"; kept the student of step {kept} (validation WER {100 * best.wer:.2f}%, loss {best.loss:.4f})"
        if validation is not None and best.step is not None
        else ""
    )
    yield Progress("done", step, config.steps, clock(), message=stopped + chosen, kept_step=kept)


# ----------------------------------------------------------------------------- a whole job


@dataclass(frozen=True)
class StudentSpec:
    """What to train: a smaller student (decoder_layers, optionally encoder_layers) or a recovery recipe,
    either one (or the teacher's own shape) optionally in short-context mode (a short_context step's JSON
    settings, {} for its defaults), and optionally a recipe run after training (`then`, e.g. quantize)."""

    decoder_layers: int | None = None
    encoder_layers: int | None = None
    recipe: dict | None = None  # recipe JSON: recovery fine-tuning of the teacher compressed by it
    short_context: dict | None = None  # core.compress.context.ShortContextConfig fields
    # recipe JSON run on the trained student, after a recovery recipe's own quantize steps (e.g. 4-bit
    # quantization of a smaller student: its embedding dominates the size), so one run gives the final model
    then: dict | None = None

    def __post_init__(self):
        if self.decoder_layers is not None and self.recipe is not None:
            raise ValueError(
                "choose either a smaller student (decoder layers) or a recipe to recover, not both"
            )
        if self.decoder_layers is None and self.recipe is None and self.short_context is None:
            raise ValueError(
                "choose a smaller student (decoder layers), a recipe to recover, or short context"
            )
        if self.recipe is not None and self.encoder_layers is not None:
            raise ValueError("encoder layers apply to a smaller student, not to a recovery recipe")
        if self.short_context is not None:
            self.context_step()  # validates the settings
        if self.then is not None:
            if any(name == "short_context" for name, _ in Recipe.from_json(self.then).steps):
                raise ValueError("short context is trained, not applied after training: use short_context")
            self.after_training()  # validates the recipe and its order after the recovery recipe's steps

    def after_training(self) -> Recipe:
        """The steps run after training: a recovery recipe's quantize steps, then `then`'s."""
        after = split_recipe(self.recipe)[1] if self.recipe is not None else Recipe()
        return after if self.then is None else joined(after, Recipe.from_json(self.then))

    def context_step(self) -> Recipe:
        """The short_context step as a recipe (empty when the student runs with the full window)."""
        if self.short_context is None:
            return Recipe()
        return Recipe.from_json({"steps": [{"short_context": self.short_context}]})

    def build(self, teacher: SpeechModel):
        """(student, recipe of the steps to run after training)."""
        if self.recipe is not None:
            student, _ = recovery_student(teacher, self.recipe)
        elif self.decoder_layers is not None:
            student = make_student(teacher, self.decoder_layers, self.encoder_layers)
        else:
            _check_plain(teacher, "teacher")
            student = teacher  # the short_context step below copies it
        if self.short_context is not None:
            student = apply_recipe(student, self.context_step(), name=student.name + " (short context)")[0]
        return student, self.after_training()

    def describe(self, steps: int) -> str:
        context = " in short context" if self.short_context is not None else ""
        if self.recipe is not None:
            return f"recovered {Recipe.from_json(self.recipe).describe()}{context} ({steps} steps)"
        if self.decoder_layers is None:
            return f"distilled to short context ({steps} steps)"
        encoder = f", {self.encoder_layers}-layer encoder" if self.encoder_layers else ""
        return f"distilled {self.decoder_layers}-layer decoder{encoder}{context} ({steps} steps)"


def finish_student(
    student: SpeechModel,
    after,
    teacher: SpeechModel,
    spec: StudentSpec,
    config: DistillConfig,
    out: Path,
    wer_before: float | None,
    wer_after: float | None,
    training: dict | None = None,
) -> SpeechModel:
    """Run the post-training steps (quantize), write the student to `out` (it loads with `load_model(out)`)
    and drop the checkpoint. `training`: more facts of the run for its speech_lab.json (kept step,
    validation)."""
    final, _ = apply_recipe(student, after, name=f"{teacher.name} {spec.describe(config.steps)}")
    meta = {
        "base_model": teacher.name,
        "recipe": after.to_json(),
        "distill": {
            "teacher": teacher.name,
            "student": asdict(spec),
            "config": config.to_json(),
            "wer_before": wer_before,
            "wer_after": wer_after,
            **(training or {}),
        },
    }
    save_model(final, out, meta)
    shutil.rmtree(Path(out) / CHECKPOINT, ignore_errors=True)
    return final


def student_entry(
    spec: StudentSpec, config: DistillConfig, after: Recipe, folder: Path, kept_step: int | None = None
) -> tuple[dict, str]:
    """(student facts, label) of a trained student on the teacher's Pareto plots
    (core.measure.sweep.record_student): how it was trained and the folder it was written to, from which
    it loads. The label names the kept step when validation kept an earlier student than the last."""
    student = {"spec": asdict(spec), "config": config.to_json(), "folder": str(folder)}
    kept = f" · kept step {kept_step}" if kept_step is not None and kept_step != config.steps else ""
    return student, spec.describe(config.steps) + kept + (
        f" · {after.describe()}" if not after.is_empty else ""
    )


def publish_student(
    student: SpeechModel,
    after: Recipe,
    teacher: SpeechModel,
    spec: StudentSpec,
    config: DistillConfig,
    folder: Path,
    wers: list[float],
    eval_set: Dataset,
    store: Store | None,
    settings: SweepSettings = SweepSettings(),
    eval_waves: list | None = None,
    encoder_cache: EncoderCache | None = None,
    training: dict | None = None,
) -> tuple[SpeechModel, Point | None]:
    """After training (the CLI and the Distill page alike): run the post-training steps, write the student to
    `folder`, and measure it onto the teacher's Pareto plots in `store` (None: not stored): its size is the
    size after those steps. `wers` are the evaluations reported during training: the first is "before" when
    there are two or more. `training`: facts for speech_lab.json (see `training_facts`)."""
    before, after_training = (wers[0] if len(wers) > 1 else None), (wers[-1] if wers else None)
    meta = {"report_set": eval_set.name, **(training or {})}  # the set wer_before/wer_after are on
    final = finish_student(student, after, teacher, spec, config, folder, before, after_training, meta)
    if store is None:
        return final, None
    facts, label = student_entry(
        spec, config, after, Path(folder).resolve(), (training or {}).get("kept_step")
    )
    return final, record_student(
        teacher, final, eval_set, store, facts, after, label, settings, eval_waves, encoder_cache
    )


ADDED_FIELDS = ("held_out", "patience")  # DistillConfig fields added after run folders were first named


def run_folder(root: Path, teacher: str, spec: StudentSpec, config: DistillConfig, data: str) -> Path:
    """A folder per distinct run under `root`: the same settings find their checkpoint again (resume).
    Fields added since folders were first named count only when set, so older runs keep their folders."""
    spec_json = {k: v for k, v in asdict(spec).items() if not (k == "then" and v is None)}
    defaults = DistillConfig().to_json()
    config_json = {k: v for k, v in config.to_json().items() if not (k in ADDED_FIELDS and v == defaults[k])}
    key = json.dumps([teacher, spec_json, config_json, data], sort_keys=True)
    kind = (
        "recovery"
        if spec.recipe is not None
        else f"student-{spec.decoder_layers}dec"
        if spec.decoder_layers is not None
        else "short-context"
    )
    return Path(root) / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def format_progress(p: Progress) -> str:
    if p.stage == "train":
        return (
            f"step {p.step:>5d}/{p.steps}  loss {p.loss:.4f}  (ce {p.cross_entropy:.4f}, kl {p.kl:.4f})  "
            f"lr {p.learning_rate:.2e}  {p.seconds:6.1f} s"
        )
    if p.stage == "validate":
        teacher = f" (teacher {100 * p.teacher_wer:.2f}%)" if p.teacher_wer is not None else ""
        return (
            f"validate step {p.step:>5d}  held-out loss {p.val_loss:.4f}  WER {100 * p.val_wer:.2f}%{teacher}"
            f"  {p.seconds:6.1f} s"
        )
    if p.stage == "eval":
        kept = f" (the student of step {p.kept_step})" if p.kept_step not in (None, p.step) else ""
        return f"eval  step {p.step:>5d}  WER {100 * p.wer:.2f}%{kept} (report set)  {p.seconds:6.1f} s"
    return f"{p.stage}: {p.message}  {p.seconds:6.1f} s"


def training_facts(progress: Sequence[Progress]) -> dict:
    """What a run's Progress says for its speech_lab.json and its verdict: steps trained, the kept step,
    whether it stopped early, validation rows [step, loss, WER] and the teacher's validation WER."""
    done = next((p for p in reversed(progress) if p.stage == "done"), None)
    checked = [p for p in progress if p.stage == "validate"]
    return {
        "steps_trained": done.step if done else None,
        "kept_step": done.kept_step if done else None,
        "stopped_early": bool(done and done.step < done.steps),
        "validation": [[p.step, p.val_loss, p.val_wer] for p in checked],
        "teacher_validation_wer": checked[0].teacher_wer if checked else None,
    }


# ----------------------------------------------------------------------------- good enough?

GOOD_ENOUGH = 0.05  # a student more than 5 WER points behind its teacher on the held-out voices: iterate


@dataclass(frozen=True)
class Verdict:
    """Is the trained student good enough to deploy (None: no validation to judge on), why, and what to
    try next when it is not."""

    good: bool | None
    reason: str
    suggestion: str = ""


def judge_student(
    validation: Sequence[Sequence[float]], teacher_wer: float | None, kept_step: int | None
) -> Verdict:
    """Deploy or iterate, decided on the held-out voices only (the report set never chooses): rows of
    (step, validation loss, validation WER) in order, the teacher's validation WER, and the kept step.

    Not good enough: the kept student is more than GOOD_ENOUGH behind the teacher (without a teacher WER:
    above core.compress.advice.BROKEN_WER), or training never beat the untrained student (kept step 0).
    The suggestion follows the validation curve: still improving at the end means more steps; worse after
    the kept step means more steps will not help."""
    if not validation or kept_step is None:
        return Verdict(None, "no validation: hold out voices of the training data to judge the student")
    rows = [row for row in validation if row[0] == kept_step] or [validation[-1]]
    _, _, wer = rows[-1]
    last_step = validation[-1][0]
    worse_later = last_step > kept_step
    behind = wer - teacher_wer if teacher_wer is not None else None
    measured = f"validation WER {100 * wer:.1f}%" + (
        f" against the teacher's {100 * teacher_wer:.1f}%" if teacher_wer is not None else ""
    )
    if kept_step == 0 and last_step > 0:
        return Verdict(
            False,
            f"training never beat the untrained student ({measured})",
            "lower the learning rate, or keep more layers (recovery: a milder recipe)",
        )
    if (behind is not None and behind > GOOD_ENOUGH) or (behind is None and wer > BROKEN_WER):
        gap = f", {100 * behind:.1f} points behind" if behind is not None else ""
        if worse_later:
            advice = (
                f"validation got worse after step {kept_step} (that student is kept), so more steps will not "
                "help: train on more utterances, keep more decoder layers, or recover a compressed model "
                "instead"
            )
        else:
            advice = (
                "validation was still improving at the last step: train more steps (or keep more decoder "
                "layers, or recover a compressed model instead)"
            )
        return Verdict(False, f"{measured}{gap}", advice)
    note = f"; validation got worse after step {kept_step}, that student is kept" if worse_later else ""
    return Verdict(True, f"{measured}{note}")
