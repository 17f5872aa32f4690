"""Compress and Record & compare, run headless through Streamlit's AppTest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "app.py"
TIMEOUT = 300


def page(path: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.switch_page(path)
    return at.run(timeout=TIMEOUT)


def problems(at: AppTest) -> list[str]:
    return [e.message for e in at.exception] + [e.value for e in at.error]


def wait_for_job(at: AppTest, seconds: float = 3 * TIMEOUT) -> AppTest:
    """Rerun the page until the background job it follows has ended (no progress bar left)."""
    deadline = time.monotonic() + seconds
    while at.get("progress") and time.monotonic() < deadline:
        time.sleep(2.0)
        at.run(timeout=TIMEOUT)
    assert not at.get("progress"), "the job did not finish in time"
    failed = [e.value for e in at.error if e.value.startswith("The job failed")]
    assert not failed, failed
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


@pytest.fixture(scope="module")
def compress() -> AppTest:
    return wait_for_job(page("pages/compress.py"))  # the first visit measures the point as a job


def test_compress_default_is_8_bit_and_measured(compress):
    assert not problems(compress), problems(compress)
    shown = metrics(compress)
    assert list(shown) == ["WER", "Size", "Latency", "Speed-up in theory"]
    assert shown["WER"][0].endswith("%") and "pts" in shown["WER"][1]
    size_mb = float(shown["Size"][0].split()[0])
    assert 35 < size_mb < 50, shown["Size"]  # 8-bit tiny.en: about 42 MB
    assert "× smaller" in shown["Size"][1]
    assert compress.tabs and not compress.dataframe  # the per-layer table waits until asked for
    point = stored_point_of(compress)  # the speed-up is the ratio timed in the same run as the baseline
    speed = float(shown["Latency"][1].split("×")[0])
    assert point.latency_ratio and speed == pytest.approx(
        1 / point.latency_ratio if "faster" in shown["Latency"][1] else point.latency_ratio, abs=0.006
    )
    assert shown["Speed-up in theory"][1] == f"measured {1 / point.latency_ratio:.2f}×"
    help_text = next(m.help for m in compress.metric if m.label == "Latency")
    assert "timed in turns with it clip by clip" in help_text


def stored_point_of(at: AppTest):
    """The stored point of the recipe the Compress page shows (from the store the pages share; other tests
    may have stored the same recipe measured elsewhere, e.g. in a deployment runtime)."""
    import json

    from core.measure.store import Store
    from ui.resources import LIVE

    with Store() as store:
        shown = [
            p
            for p in store.points(settings=LIVE.key_json())
            if json.dumps(p.recipe, sort_keys=True) == at.session_state["recipe_json"]
            and p.dataset == "quick"
            and not p.is_student
        ]
    assert len(shown) == 1, [(p.model, p.label) for p in shown]
    return shown[0]


def test_compress_marks_a_point_timed_on_a_busy_machine(compress):
    from core.measure.store import Store

    point = stored_point_of(compress)
    marked = lambda: any("Timed on a busy machine" in c.value for c in compress.caption)  # noqa: E731
    assert marked() == point.contended  # as measured (this machine may be busy right now)
    original = dict(point.result["latency"])
    point.result["latency"] = original | {"load_average": 40.0, "cpus": 4, "contended": True}
    with Store() as store:  # as if six sessions had been measuring at the same time
        store.put(point)
    try:
        wait_for_job(compress.run(timeout=TIMEOUT))
        assert not problems(compress), problems(compress)
        assert any("Timed on a busy machine (load 40.0 on 4 CPUs)" in c.value for c in compress.caption)
    finally:
        point.result["latency"] = original
        with Store() as store:
            store.put(point)
    wait_for_job(compress.run(timeout=TIMEOUT))
    assert marked() == point.contended


def test_compress_measures_by_clip_length_on_demand(compress):
    wait_for_job(compress.button(key="by_length").click().run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    table = compress.dataframe[0].value  # the by-length table comes before the per-layer one
    assert list(table["clip length"]) == ["≤ 3 s", "3–10 s"] and table["clips"].sum() == 16
    assert table["WER %"].notna().all() and table["baseline WER %"].notna().all()
    assert any("end in a loop: 0 (baseline 0)" in c.value for c in compress.caption)


def test_compress_shows_a_stored_point_without_applying_the_recipe(compress, monkeypatch):
    """Another session on the same recipe: the cards come from the store; nothing is compressed again."""
    from core.compress.recipe import Recipe

    applied = []
    apply = Recipe.apply
    monkeypatch.setattr(Recipe, "apply", lambda *args: applied.append(1) or apply(*args))
    again = page("pages/compress.py")
    assert not problems(again) and not again.get("progress")
    assert metrics(again) == metrics(compress) and applied == []
    again.toggle(key="show_layers").set_value(True).run(timeout=TIMEOUT)  # the per-layer table builds it
    assert len(again.dataframe) == 1 and applied


def test_compress_slider_changes_the_result(compress):
    before = metrics(compress)
    wait_for_job(compress.select_slider(key="quant_bits").set_value(4).run(timeout=TIMEOUT))
    after = metrics(compress)
    assert not problems(compress), problems(compress)
    assert float(after["Size"][0].split()[0]) < float(before["Size"][0].split()[0]) * 0.7


def test_compress_warns_of_a_broken_model_and_a_fix_repairs_it(compress):
    """4-bit codes with one scale per row break tiny.en; the first fix (groups of 64, mse) measures well."""
    assert (
        compress.session_state["quant_bits"] == 4 and compress.session_state["quant_granularity"] != "group"
    )
    warning = next(w.value for w in compress.warning if "this model is broken" in w.value)
    assert "+" in warning and "points" in warning
    assert any("groups of 64 with an mse range" in m.value for m in compress.markdown)
    wait_for_job(compress.button(key="fix_0").click().run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    assert compress.session_state["quant_granularity"] == "group"
    assert not any("this model is broken" in w.value for w in compress.warning)
    assert float(metrics(compress)["WER"][0][:-1]) < 50


def test_compress_takes_a_preset_or_pasted_json(compress):
    compress.radio(key="recipe_source").set_value("json").run(timeout=TIMEOUT)
    compress.selectbox(key="preset_name").set_value("Safe 8-bit")
    wait_for_job(compress.run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    assert any("Chosen on `full" in c.value for c in compress.caption)
    assert 35 < float(metrics(compress)["Size"][0].split()[0]) < 50  # 8-bit: the point stored at first
    compress.text_area(key="recipe_text").set_value('{"steps": [{"quantize": {"bits": 4.5}}]}')
    compress.run(timeout=TIMEOUT)
    assert any("This recipe is not valid" in e.value and "bits" in e.value for e in compress.error)
    compress.radio(key="recipe_source").set_value("sliders").run(timeout=TIMEOUT)
    wait_for_job(compress)


def test_compress_structured_pruning_really_shrinks(compress):
    wait_for_job(compress.toggle(key="prune_on").set_value(True).run(timeout=TIMEOUT))
    wait_for_job(compress.selectbox(key="prune_structure").set_value("neurons").run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    speedup = float(metrics(compress)["Speed-up in theory"][0].rstrip("×"))
    assert speedup > 1.05  # 30% of feed-forward neurons removed: fewer multiply-adds


def test_compress_invalid_combination_is_explained(compress):
    wait_for_job(compress.select_slider(key="quant_bits").set_value(4).run(timeout=TIMEOUT))
    wait_for_job(compress.checkbox(key="quant_int8").check().run(timeout=TIMEOUT))
    assert not compress.exception
    assert any("int8" in e.value for e in compress.error), [e.value for e in compress.error]


def test_compress_gptq_checkbox_measures_a_calibrated_recipe(compress):
    compress.checkbox(key="quant_int8").uncheck()
    compress.select_slider(key="quant_bits").set_value(4)
    wait_for_job(compress.checkbox(key="quant_gptq").check().run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    assert any('"gptq": true' in c.value for c in compress.code)
    assert float(metrics(compress)["Size"][0].split()[0]) < 30  # 4-bit tiny.en: about 24 MB


def test_compress_entropy_coding_shrinks_the_file_not_the_model(compress):
    wait_for_job(compress.checkbox(key="quant_gptq").uncheck().run(timeout=TIMEOUT))
    before = metrics(compress)
    wait_for_job(compress.checkbox(key="quant_entropy").check().run(timeout=TIMEOUT))
    after = metrics(compress)
    assert not problems(compress), problems(compress)
    assert any('"entropy_code": true' in c.value for c in compress.code)
    assert float(after["Size"][0].split()[0]) < 0.9 * float(before["Size"][0].split()[0])
    assert after["WER"] == before["WER"]  # lossless: the same transcripts


def test_record_page_waits_for_audio_and_lists_variants(compress):
    at = page("pages/record.py")
    assert not problems(at), problems(at)
    assert any("Record a sentence" in i.value for i in at.info)
    options = at.selectbox[0].options
    assert [o for o in options if o.startswith("Preset: ")]  # the presets, always there
    pareto = [o for o in options if o.startswith("Pareto: ")]  # the Compress page stored its 8-bit point
    assert any(o.startswith("Pareto: 8-bit channel") for o in pareto), pareto
    assert not any("WER 100" in o for o in pareto)  # broken models are not offered


def test_pareto_shows_stored_points_runs_a_sweep_and_opens_one_in_compress(compress):
    at = page("pages/pareto.py")  # the Compress tests above stored several points
    assert not problems(at), problems(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    assert at.selectbox[0].options
    # a 2-point sweep: uncompressed (stored already) and 8-bit channel (stored by the Compress tests)
    at.multiselect[0].set_value([0.0]).run(timeout=TIMEOUT)
    at.multiselect[1].set_value([16, 8]).run(timeout=TIMEOUT)
    next(r for r in at.radio if r.label == "Quantization scales").set_value("channel").run(timeout=TIMEOUT)
    sweep = next(b for b in at.button if b.label.startswith("Run the sweep"))
    assert "(2 recipes)" in sweep.label
    sweep.click().run(timeout=TIMEOUT)
    wait_for_job(at)  # a background job: the page follows it and reruns as points arrive
    assert not problems(at), problems(at)
    point = next(o for o in at.selectbox[0].options if o.startswith("8-bit channel"))
    at.selectbox[0].set_value(point).run(timeout=TIMEOUT)
    next(b for b in at.button if b.label == "Open in Compress").click().run(timeout=TIMEOUT)
    assert not problems(at), problems(at)
    assert at.session_state["quant_bits"] == 8 and at.session_state["quant_on"]


def test_pareto_sensitivity_of_one_group_and_a_measured_budget():
    at = page("pages/pareto.py")
    at.multiselect(key="sensitivity_groups").set_value(["conv"]).run(timeout=TIMEOUT)
    button = next(b for b in at.button if b.label.startswith("Measure sensitivity"))
    assert "(8 points" in button.label  # conv: prune at 3 levels, quantize at 5
    button.click().run(timeout=TIMEOUT)
    wait_for_job(at)  # (its probes are points too: the Pareto charts show them, if they did not yet)
    heatmaps = [c for c in at.get("plotly_chart") if c.key == "sensitivity"]
    assert not at.exception and len(heatmaps) == 1
    assert [e.value for e in at.error] == [  # the default 30 MB budget: conv alone cannot get there
        next(e.value for e in at.error if "cannot be reached" in e.value)
    ]
    said = at.error[0].value  # in MB, with what to do about it
    assert "A 30 MB budget" in said and "bytes" not in said and "probe more layer groups" in said
    at.number_input(key="budget_mb").set_value(150.0).run(timeout=TIMEOUT)
    at.checkbox(key="budget_measured").check().run(timeout=TIMEOUT)
    wait_for_job(at)  # the measured moves run as a job
    assert not problems(at), problems(at)
    plan = next(m.value for m in at.markdown if m.value.startswith("Greedy plan"))
    assert "[conv]" in plan and "WER measured" in plan


def test_pareto_divergence_heatmap_and_exact_budget():
    at = page("pages/pareto.py")
    at.multiselect(key="sensitivity_groups").set_value(["conv"]).run(timeout=TIMEOUT)
    at.radio(key="sensitivity_signal").set_value("divergence").run(timeout=TIMEOUT)
    button = next(b for b in at.button if b.label.startswith("Measure sensitivity"))
    assert "(17 points" in button.label  # conv: 5 bit widths per channel + 4 quantizers x 3 bit widths
    button.click().run(timeout=TIMEOUT)
    wait_for_job(at)
    heatmap = at.get("plotly_chart")[-1].proto.spec
    assert "log₁₀ KL" in heatmap and "5-bit channel mse" in heatmap
    at.number_input(key="budget_mb").set_value(150.0).run(timeout=TIMEOUT)
    assert not problems(at), problems(at)
    plan = next(m.value for m in at.markdown if m.value.startswith("Plan:"))
    assert "[conv]" in plan and "divergence ≈" in plan and "nats/token" in plan
    at.checkbox(key="budget_measured").check().run(timeout=TIMEOUT)
    wait_for_job(at)
    plan = next(m.value for m in at.markdown if m.value.startswith("Plan:"))
    assert not problems(at) and "divergence measured" in plan


def test_distill_trains_a_student_that_lands_on_the_pareto_page():
    distill = page("pages/distill.py")
    assert not problems(distill), problems(distill)
    assert len(distill.get("plotly_chart")) == 1  # the flow diagram, before anything runs
    distill.number_input(key="distill_steps").set_value(5)
    distill.slider(key="distill_utterances").set_value(8)
    distill.button[0].click().run(timeout=TIMEOUT)
    wait_for_job(distill)  # trained by the worker process; the page follows the job
    assert not problems(distill), problems(distill)
    shown = metrics(distill)
    assert set(shown) == {"WER before", "WER after", "Size as saved"}, shown
    assert shown["WER before"][0].endswith("%") and shown["Size as saved"][0].endswith("MB")
    assert len(distill.get("plotly_chart")) >= 2 and distill.success  # loss curve + flow, and a result
    distill.run(timeout=TIMEOUT)  # back on the page with the same settings: the finished run is remembered
    assert any("Trained before with these settings" in s.value for s in distill.success)

    pareto = page("pages/pareto.py")
    assert not problems(pareto), problems(pareto)
    labels = pareto.selectbox[0].options
    assert any(label.startswith("distilled 2-layer decoder (5 steps)") for label in labels), labels


def test_distill_recovery_takes_a_recipe_and_explains_a_bad_one():
    distill = page("pages/distill.py")
    distill.radio(key="distill_kind").set_value("Recover a compressed model").run(timeout=TIMEOUT)
    assert not problems(distill), problems(distill)
    assert '"neurons"' in distill.text_area(key="distill_recipe").value  # the measured example
    assert any("recovery-" in c.value for c in distill.caption)  # its own output folder
    distill.text_area(key="distill_recipe").set_value('{"steps": [{"prune": {"sparsity": 1.5}}]}').run(
        timeout=TIMEOUT
    )
    assert any("sparsity" in e.value for e in distill.error), [e.value for e in distill.error]
    assert not distill.button  # nothing to start with an invalid recipe


def test_distill_short_context_gets_its_own_run_folder():
    distill = page("pages/distill.py")
    plain = next(c.value for c in distill.caption if "Output folder" in c.value)
    distill.checkbox(key="distill_short_context").check().run(timeout=TIMEOUT)
    assert not problems(distill), problems(distill)
    short = next(c.value for c in distill.caption if "Output folder" in c.value)
    assert "student-2dec-" in short and short != plain  # a 2-layer student in short context: another run


def test_compress_sliders_reproduce_a_recipe_or_say_why_not():
    from ui.forms import compress_widget_state

    state = compress_widget_state(
        {"steps": [{"quantize": {"bits": 4, "granularity": "group", "method": "mse"}}]}
    )
    assert state["quant_on"] and state["quant_bits"] == 4 and state["quant_granularity"] == "group"
    assert state["quant_method"] == "mse" and not state["prune_on"]
    for recipe, reason in [
        ({"quantize": {"bits": 4, "scale_dtype": "float16"}}, "fp16 scales"),
        ({"quantize": {"bits": 4, "outlier_columns": 4}}, "outlier columns"),
    ]:
        with pytest.raises(ValueError, match=reason):
            compress_widget_state({"steps": [recipe]})
    with pytest.raises(ValueError, match="two quantize steps"):  # a per-group plan from the budget search
        compress_widget_state(
            {
                "steps": [
                    {"quantize": {"bits": 4, "groups": ["conv"]}},
                    {"quantize": {"bits": 8, "groups": ["embedding"]}},
                ]
            }
        )


def test_compress_forms_follow_the_registry_and_name_a_technique_without_controls():
    from dataclasses import dataclass

    from core.compress.registry import TECHNIQUES, registered
    from core.compress.technique import Technique
    from ui.forms import FORMS, compress_widget_state, widget_defaults

    positions = [TECHNIQUES[form.technique].position for form in FORMS]
    assert positions == sorted(positions) and len(FORMS) == 3
    assert compress_widget_state({"steps": []}) == dict(
        widget_defaults(), prune_on=False, lowrank_on=False, quant_on=False
    )

    @dataclass(frozen=True)
    class NoopConfig:
        level: int = 1

    noop = Technique(
        "noop",
        NoopConfig,
        apply=lambda module, config: (module, []),
        describe=lambda config: "noop",
        knobs=("level",),
    )
    with registered(noop), pytest.raises(ValueError, match="noop step has no controls on the Compress page"):
        compress_widget_state({"steps": [{"noop": {"level": 2}}]})


def test_jobs_page_shows_another_session_s_job_and_cancels_it():
    """A job submitted elsewhere (the CLI, another tab) is on the Jobs page with its progress; Cancel stops it
    and the points measured so far stay in the store."""
    from core.jobs import worker
    from core.jobs.kinds import Measuring, SweepJob
    from core.measure.store import Store
    from ui.jobs import job_board

    recipes = tuple({"steps": [{"prune": {"sparsity": s / 10}}]} for s in range(1, 9))
    board = job_board.__wrapped__()  # the page's board, without Streamlit's cache
    job = worker.submit(board, SweepJob("whisper-tiny.en", "quick", recipes, Measuring(latency_runs=0)))
    at = page("pages/jobs.py")
    assert not problems(at), problems(at)
    texts = [p.proto.text for p in at.get("progress")]
    assert any("sweep of 8 recipes" in t for t in texts), texts
    deadline = time.monotonic() + 3 * TIMEOUT
    while board.get(job.id).done < 1 and time.monotonic() < deadline:  # let it measure one point
        time.sleep(2.0)
    at.run(timeout=TIMEOUT)
    at.button(key=f"cancel_{job.id}").click().run(timeout=TIMEOUT)
    while not board.get(job.id).finished_state and time.monotonic() < deadline:
        time.sleep(1.0)
    ended = board.get(job.id)
    assert ended.state == "cancelled" and 1 <= ended.done < 8, ended
    assert len(Store().points()) >= ended.done  # what it measured is kept
    at.run(timeout=TIMEOUT)
    assert any("cancelled" in p.proto.text for p in at.get("progress"))
    assert any(b.label == "Run again" for b in at.button)
