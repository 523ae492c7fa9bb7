"""EDM math (Karras et al. 2022) as small pure functions: sigmas, preconditioning, Euler and Heun steps.

Stateless: a step takes the state, the sigmas and a denoiser, never a scheduler object, so a block can
be stepped on its own, in any batch, after any resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

SIGMA_MIN = 0.002  # official schedule (configs/text2image-sr.yaml)
SIGMA_MAX = 40.0
RHO = 7.0
STEPS = 20


@dataclass(frozen=True)
class Precond:
    """EDM preconditioning coefficients (EDM table 1), each shaped like sigma."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def precond(sigma: torch.Tensor, sigma_data: float = 0.5) -> Precond:
    """c_skip = sd^2/(s^2+sd^2), c_out = s*sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    total = sigma ** 2 + sigma_data ** 2
    return Precond(c_skip=sigma_data ** 2 / total, c_out=sigma * sigma_data / total.sqrt(),
                   c_in=1 / total.sqrt(), c_noise=0.25 * sigma.log())


def network_input(x: torch.Tensor, up: torch.Tensor, c_in: torch.Tensor, *, residual: bool) -> torch.Tensor:
    """What the network F sees, concatenated on the channel axis (dim -3): x, up (..., 3, H, W); c_in
    broadcastable to them. Official (image) parametrisation: [c_in x, c_in up] (FACTS.md 1.1, the LR is
    scaled too); residual: [c_in (x - up), up] -> (..., 6, H, W) float32."""
    x, up = x.float(), up.float()
    if residual:
        return torch.cat([c_in * (x - up), up], dim=-3)
    return torch.cat([x, up], dim=-3) * c_in


def denoised(x: torch.Tensor, up: torch.Tensor, f: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor, *,
             residual: bool) -> torch.Tensor:
    """EDM eq. 7, D = c_skip x + c_out F; residual: D = up + c_skip (x - up) + c_out F, so that F = 0
    gives up(LR) exactly as sigma -> inf and training only adds to bicubic. float32, shaped like x."""
    x, f = x.float(), f.float()
    if residual:
        up = up.float()
        return up + c_skip * (x - up) + c_out * f
    return c_skip * x + c_out * f


def karras_sigmas(steps: int = STEPS, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> torch.Tensor:
    """EDM eq. 5 in float32, with a final 0 appended: (steps + 1,)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def to_d(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x)) / sigma (k-diffusion's to_d)."""
    return (x - denoised) / sigma


def euler_step(x: torch.Tensor, d: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """EDM algorithm 1, line 5: x + (sigma_next - sigma) d."""
    return x + (sigma_next - sigma) * d


def heun_correct(x: torch.Tensor, d: torch.Tensor, d_next: torch.Tensor, sigma: float,
                 sigma_next: float) -> torch.Tensor:
    """EDM algorithm 1, line 8: x + (sigma_next - sigma) (d + d') / 2."""
    return x + (sigma_next - sigma) * (d + d_next) / 2


def evaluations(steps: int, sampler: str) -> int:
    """Denoiser calls: Heun 2N-1 (the last step, to sigma 0, is Euler), Euler N."""
    return 2 * steps - 1 if sampler == "heun" else steps


Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def sample_loop(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, sampler: str = "heun") -> torch.Tensor:
    """Deterministic EDM sampling (s_churn = 0) from x = x_T at sigmas[0] down to sigmas[-1] = 0."""
    if sampler not in ("heun", "euler"):
        raise ValueError(f"sampler must be 'heun' or 'euler', got {sampler!r}")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = to_d(x, denoise(x, sigma), sigma)
        x_next = euler_step(x, d, sigma, sigma_next)
        if sampler == "heun" and sigma_next > 0:
            d_next = to_d(x_next, denoise(x_next, sigma_next), sigma_next)
            x_next = heun_correct(x, d, d_next, sigma, sigma_next)
        x = x_next
    return x


def lr_noise_init(up_lr: torch.Tensor, eps: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """x_T = up(LR) + sigma_max * eps (the official --init_noise)."""
    return up_lr + sigma_max * eps
