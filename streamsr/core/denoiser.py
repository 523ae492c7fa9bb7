"""The denoiser D around the network F: EDM preconditioning, and the full-image reference computation.

`Preconditioning` turns x into what the network sees and F into D (sampler.network_input / denoised,
evaluated with fewer temporaries: tests/test_sampler.py checks the bits are the same),
in the model's parametrisation (ModelConfig.parametrisation): the official image form
D = c_skip x + c_out F(c_in [x, up]), or streamsr's residual form around the upsampled LR
D = up + c_skip (x - up) + c_out F([c_in (x - up), up]). `embedding` is the per-call embedding at sigma.

`denoise_full` is the official `full` mode: one pass over every block of the image, each block's key
slots gathered from the whole grid with neighbours clamped at the border (`clamped_gather`), the LR
windows read from the whole LR image. It is the oracle of every streaming test, and training's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from .attention import get_kernel
from .conditioning import lr_windows
from .grid import Grid, blocks_to_image, image_to_blocks, neighbors
from .model import Gather, InfDiT
from .sampler import precond


@dataclass(frozen=True)
class Preconditioning:
    """EDM preconditioning of one denoiser call (EDM table 1), coefficients shaped (B, 1, 1, 1, 1)."""

    c_in: torch.Tensor  # (B, 1, 1, 1, 1)
    c_skip: torch.Tensor  # (B, 1, 1, 1, 1)
    c_out: torch.Tensor  # (B, 1, 1, 1, 1)
    residual: bool  # ModelConfig.parametrisation == "residual"

    @classmethod
    def at(cls, sigma: torch.Tensor, model: InfDiT) -> "Preconditioning":
        """The coefficients at sigma (B,) for the model's sigma_data and parametrisation."""
        pc = precond(sigma.float(), model.cfg.sigma_data)
        c_in, c_skip, c_out = (c[:, None, None, None, None] for c in (pc.c_in, pc.c_skip, pc.c_out))
        return cls(c_in=c_in, c_skip=c_skip, c_out=c_out, residual=model.cfg.parametrisation == "residual")

    def network_input(self, x: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """x, up (B, N, 3, bs, bs) noisy HR and upsampled LR -> what F sees (B, N, 6, bs, bs) float32:
        sampler.network_input's operations in its order (the same bits), each half written straight into
        the result (no concatenation pass, no temporary)."""
        x, up = x.float(), up.float()
        out = torch.empty((*x.shape[:-3], 6, *x.shape[-2:]), dtype=torch.float32, device=x.device)  # (B, N, 6, bs, bs)
        if self.residual:  # [c_in (x - up), up]
            torch.sub(x, up, out=out[..., :3, :, :]).mul_(self.c_in)
            out[..., 3:, :, :].copy_(up)
        else:  # [x, up] * c_in
            torch.mul(x, self.c_in, out=out[..., :3, :, :])
            torch.mul(up, self.c_in, out=out[..., 3:, :, :])
        return out

    def denoised(self, x: torch.Tensor, up: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """D from the network output f (B, N, 3, bs, bs): (B, N, 3, bs, bs) float32; sampler.denoised's
        operations in its order (the same bits), summed in place."""
        x, f = x.float(), f.float()
        if self.residual:  # up + c_skip (x - up) + c_out f
            up = up.float()
            return (x - up).mul_(self.c_skip).add_(up).add_(self.c_out * f)  # (B, N, 3, bs, bs)
        return (self.c_skip * x).add_(self.c_out * f)  # (B, N, 3, bs, bs) = c_skip x + c_out f


def embedding(model: InfDiT, sigma: torch.Tensor, vector: torch.Tensor | None) -> torch.Tensor:
    """The per-call embedding at sigma (B,) with the semantic vector (B, V) or None: (B, C)."""
    return model.embed_condition(precond(sigma, model.cfg.sigma_data).c_noise, vector)


def clamped_gather(grid: Grid, device: torch.device | str | None = None) -> Gather:
    """The full-image gather: every block's slots [self, top-left, left, top] from the whole grid (border
    neighbours clamped, official `full` mode); k, v hold every block of the grid, raster order."""
    slot_index = torch.tensor([[grid.index(nb) for nb in neighbors(r, c)] for r, c in grid.blocks()],
                              device=device)  # (N, 4)

    def gather(_layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k[:, slot_index], v[:, slot_index]  # (B, N, 4, T, H, D) each

    return gather


def denoise_full(model: InfDiT, x: torch.Tensor, sigma, *, concat_lr: torch.Tensor, lr: torch.Tensor,
                 vector: torch.Tensor | None, backend: str = "reference", rope_origin: tuple[int, int] = (0, 0),
                 return_hidden: bool = False):
    """The full-image computation (official `full` mode): D (B, 3, H, W) float32.

    x, concat_lr (B, 3, H, W); lr (B, 3, H/4, W/4); sigma (B,) or scalar; vector (B, V) or None.
    With return_hidden, also the per-layer hidden states, tokens in global raster order (B, H*W/p^2, C).
    """
    cfg = model.cfg
    grid = Grid.for_image(x.shape[-2], x.shape[-1], cfg.block_size)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
    blocks = grid.blocks()
    pre = Preconditioning.at(sigma, model)
    xb = image_to_blocks(x, cfg.block_size)  # (B, N, 3, bs, bs)
    up = image_to_blocks(concat_lr, cfg.block_size)  # (B, N, 3, bs, bs)
    pixels, inside = lr_windows(lr, blocks, cfg)  # (B, N, 3, 3L, 3L), (N, 3L/lp, 3L/lp)
    inp = pre.network_input(xb, up).to(model.dtype)  # (B, N, 6, bs, bs)
    out = model.forward_blocks(inp, pixels, inside, embedding(model, sigma, vector),
                               blocks=blocks, gather=clamped_gather(grid, x.device), kernel=get_kernel(backend),
                               rope_origin=rope_origin, return_hidden=return_hidden)
    f, hidden = out if return_hidden else (out, None)
    d = blocks_to_image(pre.denoised(xb, up, f), grid)  # (B, 3, H, W) float32
    if not return_hidden:
        return d
    return d, [blocks_to_raster_tokens(h, grid, cfg.block_tokens_side) for h in hidden]


def blocks_to_raster_tokens(h: torch.Tensor, grid: Grid, side: int) -> torch.Tensor:
    """Hidden states (B, N, T, C), tokens row-major per block -> (B, N*T, C) in global raster order."""
    return rearrange(h, "b (gh gw) (y x) c -> b (gh y gw x) c", gh=grid.rows, gw=grid.cols, y=side, x=side)
