"""The non-finite loss policy: stop the run, naming the step, before the bad gradients exist.

Chosen over skipping: a NaN/inf loss almost always means diverged weights, a broken batch or a
bad learning rate, and skipped steps hide that while the run burns compute. The check runs
before backward, so neither the weights nor the optimizer state ever see the bad step, and the
last checkpoint is a clean point to resume from (e.g. with a lower learning rate).
"""

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """Raised on every rank when any rank's loss is NaN or infinite."""


def check_finite_loss(
    loss: Tensor, global_step: int, batch_idx: int, epoch: int, strategy: object | None
) -> None:
    """Raise NonFiniteLossError unless `loss` is finite on all ranks.

    The decision is all-reduced (one boolean per step): raising on one rank only would leave
    the others waiting forever in the gradient all-reduce.
    """
    finite = bool(torch.isfinite(loss.detach()).all())
    if strategy is not None and hasattr(strategy, "reduce_boolean_decision"):
        finite = strategy.reduce_boolean_decision(finite, all=True)
    if not finite:
        raise NonFiniteLossError(
            f"non-finite training loss at global_step={global_step} (epoch {epoch}, batch "
            f"{batch_idx}; this rank's loss={loss.detach().float().item()}); stopping before "
            f"backward so no weights were updated with it. Resume from the last checkpoint, "
            f"e.g. with a lower learning rate or after checking the data of this step."
        )
