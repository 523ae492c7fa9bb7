"""The package layout (DESIGN.md section 4): subpackages by role, imports run one way, files stay small.

    core <- stream <- jobs <- api / cli          io depends on errors only
    semantic, train <- core                      viewer reads jobs (through JobDir) and io

Every import is checked, including the lazy ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "streamsr"
BASE = {"config", "errors"}  # shared by every layer: the frozen configs and the error types
ALLOWED = {  # layer -> the layers it may import (besides itself and BASE)
    "core": set(),
    "stream": {"core"},
    "io": set(),
    "semantic": {"core"},
    "weights": {"core"},
    "train": {"core", "semantic", "weights"},
    "jobs": {"core", "stream", "io", "semantic", "weights"},
    "viewer": {"core", "stream", "io", "jobs"},
}
FACE = {"api", "cli", "convert", "__init__", "__main__"}  # the face may import anything
MAX_LINES = 420


def layer_of(module: str) -> str:
    """'streamsr.core.model' -> 'core'; 'streamsr.weights' -> 'weights'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every streamsr import in a file."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            out += [(node.lineno, n) for n in names if n.startswith("streamsr")]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("streamsr")]
    return out


FILES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_run_one_way(path):
    layer = layer_of(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
    if layer in FACE:
        return
    assert layer in ALLOWED or layer in BASE, f"{path}: unknown layer {layer!r}: add it to ALLOWED"
    allowed = BASE | {layer} | ALLOWED.get(layer, set())
    bad = [(line, mod) for line, mod in imported_modules(path) if layer_of(mod) not in allowed and mod != "streamsr"]
    assert not bad, f"{path.relative_to(PKG)} ({layer}) imports upward/sideways: {bad}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_files_are_small_and_say_what_they_hold(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(PKG)}: {len(text.splitlines())} lines"
    assert ast.get_docstring(ast.parse(text)) or path.name == "__main__.py", f"{path.relative_to(PKG)}: no docstring"
