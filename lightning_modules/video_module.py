"""Stage 1: teacher forcing over the whole network (Sec. 4.1), and the autoregressive rollout.

The LightningModule is glue: it owns the codec, the text encoder, the backbone and SemanticPack,
draws one training segment per video with its ground-truth context (teacher forcing, through
`MemoryPack.teacher_forced`) and rolls videos out with `generate` (`pipeline.py`: encode ->
MemoryPack -> sample -> decode). The Trainer owns the loop; media and evaluation live in
`callbacks/` and `eval/`.
"""

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_modules import rectified_flow as rf
from lightning_modules.codecs.base import LatentCodec, SpaceToDepthCodec
from lightning_modules.conditioning import CachedConditioning
from lightning_modules.memory_pack import MemoryPack
from lightning_modules.networks.backbone import Backbone, ContextMode
from lightning_modules.networks.lora import merge_lora
from lightning_modules.networks.memory_recall import MemoryRecall
from lightning_modules.networks.semantic_pack import SemanticPack
from lightning_modules.networks.text_encoder import HashTextEncoder, TextEncoder
from lightning_modules.pipeline import VideoPipeline
from lightning_modules.training import frozen_parts
from lightning_modules.training.adapters import LoraAdapters
from lightning_modules.training.nonfinite import check_finite_loss
from lightning_modules.training.optimizer import configure_adamw
from lightning_modules.training.parallel import CompileMode, apply_fsdp2, compile_dit
from lightning_modules.training.settings import check_semantic_pack, check_settings
from lightning_modules.training.step_seed import seed_batch


class VideoModule(L.LightningModule):
    """Autoregressive image-to-video model trained with rectified flow and teacher forcing.

    Args:
        dit: the denoiser, a `Backbone` (`VideoDiT`, or the pretrained `FramePackBackbone`); its
            `latent_channels`/`text_dim` must match codec and text encoder.
        codec: pixels <-> latents (default: weight-free space-to-depth).
        text_encoder: captions -> tokens (default: hashed words + trainable embedding).
        semantic_pack: SemanticPack long-term memory (MemoryPack, Sec. 3.1); None gives the
            FramePack-F1 baseline.
        timestep_sampling, logit_mean, logit_std, shift: training-time t distribution.
        prompt_dropout: probability of training on the empty prompt, enabling CFG.
        lr, weight_decay, betas, warmup_steps: AdamW with linear warm-up.
        lr_schedule: after warm-up, `constant`, or `cosine` decay to 0 at the run's last
            optimizer step (`trainer.estimated_stepping_batches`).
        sample_steps, sample_shift, cfg_scale: Euler sampler used by `generate`.
        memory_guidance: w of memory guidance at sampling, v + w (v - v without psi)
            (`pipeline.py`; not in the paper); 0 samples the model as it is.
        rollout_segments: segments per `predict` video (a continued video's prefix included).
        compile: `torch.compile` the DiT blocks or the whole DiT in `configure_model`.
        memory_focus: probability that a video with a `focus_segment` (a memory-probe training
            video's return, where only psi can know what comes back) trains on that segment
            instead of a uniformly drawn one; 0 draws uniformly (the share of targets that need
            memory is then what the data gives).
        memory_lr_scale: learning-rate multiplier of the memory read-in gates, which start at 0
            and would otherwise move at the backbone's (small) rate.
        memory_gate_init: initial value of the read-in gates (0 keeps a pretrained F1 backbone's
            output unchanged at step 0; a small model trained from scratch may start them open).
        memory_oracle: a diagnostic: a focus target reads psi after only the segments that hold
            what it needs (`focus_memory`, a probe's prefix), as if psi had kept it perfectly, so
            what is measured is the read-in alone.
        change_weight: weights the flow loss towards latent pixels that differ from the newest
            frame the model sees (`rectified_flow.change_weights`; not in the paper); 0 weighs
            every pixel alike.
        history_noise: stage 1 trains each segment on history (and SemanticPack inputs) noised
            to a level drawn per video from U(0, history_noise) (`rf.noised_context`; not in the
            paper), meant to keep the model from copying the detail of a context that, at
            sampling, is its own output; 0 trains on the clean history as the paper does (on the
            demo 0.1 and 0.3 cost every figure: README, "Why it does not move yet").
        memory_recall: weight of an auxiliary loss asking psi to give back a segment that has
            left FramePack's history (`networks/memory_recall.py`, the Compressive Transformer's
            reconstruction loss; not in the paper); 0 leaves it out.
        adapters: `LoraAdapters` trains low-rank adapters on the DiT's blocks and SemanticPack +
            the memory gates in full, the rest frozen (`training/adapters.py`); None trains all.

    Pretrained parts (a HF VAE or text encoder; the pretrained backbone under adapters) are
    rebuilt from their folders and left out of `state_dict()` and checkpoints, which record the
    folders' file hashes instead (`training/frozen_parts.py`).
    """

    def __init__(
        self,
        dit: Backbone,
        codec: LatentCodec | None = None,
        text_encoder: TextEncoder | None = None,
        semantic_pack: SemanticPack | None = None,
        timestep_sampling: rf.TimestepSampling = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        prompt_dropout: float = 0.1,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 50,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        sample_steps: int = 16,
        sample_shift: float = 1.0,
        cfg_scale: float = 1.0,
        memory_guidance: float = 0.0,
        rollout_segments: int = 4,
        compile: CompileMode = "none",
        memory_focus: float = 0.0,
        memory_lr_scale: float = 1.0,
        memory_gate_init: float = 0.0,
        memory_oracle: bool = False,
        memory_recall: float = 0.0,
        change_weight: float = 0.0,
        history_noise: float = 0.0,
        adapters: LoraAdapters | None = None,
    ) -> None:
        super().__init__()
        check_settings(
            timestep_sampling=timestep_sampling, logit_std=logit_std, shift=shift,
            prompt_dropout=prompt_dropout, lr=lr, weight_decay=weight_decay, betas=betas,
            warmup_steps=warmup_steps, lr_schedule=lr_schedule, sample_steps=sample_steps,
            sample_shift=sample_shift, cfg_scale=cfg_scale, rollout_segments=rollout_segments,
            memory_guidance=memory_guidance, memory_focus=memory_focus, memory_lr_scale=memory_lr_scale,
            memory_recall=memory_recall, change_weight=change_weight, history_noise=history_noise,
        )  # fmt: skip
        # Under LightningCLI this stores the nested class_path configs, so load_from_checkpoint
        # rebuilds the exact networks; outside the CLI the modules themselves are stored.
        self.save_hyperparameters()
        self.dit = dit
        self.codec = codec if codec is not None else SpaceToDepthCodec()
        self.text_encoder = text_encoder if text_encoder is not None else HashTextEncoder()
        if self.codec.latent_channels != dit.latent_channels:
            raise ValueError(
                f"codec gives {self.codec.latent_channels} latent channels but the DiT expects "
                f"dit.latent_channels={dit.latent_channels}"
            )
        dit.check_text_encoder(self.text_encoder)
        self.codec.requires_grad_(False)
        self.semantic_pack = semantic_pack
        if semantic_pack is not None:
            check_semantic_pack(semantic_pack, dit, self.text_encoder.dim)
            dit.enable_memory()  # zero-gated read-in: the F1 output is unchanged at init
            # New storage, not fill_: a checkpoint written outside the CLI pickles `dit` in
            # hyper_parameters sharing storage with its state dict, so an in-place fill here
            # would zero the saved gates that load_state_dict then copies back.
            for gate in self.memory_gates():
                gate.data = torch.full_like(gate, memory_gate_init)
        self.memory_recall = None
        if memory_recall > 0:
            if semantic_pack is None:
                raise ValueError(f"memory_recall={memory_recall} needs a semantic_pack")
            if dit.context_mode == ContextMode.FULL_HISTORY:
                raise ValueError(
                    f"memory_recall={memory_recall} asks psi for segments that left FramePack's "
                    "window; context_mode FULL_HISTORY keeps every frame"
                )
            memorize = semantic_pack.memorize
            self.memory_recall = MemoryRecall(
                semantic_pack.width, memorize.attn.heads, memorize.patch, dit.latent_channels
            )
        self.adapters = adapters
        self.adapters_merged = False
        if adapters is not None:
            adapters.apply(self)
        frozen_parts.install(self)

    def memory_gates(self) -> list[torch.nn.Parameter]:
        """The backbone's per-block memory read-in gates (empty without SemanticPack)."""
        return [p for n, p in self.dit.named_parameters() if n.endswith("memory_gate")]

    # ----------------------------------------------------------------- encoding
    @property
    def pipeline(self) -> VideoPipeline:
        """Generation with this model's networks and its current sampler settings."""
        hp = self.hparams
        return VideoPipeline(
            self.dit, self.codec, self.text_encoder, self.semantic_pack,
            hp.sample_steps, hp.sample_shift, hp.cfg_scale, hp.get("memory_guidance", 0.0),
        )  # fmt: skip

    def encode_video(self, video: Tensor, image: Tensor | None = None) -> tuple[Tensor, int]:
        """Pixel video [b, s, t, c, H, W] -> latents [b, s*T, c, h, w], T (`VideoPipeline`)."""
        return self.pipeline.encode_video(video, image)

    def encode_image(self, image: Tensor) -> Tensor:
        """The reference latent [b, 1, c, h, w] of image [b, 3, H, W]."""
        return self.pipeline.encode_image(image)

    def encode_text(
        self, captions: list[str], dropout: float = 0.0, image: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Prompt features, each caption dropped to "" with probability `dropout` (CFG)."""
        return self.pipeline.encode_text(captions, dropout, image)

    def batch_text(self, batch: dict[str, Any], dropout: float = 0.0) -> tuple[Tensor, Tensor]:
        """`encode_text` of the batch, or its cached conditioning parts (no encoder runs)."""
        cached = CachedConditioning.from_batch(batch)
        return self.pipeline.encode_text(batch["caption"], dropout, batch["image"], cached)

    def batch_latents(self, batch: dict[str, Any]) -> tuple[Tensor, int]:
        """`encode_video` of the batch, or its pre-encoded `latents` [b, s, T, c, h, w] (cache)."""
        if "latents" in batch:
            lat = batch["latents"]
            return rearrange(lat, "b s t c h w -> b (s t) c h w"), lat.shape[2]
        return self.encode_video(batch["video"], batch["image"])

    def batch_image_latent(self, batch: dict[str, Any]) -> Tensor:
        """`encode_image` of the batch, or its pre-encoded `image_latent` [b, 1, c, h, w]."""
        if "image_latent" in batch:
            return batch["image_latent"]
        return self.encode_image(batch["image"])

    # ----------------------------------------------------------------- teacher forcing
    def flow_loss(
        self,
        x: Tensor,
        segment_index: Tensor,
        history: Tensor,
        image: Tensor,
        text: tuple[Tensor, Tensor],
        memory: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Eq. 5 for one segment x [b, T, c, h, w]; returns (loss, x_t, t, v) for reuse."""
        hp = self.hparams
        t = rf.sample_timesteps(
            x.shape[0],
            hp.timestep_sampling,
            logit_mean=hp.logit_mean,
            logit_std=hp.logit_std,
            shift=hp.shift,
            generator=generator,
            device=x.device if generator is None else generator.device,
        ).to(x.device)
        eps = torch.randn(x.shape, generator=generator, device=t.device).to(x)
        x_t = rf.interpolate(x, eps, t)
        v = self.dit(x_t, t, segment_index, history, image, *text, memory=memory)
        error = (v.float() - rf.target_velocity(x, eps).float()).pow(2)
        strength = self.hparams.get("change_weight", 0.0)
        if strength == 0:
            return error.mean(), x_t, t, v
        # The latest frame the model sees: the newest history frame, the image for segment 0.
        last = image
        if history.shape[1]:
            first = (segment_index == 0)[:, None, None, None, None]
            last = torch.where(first, image, history[:, -1:])
        weight = rf.change_weights(x, last, strength)
        return (weight * error).mean() / weight.mean(), x_t, t, v

    def teacher_forcing_batch(
        self,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        encoded: tuple[Tensor, int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One random segment per video (stage 1): its latents [b, T, c, h, w] and index [b].

        `encoded` = batch_latents(batch) when the caller already has the latents.
        """
        latents, frames = encoded if encoded is not None else self.batch_latents(batch)
        num = batch["num_segments"].to(latents.device)
        u = torch.rand(num.shape, generator=generator, device="cpu").to(latents.device)
        seg = (u * num).long().clamp(max=num - 1)
        focus_p = self.hparams.get("memory_focus", 0.0)
        if focus_p > 0 and "focus_segment" in batch:  # targets that need long-term memory
            focus = batch["focus_segment"].to(latents.device)
            coin = torch.rand(num.shape, generator=generator, device="cpu").to(latents.device)
            seg = torch.where((coin < focus_p) & (focus >= 0) & (focus < num), focus, seg)
        idx = seg[:, None] * frames + torch.arange(frames, device=latents.device)
        return latents[torch.arange(len(seg), device=latents.device)[:, None], idx], seg

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_batch(self.trainer.fit_loop.total_batch_idx, self.global_rank)  # exact resume

    def on_before_backward(self, loss: Tensor) -> None:
        trainer = self.trainer
        check_finite_loss(
            loss, trainer.global_step, trainer.fit_loop.epoch_loop.batch_idx,
            trainer.current_epoch, trainer.strategy,
        )  # fmt: skip

    def teacher_forcing_loss(
        self,
        batch: dict[str, Any],
        prompt_dropout: float = 0.0,
        generator: torch.Generator | None = None,
        history_noise: float = 0.0,
    ) -> Tensor:
        """Stage-1 loss of a batch: one segment per video, true history, teacher-forced psi.

        Training passes its `prompt_dropout` and `history_noise`; validation scores the paper's
        objective (no dropout, clean history), so val/loss compares runs that train either way.
        """
        encoded = self.batch_latents(batch)
        x, seg = self.teacher_forcing_batch(batch, generator, encoded)
        image = self.batch_image_latent(batch)
        text = self.batch_text(batch, prompt_dropout)
        memory_index = None
        if self.hparams.get("memory_oracle", False) and "focus_memory" in batch:
            focus = batch["focus_segment"].to(seg.device)
            source = batch["focus_memory"].to(seg.device)
            memory_index = torch.where((seg == focus) & (source >= 0), source, seg)
        latents, frames = encoded  # the target x is clean; its context may be noised
        seen = rf.noised_context(latents, history_noise, generator)
        context = MemoryPack.teacher_forced(
            self.dit, self.semantic_pack, seen, frames, seg, text, image, memory_index
        )
        loss, *_ = self.flow_loss(x, seg, context.history, image, text, context.memory, generator)
        if self.memory_recall is not None:
            n = max(int(seg.max()), 1)
            segments = rearrange(latents[:, : n * frames], "b (s t) c h w -> b s t c h w", t=frames)
            until = seg if memory_index is None else memory_index
            beyond = -(-self.dit.history_frames // frames)  # segments FramePack still holds
            recall = self.memory_recall.loss(context.memory, segments, until, beyond, generator)
            if self.training and self._trainer is not None:
                self.log("train/recall_loss", recall, batch_size=len(seg))
            loss = loss + self.hparams.memory_recall * recall
        return loss

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every video of the batch failed to decode (already warned + counted)
            return None
        noise = self.hparams.get("history_noise", 0.0)
        loss = self.teacher_forcing_loss(batch, self.hparams.prompt_dropout, history_noise=noise)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        self._log_skipped()
        return loss

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        # A fixed generator per batch makes val/loss comparable across epochs.
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        loss = self.teacher_forcing_loss(batch, generator=gen)
        b = len(batch["caption"])
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)

    def test_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _log_skipped(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "num_skipped"):
            self.log("data/skipped_videos", float(dm.num_skipped), batch_size=1)

    # ----------------------------------------------------------------- rollout
    def generate(
        self,
        image: Tensor,
        captions: list[str],
        num_segments: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        frames_per_segment: int | None = None,
        on_segment: Callable[[int], None] | None = None,
        prefix: Tensor | None = None,
        read_memory: bool = True,
        memory_until: int | None = None,
        cached: CachedConditioning | None = None,
    ) -> Tensor:
        """Autoregressive rollout: image [b, 3, H, W] in [-1, 1] + prompts -> uint8 [b, F, 3, H, W]
        of `num_segments` segments of `frames_per_segment` pixel frames (`VideoPipeline.generate`:
        `prefix` continues real videos, `read_memory=False` never reads psi, `memory_until`
        stops psi's updates after that many segments, `cached` holds the prompts' precomputed
        conditioning)."""
        if frames_per_segment is None:
            raise ValueError("generate needs frames_per_segment (pixel frames per segment)")
        return self.pipeline.generate(
            image, captions, num_segments, frames_per_segment, generator, progress, on_segment,
            prefix, read_memory, memory_until, cached,
        )  # fmt: skip

    def predict_step(self, batch: dict[str, Any] | None, batch_idx: int) -> dict[str, Any] | None:
        """Roll out each example; a batch with `prefix_segments` k (the datamodule's
        `predict_prefix_segments`) continues its real videos from their first k segments."""
        if batch is None:
            return None
        k, total = int(batch.get("prefix_segments", 0)), self.hparams.rollout_segments
        if k >= total:
            raise ValueError(
                f"predict continues {k} real segments but rollout_segments={total} leaves "
                f"nothing to generate: set rollout_segments > {k}"
            )
        if "video" in batch:
            frames = batch["video"].shape[2]
        else:  # a latent cache's batch: T latent frames per segment
            frames = batch["latents"].shape[2] * self.codec.temporal_factor
        video = self.generate(
            batch["image"], batch["caption"], total, progress=True, frames_per_segment=frames,
            prefix=batch["video"][:, :k].flatten(1, 2) if k else None,
            cached=CachedConditioning.from_batch(batch),
        )  # fmt: skip
        return {"video": video, "name": batch["name"], "caption": batch["caption"]}

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the folders (and file hashes) of the pretrained parts left out of the state."""
        if self.adapters_merged:
            raise RuntimeError(
                "the adapters were merged into the weights for inference (merge_adapters): this "
                "model no longer matches its configuration and cannot be saved to resume from"
            )
        if self.global_rank == 0:  # only rank 0 writes the checkpoint's metadata
            checkpoint[frozen_parts.RECORD_KEY] = frozen_parts.records(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse pretrained folders other than those the checkpoint was trained with, and
        remember its step: outputs of validate/test/predict are named by it."""
        frozen_parts.check_records(self, checkpoint, "the checkpoint")
        self.loaded_step = int(checkpoint.get("global_step", 0))

    # ----------------------------------------------------------------- adapters
    def merge_adapters(self) -> int:
        """Fold the LoRA adapters into the DiT's weights (inference); returns how many."""
        if self.adapters is None:
            raise ValueError("merge_adapters: this model has no adapters (adapters=None)")
        merged = merge_lora(self.dit)
        self.adapters_merged = True
        return merged

    def on_predict_start(self) -> None:
        if self.adapters is not None and not self.adapters_merged:
            rank_zero_info(f"predict: merged {self.merge_adapters()} LoRA adapters into the DiT")

    # ----------------------------------------------------------------- scaling
    def configure_model(self) -> None:
        """Compile, then shard with FSDP2 when the strategy gives a device mesh (ModelParallel)."""
        if getattr(self, "_scaled", False):  # Lightning may call this hook more than once
            return
        self._scaled = True
        compile_dit(self.dit, self.hparams.get("compile", "none"))
        if self.device_mesh is not None:
            apply_fsdp2(self, self.device_mesh)

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with warm-up, then constant or cosine (`training/optimizer.py`)."""
        return configure_adamw(self, self.memory_gates())
