import math

import pytest
import torch

from lightning_modules import rectified_flow as rf


def test_interpolation_endpoints_follow_paper_convention() -> None:
    x, eps = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(rf.interpolate(x, eps, torch.zeros(3)), eps)  # t = 0 is noise
    assert torch.equal(rf.interpolate(x, eps, torch.ones(3)), x)  # t = 1 is data
    assert torch.equal(rf.target_velocity(x, eps), x - eps)


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (7, 1.0), (10, 3.0)])
def test_oracle_velocity_makes_sampler_return_data(steps: int, shift: float) -> None:
    """With v = x - eps along the straight path, Euler integration from noise lands on x."""
    torch.manual_seed(0)
    x, eps = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    out = rf.euler_sample(lambda xt, t: rf.target_velocity(x, eps), eps, steps, shift=shift)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_one_step_estimate_is_exact_for_oracle_velocity() -> None:
    x, eps, t = torch.randn(4, 6), torch.randn(4, 6), torch.rand(4)
    x_t = rf.interpolate(x, eps, t)
    torch.testing.assert_close(rf.one_step_estimate(x_t, x - eps, t), x)
    v = torch.randn(4, 6)
    torch.testing.assert_close(rf.one_step_estimate(x_t, v, t), x_t + (1 - t)[:, None] * v)


def test_timestep_sampling_follows_each_distribution_exactly() -> None:
    """Each mode is its formula on the same draws: u ~ U(0, 1); logit-normal sigmoid(m + s z)
    with z drawn after u; shifted 1 - shift (1 - u) / (1 + (shift - 1)(1 - u)) (SD3)."""
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    u, draws = torch.rand(1000, generator=gen()), gen()
    u2, z2 = torch.rand(1000, generator=draws), torch.randn(1000, generator=draws)
    assert torch.equal(rf.sample_timesteps(1000, "uniform", generator=gen()), u)
    logit = rf.sample_timesteps(
        1000, "logit_normal", logit_mean=0.5, logit_std=2.0, generator=gen()
    )
    assert torch.equal(logit, torch.sigmoid(z2 * 2.0 + 0.5)) and torch.equal(u2, u)
    shifted = rf.sample_timesteps(1000, "shifted", shift=3.0, generator=gen())
    assert torch.equal(shifted, 1 - 3.0 * (1 - u) / (1 + 2.0 * (1 - u)))


def test_shifted_sampling_spends_more_time_near_noise() -> None:
    """Shift 3 maps t to 1 - 3s / (1 + 2s), s = 1 - t: below t everywhere inside (0, 1), so
    its mean over uniform u is 1 - 3 E[s / (1 + 2 s)] = 3 ln(3) / 4 - 1/2 (0.324 < 1/2)."""
    shifted = rf.sample_timesteps(
        200_000, "shifted", shift=3.0, generator=torch.Generator().manual_seed(0)
    )
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    assert (shifted <= u).all() and (shifted[(u > 0) & (u < 1)] < u[(u > 0) & (u < 1)]).all()
    expected = 3 * math.log(3) / 4 - 0.5
    assert shifted.double().mean().item() == pytest.approx(expected, abs=3e-3)


def test_bad_mode_and_steps_raise() -> None:
    with pytest.raises(ValueError, match="bogus"):
        rf.sample_timesteps(3, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0"):
        rf.sampling_schedule(0)


def test_guidance_scale_one_is_conditional() -> None:
    c, u = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(rf.guided(c, u, 1.0), c)
    torch.testing.assert_close(rf.guided(c, u, 3.0), u + 3 * (c - u))
