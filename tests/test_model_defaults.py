"""A model dir's recommended settings (streamsr_defaults.json): flat files of earlier versions and named modes."""

from __future__ import annotations

import json

import pytest

from streamsr.errors import BadInput
from streamsr.weights import DEFAULTS_NAME, model_defaults, read_model_defaults

FIDELITY = {"steps": 1, "sampler": "euler", "sigma_max": 1.0, "sigma_min": 0.5, "anchor": "none"}
DETAIL = {"steps": 3, "sampler": "heun", "sigma_max": 0.2, "sigma_min": 0.01}


def write(tmp_path, data) -> None:
    (tmp_path / DEFAULTS_NAME).write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_named_modes(tmp_path):
    write(tmp_path, {"mode": "fidelity", "modes": {"fidelity": FIDELITY, "detail": DETAIL}})
    d = read_model_defaults(tmp_path)
    assert d.default_mode == "fidelity"
    assert model_defaults(tmp_path) == FIDELITY and model_defaults(tmp_path, "detail") == DETAIL
    assert json.loads(json.dumps(d.to_json())) == {"mode": "fidelity", "modes": {"fidelity": FIDELITY,
                                                                                  "detail": DETAIL}}


def test_flat_file_and_no_file(tmp_path):
    assert model_defaults(tmp_path) == {}  # no file: JobConfig's defaults apply
    write(tmp_path, {"steps": 2, "sigma_max": 0.02})  # the form written by earlier versions
    assert model_defaults(tmp_path) == {"steps": 2, "sigma_max": 0.02}
    with pytest.raises(BadInput, match="no settings for --mode detail"):
        model_defaults(tmp_path, "detail")


@pytest.mark.parametrize("data,match", [
    ("{not json", "cannot read"),
    ([1, 2], "JSON object"),
    ({"steps": 2, "color": "red"}, "may only set"),
    ({"mode": "fidelity", "modes": {"fidelity": {"steps": 1, "batch": 4}}}, "may only set"),
    ({"mode": "fast", "modes": {"fidelity": FIDELITY}}, "default mode"),
    ({"mode": "fidelity", "modes": {"fidelity": FIDELITY, "wild": DETAIL}}, "NAME in"),
    ({"mode": "fidelity", "modes": {}}, "NAME in"),
])
def test_bad_files_are_one_line_errors(tmp_path, data, match):
    write(tmp_path, data)
    with pytest.raises(BadInput, match=match) as info:
        model_defaults(tmp_path)
    assert "\n" not in str(info.value) and DEFAULTS_NAME in str(info.value)


def test_unknown_mode(tmp_path):
    write(tmp_path, {"mode": "fidelity", "modes": {"fidelity": FIDELITY}})
    with pytest.raises(BadInput, match="mode must be one of"):
        model_defaults(tmp_path, "sharp")
    with pytest.raises(BadInput, match="its modes: fidelity"):
        model_defaults(tmp_path, "detail")
