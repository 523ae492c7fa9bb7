"""The Inf-DiT transformer (FACTS.md sections 1.1-1.5) and its full-image reference forward.

The network works on groups of blocks: tokens are shaped (B, N, T, hidden) for N blocks of T tokens.
`forward_blocks` runs the layers on any set of blocks and asks a `gather` callable for each layer's
neighbour K/V in the slot order [self, top-left, left, top]; the full-image reference (`forward`) gathers
from the whole grid with clamped border neighbours, the streaming engine (engine.py) from its batch and
the frontier. So both paths share every line of the math and differ only in where neighbour K/V come from.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from . import rope
from .attention import get_kernel
from .conditioning import lr_windows
from ..config import ModelConfig
from ..stream.planner import Grid, neighbors
from .sampler import denoised, network_input, precond

# gather(layer, k, v) -> (k_slots, v_slots): k, v (B, N, T, H, D) of the blocks being computed;
# returns (B, N, 4, T, H, D) each, slots [self, top-left, left, top].
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


def image_to_blocks(img: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, gh*s, gw*s) -> (B, gh*gw, C, s, s), blocks in raster order."""
    return rearrange(img, "b c (gh s) (gw t) -> b (gh gw) c s t", s=block, t=block)


def blocks_to_image(blocks: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, gh*gw, C, s, s) -> (B, C, gh*s, gw*s)."""
    return rearrange(blocks, "b (gh gw) c s t -> b c (gh s) (gw t)", gh=grid.rows, gw=grid.cols)


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
        shift, scale = mod.chunk(4, dim=-1)[:2]
        qkv = self.qkv(modulate(self.norm(h), shift, scale))  # (B, N, T, 3C)
        q, k, v = qkv.unflatten(-1, (3, self.cfg.heads, self.cfg.head_dim)).unbind(-3)  # (B, N, T, H, D)
        q = self.q_norm(q)
        k = (self.q_norm if self.k_norm is None else self.k_norm)(k)
        return rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k_slots: torch.Tensor, v_slots: torch.Tensor, kernel) -> torch.Tensor:
        """UniBA: each block's queries over its 4 key slots; block_pos added to K per slot. -> (B, N, T, C)."""
        b, n, t = q.shape[:3]
        k = k_slots + self.block_pos[:, None].to(k_slots.dtype)  # (B, N, 4, T, H, D)
        out = kernel(q.flatten(0, 1), k.flatten(0, 1).flatten(1, 2), v_slots.flatten(0, 1).flatten(1, 2))
        return self.proj(out.reshape(b, n, t, -1))  # (B, N, T, C)

    def mlp(self, h: torch.Tensor, m: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """h + MLP(modulate(m)); m is the normalised h (plain LN, or layer 0's post-cross LN)."""
        shift, scale = mod.chunk(4, dim=-1)[2:]
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
        tok = tok * inside.repeat(b, 1, 1)[:, None].to(tok.dtype)
        return rearrange(tok, "(b n) c y x -> b n (y x) c", b=b, n=n)

    def forward(self, h: torch.Tensor, lr_tokens: torch.Tensor, kernel) -> torch.Tensor:
        """h (B, N, T, C), lr_tokens (B, N, Tw, C) -> attention output (B, N, T, C) to add to h."""
        cfg = self.cfg
        b, n, t, _ = h.shape
        q = self.query(F.layer_norm(h, (cfg.hidden,), eps=cfg.norm_eps)).unflatten(-1, (cfg.heads, -1))
        q = self.q_norm(q) + self.q_pos  # (B, N, T, H, D)
        k, v = self.key_value(lr_tokens).unflatten(-1, (2, cfg.heads, -1)).unbind(-3)  # (B, N, Tw, H, D)
        k = self.k_norm(k) + self.k_pos
        out = kernel(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))  # (B*N, T, H, D)
        return self.proj(out.reshape(b, n, t, -1))


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.adaln = nn.Linear(cfg.hidden, 2 * cfg.hidden)  # -> shift, scale
        self.linear = nn.Linear(cfg.hidden, cfg.out_per_token)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h (B, N, T, C), cond = silu(emb) (B, C) -> pixels (B, N, 3, bs, bs)."""
        cfg = self.cfg
        h = F.layer_norm(h, (cfg.hidden,), eps=cfg.norm_eps)  # the transformer's final LN
        h = F.layer_norm(h, (cfg.hidden,), eps=cfg.norm_eps)  # the final layer's own LN
        shift, scale = self.adaln(cond).chunk(2, dim=-1)
        out = self.linear(modulate(h, shift, scale))  # (B, N, T, p*p*3)
        s, p = cfg.block_tokens_side, cfg.patch_size
        return rearrange(out, "b n (y x) (p q c) -> b n c (y p) (x q)", y=s, x=s, p=p, q=p, c=3)


class InfDiT(ModelMixin, ConfigMixin):
    """Inf-DiT x4 super-resolution transformer; `forward` is the full-image reference computation."""

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

    # ---- conditioning ---------------------------------------------------------------------------
    def embedding(self, sigma: torch.Tensor, vector: torch.Tensor | None) -> torch.Tensor:
        """emb = silu(TimeEmb(c_noise) + map_vector(vector)): (B, C). sigma (B,), vector (B, V)."""
        dtype = self.patch_embed.weight.dtype
        c_noise = precond(sigma, self.cfg.sigma_data).c_noise
        emb = self.time_embed(timestep_features(c_noise, self.cfg.time_freqs).to(dtype))  # (B, C)
        if self.vector_embed is not None:
            if vector is None:
                raise ValueError(f"this model needs a semantic vector of size {self.cfg.vector_dim}")
            emb = emb + self.vector_embed(vector.to(dtype))
        return F.silu(emb)

    # ---- the network on a set of blocks ---------------------------------------------------------
    def forward_blocks(self, blocks: list[tuple[int, int]], x: torch.Tensor, up: torch.Tensor,
                       lr_pixels: torch.Tensor, lr_inside: torch.Tensor, sigma: torch.Tensor,
                       emb: torch.Tensor, gather: Gather, kernel, hidden_out: list | None = None,
                       rope_origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Denoised D for N blocks.

        blocks: N (row, col) block coordinates; x, up: (B, N, 3, bs, bs) noisy HR and upsampled LR;
        lr_pixels (B, N, 3, 3L, 3L) and lr_inside (N, 3L/lp, 3L/lp): the LR windows; sigma (B,);
        emb (B, C) from `embedding`; rope_origin: a (row, col) token offset added to every RoPE position
        (training draws it at random, FACTS.md 1.2). Returns D (sampler.denoised: c_skip x + c_out F, or its
        residual form around up): (B, N, 3, bs, bs) float32.
        """
        cfg = self.cfg
        dtype = self.patch_embed.weight.dtype
        b, n = x.shape[:2]
        pc = precond(sigma.float(), cfg.sigma_data)
        c_in, c_skip, c_out = (c[:, None, None, None, None] for c in (pc.c_in, pc.c_skip, pc.c_out))  # (B,1,1,1,1)
        residual = cfg.parametrisation == "residual"
        inp = network_input(x, up, c_in, residual=residual).to(dtype)  # (B, N, 6, bs, bs)
        h = self.patch_embed(inp.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*N, T, C)
        h = h.reshape(b, n, cfg.block_tokens, cfg.hidden)  # (B, N, T, C)

        rows = torch.tensor([r for r, _ in blocks], device=x.device)
        cols = torch.tensor([c for _, c in blocks], device=x.device)
        angles = rope.block_angles(rows, cols, cfg.block_tokens_side, cfg.head_dim, cfg.rope_table,
                                   rope_origin)  # (N, T, D)
        cos = angles.cos()[None, :, :, None].to(dtype)  # (1, N, T, 1, D)
        sin = angles.sin()[None, :, :, None].to(dtype)
        lr_tokens = self.lr_cross.window_tokens(lr_pixels.to(dtype), lr_inside)  # (B, N, Tw, C)
        cond = F.silu(emb)  # every adaLN applies SiLU to emb (which is already silu'd)

        for index, layer in enumerate(self.transformer):
            mod = layer.adaln(cond)  # (B, 4C)
            q, k, v = layer.qkv_heads(h, mod, cos, sin)
            k_slots, v_slots = gather(index, k, v)  # (B, N, 4, T, H, D)
            h = h + layer.attend(q, k_slots, v_slots, kernel)
            if index == 0:
                h = h + self.lr_cross(h, lr_tokens, kernel)
                m = self.lr_cross.post_norm(h)
            else:
                m = layer.norm(h)
            h = layer.mlp(h, m, mod)
            if hidden_out is not None:
                hidden_out.append(h)
        f = self.final(h, cond)  # (B, N, 3, bs, bs)
        return denoised(x, up, f, c_skip, c_out, residual=residual)  # (B, N, 3, bs, bs) float32

    # ---- full-image reference -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, concat_lr: torch.Tensor, lr: torch.Tensor,
                vector: torch.Tensor | None, backend: str = "reference",
                return_hidden: bool = False, rope_origin: tuple[int, int] = (0, 0)):
        """The full-image computation (official `full` mode): D (B, 3, H, W) float32.

        x, concat_lr (B, 3, H, W); lr (B, 3, H/4, W/4); sigma (B,) or scalar; vector (B, V) or None.
        With return_hidden, also the per-layer hidden states, tokens in global raster order (B, H*W/p^2, C).
        """
        cfg = self.cfg
        grid = Grid.for_image(x.shape[-2], x.shape[-1], cfg.block_size)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        blocks = grid.blocks()
        slot_index = torch.tensor([[grid.index(nb) for nb in neighbors(r, c)] for r, c in blocks],
                                  device=x.device)  # (N, 4)

        def gather_clamped(_layer: int, k: torch.Tensor, v: torch.Tensor):
            return k[:, slot_index], v[:, slot_index]  # (B, N, 4, T, H, D)

        pixels, inside = lr_windows(lr, blocks, cfg)
        hidden: list | None = [] if return_hidden else None
        d = self.forward_blocks(blocks, image_to_blocks(x, cfg.block_size), image_to_blocks(concat_lr, cfg.block_size),
                                pixels, inside, sigma, self.embedding(sigma, vector), gather_clamped,
                                get_kernel(backend), hidden, rope_origin)
        out = blocks_to_image(d, grid)
        if not return_hidden:
            return out
        s = cfg.block_tokens_side
        raster = [rearrange(hs, "b (gh gw) (y x) c -> b (gh y gw x) c", gh=grid.rows, gw=grid.cols, y=s, x=s)
                  for hs in hidden]
        return out, raster
