"""The model's scalar settings are checked at construction (errors name field and value), and its
learning-rate schedule is torch's (LinearLR warm-up, then constant or CosineAnnealingLR)."""

from types import SimpleNamespace

import pytest
import torch

from tests.helpers.tiny import tiny_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"rollout_segments": 0}, "rollout_segments=0 (must be >= 1)"),
        ({"sample_steps": 0}, "sample_steps=0 (must be >= 1)"),
        ({"warmup_steps": -10}, "warmup_steps=-10 (must be >= 0)"),
        ({"lr": 0.0}, "lr=0.0 (must be > 0)"),
        ({"prompt_dropout": 1.5}, "prompt_dropout=1.5 (must be in [0, 1])"),
        ({"lr_schedule": "linear"}, "lr_schedule='linear' (must be constant or cosine)"),
        ({"history_noise": 1.5}, "history_noise=1.5 (must be in [0, 1])"),
    ],
)
def test_bad_settings_are_refused_by_name_and_value(setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):  # fmt: skip
        tiny_module(**setting)


def test_every_bad_setting_is_listed_at_once() -> None:
    with pytest.raises(ValueError, match="sample_steps=0 .*; rollout_segments=0"):
        tiny_module(sample_steps=0, rollout_segments=0)


def learning_rates(schedule: str, warmup: int, total: int) -> tuple[object, list[float]]:
    module = tiny_module(lr=1.0, warmup_steps=warmup, lr_schedule=schedule)
    module._trainer = SimpleNamespace(estimated_stepping_batches=total)
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return sched, rates


def test_warmup_then_constant_or_cosine_from_torch_schedulers() -> None:
    sched, rates = learning_rates("constant", warmup=4, total=6)
    assert isinstance(sched, torch.optim.lr_scheduler.LinearLR)
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    sched, rates = learning_rates("cosine", warmup=2, total=6)
    assert isinstance(sched, torch.optim.lr_scheduler.SequentialLR)
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0])  # warm-up, then cosine over 4 steps
    assert rates[3:] == pytest.approx([0.5 * (1 + torch.cos(torch.tensor(k * torch.pi / 4)).item())
                                       for k in (1, 2, 3)])  # fmt: skip
