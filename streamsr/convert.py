"""Conversion of an official Inf-DiT checkpoint into a streamsr model dir (`streamsr convert-infdit`).

Reads a DeepSpeed/SAT model-states `.pt` (the `module` dict, loaded with torch.load(weights_only=True))
or a safetensors file with the official key names; infers the ModelConfig from tensor shapes; maps
every key; rebuilds the RoPE table (and checks it against the checkpoint's buffers when present);
refuses unknown or missing keys by name (the official loader's strict=False ignores them), and reports
the keys that are known to be unused (FACTS.md section 4) instead of dropping them silently.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import BadInput

ADALN = "mixins.adaln_layer."
ROPE_DEFAULT = 1024  # (image_size 512 / patch 4) * 8 with --random-position (FACTS.md 1.2)

# Official per-layer keys -> ours ({i} = layer index); suffixes .weight/.bias carry over.
LAYER_MAP = {
    ADALN + "adaLN_modulations.{i}.1": "transformer.{i}.adaln",
    "transformer.layers.{i}.attention.query_key_value": "transformer.{i}.qkv",
    "transformer.layers.{i}.attention.dense": "transformer.{i}.proj",
    "transformer.layers.{i}.mlp.dense_h_to_4h": "transformer.{i}.mlp_in",
    "transformer.layers.{i}.mlp.dense_4h_to_h": "transformer.{i}.mlp_out",
    ADALN + "q_layer_norm.{i}": "transformer.{i}.q_norm",
}
# Official single modules -> ours.
MODULE_MAP = {
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
# Known keys that the official model never uses, and why.
IGNORED = {
    r"transformer\.position_embeddings\.weight": "SAT position embedding, unused (position_embedding_forward returns None)",
    r"mixins\.adaln_layer\.k_layer_norm\.\d+\.(weight|bias)": "k_layer_norm, unused: K is normalised with q_layer_norm (official quirk)",
    r"(image_encoder|conditioner|first_stage_model)\..*": "frozen semantic encoder (CLIP), not part of the transformer",
    r"mixins\.adaln_layer\.rope\.freqs_(cos|sin)": "RoPE table buffer, rebuilt from the configuration and checked",
}


@dataclass
class ConversionReport:
    config: ModelConfig
    mapped: int = 0
    ignored: dict[str, str] = field(default_factory=dict)  # official key -> why it is not used
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        cfg = self.config
        out = [f"config: {cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, block {cfg.block_size} px, "
               f"patch {cfg.patch_size}, vector {cfg.vector_dim}, RoPE table {cfg.rope_table}, "
               f"k_uses_q_norm={cfg.k_uses_q_norm}",
               f"mapped {self.mapped} tensors"]
        reasons: dict[str, list[str]] = {}
        for key, why in self.ignored.items():
            reasons.setdefault(why, []).append(key)
        for why, keys in reasons.items():
            shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
            out.append(f"ignored {len(keys)}: {shown}: {why}")
        return out + self.notes


def read_checkpoint(src: str | Path) -> dict[str, torch.Tensor]:
    """The official state dict from a DeepSpeed/SAT .pt (key 'module') or a safetensors file."""
    src = Path(src)
    if not src.is_file():
        raise BadInput(f"checkpoint {src} does not exist")
    if src.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(src)
        except (SafetensorError, OSError) as exc:
            raise BadInput(f"cannot read safetensors file {src}: {exc}") from None
    is_zip = zipfile.is_zipfile(src)  # torch.save's default format; mmap needs it, the legacy one does not
    try:
        # SAT stores its argparse.Namespace next to the weights; allow that one plain class, nothing else.
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(src, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError for a non-zip file, ...
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
        why = [ln.split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip() for ln in lines
               if "WeightsUnpickler error:" in ln]
        first = (why or lines or [type(exc).__name__])[0]
        if not is_zip and not why:
            first = f"not a torch.save file ({type(exc).__name__}: {first})"
        raise BadInput(f"cannot read {src} as a weights-only torch checkpoint: {first}") from None
    if isinstance(data, dict) and "module" in data:
        data = data["module"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise BadInput(f"{src} holds no state dict of tensors (expected a DeepSpeed 'module' dict)")
    return data


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise BadInput(f"checkpoint lacks {key}, needed to infer the model configuration")
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor], rope_table: int | None = None,
                 k_uses_q_norm: bool = True) -> ModelConfig:
    """ModelConfig from tensor shapes (FACTS.md section 4)."""
    hidden, in_ch, patch, _ = _shape(state, "mixins.patch_embed.proj.weight")
    if in_ch != 6:
        raise BadInput(f"patch embedding takes {in_ch} channels, expected 6 ([noisy HR, upsampled LR])")
    layers = len({m.group(1) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    n_layers, slots, heads, head_dim = _shape(state, ADALN + "re_pos_embed")
    if n_layers != layers or slots != 4 or heads * head_dim != hidden:
        raise BadInput(f"re_pos_embed has shape {(n_layers, slots, heads, head_dim)}, inconsistent with "
                       f"{layers} layers and hidden {hidden}")
    block_tokens = _shape(state, ADALN + "lr_query_position_embedding")[1]
    side = int(round(block_tokens ** 0.5))
    lr_patch = _shape(state, ADALN + "proj_lr.weight")[2]
    mlp_hidden = _shape(state, "transformer.layers.0.mlp.dense_h_to_4h.weight")[0]
    time_in = _shape(state, "time_embed.mlp.0.weight")[1]
    vector_dim = _shape(state, "cond_embed.map_vector.0.weight")[1] if "cond_embed.map_vector.0.weight" in state else 0
    table = rope_table
    rope_key = ADALN + "rope.freqs_cos"
    if rope_key in state:
        found = tuple(state[rope_key].shape)
        if table is not None and found[0] != table:
            raise BadInput(f"--rope-table {table} contradicts the checkpoint's RoPE table of {found[0]}")
        table = found[0]
    cfg = ModelConfig(block_size=side * patch, patch_size=patch, hidden=hidden, heads=heads, layers=layers,
                      mlp_hidden=mlp_hidden, lr_patch=lr_patch, vector_dim=vector_dim,
                      rope_table=table or ROPE_DEFAULT, time_freqs=time_in // 2, k_uses_q_norm=k_uses_q_norm)
    window = _shape(state, ADALN + "lr_key_position_embedding")[1]
    if side * side != block_tokens or window != cfg.lr_window_tokens:
        raise BadInput(f"LR position embeddings ({block_tokens}, {window} tokens) do not fit a "
                       f"{cfg.block_size} px block with LR patch {lr_patch}")
    return cfg


def map_state(state: dict[str, torch.Tensor], cfg: ModelConfig, expected: dict[str, torch.Size],
              report: ConversionReport) -> dict[str, torch.Tensor]:
    """Official keys -> our keys; raises BadInput naming every unknown, missing or misshapen key."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    per_layer = {off.replace("{i}", str(i)): ours.replace("{i}", str(i))
                 for i in range(cfg.layers) for off, ours in LAYER_MAP.items()}
    if not cfg.k_uses_q_norm:
        per_layer.update({f"{ADALN}k_layer_norm.{i}": f"transformer.{i}.k_norm" for i in range(cfg.layers)})
    modules = {**MODULE_MAP, **per_layer}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if module in modules and leaf in ("weight", "bias"):
            out[f"{modules[module]}.{leaf}"] = tensor
        elif key == ADALN + "re_pos_embed":
            for i in range(cfg.layers):
                out[f"transformer.{i}.block_pos"] = tensor[i]
        elif key == ADALN + "lr_query_position_embedding":
            out["lr_cross.q_pos"] = tensor[0]
        elif key == ADALN + "lr_key_position_embedding":
            out["lr_cross.k_pos"] = tensor[0]
        elif (m := re.fullmatch(r"mixins\.adaln_layer\.k_layer_norm\.(\d+)\..*", key)) and int(m[1]) >= cfg.layers:
            unknown.append(key)  # a k_layer_norm of a layer the checkpoint does not have
        elif why := next((w for pattern, w in IGNORED.items() if re.fullmatch(pattern, key)), None):
            report.ignored[key] = why
        else:
            unknown.append(key)
    if unknown:
        raise BadInput(f"unknown key(s) in the checkpoint: {', '.join(sorted(unknown)[:20])}"
                       + (f" (+{len(unknown) - 20} more)" if len(unknown) > 20 else ""))
    official = {f"{ours}.{leaf}": f"{off}.{leaf}" for off, ours in modules.items() for leaf in ("weight", "bias")}
    official.update({f"transformer.{i}.block_pos": ADALN + "re_pos_embed" for i in range(cfg.layers)})
    official.update({"lr_cross.q_pos": ADALN + "lr_query_position_embedding",
                     "lr_cross.k_pos": ADALN + "lr_key_position_embedding"})
    missing = sorted(official.get(k, k) for k in set(expected) - set(out))
    if missing:
        raise BadInput(f"checkpoint is missing key(s): {', '.join(missing[:20])}"
                       + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""))
    wrong = [f"{official.get(k, k)} {tuple(out[k].shape)} != {tuple(expected[k])}" for k in sorted(expected)
             if tuple(out[k].shape) != tuple(expected[k])]
    if wrong:
        raise BadInput(f"tensor shape mismatch: {'; '.join(wrong[:10])}")
    report.mapped = len(out)
    return out


def check_rope_buffers(state: dict[str, torch.Tensor], cfg: ModelConfig, report: ConversionReport) -> None:
    """Compare the checkpoint's RoPE table (if stored) with the rebuilt one on a sample of positions."""
    from .core.rope import rope_angles

    cos_key, sin_key = ADALN + "rope.freqs_cos", ADALN + "rope.freqs_sin"
    if (cos_key in state) != (sin_key in state):
        raise BadInput(f"the checkpoint stores {cos_key if cos_key in state else sin_key} without its partner")
    if cos_key not in state:
        report.notes.append(f"RoPE table rebuilt ({cfg.rope_table} x {cfg.rope_table} positions); "
                            "the checkpoint stores none")
        return
    want = (cfg.rope_table, cfg.rope_table, cfg.head_dim)
    for key in (cos_key, sin_key):
        if tuple(state[key].shape) != want:
            raise BadInput(f"{key} has shape {tuple(state[key].shape)}, expected {want}")
    stride = max(cfg.rope_table // 16, 1)
    pos = torch.arange(0, cfg.rope_table, stride)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    angles = rope_angles(rows, cols, cfg.head_dim, cfg.rope_table)  # (P, P, D)
    stored_cos = state[cos_key][rows, cols].float()
    stored_sin = state[sin_key][rows, cols].float()
    err = max((stored_cos - angles.cos()).abs().max().item(), (stored_sin - angles.sin()).abs().max().item())
    tol = 1e-2 if state[cos_key].dtype in (torch.bfloat16, torch.float16) else 1e-4
    if err > tol:
        raise BadInput(f"the checkpoint's RoPE table differs from the rebuilt one by {err:.3g}: "
                       "not an Inf-DiT 2D interleaved RoPE")
    report.notes.append(f"RoPE table rebuilt and checked against the checkpoint's buffers (max diff {err:.2g})")


def convert_infdit(src: str | Path, out_dir: str | Path, rope_table: int | None = None,
                   k_uses_q_norm: bool = True, dtype: torch.dtype | None = torch.float32) -> ConversionReport:
    """Convert an official checkpoint into a model dir; returns what was mapped and ignored."""
    from .core.model import InfDiT
    from .weights import save_model_dir

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # save_pretrained would only log an error and return
        raise BadInput(f"output {out_dir} exists and is not a directory")
    state = read_checkpoint(src)
    cfg = infer_config(state, rope_table, k_uses_q_norm)
    report = ConversionReport(cfg)
    model = InfDiT.from_model_config(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mapped = map_state(state, cfg, expected, report)
    check_rope_buffers(state, cfg, report)
    model.load_state_dict({k: v.to(dtype or v.dtype) for k, v in mapped.items()}, strict=True)
    try:
        save_model_dir(model, out_dir)
    except OSError as exc:
        raise BadInput(f"cannot write model dir {out_dir}: {exc}") from None
    return report
