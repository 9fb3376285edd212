"""A shuffling, rank-sharding sampler that resumes mid-epoch at the batch a checkpoint stopped.

The order of epoch e is a function of (seed, e) only (DistributedSampler's scheme), so it does not
depend on how many epochs this process has iterated. On resume the datamodule reads the restored
loop progress and skips the samples this rank already consumed in that epoch, so the batches
after `fit --ckpt_path` are the ones the uninterrupted run would have seen. Subclassing
DistributedSampler tells Lightning the sampler already shards by rank (it is not re-wrapped).
"""

from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler plus `resume(epoch, samples)`: skip this rank's first samples once."""

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, {num_replicas=}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, samples: int) -> None:
        """Start `epoch` at this rank's sample `samples` (applied on the next iteration only)."""
        if samples < 0:
            raise ValueError(f"samples to skip must be >= 0, got {samples}")
        self._resume = (epoch, samples)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] :]
            self._resume = None
        return iter(indices)


def sampler_for_trainer(
    dataset: Sized, batch_size: int, seed: int, trainer: Any | None
) -> ResumableSampler:
    """The training sampler for this rank, positioned where a restored fit loop left off."""
    if trainer is None:
        return ResumableSampler(dataset, seed=seed)
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    sampler = ResumableSampler(
        dataset, num_replicas=kwargs.get("num_replicas", 1), rank=kwargs.get("rank", 0), seed=seed
    )
    fit_loop = trainer.fit_loop
    if fit_loop.restarting:
        # `processed` counts the batches this epoch whose step finished before the checkpoint.
        done = fit_loop.epoch_loop.batch_progress.current.processed
        sampler.resume(fit_loop.epoch_progress.current.processed, done * batch_size)
    return sampler
