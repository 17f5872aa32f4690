"""The Distill page, run headless through Streamlit's AppTest: settings that survive leaving the page, the
validation split in the captions, and a short run whose chart shows the validation curve and whose diagram
says to iterate."""

from __future__ import annotations

import json

from tests.app.test_pages import TIMEOUT, page, problems, wait_for_job


def test_settings_survive_leaving_the_page_and_say_where_the_student_is_chosen():
    distill = page("pages/distill.py")
    assert not problems(distill), problems(distill)
    caption = next(c.value for c in distill.caption if "Output folder" in c.value)
    assert "Chosen on the held-out voices of train" in caption and "reported on `quick`" in caption
    assert "voice" in caption  # the bundled train split names its voices: whole voices are held out
    distill.number_input(key="distill_steps").set_value(15)
    distill.slider(key="distill_held_out").set_value(0.3)
    distill.number_input(key="distill_patience").set_value(2)
    distill.slider(key="distill_utterances").set_value(16).run(timeout=TIMEOUT)
    plain = next(c.value for c in distill.caption if "Output folder" in c.value)
    distill.selectbox(key="distill_then").set_value("Safe 8-bit").run(timeout=TIMEOUT)
    assert not problems(distill), problems(distill)
    quantized = next(c.value for c in distill.caption if "Output folder" in c.value)
    assert quantized != plain  # quantized after training: another run, in its own folder

    distill.switch_page("pages/jobs.py").run(timeout=TIMEOUT)  # Streamlit drops the Distill widgets' state
    distill.switch_page("pages/distill.py").run(timeout=TIMEOUT)
    assert not problems(distill), problems(distill)
    assert distill.number_input(key="distill_steps").value == 15
    assert distill.slider(key="distill_held_out").value == 0.3
    assert distill.number_input(key="distill_patience").value == 2
    assert distill.selectbox(key="distill_then").value == "Safe 8-bit"
    assert distill.slider(key="distill_utterances").value == 16

    distill.slider(key="distill_held_out").set_value(0.0).run(timeout=TIMEOUT)
    caption = next(c.value for c in distill.caption if "Output folder" in c.value)
    assert "No validation" in caption
    texts = " ".join(
        [c.value for c in distill.caption] + [i.value for i in distill.info] + [distill.title[0].value]
    )
    assert "a few seconds" not in texts and "about 10 s" not in texts  # no estimates that were not measured


def test_a_short_run_shows_the_validation_curve_and_says_to_iterate():
    # the settings of test_pages' distill test: in one pytest run the second of the two finds this job done
    distill = page("pages/distill.py")
    distill.number_input(key="distill_steps").set_value(5)
    distill.slider(key="distill_utterances").set_value(8)
    distill.button[0].click().run(timeout=TIMEOUT)
    wait_for_job(distill).run(timeout=TIMEOUT)  # once more: the page as it shows a finished run
    assert not problems(distill), problems(distill)
    charts = [c.proto.spec for c in distill.get("plotly_chart")]
    curve = next(spec for spec in charts if "train loss" in spec)
    assert "validation loss (held-out voices)" in curve and "validation WER %" in curve
    assert "report WER % (quick)" in curve and "teacher's validation WER" in curve
    assert any("Kept the student of step" in c.value for c in distill.caption)
    assert any("Measured in this run" in c.value for c in distill.caption)
    # a 5-step 2-layer student is far behind its teacher on the held-out voices: the diagram says iterate
    warning = next(w.value for w in distill.warning if w.value.startswith("Not good enough yet"))
    assert "Next:" in warning
    flow = json.loads(charts[0])
    iterate = next(a for a in flow["layout"]["annotations"] if "Iterate" in a.get("text", ""))
    assert iterate["font"]["color"] == "#FFFFFF"  # the iterate node is the highlighted one
