"""The Home page, run headless through Streamlit's AppTest (no browser; see test_browser.py for that).

`app.py` builds its pages with `st.navigation`; AppTest runs the entry script and renders the default
page, which is Home. The first run loads the bundled Whisper tiny.en and measures the baseline on the
`quick` set (tens of seconds on a small CPU); the models and results are cached per process
(`st.cache_resource` / `st.cache_data`), so later AppTests in this module reuse them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_pages import wait_for_job

APP = Path(__file__).resolve().parents[2] / "app.py"
TIMEOUT = 300  # seconds for one script run: the first one measures the baseline
QUICK_UTTERANCES = 16
BAD_MODEL = "/no/such/speech-model"


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def exceptions(at: AppTest) -> list[str]:
    return [f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception]


@pytest.fixture(scope="module")
def home() -> AppTest:
    """Home, after its first full run (model loaded, baseline measured by a job the page follows)."""
    at = new_app().run(timeout=TIMEOUT)
    measuring = any("in the background, once" in i.value for i in at.info)
    assert measuring != bool(at.metric)  # the cards, or what is being measured for them
    return wait_for_job(at)


def test_home_baseline_is_kept_for_every_later_session(home):
    """A new session (another tab, or after a restart) shows the baseline at once: no job, no measuring."""
    at = new_app().run(timeout=TIMEOUT)
    assert not at.get("progress") and [m.label for m in at.metric][0] == "WER"
    assert [m.value for m in at.metric] == [m.value for m in home.metric]


def test_home_renders_without_exception(home):
    assert not exceptions(home), exceptions(home)
    assert not [e.value for e in home.error]
    assert home.title[0].value.endswith("Speech Compression Lab")


def test_home_metric_cards(home):
    metrics = {m.label: m.value for m in home.metric}
    assert list(metrics) == ["WER", "Size", "Parameters", "Latency"]
    assert re.fullmatch(r"\d{1,3}\.\d%", metrics["WER"]), metrics
    assert re.fullmatch(r"\d+\.\d MB", metrics["Size"]), metrics
    assert re.fullmatch(r"\d+\.\d M", metrics["Parameters"]), metrics
    assert re.fullmatch(r"\d+ ms", metrics["Latency"]), metrics
    # Whisper tiny.en: ~37.8 M parameters; as float32 safetensors ~150 MB; WER on clean read speech is low.
    assert 30 < float(metrics["Parameters"][:-2]) < 45
    assert 100 < float(metrics["Size"][:-3]) < 200
    assert float(metrics["WER"][:-1]) < 50
    assert int(metrics["Latency"][:-3]) > 0


def test_home_per_utterance_table(home):
    assert len(home.dataframe) == 2
    lengths = home.dataframe[0].value  # WER by clip length: the quick clips are 2.5-5.3 s long
    assert list(lengths["clip length"]) == ["≤ 3 s", "3–10 s"] and lengths["clips"].sum() == QUICK_UTTERANCES
    assert any("Synthetic speech" in c.value for c in home.caption)
    table = home.dataframe[1].value
    assert len(table) == QUICK_UTTERANCES
    assert list(table.columns) == ["id", "reference", "hypothesis", "WER"]
    assert table["id"].is_unique
    assert table["reference"].str.len().gt(0).all()


def test_home_command_line_and_caption(home):
    assert "python -m core evaluate --model whisper-tiny.en --dataset quick" in home.code[0].value
    assert home.caption[-1].value.startswith("Model: whisper-tiny.en")
    assert home.subheader[0].value == "Baseline on `quick`, one clip per window"  # shown with its mode
    mode = next(c.value for c in home.caption if "One clip per 30 s window" in c.value)
    assert mode.startswith("Synthetic speech") and "a second mode with its own baseline" in mode


def test_nonexistent_model_path_shows_clear_error(home):
    at = new_app().run(timeout=TIMEOUT)  # cached by `home`: fast
    assert [m.label for m in at.metric], "Home should show its metrics before the model is changed"
    model_input = next(t for t in at.text_input if t.label == "Model")
    model_input.input(BAD_MODEL).run(timeout=TIMEOUT)
    assert not exceptions(at), exceptions(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith("Could not load the model") and BAD_MODEL in errors[0], errors
    assert not at.metric and not at.dataframe, "nothing should be measured for a model that failed to load"


def test_model_input_recovers_after_a_bad_path(home):
    at = new_app().run(timeout=TIMEOUT)
    next(t for t in at.text_input if t.label == "Model").input(BAD_MODEL).run(timeout=TIMEOUT)
    assert [e.value for e in at.error]
    next(t for t in at.text_input if t.label == "Model").input("whisper-tiny.en").run(timeout=TIMEOUT)
    assert not exceptions(at), exceptions(at)
    assert not [e.value for e in at.error], "typing the bundled model back in should clear the error"
    assert [m.label for m in at.metric] == ["WER", "Size", "Parameters", "Latency"]


def test_every_streamlit_cache_is_bounded():
    """N sessions share one base model; whatever a page caches per argument has a bound (max_entries),
    so memory cannot grow with the number of sessions or the inputs they try."""
    unbounded = []
    for path in sorted([*(APP.parent / "pages").glob("*.py"), *(APP.parent / "ui").glob("*.py"), APP]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    name = ast.unparse(decorator.func if isinstance(decorator, ast.Call) else decorator)
                    if name in ("st.cache_resource", "st.cache_data") and not (
                        isinstance(decorator, ast.Call)
                        and any(k.arg == "max_entries" for k in decorator.keywords)
                    ):
                        unbounded.append(f"{path.name}:{node.lineno} {node.name}")
    assert not unbounded, unbounded


def test_home_lists_the_known_models_and_a_pick_becomes_the_choice(home):
    at = new_app().run(timeout=TIMEOUT)
    pick = at.selectbox(key="model_pick")
    assert "bundled Whisper tiny.en" in pick.options
    pick.set_value("whisper-tiny.en").run(timeout=TIMEOUT)
    assert not exceptions(at), exceptions(at)
    assert at.session_state["model_name"] == "whisper-tiny.en"
    assert next(t for t in at.text_input if t.label == "Model").value == "whisper-tiny.en"
