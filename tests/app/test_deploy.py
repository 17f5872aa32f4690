"""Deploy page through AppTest: export the chosen recipe to a runtime in the background, then the lab's
and the runtime's measurements side by side, the zip and the loading snippet; a recipe the runtime cannot
hold is explained and not exported."""

from __future__ import annotations

import json

from test_pages import TIMEOUT, page, problems, wait_for_job


def test_deploy_exports_the_compress_recipe_to_ctranslate2_and_measures_it_there():
    at = page("pages/deploy.py")
    assert not problems(at), problems(at)
    at.session_state["recipe_json"] = json.dumps({"steps": [{"quantize": {"bits": 8}}]})
    at.run(timeout=TIMEOUT)
    at.radio[1].set_value("CTranslate2 4.8.5").run(timeout=TIMEOUT)
    assert not at.warning
    at.button[0].click().run(timeout=TIMEOUT)
    wait_for_job(at)
    assert not problems(at), problems(at)
    table = at.dataframe[0].value
    assert list(table["measured in"]) == ["lab (PyTorch)", "CTranslate2 4.8.5"]
    assert 40 < table["size MB"][1] < 46  # int8 tiny.en as CTranslate2 loads it
    assert abs(table["WER %"][1] - table["WER %"][0]) < 5 and table["threads"][1] == table["threads"][0]
    assert any("ctranslate2.models.Whisper" in c.value for c in at.code)
    assert any("points in CTranslate2" in c.value for c in at.caption)

    pareto = page("pages/pareto.py")  # the runtime's point joins the Pareto page under its runtime
    where = next(r for r in pareto.radio if r.label == "Measured in")
    assert [o.split(" · ")[0] for o in where.options] == ["lab (PyTorch)", "CTranslate2"]
    assert where.value == "lab"
    where.set_value("ct2").run(timeout=TIMEOUT)
    assert not problems(pareto), problems(pareto)
    assert any("8-bit" in option for option in pareto.selectbox[0].options)


def test_deploy_explains_a_recipe_the_runtime_cannot_hold():
    at = page("pages/deploy.py")
    at.session_state["recipe_json"] = json.dumps({"steps": [{"quantize": {"bits": 4}}]})
    at.run(timeout=TIMEOUT)
    at.radio[1].set_value("CTranslate2 4.8.5").run(timeout=TIMEOUT)
    assert "cannot hold this model exactly" in at.warning[0].value
    assert "4-bit codes" in at.warning[0].value
    assert at.button[0].disabled
