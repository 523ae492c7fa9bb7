"""Tests of `streamsr convert-infdit`: official Inf-DiT checkpoints -> streamsr model dirs (FACTS.md section 4).

The reference kits hold tiny random weights under the official key names (no RoPE buffers); the
DeepSpeed/SAT `.pt` form, RoPE buffers, CLIP keys and broken checkpoints are made here from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streamsr import api
from streamsr.cli import main
from streamsr.convert import convert_infdit
from streamsr.core.rope import rope_angles
from streamsr.errors import BadInput
from streamsr.weights import WEIGHTS_NAME, load_model_dir, model_hash

REPO = Path(__file__).resolve().parents[1]
KITS = REPO.parent / "shared" / "reference" / "infdit"
ADALN = "mixins.adaln_layer."
COS, SIN = ADALN + "rope.freqs_cos", ADALN + "rope.freqs_sin"

# Official module -> our module, written out here from FACTS.md section 4 and model.py (not from convert.py).
SINGLE = {
    "mixins.patch_embed.proj": "patch_embed",
    "time_embed.mlp.0": "time_embed.0",
    "time_embed.mlp.2": "time_embed.2",
    "cond_embed.map_vector.0": "vector_embed.0",
    "cond_embed.map_vector.2": "vector_embed.2",
    ADALN + "proj_lr": "lr_cross.lr_proj",
    ADALN + "cross_attention.query": "lr_cross.query",
    ADALN + "cross_attention.key_value": "lr_cross.key_value",
    ADALN + "cross_attention.dense": "lr_cross.proj",
    ADALN + "cross_q_ln": "lr_cross.q_norm",
    ADALN + "cross_k_ln": "lr_cross.k_norm",
    ADALN + "post_cross_attention_layernorm": "lr_cross.post_norm",
    "mixins.final_layer.linear": "final.linear",
    "mixins.final_layer.adaLN_modulation.1": "final.adaln",
}
PER_LAYER = {
    ADALN + "adaLN_modulations.{i}.1": "transformer.{i}.adaln",
    "transformer.layers.{i}.attention.query_key_value": "transformer.{i}.qkv",
    "transformer.layers.{i}.attention.dense": "transformer.{i}.proj",
    "transformer.layers.{i}.mlp.dense_h_to_4h": "transformer.{i}.mlp_in",
    "transformer.layers.{i}.mlp.dense_4h_to_h": "transformer.{i}.mlp_out",
    ADALN + "q_layer_norm.{i}": "transformer.{i}.q_norm",
}
IGNORED_2X2 = {ADALN + f"k_layer_norm.{i}.{leaf}" for i in (0, 1) for leaf in ("weight", "bias")} | {
    "transformer.position_embeddings.weight"}


def kit_weights(name: str) -> Path:
    path = KITS / name / "weights.safetensors"
    assert path.is_file(), f"reference kit weights {path} are missing (../shared must sit beside the repo)"
    return path


def placements(state: dict[str, torch.Tensor], layers: int, k_norm: bool = False):
    """(official key, our key, expected tensor) for every tensor of the model."""
    modules = dict(SINGLE)
    for i in range(layers):
        modules.update({off.format(i=i): ours.format(i=i) for off, ours in PER_LAYER.items()})
        if k_norm:
            modules[ADALN + f"k_layer_norm.{i}"] = f"transformer.{i}.k_norm"
    out = [(f"{off}.{leaf}", f"{ours}.{leaf}", state[f"{off}.{leaf}"])
           for off, ours in modules.items() for leaf in ("weight", "bias")]
    out += [(ADALN + "re_pos_embed", f"transformer.{i}.block_pos", state[ADALN + "re_pos_embed"][i])
            for i in range(layers)]
    out.append((ADALN + "lr_query_position_embedding", "lr_cross.q_pos",
                state[ADALN + "lr_query_position_embedding"][0]))
    out.append((ADALN + "lr_key_position_embedding", "lr_cross.k_pos",
                state[ADALN + "lr_key_position_embedding"][0]))
    return out


def rope_buffers(table: int, head_dim: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The official (T, T, head_dim) cos/sin tables, built from the positions rows, cols in range(T)."""
    rows, cols = torch.meshgrid(torch.arange(table), torch.arange(table), indexing="ij")
    angles = rope_angles(rows, cols, head_dim, table)  # (T, T, head_dim)
    return {COS: angles.cos().to(dtype), SIN: angles.sin().to(dtype)}


def save_pt(path: Path, module: dict, **extra) -> Path:
    """A DeepSpeed/SAT model-states file: the weights under 'module', with SAT's args and iteration."""
    torch.save({"module": module, "args": argparse.Namespace(lr=1e-4), "iteration": 5, **extra}, path)
    return path


def weights_of(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / WEIGHTS_NAME)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def refused(src, out: Path, **kwargs) -> str:
    """convert_infdit(src) must raise BadInput with a one-line message and write nothing; returns it."""
    with pytest.raises(BadInput) as info:
        convert_infdit(src, out, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    assert not out.exists(), "a refused conversion must not write a model dir"
    return msg


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return load_file(kit_weights("kit_2x2"))


@pytest.fixture()
def state(official) -> dict[str, torch.Tensor]:
    """A fresh dict (tensors shared: clone before changing one in place)."""
    return dict(official)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit_2x2") / "model"
    report = convert_infdit(kit_weights("kit_2x2"), out)
    return report, out


# ---- 1. the reference kits ----------------------------------------------------------------------------

@pytest.mark.parametrize("kit", ["kit_2x2", "kit_2x3"])
def test_kit_converts_and_every_tensor_lands_in_place(kit, tmp_path):
    src = kit_weights(kit)
    state = load_file(src)
    report = convert_infdit(src, tmp_path / "model")
    model = api.load_model(tmp_path / "model")

    cfg = model.cfg
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.block_size, cfg.patch_size, cfg.vector_dim, cfg.rope_table) == \
        (2, 64, 2, 128, 4, 768, 1024)
    assert (cfg.mlp_hidden, cfg.lr_patch, cfg.time_freqs, cfg.k_uses_q_norm) == (256, 2, 96, True)
    assert report.config == cfg
    assert model.transformer[0].k_norm is None and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())

    ours = model.state_dict()
    where = placements(state, cfg.layers)
    assert {o for _, o, _ in where} == set(ours), "every model tensor must come from the checkpoint"
    for off, key, expected in where:
        assert torch.equal(ours[key], expected), f"{off} -> {key}"
    # Spot checks named in the issue, spelled out.
    for i in range(cfg.layers):
        assert torch.equal(ours[f"transformer.{i}.qkv.weight"],
                           state[f"transformer.layers.{i}.attention.query_key_value.weight"])
        assert torch.equal(ours[f"transformer.{i}.block_pos"], state[ADALN + "re_pos_embed"][i])
    assert torch.equal(ours["lr_cross.q_pos"], state[ADALN + "lr_query_position_embedding"][0])
    assert not torch.equal(ours["transformer.0.block_pos"], ours["transformer.1.block_pos"])
    assert report.mapped == len(ours) == 56

    # Every official key is either mapped or reported as ignored, with a reason.
    used = {off for off, _, _ in where}
    assert set(report.ignored) == set(state) - used == IGNORED_2X2
    for key, why in report.ignored.items():
        assert ("k_layer_norm" in why) == ("k_layer_norm" in key) and "unused" in why, (key, why)
    text = "\n".join(report.lines())
    assert "ignored 4: " in text and "ignored 1: transformer.position_embeddings.weight" in text
    assert "layers" in report.lines()[0] and "RoPE table 1024" in report.lines()[0]


def test_config_json_is_the_inferred_config(converted):
    report, out = converted
    data = json.loads((out / "config.json").read_text())
    assert data["_class_name"] == "InfDiT"
    assert {k: data[k] for k in report.config.to_dict()} == report.config.to_dict()


# ---- 2. DeepSpeed/SAT .pt, RoPE buffers, CLIP keys ---------------------------------------------------------

def test_deepspeed_pt_gives_the_same_model(state, converted, tmp_path):
    report_st, out_st = converted
    src = save_pt(tmp_path / "mp_rank_00_model_states.pt", state)
    report = convert_infdit(src, tmp_path / "model")
    assert report.config == report_st.config
    assert report.ignored == report_st.ignored and report.mapped == report_st.mapped
    assert_same_weights(weights_of(tmp_path / "model"), weights_of(out_st))
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == \
        json.loads((out_st / "config.json").read_text())
    # A bare state dict (no 'module' wrapper) is read too.
    torch.save(state, tmp_path / "bare.pt")
    convert_infdit(tmp_path / "bare.pt", tmp_path / "bare")
    assert_same_weights(weights_of(tmp_path / "bare"), weights_of(out_st))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_buffers_are_checked_and_set_the_table(state, converted, tmp_path, dtype):
    _, out_st = converted
    state.update(rope_buffers(64, 32, dtype))
    report = convert_infdit(save_pt(tmp_path / "rope.pt", state), tmp_path / "model")
    assert report.config.rope_table == 64
    assert set(report.ignored) == IGNORED_2X2 | {COS, SIN}
    assert "checked" in report.ignored[COS]
    assert any("checked against the checkpoint" in note for note in report.notes), report.notes
    model = load_model_dir(tmp_path / "model")
    assert model.cfg.rope_table == 64
    assert_same_weights(weights_of(tmp_path / "model"), weights_of(out_st))  # only the config differs
    # An explicit --rope-table that agrees is fine, one that contradicts the buffers is refused.
    assert convert_infdit(tmp_path / "rope.pt", tmp_path / "agree", rope_table=64).config.rope_table == 64
    assert "64" in refused(tmp_path / "rope.pt", tmp_path / "contra", rope_table=128)


def test_rope_table_option_without_buffers(tmp_path):
    report = convert_infdit(kit_weights("kit_2x2"), tmp_path / "model", rope_table=256)
    assert report.config.rope_table == 256
    assert any("stores none" in note for note in report.notes)
    assert load_model_dir(tmp_path / "model").cfg.rope_table == 256


def test_wrong_rope_buffers_are_refused(state, tmp_path):
    torch.manual_seed(0)
    good = rope_buffers(64, 32)
    cases = {
        "random": {COS: torch.rand(64, 64, 32) * 2 - 1, SIN: torch.rand(64, 64, 32) * 2 - 1},
        "swapped": {COS: good[SIN], SIN: good[COS]},
        "non-interleaved": {COS: good[COS].flip(-1), SIN: good[SIN].flip(-1)},
        "cos only": {COS: good[COS]},
        "wrong head_dim": rope_buffers(64, 16),
        "not square": {COS: good[COS][:, :32], SIN: good[SIN][:, :32]},
    }
    for name, buffers in cases.items():
        src = save_pt(tmp_path / f"{name}.pt", {**state, **buffers})
        msg = refused(src, tmp_path / f"{name}-model")
        assert "rope" in msg.lower() or "freqs" in msg, (name, msg)


def test_clip_keys_are_ignored_not_an_error(state, converted, tmp_path):
    _, out_st = converted
    clip = {"image_encoder.model.visual.proj": torch.randn(16, 8),
            "image_encoder.model.visual.conv1.weight": torch.randn(4, 3, 2, 2),
            "image_encoder.model.logit_scale": torch.tensor(4.6)}
    report = convert_infdit(save_pt(tmp_path / "clip.pt", {**state, **clip}), tmp_path / "model")
    assert set(report.ignored) == IGNORED_2X2 | set(clip)
    assert "CLIP" in report.ignored["image_encoder.model.visual.proj"]
    assert any("image_encoder.model.visual.proj" in line for line in report.lines())
    assert_same_weights(weights_of(tmp_path / "model"), weights_of(out_st))


# ---- 3. pickles that would run code ------------------------------------------------------------------

class Payload:
    """Unpickling this calls open(marker, 'w'): a visible, harmless side effect."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["beside module", "inside module"])
def test_code_running_pickle_is_refused_without_running(state, tmp_path, where):
    marker = tmp_path / "MARKER"
    src = tmp_path / "evil.pt"
    if where == "inside module":
        save_pt(src, {**state, "evil": Payload(marker)})
    else:
        save_pt(src, state, evil=Payload(marker))
    # The payload is live: a plain torch.load runs it.
    torch.load(src, weights_only=False)
    assert marker.exists()
    marker.unlink()

    msg = refused(src, tmp_path / "model")
    assert "weights-only" in msg and "\x1b" not in msg, msg
    assert not marker.exists(), "the pickle's code ran"
    assert main(["convert-infdit", str(src), "-o", str(tmp_path / "cli")]) == 2
    assert not marker.exists(), "the pickle's code ran"


# ---- 4. unknown, missing, misshapen keys; unreadable files ---------------------------------------------

def test_unknown_key_is_named(state, tmp_path):
    state[ADALN + "bogus.weight"] = torch.zeros(3)
    msg = refused(save_pt(tmp_path / "c.pt", state), tmp_path / "model")
    assert "unknown" in msg and ADALN + "bogus.weight" in msg, msg
    # A third layer's k_layer_norm is no known key either.
    state.pop(ADALN + "bogus.weight")
    state[ADALN + "k_layer_norm.7.weight"] = torch.zeros(32)
    assert ADALN + "k_layer_norm.7.weight" in refused(save_pt(tmp_path / "d.pt", state), tmp_path / "m2")


@pytest.mark.parametrize("key", ["transformer.layers.1.mlp.dense_4h_to_h.bias",
                                 ADALN + "adaLN_modulations.0.1.weight",
                                 ADALN + "cross_k_ln.bias",
                                 "cond_embed.map_vector.2.weight",
                                 ADALN + "lr_key_position_embedding"])
def test_missing_key_is_named(state, tmp_path, key):
    del state[key]
    msg = refused(save_pt(tmp_path / "c.pt", state), tmp_path / "model")
    assert key in msg and ("missing" in msg or "lacks" in msg), msg


def test_missing_key_needed_for_the_config_is_named(state, tmp_path):
    del state["mixins.patch_embed.proj.weight"]
    assert "mixins.patch_embed.proj.weight" in refused(save_pt(tmp_path / "c.pt", state), tmp_path / "model")


@pytest.mark.parametrize("key,shape", [("transformer.layers.0.attention.dense.weight", (64, 63)),
                                       (ADALN + "cross_q_ln.weight", (31,)),
                                       ("mixins.final_layer.linear.bias", (47,)),
                                       (ADALN + "re_pos_embed", (2, 3, 2, 32)),
                                       (ADALN + "lr_key_position_embedding", (1, 2300, 2, 32)),
                                       ("mixins.patch_embed.proj.weight", (64, 3, 4, 4))])
def test_wrong_shape_is_refused(state, tmp_path, key, shape):
    state[key] = torch.zeros(shape)
    msg = refused(save_pt(tmp_path / "c.pt", state), tmp_path / "model")
    assert str(tuple(shape)) in msg or str(shape[1]) in msg, msg


def test_unreadable_files_are_refused(tmp_path):
    data = kit_weights("kit_2x2").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.safetensors").write_bytes(data[:8] + b"{garbage" + data[16:])
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    (tmp_path / "text.pt").write_text("this is a text file\nnot a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"module": {"a": torch.zeros(2)}}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"module": {"a": torch.zeros(2), "b": 3}}, tmp_path / "mixed.pt")
    names = ["missing.pt", "missing.safetensors", "truncated.safetensors", "header.safetensors",
             "tiny.safetensors", "text.pt", "empty.pt", "truncated.pt", "list.pt", "mixed.pt"]
    for name in names:
        msg = refused(tmp_path / name, tmp_path / f"out-{name}")
        assert name in msg, msg
    (tmp_path / "adir.pt").mkdir()
    refused(tmp_path / "adir.pt", tmp_path / "out-dir")


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(BadInput, match="not a directory"):
        convert_infdit(kit_weights("kit_2x2"), tmp_path / "taken")


# ---- 5. --fixed-k-norm ------------------------------------------------------------------------------

def test_fixed_k_norm_maps_k_layer_norm(official, tmp_path):
    report = convert_infdit(kit_weights("kit_2x2"), tmp_path / "model", k_uses_q_norm=False)
    assert report.config.k_uses_q_norm is False
    assert set(report.ignored) == {"transformer.position_embeddings.weight"}
    assert report.mapped == 56 + 4
    model = api.load_model(tmp_path / "model")
    assert model.cfg.k_uses_q_norm is False
    ours = model.state_dict()
    where = placements(official, 2, k_norm=True)
    assert {o for _, o, _ in where} == set(ours)
    for off, key, expected in where:
        assert torch.equal(ours[key], expected), f"{off} -> {key}"
    for i in range(2):
        assert torch.equal(model.transformer[i].k_norm.weight, official[ADALN + f"k_layer_norm.{i}.weight"])
        assert not torch.equal(model.transformer[i].k_norm.weight, model.transformer[i].q_norm.weight)


def test_fixed_k_norm_needs_k_layer_norm(state, tmp_path):
    del state[ADALN + "k_layer_norm.1.weight"]
    src = save_pt(tmp_path / "c.pt", state)
    convert_infdit(src, tmp_path / "official")  # unused by the official model: not needed
    msg = refused(src, tmp_path / "model", k_uses_q_norm=False)
    assert ADALN + "k_layer_norm.1.weight" in msg, msg


# ---- 6. the command line ----------------------------------------------------------------------------

def test_cli_converts_and_prints_the_report(converted, tmp_path, capsys):
    report, out_st = converted
    out = tmp_path / "model"
    assert main(["convert-infdit", str(kit_weights("kit_2x2")), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    printed = captured.out.splitlines()
    assert printed[:-1] == report.lines()
    assert printed[-1] == f"wrote model dir {out}"
    assert "mapped 56 tensors" in printed and any(line.startswith("ignored ") for line in printed)
    assert_same_weights(weights_of(out), weights_of(out_st))


def test_cli_options(tmp_path, capsys):
    src = str(kit_weights("kit_2x2"))
    assert main(["convert-infdit", src, "-o", str(tmp_path / "a"), "--fixed-k-norm", "--rope-table", "512"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "k_uses_q_norm=False" in first and "RoPE table 512" in first
    cfg = load_model_dir(tmp_path / "a").cfg
    assert (cfg.k_uses_q_norm, cfg.rope_table) == (False, 512)
    with pytest.raises(SystemExit) as info:
        main(["convert-infdit", src])  # -o is required: argparse's usage error
    assert info.value.code == 2


def test_cli_error_is_one_line(state, tmp_path, capsys):
    del state["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    src = save_pt(tmp_path / "c.pt", state)
    assert main(["convert-infdit", str(src), "-o", str(tmp_path / "model")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.err.endswith("\n"), captured.err
    assert lines[0].startswith("streamsr: error:")
    assert "transformer.layers.1.mlp.dense_4h_to_h.bias" in lines[0]
    assert not (tmp_path / "model").exists()


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "streamsr", "convert-infdit", str(bad), "-o", str(tmp_path / "m")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamsr: error:") and "notes.pt" in lines[0], proc.stderr
    assert proc.stdout == ""


# ---- 7. model hashes and model dir errors --------------------------------------------------------------

def test_model_hash_stable_and_sensitive(state, converted, tmp_path):
    _, out = converted
    h = model_hash(out)
    assert len(h) == 64 and h == model_hash(out)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert model_hash(copy) == h  # depends on the content, not the path
    convert_infdit(kit_weights("kit_2x2"), tmp_path / "again")
    assert model_hash(tmp_path / "again") == h  # conversion is deterministic

    key = "transformer.layers.1.mlp.dense_4h_to_h.weight"
    state[key] = state[key].clone()
    state[key][3, 5] += 1e-3
    convert_infdit(save_pt(tmp_path / "c.pt", state), tmp_path / "changed")
    assert model_hash(tmp_path / "changed") != h
    convert_infdit(kit_weights("kit_2x2"), tmp_path / "rope", rope_table=512)  # same weights, other config
    assert model_hash(tmp_path / "rope") != h


def test_model_dir_errors(converted, tmp_path):
    _, out = converted
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(out / WEIGHTS_NAME, no_config / WEIGHTS_NAME)
    with pytest.raises(BadInput, match="config.json"):
        load_model_dir(no_config)
    with pytest.raises(BadInput):
        model_hash(no_config)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / "config.json").write_text('{"_class_name": "InfDiT", "layers": 2,')
    with pytest.raises(BadInput, match="config.json"):
        load_model_dir(corrupt)

    bad_field = tmp_path / "bad_field"
    shutil.copytree(out, bad_field)
    data = json.loads((out / "config.json").read_text())
    (bad_field / "config.json").write_text(json.dumps({**data, "heads": 3}))
    with pytest.raises(BadInput):
        load_model_dir(bad_field)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(out / "config.json", no_weights / "config.json")
    with pytest.raises(BadInput, match=WEIGHTS_NAME):
        load_model_dir(no_weights)
    with pytest.raises(BadInput):
        load_model_dir(tmp_path / "nowhere")

    assert torch.equal(load_model_dir(out).transformer[0].qkv.weight,
                       weights_of(out)["transformer.0.qkv.weight"])
