"""Length-sorted curriculum for Direct Forcing (Appendix A.2).

Stage 2 accumulates gradients over every segment of a video, so a long video is one optimizer
step and the number of steps is small. A.2 therefore sorts videos by length and starts on
single-segment videos (plain image-to-video), then admits longer videos step by step.

Schedule: after `batches_seen` training batches the longest admitted video has

    max_segments = start_segments + batches_seen // grow_every      (capped at the longest video)

segments. With one optimizer step per video batch (the default), a batch is an optimizer step.
A pass walks the admitted videos in ascending length (ties shuffled per pass); videos admitted
mid-pass are longer than every admitted one, so they join at the end and the pass stays sorted.
A batch never mixes lengths, so no segment of a batch is padding. The pass spans epochs and is
saved with the schedule.

`pass_size`: a pass over everything admitted is long (256 videos), so the longest lengths come only
at its end: the 150-step stage-2 demo never drew a video of more than 5 segments, and a 1500-step
run drew 8-segment videos 0% of the time. With `pass_size=N` each pass is N admitted videos drawn
at random, still in ascending length, so every N steps the pass climbs to the longest admitted
length (newly admitted lengths wait for the next pass).

Exact resume: the sequence of batches is a function of (seed, lengths, batch size, ranks) and the
batch index only, so a resumed run does not trust the saved position (a DataLoader's workers run
the batch sampler ahead of training, so it may be several batches ahead of the checkpointed
step); `sampler_for_trainer` instead replays the schedule from the start to the restored batch
count, as `resumable_sampler.py` skips the consumed part of an epoch.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


class LengthCurriculum:
    """The schedule and its state (how far training has got), saved in checkpoints.

    Args:
        start_segments: longest admitted video at the start (1 = image-to-video, A.2).
        grow_every: training batches between admitting the next length (> 0).
        pass_size: videos per pass (None: every admitted video, the default).
        seed: shuffles videos of equal length, per pass.
    """

    def __init__(
        self, start_segments: int = 1, grow_every: int = 50, seed: int = 0,
        pass_size: int | None = None,
    ) -> None:  # fmt: skip
        if start_segments < 1:
            raise ValueError(f"curriculum start_segments must be >= 1, got {start_segments}")
        if grow_every < 1:
            raise ValueError(f"curriculum grow_every must be >= 1, got {grow_every}")
        if pass_size is not None and pass_size < 1:
            raise ValueError(f"curriculum pass_size must be >= 1 or None, got {pass_size}")
        self.pass_size = pass_size
        self.start_segments = start_segments
        self.grow_every = grow_every
        self.seed = seed
        self.batches_seen = 0
        self.passes = 0
        self.admitted = 0  # longest length already in the current pass
        self.queue: list[int] = []  # rest of the current pass (dataset indices)

    def max_segments(
        self, longest: int | None = None, shortest: int = 1, batches: int | None = None
    ) -> int:
        """The longest admitted video for batch `batches` (default: the next one to be drawn),
        within the dataset's [shortest, longest] lengths.

        A dataset without videos as short as `start_segments` starts at its shortest length.
        """
        seen = self.batches_seen if batches is None else batches
        cap = max(self.start_segments + seen // self.grow_every, shortest)
        return cap if longest is None else min(cap, longest)

    def reset(self) -> None:
        """Back to the start of training (no batch drawn yet)."""
        self.batches_seen = 0
        self.passes = 0
        self.admitted = 0
        self.queue = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches_seen": self.batches_seen,
            "passes": self.passes,
            "admitted": self.admitted,
            "queue": list(self.queue),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = int(state["batches_seen"])
        self.passes = int(state.get("passes", 0))
        self.admitted = int(state.get("admitted", 0))
        self.queue = [int(i) for i in state.get("queue", [])]


class CurriculumBatchSampler(Sampler[list[int]]):
    """Batches of equal-length videos, lengths admitted by a `LengthCurriculum`.

    An epoch is `ceil(len(lengths) / (batch_size * num_replicas))` steps, like a plain loader, so
    epoch-based Trainer settings keep their meaning; the curriculum's state lives across epochs.

    Under DDP every rank walks the same pass (same seed) and takes its share of one global batch
    of `batch_size * num_replicas` equal-length videos, repeating videos when a length has too
    few, so all ranks run the same number of segments and steps (no collective can hang). The
    Trainer must then leave the sampler alone: `use_distributed_sampler: false`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        curriculum: LengthCurriculum,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not lengths or min(lengths) < 1:
            raise ValueError(f"curriculum needs videos of >= 1 segment, got lengths {lengths!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, num_replicas={self.num_replicas})")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.curriculum = curriculum
        self.longest = max(self.lengths)
        self.shortest = min(self.lengths)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches of it already trained)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start (it calls a batch sampler's set_epoch too)."""
        self.epoch = epoch

    def resume(self, batches_done: int, epoch: int, epoch_batches_done: int) -> None:
        """Put the pass where an uninterrupted run is after `batches_done` batches in total.

        The schedule is replayed from the start rather than read from the checkpoint, whose
        saved position includes the batches the loader had prefetched. The next iteration of
        `epoch` then yields only its remaining batches, so epoch boundaries do not move.
        """
        if batches_done < 0 or epoch_batches_done < 0:
            raise ValueError(f"batches done must be >= 0, got {batches_done}, {epoch_batches_done}")
        self.curriculum.reset()
        for _ in range(batches_done):
            self._global_batch()
        self._resume = (epoch, epoch_batches_done)

    def __len__(self) -> int:
        return -(-len(self.lengths) // (self.batch_size * self.num_replicas))

    def _admitted(self, low: int, high: int, size: int | None = None) -> list[int]:
        """Indices of videos with low < length <= high (`size` of them at random), by length,
        ties shuffled for this pass."""
        gen = torch.Generator().manual_seed(self.curriculum.seed + self.curriculum.passes)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        picked = [i for i in order if low < self.lengths[i] <= high][:size]
        return sorted(picked, key=lambda i: self.lengths[i])  # stable: keeps the shuffled ties

    def _global_batch(self) -> list[int]:
        """The next equal-length videos of the pass for all ranks together."""
        cur = self.curriculum  # the pass lives in the curriculum: it spans epochs and resumes
        cap = cur.max_segments(self.longest, self.shortest)
        if cap > cur.admitted and cur.queue and cur.pass_size is None:
            cur.queue += self._admitted(cur.admitted, cap)  # new lengths join the pass's end
        if not cur.queue:  # a new pass over everything admitted so far (or pass_size of it)
            cur.passes += 1
            cur.queue = self._admitted(0, cap, cur.pass_size)
        cur.admitted = cap
        length = self.lengths[cur.queue[0]]
        size = self.batch_size * self.num_replicas
        batch = []
        while cur.queue and len(batch) < size and self.lengths[cur.queue[0]] == length:
            batch.append(cur.queue.pop(0))
        cur.batches_seen += 1
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        count = len(self)
        if self._resume is not None:
            if self._resume[0] == self.epoch:  # a stale resume (finished epoch) is dropped
                count = max(count - self._resume[1], 0)
            self._resume = None
        for _ in range(count):
            batch = self._global_batch()
            if len(batch) < self.num_replicas:  # every rank needs a video of this length
                batch = (batch * self.num_replicas)[: self.num_replicas]
            yield batch[self.rank :: self.num_replicas]


def sampler_for_trainer(
    lengths: Sequence[int], batch_size: int, curriculum: LengthCurriculum, trainer: Any | None
) -> CurriculumBatchSampler:
    """This rank's curriculum batch sampler, positioned where a restored fit loop left off."""
    sampler = CurriculumBatchSampler(lengths, batch_size, curriculum)
    fit_loop = getattr(trainer, "fit_loop", None)
    if fit_loop is not None and fit_loop.restarting:
        # `processed` counts the batches whose training step finished before the checkpoint.
        progress = fit_loop.epoch_loop.batch_progress
        sampler.resume(
            progress.total.processed,
            fit_loop.epoch_progress.current.processed,
            progress.current.processed,
        )
    return sampler
