import math

import pytest
import torch

from lightning_modules import rectified_flow as rf
from lightning_modules.memory_pack import MemoryPack
from tests.helpers.tiny import perturb, tiny_batch, tiny_module, tiny_pack


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


def test_change_weights_favour_what_moved_and_keep_the_mean_scale() -> None:
    """Positions that differ from the last frame weigh more; a still segment weighs 1 everywhere
    but where it changed; strength 0 is the plain loss."""
    last = torch.zeros(2, 1, 3, 4, 4)
    x = torch.zeros(2, 2, 3, 4, 4)
    x[0, 1, :, 1, 2] = 1.0  # one position of one frame moved
    w = rf.change_weights(x, last, strength=3.0)
    assert w.shape == (2, 2, 1, 4, 4)
    assert w[0, 1, 0, 1, 2] > 10 and (w.flatten()[w.flatten() < 2] == 1).all()
    torch.testing.assert_close(w.mean(), torch.tensor(4.0))  # 1 + strength on average
    torch.testing.assert_close(rf.change_weights(x, last, 0.0), torch.ones_like(w))


def test_change_weight_compares_with_the_newest_frame_the_model_sees(monkeypatch) -> None:  # noqa: ANN001
    """change_weight weighs each target position against the frame just before the segment:
    the reference image for segment 0, else the true latent frame before it."""
    module = tiny_module(tiny_pack(), change_weight=3.0)
    perturb(module)
    batch = tiny_batch(s=3, lengths=(3, 3, 3))
    seen = {}
    weights = rf.change_weights
    monkeypatch.setattr(
        rf, "change_weights", lambda x, last, s: seen.update(x=x, last=last) or weights(x, last, s)
    )
    gen = torch.Generator().manual_seed(0)
    plain = tiny_module(tiny_pack(), change_weight=0.0)
    plain.load_state_dict(module.state_dict())
    seg = module.teacher_forcing_batch(batch, torch.Generator().manual_seed(0))[1]
    assert set(seg.tolist()) > {0}, "the draw must mix first and later segments"
    loss = module.teacher_forcing_loss(batch, generator=gen)
    latents, frames = module.batch_latents(batch)
    image = module.batch_image_latent(batch)
    for b, i in enumerate(seg.tolist()):
        expected = image[b] if i == 0 else latents[b, i * frames - 1 : i * frames]
        torch.testing.assert_close(seen["last"][b], expected)
    assert loss != plain.teacher_forcing_loss(batch, generator=torch.Generator().manual_seed(0))


def test_noised_context_moves_each_video_back_along_the_flow_by_at_most_max_noise() -> None:
    """out = (1 - l) x + l eps with one level l ~ U(0, max_noise) per video; 0 is the identity."""
    x = torch.randn(64, 2, 3, 4, 4)
    assert rf.noised_context(x, 0.0) is x
    out = rf.noised_context(x, 0.3, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    level = 0.3 * torch.rand(64, generator=gen)
    eps = torch.randn(x.shape, generator=gen)
    torch.testing.assert_close(out, rf.interpolate(x, eps, 1 - level))
    assert 0 < level.min() and level.max() <= 0.3 and level.std() > 0.05  # per video, spread


def test_history_noise_noises_the_context_and_never_the_target(monkeypatch) -> None:  # noqa: ANN001
    """With history_noise the history and SemanticPack's segments are noised, the segment the
    loss regresses is the clean one; without it the context is the true latents exactly."""
    batch = tiny_batch(s=3, lengths=(3, 3, 3))
    seen = {}
    forced = MemoryPack.teacher_forced
    monkeypatch.setattr(
        MemoryPack, "teacher_forced",
        lambda dit, pack, latents, *a: seen.update(context=latents) or forced(dit, pack, latents, *a),
    )  # fmt: skip
    for noise in (0.0, 0.5):
        module = tiny_module(tiny_pack())
        flow_loss = module.flow_loss
        monkeypatch.setattr(
            module, "flow_loss", lambda x, *a, f=flow_loss: seen.update(x=x) or f(x, *a)
        )  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        module.teacher_forcing_loss(batch, generator=gen, history_noise=noise)
        latents, _ = module.batch_latents(batch)
        target, _ = module.teacher_forcing_batch(batch, torch.Generator().manual_seed(0))
        torch.testing.assert_close(seen["x"], target)  # the target is clean
        change = (seen["context"] - latents).flatten(1).norm(dim=1)
        if noise == 0:
            assert torch.equal(seen["context"], latents)
        else:
            assert (change > 0.01 * latents.flatten(1).norm(dim=1)).all(), change


def test_training_noises_the_history_and_validation_does_not(monkeypatch) -> None:  # noqa: ANN001
    """training_step passes the model's history_noise; validation scores the clean objective."""
    module = tiny_module(tiny_pack(), history_noise=0.3)
    calls = []
    monkeypatch.setattr(
        module, "teacher_forcing_loss", lambda *a, **k: calls.append(k) or torch.tensor(0.0)
    )  # fmt: skip
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "_log_skipped", lambda: None)
    batch = tiny_batch(s=3, lengths=(3, 3, 3))
    module.training_step(batch, 0)
    module.validation_step(batch, 0)
    assert calls[0]["history_noise"] == 0.3
    assert calls[1].get("history_noise", 0.0) == 0.0
