"""Rectified flow in the paper's convention (Sec. 3.2, Eq. 3-7).

The one convention used everywhere in this project:

    x_t = t * x + (1 - t) * eps,   t = 0 is noise, t = 1 is data      (Eq. 3)
    u   = x - eps                                                     (Eq. 4)
    loss = || v(x_t, t) - u ||^2                                       (Eq. 5)

Sampling integrates dx/dt = v from t = 0 to t = 1 (Eq. 6); Direct Forcing's one-step estimate
jumps straight to t = 1 from x_t (Eq. 7). FramePack itself uses the opposite sign (noise at
sigma = 1); nothing here does.
"""

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

TimestepSampling = Literal["uniform", "logit_normal", "shifted"]


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-example t [b] so it broadcasts over x [b, ...]."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Eq. 3: the point at time t on the straight path from noise eps to data x."""
    tb = _bcast(t, x)
    return tb * x + (1 - tb) * eps


def target_velocity(x: Tensor, eps: Tensor) -> Tensor:
    """Eq. 4: the constant velocity of the straight path."""
    return x - eps


def one_step_estimate(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Eq. 7: x~_1 = x_t + (1 - t) v, Direct Forcing's estimate of the clean segment."""
    return x_t + (1 - _bcast(t, x_t)) * v


def sample_timesteps(
    n: int,
    mode: TimestepSampling = "logit_normal",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Training timesteps in [0, 1].

    `logit_normal` is SD3's default; `shifted` (SD3 / FramePack's `shift`) spends more steps near
    noise, which large resolutions need: with noise level s = 1 - t, s' = shift*s / (1 + (shift-1)*s).
    """
    u = torch.rand(n, generator=generator, device=device)
    if mode == "uniform":
        return u
    if mode == "logit_normal":
        z = torch.randn(n, generator=generator, device=device) * logit_std + logit_mean
        return torch.sigmoid(z)
    if mode == "shifted":
        return 1 - shift_noise_level(1 - u, shift)
    raise ValueError(f"unknown timestep sampling mode {mode!r}; expected one of {TimestepSampling}")


def shift_noise_level(sigma: Tensor, shift: float) -> Tensor:
    """Resolution shift of a noise level sigma = 1 - t (SD3 Sec. 5.3.2)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sampling_schedule(steps: int, shift: float = 1.0, device: torch.device | None = None) -> Tensor:
    """Monotone times 0 = t_0 < ... < t_steps = 1 for the Euler sampler."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    t = torch.linspace(0, 1, steps + 1, device=device)
    return 1 - shift_noise_level(1 - t, shift) if shift != 1.0 else t


VelocityFn = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def euler_sample(
    velocity: VelocityFn,
    noise: Tensor,
    steps: int,
    *,
    shift: float = 1.0,
) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 (noise) to t = 1 (data), Eq. 6.

    `velocity(x, t)` takes t of shape [b]; classifier-free guidance is the caller's business
    (see `guided`), so this stays the textbook integrator.
    """
    x = noise
    ts = sampling_schedule(steps, shift, device=noise.device)
    for i in range(steps):
        t = ts[i].expand(x.shape[0])
        x = x + (ts[i + 1] - ts[i]) * velocity(x, t)
    return x


def guided(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: v = v_u + scale (v_c - v_u); scale 1 is the conditional model."""
    return uncond + scale * (cond - uncond)


def change_weights(x: Tensor, last: Tensor, strength: float) -> Tensor:
    """Per-position loss weights 1 + strength * d / mean(d), d = |x - last| averaged over
    channels, for a segment x [b, T, c, h, w] and the newest frame the model saw [b, 1, c, h, w].

    Most of a segment repeats its last frame; the error is where content moves or appears (issue
    18 measured the loss at t = 0 at 0.36 on moving latent pixels against 0.04 on static ones).
    The weights move an underfit model's effort there; the optimum of each position's regression
    is unchanged. Mean extra weight `strength` over the batch, so the scale stays comparable.
    """
    d = (x - last).abs().mean(dim=2, keepdim=True)
    return 1 + strength * d / d.mean().clamp(min=1e-8)


def noised_context(
    latents: Tensor, max_noise: float, generator: torch.Generator | None = None
) -> Tensor:
    """Context latents [b, ...] moved back along the flow by a random noise level per video:
    t * latents + (1 - t) eps with 1 - t ~ U(0, max_noise) (Eq. 3 at t near 1).

    Training a segment on slightly noised history is meant to keep the model from copying the
    fine detail of what it conditions on: at sampling that history is the model's own output,
    seams and blur included (the noise augmentation of GameNGen, Valevski et al. 2024; not in
    the paper). max_noise 0 returns the latents unchanged.
    """
    if max_noise == 0:
        return latents
    device = generator.device if generator is not None else latents.device
    level = max_noise * torch.rand(latents.shape[0], generator=generator, device=device)
    eps = torch.randn(latents.shape, generator=generator, device=device)
    return interpolate(latents, eps.to(latents), 1 - level.to(latents.device))
