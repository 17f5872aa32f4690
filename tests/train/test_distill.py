"""Distillation: the loss by hand, student initialisation, training, checkpoints and the CLI,
on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import random_tiny_en

from core.data import load_dataset
from core.io.folders import load_model, save_model
from core.train.distill import (
    CHECKPOINT,
    IGNORE,
    DistillConfig,
    StudentSpec,
    batch_order,
    distill,
    distill_loss,
    make_student,
    recovery_student,
    spaced_layers,
)


def tiny_teacher(layers: int = 4):
    """A random 4-layer Whisper with tiny.en's vocabulary and decoding facts, wrapped as a SpeechModel."""
    return random_tiny_en("tiny-teacher", layers=layers)


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory):
    """Four 12 s tones with transcripts: they pack into two 30 s windows."""
    folder = tmp_path_factory.mktemp("train")
    t = np.arange(12 * 16000) / 16000
    for i, text in enumerate(["the cat sat", "a dog ran far", "birds sing", "rain falls down"]):
        sf.write(
            folder / f"u{i}.wav", (0.3 * np.sin(2 * math.pi * (200 + 90 * i) * t)).astype(np.float32), 16000
        )
        (folder / f"u{i}.txt").write_text(text)
    return folder


def test_loss_matches_a_hand_computation():
    student = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]]])
    teacher = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 1, IGNORE]])  # the third position is padding
    T, alpha = 2.0, 0.3

    def softmax(xs, t=1.0):
        e = [math.exp(x / t) for x in xs]
        return [v / sum(e) for v in e]

    ce = (-math.log(softmax([2, 0, -1])[0]) - math.log(softmax([0.5, 0.5, 0])[1])) / 2
    kl = 0.0
    for s, t in (([2, 0, -1], [1, 1, 0]), ([0.5, 0.5, 0], [0, 2, 0])):
        p, q = softmax(t, T), softmax(s, T)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 2
    loss = distill_loss(student, teacher, labels, T, alpha)
    assert loss.cross_entropy.item() == pytest.approx(ce, rel=1e-6)
    assert loss.kl.item() == pytest.approx(kl, rel=1e-6)
    assert loss.total.item() == pytest.approx(alpha * ce + (1 - alpha) * T * T * kl, rel=1e-6)
    assert distill_loss(student, student, labels, T, 0.0).total.item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="masked"):
        distill_loss(student, teacher, torch.full((1, 3), IGNORE), T, alpha)


def test_spaced_layers_keep_first_and_last():
    assert spaced_layers(4, 2) == [0, 3]
    assert spaced_layers(32, 3) == [0, 16, 31]
    assert spaced_layers(6, 6) == list(range(6))
    assert spaced_layers(4, 1) == [0]
    with pytest.raises(ValueError, match="between 1 and 4"):
        spaced_layers(4, 5)


def test_config_refuses_out_of_range_values():
    for bad, name in [
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"steps": 0}, "steps"),
        ({"steps": 5, "warmup_steps": 5}, "warmup_steps"),
        ({"learning_rate": 1.0}, "learning_rate"),
    ]:
        with pytest.raises(ValueError, match=name):
            DistillConfig(**bad)
    with pytest.raises(ValueError, match="either"):
        StudentSpec(decoder_layers=2, recipe={"steps": []})


def test_student_copies_the_intended_layers():
    teacher = tiny_teacher()
    student = make_student(teacher, decoder_layers=2)
    t, s = teacher.module.model, student.module.model
    assert len(s.decoder.layers) == 2 and len(s.encoder.layers) == 4
    for kept, source in zip(s.decoder.layers, [t.decoder.layers[0], t.decoder.layers[3]]):
        for (name, a), (_, b) in zip(kept.state_dict().items(), source.state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(s.encoder.layers[2].fc1.weight, t.encoder.layers[2].fc1.weight)
    assert student.module.proj_out.weight is s.decoder.embed_tokens.weight  # the tie survives
    assert s.decoder.embed_tokens.weight.data_ptr() != t.decoder.embed_tokens.weight.data_ptr()  # a copy
    smaller = make_student(teacher, decoder_layers=1, encoder_layers=2)
    assert torch.equal(smaller.module.model.encoder.layers[1].fc2.weight, t.encoder.layers[3].fc2.weight)
    assert smaller.transcribe([np.zeros(16000, dtype=np.float32)])[0] is not None


def test_recovery_student_trains_float_weights_and_quantizes_after():
    teacher = tiny_teacher()
    recipe = {"steps": [{"prune": {"sparsity": 0.5, "scope": "global"}}, {"quantize": {"bits": 8}}]}
    student, after = recovery_student(teacher, recipe)
    assert [name for name, _ in after.steps] == ["quantize"]
    fc1 = student.module.model.decoder.layers[0].fc1.weight
    assert isinstance(student.module.model.decoder.layers[0].fc1, torch.nn.Linear) and (fc1 == 0).any()
    assert teacher.module.model.decoder.layers[0].fc1.weight.ne(0).all()  # the teacher is untouched
    with pytest.raises(ValueError, match="compressed layers"):
        make_student(student.with_module(after.apply(student.module)[0]), decoder_layers=2)


def test_batches_are_seeded_epochs():
    first = [batch_order(5, step, 2, seed=1) for step in range(5)]
    flat = [i for batch in first for i in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))  # two full epochs
    assert first == [batch_order(5, step, 2, seed=1) for step in range(5)]
    assert first != [batch_order(5, step, 2, seed=2) for step in range(5)]


def run(student, teacher, dataset, config, **kwargs) -> list:
    return list(distill(student, teacher, dataset, config, **kwargs))


def test_training_lowers_the_loss_and_keeps_pruned_weights_at_zero(speech_folder, one_thread):
    teacher, dataset = tiny_teacher(), load_dataset(speech_folder)
    config = DistillConfig(steps=12, batch_size=2, warmup_steps=1, learning_rate=1e-2, alpha=0.5)
    student = make_student(teacher, decoder_layers=1)
    progress = run(student, teacher, dataset, config, eval_set=dataset)
    losses = [p.loss for p in progress if p.stage == "train"]
    assert len(losses) == 12 and all(later < earlier for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < losses[0] - 0.15
    assert [p.stage for p in progress][-1] == "done"
    assert sum(p.stage == "eval" for p in progress) == 2  # before and after
    assert not any(p.requires_grad for p in student.module.parameters())
    assert torch.equal(
        student.module.model.encoder.layers[0].fc1.weight, teacher.module.model.encoder.layers[0].fc1.weight
    )  # frozen encoder

    pruned, _ = recovery_student(
        teacher, {"steps": [{"prune": {"sparsity": 0.5, "groups": ["decoder.ffn"]}}]}
    )
    zeros = pruned.module.model.decoder.layers[1].fc1.weight == 0
    before = pruned.module.model.decoder.layers[1].fc1.weight.clone()
    run(pruned, teacher, dataset, DistillConfig(steps=3, batch_size=2, warmup_steps=0, learning_rate=3e-3))
    after = pruned.module.model.decoder.layers[1].fc1.weight
    assert torch.all(after[zeros] == 0) and not torch.equal(after, before)


def test_resume_from_checkpoint_gives_the_same_next_steps(speech_folder, tmp_path, one_thread):
    teacher, dataset = tiny_teacher(), load_dataset(speech_folder)
    config = DistillConfig(steps=4, batch_size=1, warmup_steps=1, learning_rate=3e-3, checkpoint_every=2)
    straight = [p.loss for p in run(make_student(teacher, 2), teacher, dataset, config) if p.stage == "train"]

    folder = tmp_path / CHECKPOINT
    for p in distill(make_student(teacher, 2), teacher, dataset, config, checkpoint=folder):
        if p.stage == "train" and p.step == 2:
            break  # cancelled after step 2: its checkpoint is on disk
    assert json.loads((folder / "checkpoint.json").read_text())["step"] == 2
    resumed = run(make_student(teacher, 2), teacher, dataset, config, checkpoint=folder)
    assert "resumed at step 2" in resumed[1].message
    assert [p.loss for p in resumed if p.stage == "train"] == pytest.approx(straight[2:], rel=1e-5)

    with pytest.raises(ValueError, match="other settings"):
        run(
            make_student(teacher, 2),
            teacher,
            dataset,
            DistillConfig(steps=4, batch_size=1, warmup_steps=1, learning_rate=1e-3),
            checkpoint=folder,
        )
    (folder / "state.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        run(make_student(teacher, 2), teacher, dataset, config, checkpoint=folder)


def test_cli_distill_writes_a_student_that_loads_and_joins_the_store(speech_folder, tmp_path, capsys):
    from core.cli import main
    from core.measure.store import Store, model_identity

    teacher_dir, out, store = tmp_path / "teacher", tmp_path / "student", tmp_path / "points.sqlite"
    save_model(tiny_teacher(), teacher_dir)
    code = main(
        [
            "--threads",
            "1",
            "distill",
            "--teacher",
            str(teacher_dir),
            "--student-decoder-layers",
            "1",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--batch-size",
            "2",
            "--dataset",
            str(speech_folder),
            "--eval-dataset",
            str(speech_folder),
            "--out",
            str(out),
            "--store",
            str(store),
            "--latency-runs",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "before training →" in printed and "stored on the Pareto plots" in printed
    student = load_model(out)
    assert len(student.module.model.decoder.layers) == 1 and not (out / CHECKPOINT).exists()
    meta = json.loads((out / "speech_lab.json").read_text())
    assert meta["distill"]["student"]["decoder_layers"] == 1 and meta["distill"]["config"]["steps"] == 2
    points = Store(store).points(model_identity(load_model(teacher_dir)))
    assert len(points) == 1 and points[0].is_student and points[0].label.startswith("distilled 1-layer")
    assert points[0].student["folder"] == str(out.resolve()) and points[0].recipe == {"steps": []}
    assert points[0].student["spec"]["decoder_layers"] == 1

    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher_dir),
                "--student-decoder-layers",
                "9",
                "--steps",
                "2",
                "--dataset",
                str(speech_folder),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "between 1 and 4" in capsys.readouterr().err


def test_short_context_student_learns_on_clips_and_loads_back(speech_folder, tmp_path, one_thread):
    from core.models import whisper
    from core.train.distill import finish_student, prepare_examples

    teacher, dataset = tiny_teacher(), load_dataset(speech_folder)
    spec = StudentSpec(decoder_layers=2, short_context={"floor_seconds": 2.0})
    student, after = spec.build(teacher)
    assert whisper.short_context(student.module)["floor_seconds"] == 2.0
    assert whisper.short_context(teacher.module) is None
    assert spec.describe(5) == "distilled 2-layer decoder in short context (5 steps)"

    config = DistillConfig(steps=10, batch_size=3, warmup_steps=1, learning_rate=1e-2)
    waves = [np.asarray(sf.read(u.path, dtype="float32")[0]) for u in dataset.utterances]
    examples = list(prepare_examples(teacher, student, waves, [u.text for u in dataset.utterances], config))
    frames = {e.encoder_states.shape[0] for e in examples}
    assert all(f < 1500 for f in frames) and len(frames) > 1  # clips of their own lengths, not 30 s windows

    progress = run(student, teacher, dataset, config, eval_set=dataset)
    losses = [p.loss for p in progress if p.stage == "train"]
    assert losses[-1] < losses[0] - 0.1
    finish_student(student, after, teacher, spec, config, tmp_path / "out", None, None)
    loaded = load_model(tmp_path / "out")
    assert whisper.short_context(loaded.module) == whisper.short_context(student.module)
    assert loaded.transcribe(waves[:1]) == student.transcribe(waves[:1])

    alone = StudentSpec(short_context={})
    assert len(alone.build(teacher)[0].module.model.decoder.layers) == 4
    with pytest.raises(ValueError, match="or short context"):
        StudentSpec()
    with pytest.raises(ValueError, match="short_context.floor_seconds"):
        StudentSpec(short_context={"floor_seconds": 99})


def test_cli_distill_short_context_remembers_the_mode(speech_folder, tmp_path, capsys):
    from core.cli import main
    from core.models import whisper

    teacher_dir, out = tmp_path / "teacher", tmp_path / "student"
    save_model(tiny_teacher(), teacher_dir)
    args = [
        "--threads",
        "1",
        "distill",
        "--teacher",
        str(teacher_dir),
        "--short-context",
        "--context-floor",
        "3",
    ]
    args += [
        "--student-decoder-layers",
        "1",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--no-store",
    ]
    args += ["--dataset", str(speech_folder), "--eval-dataset", str(speech_folder), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(one clip per window)" in printed
    student = load_model(out)
    assert whisper.short_context(student.module) == {"floor_seconds": 3.0, "step_seconds": 1.0}
    assert len(student.module.model.decoder.layers) == 1
    assert json.loads((out / "speech_lab.json").read_text())["distill"]["student"]["short_context"] == {
        "floor_seconds": 3.0
    }


# ----------------------------------------------------------------------------- validation, early stopping


def test_best_tracking_prefers_lower_wer_then_lower_loss():
    from core.train.distill import Best, should_stop, track_best

    best = track_best(Best(), 0, 0.9, 5.0)
    assert best == Best(0, 0.9, 5.0, 0)
    best = track_best(best, 10, 0.9, 4.0)  # same WER, lower loss: better
    assert best.step == 10 and best.waited == 0
    best = track_best(best, 20, 0.95, 3.0)  # worse WER, whatever the loss
    assert best.step == 10 and best.waited == 1 and not should_stop(best, 2)
    best = track_best(best, 30, 0.9, 4.0)  # a tie is no improvement
    assert best.waited == 2 and should_stop(best, 2) and not should_stop(best, 0)
    assert track_best(best, 40, 0.5, 9.0) == Best(40, 0.5, 9.0, 0)


def test_config_checks_validation_settings():
    DistillConfig(held_out=0.2, eval_every=5, patience=2)
    DistillConfig(held_out=3)
    with pytest.raises(ValueError, match="held_out"):
        DistillConfig(held_out=1.5)
    with pytest.raises(ValueError, match="patience"):
        DistillConfig(patience=2, eval_every=5)  # nothing held out to watch
    with pytest.raises(ValueError, match="patience"):
        DistillConfig(patience=2, held_out=0.2)  # no evaluations during training


def test_judge_student_decides_on_validation_only():
    from core.train.distill import judge_student

    improving = [[0, 5.0, 0.99], [20, 3.0, 0.6], [40, 2.0, 0.4]]
    verdict = judge_student(improving, teacher_wer=0.1, kept_step=40)
    assert (
        verdict.good is False
        and "more steps" in verdict.suggestion
        and "30.0 points behind" in verdict.reason
    )
    overfit = [[0, 5.0, 0.99], [20, 3.0, 0.3], [40, 3.5, 0.5]]
    verdict = judge_student(overfit, teacher_wer=0.1, kept_step=20)
    assert verdict.good is False and "got worse after step 20" in verdict.suggestion
    assert "more steps will not help" in verdict.suggestion
    close = [[0, 5.0, 0.99], [20, 1.0, 0.12], [40, 1.1, 0.14]]
    verdict = judge_student(close, teacher_wer=0.1, kept_step=20)
    assert verdict.good is True and "step 20" in verdict.reason
    never = [[0, 2.0, 0.2], [20, 2.5, 0.3]]
    assert judge_student(never, teacher_wer=0.1, kept_step=0).good is False
    assert judge_student([], None, None).good is None


def test_then_quantizes_after_training_and_names_its_own_folder(tmp_path):
    from dataclasses import asdict

    from core.train.distill import run_folder

    eight = {"steps": [{"quantize": {"bits": 8}}]}
    spec = StudentSpec(decoder_layers=2, then=eight)
    assert [name for name, _ in spec.after_training().steps] == ["quantize"]
    recovery = StudentSpec(
        recipe={"steps": [{"prune": {"sparsity": 0.5}}, {"quantize": {"bits": 8, "groups": ["conv"]}}]},
        then={"steps": [{"quantize": {"bits": 4, "groups": ["decoder.ffn"]}}]},
    )
    assert [config.bits for _, config in recovery.after_training().steps] == [8, 4]  # the recipe's first
    with pytest.raises(ValueError, match="again"):
        StudentSpec(recipe={"steps": [{"quantize": {"bits": 8}}]}, then=eight)
    with pytest.raises(ValueError, match="short context is trained"):
        StudentSpec(decoder_layers=2, then={"steps": [{"short_context": {}}]})
    config = DistillConfig()
    plain = StudentSpec(decoder_layers=2)
    assert run_folder(tmp_path, "t", spec, config, "d") != run_folder(tmp_path, "t", plain, config, "d")
    # runs without the newer fields keep the folder they were given before those fields existed
    old = json.dumps(
        ["t", {k: v for k, v in asdict(plain).items() if k != "then"}, {
            k: v for k, v in config.to_json().items() if k not in ("held_out", "patience")
        }, "d"],
        sort_keys=True,
    )  # fmt: skip
    import hashlib

    assert run_folder(tmp_path, "t", plain, config, "d").name.endswith(
        hashlib.sha256(old.encode()).hexdigest()[:10]
    )


def weights(student) -> dict:
    return {name: p.detach().clone() for name, p in student.module.named_parameters()}


def test_early_stopping_keeps_the_best_student(speech_folder, one_thread):
    teacher, dataset = tiny_teacher(), load_dataset(speech_folder)  # no voices: one utterance held out
    config = DistillConfig(
        steps=12, batch_size=2, warmup_steps=1, learning_rate=3e-3, eval_every=1, held_out=1, patience=2
    )
    student = make_student(teacher, decoder_layers=1)
    seen, progress = {}, []
    for p in distill(student, teacher, dataset, config, eval_set=dataset):
        progress.append(p)
        if p.stage == "validate":
            seen[p.step] = weights(student)  # the student as it was validated
    assert progress[0].message.startswith(
        "caching teacher outputs on 3 utterances and on 1 utterance held out"
    )
    checked = [p for p in progress if p.stage == "validate"]
    assert checked[0].step == 0 and all(p.val_loss > 0 and p.val_wer is not None for p in checked)
    assert all(p.teacher_wer == checked[0].teacher_wer for p in checked)
    done = progress[-1]
    trained = [p.step for p in progress if p.stage == "train"]
    assert done.stage == "done" and done.step == trained[-1] < config.steps  # stopped early
    assert done.kept_step == trained[-1] - config.patience  # two validations without a better one
    assert f"kept the student of step {done.kept_step}" in done.message
    final = weights(student)
    assert all(torch.equal(final[name], seen[done.kept_step][name]) for name in final)  # best restored
    report = [p for p in progress if p.stage == "eval"]
    assert report[-1].kept_step == done.kept_step  # the report set sees the kept student


def test_resume_keeps_the_best_student_and_its_patience(speech_folder, tmp_path, one_thread):
    teacher, dataset = tiny_teacher(), load_dataset(speech_folder)
    config = DistillConfig(
        steps=5,
        batch_size=1,
        warmup_steps=1,
        learning_rate=3e-3,
        eval_every=1,
        held_out=1,
        checkpoint_every=2,
    )
    straight_student = make_student(teacher, 2)
    straight = run(straight_student, teacher, dataset, config)
    folder = tmp_path / CHECKPOINT
    for p in distill(make_student(teacher, 2), teacher, dataset, config, checkpoint=folder):
        if p.stage == "train" and p.step == 2:
            break  # cancelled after step 2: its checkpoint (validated at step 2) is on disk
    best = json.loads((folder / "checkpoint.json").read_text())["best"]
    assert best["step"] in (0, 1, 2) and best["wer"] is not None
    resumed_student = make_student(teacher, 2)
    resumed = run(resumed_student, teacher, dataset, config, checkpoint=folder)
    assert "resumed at step 2" in resumed[1].message
    rows = lambda ps: [(p.step, p.val_loss, p.val_wer) for p in ps if p.stage == "validate" and p.step > 2]
    assert rows(resumed) == pytest.approx(rows(straight), rel=1e-5)
    assert resumed[-1].kept_step == straight[-1].kept_step
    a, b = weights(straight_student), weights(resumed_student)
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)

    stopped = DistillConfig(**{**config.to_json(), "patience": 1, "checkpoint_every": 50})
    first = run(make_student(teacher, 2), teacher, dataset, stopped, checkpoint=tmp_path / "stopped")
    again = run(make_student(teacher, 2), teacher, dataset, stopped, checkpoint=tmp_path / "stopped")
    assert first[-1].step < stopped.steps  # it stopped early: a checkpoint at that step, nothing more to do
    assert not [p for p in again if p.stage == "train"]
    assert again[-1].kept_step == first[-1].kept_step and again[-1].step == first[-1].step
