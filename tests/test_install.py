"""The light install: streamsr imports and upscales without open_clip (a model with an open_clip encoder says
which extra to install); pyproject states ranges and CI installs the exact pins from .ci/constraints.txt."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from test_job import REPO, pixels, run_cli, sub_env, work  # noqa: F401  (the tiny model and input fixture)

from streamsr.errors import BadInput

NO_OPEN_CLIP = """
import sys
class NoOpenClip:  # as if open_clip_torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "open_clip":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoOpenClip())
from streamsr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_upscale_runs_without_open_clip(work, tmp_path):  # noqa: F811
    args = ["upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", "--steps", 1, "-q"]
    res = subprocess.run([sys.executable, "-c", NO_OPEN_CLIP, *map(str, args)], capture_output=True, text=True,
                         env=sub_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    assert run_cli(*args[:3], tmp_path / "ref.png", *args[4:]) == 0
    assert (pixels(tmp_path / "o.png") == pixels(tmp_path / "ref.png")).all()


def test_an_open_clip_model_without_open_clip_names_the_extra(monkeypatch):
    from streamsr.semantic import open_clip as encoder

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(BadInput, match=r'pip install "streamsr\[clip\]"'):
        encoder._build_open_clip("ViT-B-32", "cpu")  # noqa: SLF001


def test_ranges_in_pyproject_and_exact_pins_for_ci():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert not [d for d in deps if "==" in d], deps
    assert not [d for d in deps if d.startswith(("open_clip", "torchvision"))]
    assert any(d.startswith("open_clip_torch") for d in project["optional-dependencies"]["clip"])
    pins = (REPO / ".ci" / "constraints.txt").read_text().split()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert "-c .ci/constraints.txt" in (REPO / ".ci" / "run").read_text()
