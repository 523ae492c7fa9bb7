"""The Inf-DiT network F (FACTS.md sections 1.1-1.5) on a set of blocks. Depends on torch and ModelConfig.

Tokens are shaped (B, N, T, C) for N blocks of T tokens. One pass over N blocks is: `context` (what
every layer shares: the adaLN input, the RoPE of the blocks' tokens, the LR-window tokens, the attention
kernel), `embed_tokens`, `layer` for each layer, `head`; `forward_blocks` strings them together. A layer
asks its `gather` callback for the 4 key slots [self, top-left, left, top] of every block and returns the
blocks' own K and V, so the caller decides where neighbour K/V come from and what to do with the new
ones: the full-image reference (core/denoiser.py) gathers from the whole grid with clamped neighbours,
the streaming engine (stream/engine.py) from its batch and the K/V frontier, which it fills itself. Both
run these same lines of math.

What the network sees and how D comes out of F (EDM preconditioning, both parametrisations) is
core/denoiser.py's business: this file takes the preconditioned input and c_noise and returns F.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from ..config import ModelConfig
from . import rope

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # attention.get_kernel(name)
# gather(layer, k, v) -> (k_slots, v_slots): k, v (B, N, T, H, D) of the blocks being computed; returns the
# key slots of each block, (B, N, 4, T, H, D) each, slots [self, top-left, left, top]. Only gathers.
Gather = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift; x (B, N, T, C), shift/scale (B, C)."""
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


def timestep_features(c_noise: torch.Tensor, freqs: int) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of c_noise (B,) at (1/10000)^(k/freqs): (B, 2*freqs) float32."""
    k = torch.arange(freqs, device=c_noise.device, dtype=torch.float32)
    omega = torch.exp(-torch.log(torch.tensor(10000.0)) * k / freqs)  # (F,)
    args = c_noise.float()[:, None] * omega[None]  # (B, F)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2F)


class TransformerLayer(nn.Module):
    """One pre-LN DiT layer with adaLN (no gates), qk-LN, 2D RoPE and UniBA self-attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, hd = cfg.hidden, cfg.head_dim
        self.cfg = cfg
        self.adaln = nn.Linear(h, 4 * h)  # -> shift_msa, scale_msa, shift_mlp, scale_mlp
        self.qkv = nn.Linear(h, 3 * h)  # rows [Q; K; V]
        self.q_norm = nn.LayerNorm(hd, eps=cfg.norm_eps)
        self.k_norm = None if cfg.k_uses_q_norm else nn.LayerNorm(hd, eps=cfg.norm_eps)
        self.block_pos = nn.Parameter(torch.zeros(4, cfg.heads, hd))  # per-slot key embedding (re_pos_embed)
        self.proj = nn.Linear(h, h)
        self.mlp_in = nn.Linear(h, cfg.mlp_hidden)
        self.mlp_out = nn.Linear(cfg.mlp_hidden, h)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.cfg.hidden,), eps=self.cfg.norm_eps)

    def qkv_heads(self, h: torch.Tensor, mod: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Q, K, V after qk-LN and RoPE: each (B, N, T, H, D). h (B, N, T, C); mod (B, 4C)."""
        shift, scale = mod.chunk(4, dim=-1)[:2]  # (B, C) each
        qkv = self.qkv(modulate(self.norm(h), shift, scale))  # (B, N, T, 3C)
        q, k, v = qkv.unflatten(-1, (3, self.cfg.heads, self.cfg.head_dim)).unbind(-3)  # (B, N, T, H, D)
        q = self.q_norm(q)  # (B, N, T, H, D)
        k = (self.q_norm if self.k_norm is None else self.k_norm)(k)  # (B, N, T, H, D)
        v = v.contiguous()  # (B, N, T, H, D): a view would keep the whole qkv (3C) alive as long as v lives
        del qkv  # q and k are new tensors after their norms, v a copy: the (B, N, T, 3C) projection goes
        return rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin), v

    def slot_keys(self, k_slots: torch.Tensor) -> torch.Tensor:
        """The gathered keys (B, N, 4, T, H, D) plus the per-slot block embedding block_pos."""
        return k_slots + self.block_pos[:, None].to(k_slots.dtype)  # (B, N, 4, T, H, D)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v_slots: torch.Tensor, kernel) -> torch.Tensor:
        """UniBA: each block's queries over its 4 key slots, k = slot_keys(gathered K). -> (B, N, T, C), before
        the output projection (`proj`), so that the caller can free q and the slots first."""
        b, n, t = q.shape[:3]
        out = kernel(q.flatten(0, 1), k.flatten(0, 1).flatten(1, 2),
                     v_slots.flatten(0, 1).flatten(1, 2))  # (B*N, T, H, D): 4T keys per block
        return out.reshape(b, n, t, -1)  # (B, N, T, C)

    def mlp(self, h: torch.Tensor, m: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """h + MLP(modulate(m)); m is the normalised h (plain LN, or layer 0's post-cross LN)."""
        shift, scale = mod.chunk(4, dim=-1)[2:]  # (B, C) each
        return h + self.mlp_out(F.gelu(self.mlp_in(modulate(m, shift, scale)), approximate="tanh"))


class LRCrossAttention(nn.Module):
    """Layer-0 cross-attention from a block's tokens to its zero-padded 3x3-block LR window."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, hd = cfg.hidden, cfg.head_dim
        self.cfg = cfg
        self.lr_proj = nn.Conv2d(3, h, kernel_size=cfg.lr_patch, stride=cfg.lr_patch)
        self.query = nn.Linear(h, h)
        self.key_value = nn.Linear(h, 2 * h)  # rows [K; V]
        self.proj = nn.Linear(h, h)
        self.q_norm = nn.LayerNorm(hd, eps=cfg.norm_eps)
        self.k_norm = nn.LayerNorm(hd, eps=cfg.norm_eps)
        self.q_pos = nn.Parameter(torch.zeros(cfg.block_tokens, cfg.heads, hd))
        self.k_pos = nn.Parameter(torch.zeros(cfg.lr_window_tokens, cfg.heads, hd))
        self.post_norm = nn.LayerNorm(h, eps=cfg.norm_eps)  # replaces the MLP's LN in layer 0

    def window_tokens(self, pixels: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """LR tokens of each window, zero where the window leaves the image.

        pixels (B, N, 3, 3L, 3L) LR windows; inside (N, 3L/lp, 3L/lp) bool -> (B, N, Tw, C).
        """
        b, n = pixels.shape[:2]
        tok = self.lr_proj(pixels.flatten(0, 1))  # (B*N, C, 3L/lp, 3L/lp)
        tok = tok * inside.repeat(b, 1, 1)[:, None].to(tok.dtype)  # (B*N, C, 3L/lp, 3L/lp)
        return rearrange(tok, "(b n) c y x -> b n (y x) c", b=b, n=n)  # (B, N, Tw, C)

    def forward(self, h: torch.Tensor, lr_tokens: torch.Tensor, kernel) -> torch.Tensor:
        """h (B, N, T, C), lr_tokens (B, N, Tw, C) -> attention output (B, N, T, C) to add to h."""
        cfg = self.cfg
        b, n, t, _ = h.shape
        q = self.query(F.layer_norm(h, (cfg.hidden,), eps=cfg.norm_eps))  # (B, N, T, C)
        q = q.unflatten(-1, (cfg.heads, -1))  # (B, N, T, H, D)
        q = self.q_norm(q) + self.q_pos  # (B, N, T, H, D)
        k, v = self.key_value(lr_tokens).unflatten(-1, (2, cfg.heads, -1)).unbind(-3)  # (B, N, Tw, H, D)
        k = self.k_norm(k) + self.k_pos  # (B, N, Tw, H, D)
        out = kernel(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))  # (B*N, T, H, D)
        return self.proj(out.reshape(b, n, t, -1))  # (B, N, T, C)


class FinalLayer(nn.Module):
    """The transformer's final LN, then adaLN + linear to pixels (unpatchify)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.adaln = nn.Linear(cfg.hidden, 2 * cfg.hidden)  # -> shift, scale
        self.linear = nn.Linear(cfg.hidden, cfg.out_per_token)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h (B, N, T, C), cond = silu(emb) (B, C) -> pixels (B, N, 3, bs, bs)."""
        cfg = self.cfg
        h = F.layer_norm(h, (cfg.hidden,), eps=cfg.norm_eps)  # (B, N, T, C) the transformer's final LN
        h = F.layer_norm(h, (cfg.hidden,), eps=cfg.norm_eps)  # (B, N, T, C) the final layer's own LN
        shift, scale = self.adaln(cond).chunk(2, dim=-1)  # (B, C) each
        s, p = cfg.block_tokens_side, cfg.patch_size
        # the linear's outputs are ordered (p q c) (the official unpatchify); computed in (c p q) order, each
        # output row comes out whole and the unpatchify below copies runs of p pixels, not single ones
        weight = rearrange(self.linear.weight, "(p q c) k -> (c p q) k", p=p, q=p, c=3)  # (3*p*p, C)
        bias = rearrange(self.linear.bias, "(p q c) -> (c p q)", p=p, q=p, c=3)  # (3*p*p,)
        out = F.linear(modulate(h, shift, scale), weight, bias)  # (B, N, T, 3*p*p)
        return rearrange(out, "b n (y x) (c p q) -> b n c (y p) (x q)", y=s, x=s, p=p, q=p, c=3)  # (B, N, 3, bs, bs)


@dataclass(frozen=True)
class BlockContext:
    """What every layer shares in one pass over N blocks (`InfDiT.context`)."""

    cond: torch.Tensor  # (B, C) the adaLN input: silu(emb)
    cos: torch.Tensor  # (1, N, T, 1, D) RoPE of the blocks' tokens
    sin: torch.Tensor  # (1, N, T, 1, D)
    lr_tokens: torch.Tensor  # (B, N, Tw, C) the LR windows' tokens (layer-0 cross-attention)
    kernel: Kernel  # the attention kernel


class InfDiT(ModelMixin, ConfigMixin):
    """Inf-DiT x4 super-resolution transformer: the network F on a set of blocks (module docstring)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, block_size: int = 128, patch_size: int = 4, hidden: int = 1280, heads: int = 16,
                 layers: int = 28, mlp_hidden: int = 5120, lr_patch: int = 2, vector_dim: int = 768,
                 rope_table: int = 1024, time_freqs: int = 96, k_uses_q_norm: bool = True,
                 norm_eps: float = 1e-6, sigma_data: float = 0.5, parametrisation: str = "image"):
        super().__init__()
        cfg = ModelConfig(block_size=block_size, patch_size=patch_size, hidden=hidden, heads=heads,
                          layers=layers, mlp_hidden=mlp_hidden, lr_patch=lr_patch, vector_dim=vector_dim,
                          rope_table=rope_table, time_freqs=time_freqs, k_uses_q_norm=k_uses_q_norm,
                          norm_eps=norm_eps, sigma_data=sigma_data, parametrisation=parametrisation)
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(6, hidden, kernel_size=patch_size, stride=patch_size)
        self.time_embed = nn.Sequential(nn.Linear(2 * time_freqs, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.vector_embed = (nn.Sequential(nn.Linear(vector_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                             if vector_dim else None)
        self.transformer = nn.ModuleList(TransformerLayer(cfg) for _ in range(layers))
        self.lr_cross = LRCrossAttention(cfg)
        self.final = FinalLayer(cfg)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> "InfDiT":
        return cls(**cfg.to_dict())

    # ---- the per-call embedding ------------------------------------------------------------------
    def embed_condition(self, c_noise: torch.Tensor, vector: torch.Tensor | None) -> torch.Tensor:
        """emb = silu(TimeEmb(c_noise) + map_vector(vector)): (B, C). c_noise (B,), vector (B, V) or None."""
        dtype = self.patch_embed.weight.dtype
        emb = self.time_embed(timestep_features(c_noise, self.cfg.time_freqs).to(dtype))  # (B, C)
        if self.vector_embed is not None:
            if vector is None:
                raise ValueError(f"this model needs a semantic vector of size {self.cfg.vector_dim}")
            emb = emb + self.vector_embed(vector.to(dtype))  # (B, C)
        return F.silu(emb)  # (B, C)

    # ---- one pass over a set of blocks, step by step ---------------------------------------------
    def context(self, emb: torch.Tensor, lr_pixels: torch.Tensor, lr_inside: torch.Tensor, *,
                blocks: list[tuple[int, int]], kernel: Kernel, rope_origin: tuple[int, int] = (0, 0)) -> BlockContext:
        """What the layers share. emb (B, C) from `embed_condition`; lr_pixels (B, N, 3, 3L, 3L) and lr_inside
        (N, 3L/lp, 3L/lp): the LR windows (conditioning.lr_windows); blocks: the N (row, col) coordinates;
        rope_origin: a (row, col) token offset added to every RoPE position (training draws it, FACTS.md 1.2)."""
        cfg = self.cfg
        dtype = self.patch_embed.weight.dtype
        coords = torch.tensor(blocks, dtype=torch.long).reshape(-1, 2)  # (N, 2) on the host
        # non_blocking: from pageable memory the copy is staged before it returns (no device sync)
        rows, cols = coords.to(emb.device, non_blocking=True).unbind(-1)  # (N,) each
        angles = rope.block_angles(rows, cols, cfg.block_tokens_side, cfg.head_dim, cfg.rope_table,
                                   rope_origin)  # (N, T, D)
        cos = angles.cos()[None, :, :, None].to(dtype)  # (1, N, T, 1, D)
        sin = angles.sin()[None, :, :, None].to(dtype)  # (1, N, T, 1, D)
        lr_tokens = self.lr_cross.window_tokens(lr_pixels.to(dtype), lr_inside)  # (B, N, Tw, C)
        cond = F.silu(emb)  # (B, C): every adaLN applies SiLU to emb (which is already silu'd)
        return BlockContext(cond=cond, cos=cos, sin=sin, lr_tokens=lr_tokens, kernel=kernel)

    def embed_tokens(self, inp: torch.Tensor) -> torch.Tensor:
        """Patch embedding of the preconditioned input inp (B, N, 6, bs, bs) -> h (B, N, T, C)."""
        b, n = inp.shape[:2]
        h = self.patch_embed(inp.to(self.patch_embed.weight.dtype).flatten(0, 1))  # (B*N, C, s, s)
        h = h.flatten(2).transpose(1, 2)  # (B*N, T, C)
        return h.reshape(b, n, self.cfg.block_tokens, self.cfg.hidden)  # (B, N, T, C)

    def layer(self, index: int, h: torch.Tensor, ctx: BlockContext, *,
              gather: Gather) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transformer layer `index` on h (B, N, T, C) -> (h (B, N, T, C), and the blocks' own K, V
        (B, N, T, H, D) after qk-LN and RoPE, before the slot embedding: what the frontier holds)."""
        layer = self.transformer[index]
        mod = layer.adaln(ctx.cond)  # (B, 4C)
        q, k, v = layer.qkv_heads(h, mod, ctx.cos, ctx.sin)  # (B, N, T, H, D) each
        k_slots, v_slots = gather(index, k, v)  # (B, N, 4, T, H, D) each
        k_slots = layer.slot_keys(k_slots)  # (B, N, 4, T, H, D); the gathered keys are freed here
        out = layer.attend(q, k_slots, v_slots, ctx.kernel)  # (B, N, T, C)
        del q, k_slots, v_slots  # not held through the projection, the cross-attention and the MLP
        h = h + layer.proj(out)  # (B, N, T, C)
        del out
        if index == 0:
            h = h + self.lr_cross(h, ctx.lr_tokens, ctx.kernel)  # (B, N, T, C)
            m = self.lr_cross.post_norm(h)  # (B, N, T, C)
        else:
            m = layer.norm(h)  # (B, N, T, C)
        return layer.mlp(h, m, mod), k, v

    def head(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """The final layer: h (B, N, T, C) -> F (B, N, 3, bs, bs) in the model dtype."""
        return self.final(h, ctx.cond)

    def forward_blocks(self, inp: torch.Tensor, lr_pixels: torch.Tensor, lr_inside: torch.Tensor,
                       emb: torch.Tensor, *, blocks: list[tuple[int, int]], gather: Gather, kernel: Kernel,
                       rope_origin: tuple[int, int] = (0, 0), return_hidden: bool = False):
        """F for N blocks: (B, N, 3, bs, bs); with return_hidden, (F, [h after each layer (B, N, T, C)]).

        inp (B, N, 6, bs, bs): the preconditioned input (denoiser.Preconditioning.network_input); the
        rest as in `context`; gather: where each layer's key slots come from (it must only gather).
        """
        ctx = self.context(emb, lr_pixels, lr_inside, blocks=blocks, kernel=kernel, rope_origin=rope_origin)
        h = self.embed_tokens(inp)  # (B, N, T, C)
        hidden = []
        for index in range(self.cfg.layers):
            h = self.layer(index, h, ctx, gather=gather)[0]  # (B, N, T, C)
            if return_hidden:
                hidden.append(h)
        f = self.head(h, ctx)  # (B, N, 3, bs, bs)
        return (f, hidden) if return_hidden else f

    forward = forward_blocks  # nn.Module's entry point: model(...) is forward_blocks(...)
