"""streamsr.semantic: the spec file, the streamed CLIP thumbnail, and the vector against open_clip's own path.

Everything runs on a tiny random open_clip model (inline config, embed_dim 16); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from streamsr.errors import BadInput
from streamsr.semantic import (
    SPEC_NAME,
    SemanticSpec,
    encoders,
    load_encoder,
    read_spec,
    semantic_vector,
    text_direction,
    thumbnail,
    write_spec,
)
from streamsr.semantic import open_clip as open_clip_encoder
from streamsr.semantic import spec as spec_file

D = 16
TINY_CFG = {
    "embed_dim": D,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _tiny_clip(seed: int = 0):
    """open_clip's own CLIP from TINY_CFG, with every parameter redrawn."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**json.loads(json.dumps(TINY_CFG)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """(reference CLIP, full weights file, visual-only weights file)."""
    root = tmp_path_factory.mktemp("clip")
    model = _tiny_clip()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "clip_full.safetensors"))
    save_file({k: v for k, v in state.items() if k.startswith("visual.")}, str(root / "clip_visual.safetensors"))
    return model, root / "clip_full.safetensors", root / "clip_visual.safetensors"


def _model_dir(tmp_path, weights, text=True, model=None, embed_dim=D, name="m"):
    path = tmp_path / name
    path.mkdir()
    spec = SemanticSpec(kind="open_clip", model=TINY_CFG if model is None else model, weights=str(weights),
                        embed_dim=embed_dim, text=text)
    write_spec(path, spec)
    return path


def _reference_thumb(lr: torch.Tensor, size: int = 224) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = (lr.reshape(1, 3, *lr.shape[-2:]).float() + 1) / 2  # the official float32 path
    x = TF.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, size)


def _reference_vector(model, lr: torch.Tensor) -> torch.Tensor:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision.transforms import functional as TF

    x = TF.normalize(_reference_thumb(lr), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    with torch.no_grad():
        return F.normalize(model.encode_image(x, normalize=True), dim=-1)


def _lr(h: int, w: int, seed: int = 0, batch: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, h, w, generator=g) * 2 - 1
    return x[None] if batch else x


# ---- spec ----------------------------------------------------------------------------------------------
def test_missing_spec_is_none_only_without_vector(tmp_path):
    assert read_spec(tmp_path, 0) == SemanticSpec()
    with pytest.raises(BadInput, match=f"has no {SPEC_NAME}.*size 16"):
        read_spec(tmp_path, 16)
    write_spec(tmp_path, SemanticSpec())
    assert json.loads((tmp_path / SPEC_NAME).read_text()) == {"kind": "none"}
    assert read_spec(tmp_path, 0).kind == "none"
    with pytest.raises(BadInput, match="kind 'none'"):
        read_spec(tmp_path, 16)
    with pytest.raises(BadInput, match="does not exist"):
        read_spec(tmp_path / "nope", 0)


def test_spec_round_trip_and_validation(tmp_path, clip_files):
    _, full, _ = clip_files
    (tmp_path / "w.safetensors").write_bytes(full.read_bytes())
    spec = SemanticSpec(kind="open_clip", model="ViT-L-14", weights="w.safetensors", embed_dim=D, text=False)
    write_spec(tmp_path, spec)
    assert read_spec(tmp_path, D) == spec
    assert spec.weights_path(tmp_path) == tmp_path / "w.safetensors"
    with pytest.raises(BadInput, match="embed_dim 16 != the model's vector_dim 768"):
        read_spec(tmp_path, 768)
    with pytest.raises(BadInput, match="vector_dim 0"):
        read_spec(tmp_path, 0)

    def bad(data: dict, pattern: str):
        (tmp_path / SPEC_NAME).write_text(json.dumps(data))
        with pytest.raises(BadInput, match=pattern):
            read_spec(tmp_path, D)

    base = spec.to_dict()
    bad({**base, "weights": "absent.safetensors"}, "absent.safetensors do not exist")
    bad({**base, "weights": str(tmp_path / "absent.safetensors")}, "do not exist")
    bad({**base, "weights": "w.bin"}, "safetensors")
    bad({**base, "embed_dim": 8}, "embed_dim 8 != the model's vector_dim 16")
    bad({**base, "model": {**TINY_CFG, "embed_dim": 8}}, "inline config's embed_dim")
    bad({**base, "model": 3}, "'model' must be")
    bad({**base, "text": "yes"}, "'text'")
    bad({**base, "extra": 1}, "unknown key")
    bad({k: v for k, v in base.items() if k != "weights"}, "needs 'weights'")
    bad({**base, "kind": "magic"}, "unknown semantic encoder kind 'magic'")
    bad(["open_clip"], "JSON object")
    (tmp_path / SPEC_NAME).write_text("{not json")
    with pytest.raises(BadInput, match="cannot read"):
        read_spec(tmp_path, D)


# ---- thumbnail -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(300, 500), (500, 301), (100, 150), (97, 61), (225, 999), (224, 224),
                                  (1111, 700), (224, 225), (2500, 1900)])
def test_thumbnail_matches_torchvision(h, w):
    lr = _lr(h, w, seed=h * w)
    ref = _reference_thumb(lr)
    got = thumbnail(lr, strip_rows=64, strip_cols=128)
    assert got.shape == (1, 3, 224, 224) and got.dtype == torch.float32
    assert (got - ref).abs().max().item() < 1e-5
    assert (thumbnail(lr[0]) - ref).abs().max().item() < 1e-5  # (3, h, w) input, one tile


def test_thumbnail_exact_mode_and_float32_tap_placement():
    from torch.nn.functional import interpolate

    from streamsr.core.resample import axis_weights
    from streamsr.semantic.thumbnail import resized_size, torch_axis_weights

    lr = _lr(225, 999, seed=11)  # long side ~1000: torch's float32 tap centres are off by ~3e-5 px
    rh, rw = resized_size(225, 999, 224)
    top, left = (rh - 224) // 2, round((rw - 224) / 2)
    exact = interpolate((lr.double() + 1) / 2, size=(rh, rw), mode="bicubic", antialias=True,
                        align_corners=False)[..., top:top + 224, left:left + 224]
    assert (thumbnail(lr, exact=True).double() - exact).abs().max().item() < 1e-6
    assert (thumbnail(lr) - _reference_thumb(lr)).abs().max().item() < 1e-5
    assert (exact.float() - _reference_thumb(lr)).abs().max().item() > 1e-5  # why torch_axis_weights exists
    for n_in, n_out in [(999, 994), (61, 224), (3000, 224), (224, 224)]:
        lo, hi, w32 = torch_axis_weights(n_in, n_out, 3, n_out - 2)
        lo2, hi2, w64 = axis_weights(n_in, n_out, 3, n_out - 2)
        assert (lo, hi) == (lo2, hi2) and torch.allclose(w32.sum(1), torch.ones(n_out - 5, dtype=torch.float64))
        assert (w32 - w64).abs().max().item() < 1e-3


def test_thumbnail_other_size_numpy_and_no_clamp():
    lr = _lr(90, 130, seed=3)
    lr[..., 40:50, 60:70] = torch.where(torch.rand(3, 10, 10) > 0.5, 1.0, -1.0)  # sharp edges overshoot
    ref = _reference_thumb(lr, 64)
    got = thumbnail(lr.numpy(), size=64, strip_rows=7)
    assert (got - ref).abs().max().item() < 1e-5
    assert ref.min() < 0 or ref.max() > 1  # torchvision does not clamp float tensors, and neither do we


class _RecordingLR:
    """Wraps a tensor; records every (row, col) range read through __getitem__."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.shape, self.reads = tensor, tensor.shape, []

    def __getitem__(self, key):
        rows, cols = key[-2], key[-1]
        self.reads.append((rows.start, rows.stop, cols.start, cols.stop))
        return self.tensor[key]


def test_thumbnail_streams_row_strips():
    lr = _lr(1200, 500, seed=5)  # portrait: every row and column can reach the crop
    rec = _RecordingLR(lr)
    got = thumbnail(rec, strip_rows=100)
    assert (got - _reference_thumb(lr)).abs().max().item() < 1e-5
    assert len(rec.reads) > 5
    assert max(y1 - y0 for y0, y1, _, _ in rec.reads) <= 100
    rows = sorted((y0, y1) for y0, y1, _, _ in rec.reads)  # disjoint strips: every row read once at most
    assert all(a[1] <= b[0] for a, b in zip(rows, rows[1:]))

    wide = _lr(100, 2000, seed=6)  # landscape: the crop keeps the middle ~100 columns only
    rec = _RecordingLR(wide)
    got = thumbnail(rec, strip_rows=32, strip_cols=64)
    assert (got - _reference_thumb(wide)).abs().max().item() < 1e-5
    assert max(y1 - y0 for y0, y1, _, _ in rec.reads) <= 32
    assert max(x1 - x0 for _, _, x0, x1 in rec.reads) <= 64
    assert min(x0 for *_, x0, _ in rec.reads) > 900 and max(x1 for *_, x1 in rec.reads) < 1100


def test_thumbnail_rejects_bad_shapes():
    for shape in [(2, 3, 10, 10), (1, 4, 10, 10), (10, 10), (1, 3, 0, 5)]:
        with pytest.raises(BadInput):
            thumbnail(torch.zeros(shape))


# ---- encoder and vector --------------------------------------------------------------------------------
def test_semantic_vector_equals_open_clip(tmp_path, clip_files):
    model, full, _ = clip_files
    lr = _lr(150, 260, seed=7)
    path = _model_dir(tmp_path, full)
    vec = semantic_vector(path, D, lr)
    ref = _reference_vector(model, lr)
    assert vec.shape == (1, D) and vec.dtype == torch.float32
    assert torch.allclose(vec, ref, atol=1e-5)
    assert abs(vec.norm().item() - 1) < 1e-5
    # (3, h, w) numpy input gives the same vector
    assert torch.allclose(semantic_vector(path, D, lr[0].numpy()), vec, atol=1e-6)


def test_text_direction(tmp_path, clip_files):
    model, full, _ = clip_files
    from open_clip.tokenizer import SimpleTokenizer

    lr = _lr(120, 120, seed=8)
    path = _model_dir(tmp_path, full)
    pos, neg = "HD, high resolution, clear.", "noisy,blurry,low resolution."
    plain = semantic_vector(path, D, lr)
    guided = semantic_vector(path, D, lr, prompt_pos=pos, prompt_neg=neg)
    assert (guided - plain).abs().max() > 1e-3

    tok = SimpleTokenizer(context_length=77)
    with torch.no_grad():
        e_pos, e_neg = (F.normalize(model.encode_text(tok([p]), normalize=True), dim=-1) for p in (pos, neg))
    e_img = _reference_vector(model, lr)
    expected = F.normalize(e_img + 2 * e_pos - 2 * e_neg, dim=-1)
    assert torch.allclose(guided, expected, atol=1e-5)
    assert abs(guided.norm().item() - 1) < 1e-5
    assert torch.allclose(text_direction(e_img, e_pos, e_neg), expected, atol=1e-6)
    # either prompt alone
    only_pos = semantic_vector(path, D, lr, prompt_pos=pos)
    assert torch.allclose(only_pos, F.normalize(e_img + 2 * e_pos, dim=-1), atol=1e-5)
    only_neg = semantic_vector(path, D, lr, prompt_neg=neg)
    assert torch.allclose(only_neg, F.normalize(e_img - 2 * e_neg, dim=-1), atol=1e-5)
    # encode_text batches
    enc = load_encoder(path, read_spec(path, D))
    both = enc.encode_text([pos, neg])
    assert both.shape == (2, D) and torch.allclose(both, torch.cat([e_pos, e_neg]), atol=1e-5)


def test_pure_text_direction():
    e_img, e_pos, e_neg = torch.randn(3, 1, 8).unbind(0)
    got = text_direction(e_img, e_pos, e_neg, weight=0.5)
    assert torch.allclose(got, (e_img + 0.5 * e_pos - 0.5 * e_neg) / (e_img + 0.5 * e_pos - 0.5 * e_neg).norm())
    assert torch.allclose(text_direction(e_img), F.normalize(e_img, dim=-1))


def test_vision_only_refuses_prompts(tmp_path, clip_files):
    model, full, visual = clip_files
    lr = _lr(80, 100, seed=9)
    ref = _reference_vector(model, lr)
    for name, weights in (("full", full), ("visual", visual)):
        path = _model_dir(tmp_path, weights, text=False, name=name)
        vec = semantic_vector(path, D, lr)
        assert torch.allclose(vec, ref, atol=1e-5)
        with pytest.raises(BadInput, match="no text tower"):
            semantic_vector(path, D, lr, prompt_pos="HD")
        with pytest.raises(BadInput, match="no text tower"):
            semantic_vector(path, D, lr, prompt_neg="blurry")
        enc = load_encoder(path, read_spec(path, D))
        assert not enc.has_text and not hasattr(enc.model, "transformer")  # text tower freed
        with pytest.raises(BadInput, match="no text tower"):
            enc.encode_text("HD")
    # visual-only weights cannot back a spec that promises a text tower
    path = _model_dir(tmp_path, visual, text=True, name="liar")
    with pytest.raises(BadInput, match="no text tower"):
        load_encoder(path, read_spec(path, D))


def test_bad_weights_and_architecture(tmp_path, clip_files):
    _, full, _ = clip_files
    other = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "width": 64}}
    path = _model_dir(tmp_path, full, model=other, name="mismatch")
    with pytest.raises(BadInput, match="does not fit"):
        load_encoder(path, read_spec(path, D))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    path = _model_dir(tmp_path, tmp_path / "junk.safetensors", name="junk")
    with pytest.raises(BadInput, match="cannot read"):
        load_encoder(path, read_spec(path, D))
    path = _model_dir(tmp_path, full, model="no-such-model", name="unknown")
    with pytest.raises(BadInput, match="unknown open_clip model"):
        load_encoder(path, read_spec(path, D))


def test_named_model(tmp_path, clip_files):
    """A built-in name goes through open_clip.create_model(name) + get_tokenizer(name)."""
    import open_clip

    model, full, _ = clip_files
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "streamsr-tiny-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    lr = _lr(64, 48, seed=10)
    path = _model_dir(tmp_path, full, model="streamsr-tiny-test")
    assert torch.allclose(semantic_vector(path, D, lr), _reference_vector(model, lr), atol=1e-5)
    assert semantic_vector(path, D, lr, prompt_pos="HD").shape == (1, D)
    tokens = open_clip.get_tokenizer("ViT-L-14")(["HD, high resolution, clear."])  # bundled BPE, offline
    assert tokens.shape == (1, 77)


def test_kind_none_returns_none(tmp_path):
    lr = _lr(32, 32)
    assert semantic_vector(tmp_path, 0, lr) is None
    write_spec(tmp_path, SemanticSpec())
    assert semantic_vector(tmp_path, 0, lr) is None
    with pytest.raises(BadInput, match="takes no semantic vector"):
        semantic_vector(tmp_path, 0, lr, prompt_pos="HD")
    with pytest.raises(BadInput):
        load_encoder(tmp_path, SemanticSpec())


def test_dispatch_tables_cover_kinds():
    assert set(spec_file._PARSERS) == {"none", "open_clip", "learned"}
    assert set(encoders._LOADERS) == {"open_clip", "learned"}
    assert np.allclose(open_clip_encoder.OPENAI_MEAN, __import__("open_clip").constants.OPENAI_DATASET_MEAN)
    assert np.allclose(open_clip_encoder.OPENAI_STD, __import__("open_clip").constants.OPENAI_DATASET_STD)


def test_shipped_default_model_learned_encoder():
    """The shipped model dir's learned encoder still loads and gives a unit vector of its vector_dim."""
    from streamsr.semantic.learned import LearnedEncoder
    from streamsr.weights import read_model_config

    model_dir = Path(__file__).resolve().parents[1] / "streamsr" / "models" / "default"
    vector_dim = read_model_config(model_dir).vector_dim
    found = read_spec(model_dir, vector_dim)
    assert found.kind == "learned" and found.embed_dim == vector_dim
    assert isinstance(load_encoder(model_dir, found), LearnedEncoder)
    vec = semantic_vector(model_dir, vector_dim, _lr(90, 70, seed=12))
    assert vec.shape == (1, vector_dim) and abs(vec.norm().item() - 1) < 1e-5
