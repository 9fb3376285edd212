"""Stage 2: Direct Forcing (Sec. 3.2 Eq. 6-7, "Optimization Strategy"; Sec. 4.1; Appendix A.2).

Stage 1 conditions every segment on ground-truth history; at inference the model conditions on
its own samples, and the mismatch accumulates as drift. Direct Forcing trains on inference-like
history at no extra cost: the forward pass that gives the flow-matching loss of segment i also
gives the one-step estimate (Eq. 7)

    x~^i = x_t + (1 - t) v_theta(x_t, t),

which becomes the history of segments i+1, ... of the same video (FramePack context and
SemanticPack's recurrence). One example is one whole video in chronological order; gradients
accumulate over its segments and the optimizer steps once per video ("Optimization Strategy").
Only the output head trains, starting from a stage-1 checkpoint (Sec. 4.1, A.2).

Where on the flow the estimate is taken (`estimate_t`): the paper reuses the loss's forward, so the
estimate sits at the loss's t (median 0.25 under the shifted sampling: mostly a blurry mean),
while what inference feeds forward is a finished sample. `estimate_t=(lo, hi)` instead noises the
segment again at t ~ U(lo, hi) and runs one extra no-grad forward there (a fixed t when lo == hi):
an estimate nearer a sample's error, at the cost of that forward.

Gradients never cross segments: the stored history and SemanticPack's memory are computed without
gradients (the paper detaches x~; the memory is frozen with the backbone).

Loss normalisation: each segment's loss (mean over the batch's videos) is divided by the number
of segments in its accumulation window, so the accumulated gradient is that of the mean segment
loss and the step size does not grow with video length.
"""

import contextlib
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_modules import rectified_flow as rf
from lightning_modules.codecs.base import LatentCodec
from lightning_modules.memory_pack import MemoryPack
from lightning_modules.networks.backbone import Backbone
from lightning_modules.networks.semantic_pack import SemanticPack
from lightning_modules.networks.text_encoder import TextEncoder
from lightning_modules.training.parallel import no_backward_sync
from lightning_modules.training.stage1 import (
    architecture_hparams,
    load_stage1_weights,
    stage1_adapters,
    stage1_start,
)
from lightning_modules.video_module import VideoModule

HistoryMode = Literal["teacher", "direct", "student"]


@dataclass
class SegmentLoss:
    """One segment of a video batch: its loss and its place in the accumulation window."""

    index: int  # segment i of the videos
    loss: Tensor  # Eq. 5, mean over the videos that have segment i
    window: int  # segments in its accumulation window: the backward divides the loss by it
    last: bool  # the window's last segment: the optimizer steps after its backward
    videos: int  # videos that have segment i (a ragged batch's shorter videos are done)
    history_mse: Tensor  # the stored history against the true segment (0 for teacher history)


class DirectForcingModule(VideoModule):
    """Stage 2: Direct Forcing on a frozen stage-1 backbone.

    Args:
        dit, codec, text_encoder, semantic_pack: the stage-1 architecture. None (the default,
            and what configs/stage2_direct_forcing.yaml leaves them) rebuilds stage 1's from
            `init_checkpoint`'s saved hyperparameters; a part given must equal stage 1's.
        init_checkpoint: stage-1 checkpoint whose architecture and weights are loaded at
            construction. Not `--ckpt_path`, which resumes a run (and then replaces these
            weights afterwards).
        trainable: fnmatch patterns of parameter names that train; the rest is frozen and kept
            in eval mode. Default: the final (adaLN) norm + output linear, `dit.head.*` (A.2).
        history: what later segments condition on: `teacher` (ground truth, stage-1 style),
            `direct` (one-step estimate, Eq. 7), `student` (`student_steps` Euler steps, Eq. 6).
        estimate_t: `direct` only. None (the paper): the estimate comes from the loss's own
            forward at the loss's t. (lo, hi): from one extra no-grad forward at t ~ U(lo, hi)
            with fresh noise (lo == hi: a fixed t), 0 <= lo <= hi < 1.
        segments_per_step: segments per optimizer step; None = one step per video.
        gradient_clip_val: clip the accumulated gradient norm before each step (None = off).
        init_checkpoint_sha256: set by the module itself (leave None): the sha256 of
            `init_checkpoint` when this stage-2 model was first built. With it (a stage-2
            checkpoint rebuilt from its hyperparameters, which also hold stage 1's architecture)
            the stage-1 file may be absent; if present it must have this hash.
        **kwargs: the remaining `VideoModule` arguments (lr, timestep sampling, sampler...);
            `adapters` come from stage 1 (stage 2 then trains its head on the adapted model).
    """

    def __init__(
        self,
        dit: Backbone | None = None,
        *,
        init_checkpoint: str,
        codec: LatentCodec | None = None,
        text_encoder: TextEncoder | None = None,
        semantic_pack: SemanticPack | None = None,
        trainable: tuple[str, ...] = ("dit.head.*",),
        history: HistoryMode = "direct",
        student_steps: int = 5,
        estimate_t: tuple[float, float] | None = None,
        segments_per_step: int | None = None,
        gradient_clip_val: float | None = None,
        init_checkpoint_sha256: str | None = None,
        **kwargs: Any,
    ) -> None:
        given = {"dit": dit, "codec": codec, "text_encoder": text_encoder,
                 "semantic_pack": semantic_pack}  # fmt: skip
        ckpt, parts, digest = stage1_start(init_checkpoint, init_checkpoint_sha256, given)
        adapters = stage1_adapters(ckpt, init_checkpoint, kwargs.pop("adapters", None))
        super().__init__(**parts, adapters=adapters, **kwargs)
        # Self-contained: the checkpoint records stage 1's architecture and the file's hash.
        self.hparams["init_checkpoint_sha256"] = digest
        if ckpt is not None:
            self.hparams.update(architecture_hparams(ckpt, parts))
        if history not in ("teacher", "direct", "student"):
            raise ValueError(f"history must be teacher, direct or student, got {history!r}")
        if estimate_t is not None and not (0 <= estimate_t[0] <= estimate_t[1] < 1):
            raise ValueError(
                f"estimate_t must be (lo, hi) with 0 <= lo <= hi < 1, got {estimate_t}"
            )
        if estimate_t is not None and history != "direct":
            raise ValueError(f"estimate_t applies to history='direct' only, got {history!r}")
        if student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {student_steps}")
        if segments_per_step is not None and segments_per_step < 1:
            raise ValueError(f"segments_per_step must be >= 1 or None, got {segments_per_step}")
        if not trainable:
            raise ValueError("trainable must name at least one parameter pattern, got none")
        self.trainable_patterns = list(trainable)
        # Weights load here, at construction (a run resumed with --ckpt_path, or a stage-2
        # checkpoint being loaded, then replaces them with its own).
        if ckpt is not None:
            load_stage1_weights(self, ckpt, init_checkpoint)
        self._freeze()
        self.train(self.training)  # frozen parts start in eval; every later train() keeps them so
        self.automatic_optimization = False  # segments accumulate; we decide when to step

    # ----------------------------------------------------------------- trainable set (A.2)
    def _freeze(self) -> None:
        names = [n for n, _ in self.named_parameters()]
        for pattern in self.trainable_patterns:
            if not fnmatch.filter(names, pattern):
                raise ValueError(
                    f"trainable pattern {pattern!r} matches no parameter; names look like "
                    f"{names[:3]} ... {names[-3:]}"
                )
        for name, p in self.named_parameters():
            p.requires_grad_(any(fnmatch.fnmatch(name, pat) for pat in self.trainable_patterns))

    @staticmethod
    def frozen_modules(parent: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Top-most submodules whose parameters are all frozen (parameter-free ones follow)."""
        for module in parent.children():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                yield module
            elif params:
                yield from DirectForcingModule.frozen_modules(module)

    def train(self, mode: bool = True) -> "DirectForcingModule":
        """Lightning calls `train()` at every epoch start; frozen parts must stay in eval."""
        super().train(mode)
        for module in self.frozen_modules(self):
            module.eval()
        return self

    def parameter_groups(self) -> dict[str, tuple[int, int]]:
        """{group: (trainable, frozen)} parameter counts, grouped by the first two name parts."""
        groups: dict[str, tuple[int, int]] = {}
        for name, p in self.named_parameters():
            key = ".".join(name.split(".")[:2])
            on, off = groups.get(key, (0, 0))
            groups[key] = (on + p.numel(), off) if p.requires_grad else (on, off + p.numel())
        return groups

    def on_fit_start(self) -> None:
        groups = self.parameter_groups()
        lines = [
            f"  {k:<24} trainable {on:>10,}  frozen {off:>10,}" for k, (on, off) in groups.items()
        ]
        on = sum(v[0] for v in groups.values())
        total = on + sum(v[1] for v in groups.values())
        rank_zero_info(
            f"Direct Forcing trainable set {self.trainable_patterns}: {on:,} of {total:,} "
            "parameters\n" + "\n".join(lines)
        )
        if self.logger is not None:
            self.logger.log_metrics({"params/trainable": on, "params/total": total}, step=0)

    # ----------------------------------------------------------------- one video (Sec. 3.2)
    def _sync_gradients(self, sync: bool) -> contextlib.AbstractContextManager:
        """Under DDP/FSDP, skip the gradient all-reduce on every backward but a step's last one."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not sync and isinstance(strategy, ParallelStrategy):
            return no_backward_sync(self.trainer.model)  # grads add up locally until the step
        return contextlib.nullcontext()

    def history_segment(
        self, x: Tensor, x_t: Tensor, t: Tensor, v: Tensor, velocity: rf.VelocityFn
    ) -> Tensor:
        """The segment later segments condition on, by `history` mode (always detached)."""
        mode = self.hparams.history
        if mode == "teacher":
            return x
        span = self.hparams.estimate_t
        if mode == "direct" and span is None:  # Eq. 7: reuses the loss's forward, no extra call
            return rf.one_step_estimate(x_t, v.detach(), t)
        if mode == "direct":  # Eq. 7 at a t nearer the sampler's end: one extra forward
            lo, hi = span
            t_est = lo + (hi - lo) * torch.rand(x.shape[0], device=x.device)
            x_est = rf.interpolate(x, torch.randn_like(x), t_est)
            return rf.one_step_estimate(x_est, velocity(x_est, t_est), t_est)
        noise = torch.randn_like(x)  # student: the sampler itself (Eq. 6), k extra calls
        return rf.euler_sample(
            velocity, noise, self.hparams.student_steps, shift=self.hparams.sample_shift
        )

    def video_segments(self, batch: dict[str, Any]) -> Iterator[SegmentLoss]:
        """The batch's videos segment by segment, oldest first (Sec. 3.2): yields each segment's
        loss once the history that later segments condition on has been stored from the same
        forward (detached), so the caller may backpropagate and step the optimizer in between.
        """
        latents, frames = self.batch_latents(batch)  # pre-encoded when the latent cache is on
        num = batch["num_segments"].to(latents.device)
        image = self.batch_image_latent(batch)
        text = self.batch_text(batch, self.hparams.prompt_dropout)
        with torch.no_grad():  # SemanticPack is frozen in stage 2 (A.2): its recurrence is data
            pack = MemoryPack.start(self.dit, self.semantic_pack, text, image)
        longest = int(num.max())
        window = self.hparams.segments_per_step or longest
        for i in range(longest):
            active = num > i  # shorter videos of a ragged batch are done (their tail is padding)
            rows = slice(None) if bool(active.all()) else active
            x = latents[rows, i * frames : (i + 1) * frames]
            seg = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            sub_text, context = (text[0][rows], text[1][rows]), pack.context(rows)
            loss, x_t, t, v = self.flow_loss(
                x, seg, context.history, image[rows], sub_text, context.memory
            )
            # The history comes from the weights that produced this loss, before any step.
            with torch.no_grad():  # history and memory never carry gradients across segments
                vel = self.pipeline.velocity_fn(seg, context, image[rows], sub_text)
                new = self.history_segment(x, x_t, t, v, vel)
                pack.remember(new, i, rows)  # finished videos get zeros (padding)
                error = (new.float() - x.float()).square().mean()  # how far from the truth
            self.store_history(i, new)
            start = i - i % window
            in_window = min(window, longest - start)
            last = i == start + in_window - 1
            yield SegmentLoss(i, loss, in_window, last, x.shape[0], error)

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        """All segments of the batch's videos, oldest first; steps every accumulation window."""
        if batch is None:
            return None
        opt = self.optimizers()
        sched = self.lr_schedulers()
        losses, errors = [], []
        for segment in self.video_segments(batch):
            with self._sync_gradients(segment.last):
                self.manual_backward(segment.loss / segment.window)
            if segment.last:
                if self.hparams.gradient_clip_val is not None:
                    self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
            losses.append(segment.loss.detach())
            errors.append(segment.history_mse)
            self.log(f"train/loss_seg_{segment.index}", losses[-1], batch_size=segment.videos)
        b, longest = len(batch["caption"]), len(losses)
        mean = torch.stack(losses).mean()
        self.log("train/loss", mean, prog_bar=True, batch_size=b)
        self.log("train/segments", float(longest), batch_size=b)
        # The exposure the history mode trains on: its stored segments against the truth (latent
        # MSE, 0 under teacher history).
        self.log("train/history_mse", torch.stack(errors).mean(), batch_size=b)
        self.log("train/trainable_param_norm", self.trainable_norm(), batch_size=b)
        if getattr(getattr(self.trainer, "datamodule", None), "curriculum", None) is not None:
            # What the curriculum drew: the longest video of the global batch (not the schedule's
            # cap, which a pass still walking shorter videos has not reached yet).
            self.log(
                "train/curriculum_max_segments", float(longest), batch_size=b,
                sync_dist=True, reduce_fx="max",
            )  # fmt: skip
        self._log_skipped()
        return mean

    def store_history(self, segment: int, history: Tensor) -> None:
        """Hook called with each stored history segment (tests and probes override it)."""

    def trainable_norm(self) -> Tensor:
        norms = [p.detach().norm() for p in self.parameters() if p.requires_grad]
        return torch.linalg.vector_norm(torch.stack(norms))
