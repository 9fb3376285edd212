"""Stage 1: teacher forcing over the whole network (Sec. 4.1), and the autoregressive rollout.

The LightningModule is glue: it owns the codec, the text encoder and the DiT, draws one training
segment per video with its ground-truth history (teacher forcing), and exposes `generate` for
rollouts. The Trainer owns the loop; media and evaluation live in `callbacks/` and `eval/`.
"""

import math
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.video_io import to_uint8
from lightning_modules import rectified_flow as rf
from lightning_modules.codec import LatentCodec, SpaceToDepthCodec
from lightning_modules.frame_pack import gather_history
from lightning_modules.framepack_backbone import Backbone
from lightning_modules.nonfinite import check_finite_loss
from lightning_modules.parallel import CompileMode, apply_fsdp2, compile_dit
from lightning_modules.semantic_pack import SemanticPack
from lightning_modules.step_seed import seed_batch
from lightning_modules.text_encoder import HashTextEncoder, TextEncoder


class VideoModule(L.LightningModule):
    """Autoregressive image-to-video model trained with rectified flow and teacher forcing.

    Args:
        dit: the denoiser (`VideoDiT`, or the pretrained `FramePackBackbone`); its
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
        rollout_segments: segments per `predict` video (a continued video's prefix included).
        compile: `torch.compile` the DiT blocks or the whole DiT in `configure_model`.
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
        rollout_segments: int = 4,
        compile: CompileMode = "none",
    ) -> None:
        super().__init__()
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

    # ----------------------------------------------------------------- conditioning inputs
    def encode_video(self, video: Tensor, image: Tensor | None = None) -> tuple[Tensor, int]:
        """Pixel video [b, s, t, c, H, W] -> latents [b, s*T, c, h, w] and T latent frames/segment.

        `image` [b, 3, H, W]: the reference frame, the causal first frame of a causal VAE's clip.
        """
        b, s, t = video.shape[:3]
        if t % self.codec.temporal_factor:
            raise ValueError(
                f"segment of {t} frames is not divisible by the codec's temporal factor "
                f"{self.codec.temporal_factor}"
            )
        with torch.no_grad():
            flat = rearrange(video, "b s t c h w -> b (s t) c h w")
            latents = self.codec.encode_video(flat, image)
        return latents, t // self.codec.temporal_factor

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

    def encode_image(self, image: Tensor) -> Tensor:
        with torch.no_grad():
            return self.codec.encode(image[:, None])

    def encode_text(
        self, captions: list[str], dropout: float = 0.0, image: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Prompt features; encoders with `reads_image` (SigLIP) also get the reference image."""
        if dropout > 0:
            keep = torch.rand(len(captions)) >= dropout
            captions = [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]
        if self.text_encoder.reads_image:
            if image is None:
                raise ValueError(f"{type(self.text_encoder).__name__} needs the reference image")
            return self.text_encoder(captions, image)
        return self.text_encoder(captions)

    # ----------------------------------------------------------------- long-term memory hooks
    def init_memory(self, text: tuple[Tensor, Tensor], image: Tensor) -> Tensor | None:
        """psi_0 from prompt features and the reference latent [b, 1, c, h, w] (Sec. 3.1).

        None means no memory tokens (the FramePack-F1 baseline, `semantic_pack: null`).
        """
        if self.semantic_pack is None:
            return None
        return self.semantic_pack.init(text[0], image)

    def update_memory(
        self, psi: Tensor | None, segment: Tensor, step: int | None = None
    ) -> Tensor | None:
        """Eq. 1: psi_{n+1} = Squeeze(psi_n, Memorize(x^n)) for a segment [b, T, c, h, w].

        `step` is n (only structure C needs it: its first update differs).
        """
        if self.semantic_pack is None or psi is None:
            return psi
        return self.semantic_pack(psi, segment, step=step)

    def teacher_forced_memory(
        self,
        latents: Tensor,
        frames: int,
        segment_index: Tensor,
        text: tuple[Tensor, Tensor],
        image: Tensor,
    ) -> Tensor | None:
        """psi for each video's training segment i_b, from its ground-truth segments 0..i_b-1."""
        psi0 = self.init_memory(text, image)
        if psi0 is None:
            return None
        n = max(int(segment_index.max()), 1)
        segments = rearrange(latents[:, : n * frames], "b (s t) c h w -> b s t c h w", t=frames)
        return self.semantic_pack.teacher_forced(psi0, segments, segment_index)

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
        loss = F.mse_loss(v.float(), rf.target_velocity(x, eps).float())
        return loss, x_t, t, v

    def teacher_forcing_batch(
        self,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        encoded: tuple[Tensor, int] | None = None,
    ) -> tuple[Tensor, ...]:
        """One random segment per video with its true history (stage 1).

        `encoded` = batch_latents(batch) when the caller already has the latents.
        """
        latents, frames = encoded if encoded is not None else self.batch_latents(batch)
        num = batch["num_segments"].to(latents.device)
        u = torch.rand(num.shape, generator=generator, device="cpu").to(latents.device)
        seg = (u * num).long().clamp(max=num - 1)
        idx = seg[:, None] * frames + torch.arange(frames, device=latents.device)
        x = latents[torch.arange(len(seg), device=latents.device)[:, None], idx]
        keep = self.dit.history_frames  # None: full history, as long as the longest needs
        keep = int(seg.max()) * frames if keep is None else keep
        history = gather_history(latents, seg * frames, keep)
        return x, seg, history, self.batch_image_latent(batch)

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
    ) -> Tensor:
        """Stage-1 loss of a batch: one segment per video, true history, teacher-forced psi."""
        encoded = self.batch_latents(batch)
        x, seg, history, image = self.teacher_forcing_batch(batch, generator, encoded)
        text = self.encode_text(batch["caption"], prompt_dropout, batch["image"])
        psi = self.teacher_forced_memory(*encoded, seg, text, image)
        loss, *_ = self.flow_loss(x, seg, history, image, text, psi, generator)
        return loss

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every video of the batch failed to decode (already warned + counted)
            return None
        loss = self.teacher_forcing_loss(batch, self.hparams.prompt_dropout)
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
    def velocity_fn(
        self,
        segment_index: Tensor,
        history: Tensor,
        image: Tensor,
        text: tuple[Tensor, Tensor],
        null_text: tuple[Tensor, Tensor] | None,
        memory: Tensor | None = None,
        null_memory: Tensor | None = None,
    ) -> rf.VelocityFn:
        """v(x, t) for one segment, with classifier-free guidance batched into one call.

        The unconditional half reads `null_text` and `null_memory` (psi built from the empty
        prompt, as training builds it for a dropped prompt); both are needed with a memory.
        """
        scale = self.hparams.cfg_scale
        if null_text is not None and scale != 1.0 and (memory is None) != (null_memory is None):
            raise ValueError("classifier-free guidance needs psi for both halves or for neither")

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            if null_text is None or scale == 1.0:
                return self.dit(x, t, segment_index, history, image, *text, memory=memory)
            two = lambda a: None if a is None else torch.cat((a, a))  # noqa: E731
            tokens = torch.cat((text[0], null_text[0]))
            mask = torch.cat((text[1], null_text[1]))
            psi = None if memory is None else torch.cat((memory, null_memory))
            v = self.dit(
                two(x), two(t), two(segment_index), two(history), two(image), tokens, mask,
                memory=psi,
            )  # fmt: skip
            cond, uncond = v.chunk(2)
            return rf.guided(cond, uncond, scale)

        return velocity

    @torch.no_grad()
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
    ) -> Tensor:
        """Autoregressive rollout: image [b, 3, H, W] in [-1, 1] + prompts -> uint8 [b, F, 3, H, W].

        Each segment is sampled from noise conditioned on the history generated so far; only
        the last K latent frames are kept for FramePack and psi has a fixed size, so device
        memory is constant in length (`full_history` keeps everything: its quadratic baseline).
        `on_segment(k)` is called after segment k (the scaling benchmark times segments with it).

        Video continuation: `prefix` [b, k * frames_per_segment, 3, H, W] in [-1, 1] holds the
        first k segments of a real video. They are encoded, enter the FramePack history at their
        true RoPE positions (segments 0..k-1) and run through SemanticPack's recurrence exactly as
        generated segments would; segments k..num_segments-1 are generated. The returned video
        starts with the prefix itself, so it has `num_segments` segments in all.
        """
        b = image.shape[0]
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        pixel_frames = frames_per_segment or getattr(dm, "segment_frames", None)
        if pixel_frames is None:
            raise ValueError("generate needs frames_per_segment when no datamodule is attached")
        if pixel_frames % self.codec.temporal_factor:
            raise ValueError(
                f"segment of {pixel_frames} frames is not divisible by the codec's temporal factor "
                f"{self.codec.temporal_factor}"
            )
        frames = pixel_frames // self.codec.temporal_factor
        image_lat = self.encode_image(image)
        _, _, c, h, w = image_lat.shape
        keep = self.dit.history_frames  # None: full_history keeps the whole generated video
        history = image_lat.new_zeros(b, keep or 0, c, h, w)
        text = self.encode_text(list(captions), image=image)
        null_text = (
            self.encode_text([""] * b, image=image) if self.hparams.cfg_scale != 1.0 else None
        )
        psi = self.init_memory(text, image_lat)
        # CFG's unconditional half has its own memory: psi_0 from the empty prompt, updated with
        # the same segments (training builds psi_0 from "" for a dropped prompt too).
        null_psi = None if null_text is None else self.init_memory(null_text, image_lat)
        decoded = image_lat  # latent frames before the next segment, for causal VAE decoding

        def remember(seg: Tensor, k: int) -> None:
            """Segment k joins the FramePack history and both memories' recurrence (Eq. 1)."""
            nonlocal history, psi, null_psi, decoded
            history = torch.cat((history, seg), dim=1)
            history = history if keep is None else history[:, -keep:]
            psi, null_psi = self.update_memory(psi, seg, k), self.update_memory(null_psi, seg, k)
            decoded = torch.cat((decoded, seg), dim=1)[:, -self.codec.decode_context :]

        out, start = [], 0
        if prefix is not None:
            given = prefix.shape[1]
            if given % pixel_frames or not 0 < given <= num_segments * pixel_frames:
                raise ValueError(
                    f"prefix of {given} frames must be 1..{num_segments} whole segments "
                    f"of {pixel_frames} frames"
                )
            start = given // pixel_frames
            known = self.codec.encode_video(prefix.to(image_lat), image.to(image_lat))
            for j in range(start):  # the real segments take the place of generated ones
                remember(known[:, j * frames : (j + 1) * frames], j)
            out.append(to_uint8(prefix).cpu())
        for k in tqdm(
            range(start, num_segments), desc="rollout", disable=not progress, leave=False
        ):
            seg_idx = torch.full((b,), k, device=image.device, dtype=torch.long)
            noise = torch.randn((b, frames, c, h, w), generator=generator, device=image.device)
            v = self.velocity_fn(seg_idx, history, image_lat, text, null_text, psi, null_psi)
            seg = rf.euler_sample(
                v, noise.to(image_lat), self.hparams.sample_steps, shift=self.hparams.sample_shift
            )
            out.append(to_uint8(self.codec.decode_continuation(decoded, seg)).cpu())
            remember(seg, k)  # the recurrence runs on what was generated
            if on_segment is not None:
                on_segment(k)
        return torch.cat(out, dim=1)

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
        video = self.generate(
            batch["image"], batch["caption"], total, progress=True,
            frames_per_segment=batch["video"].shape[2] if k else None,
            prefix=batch["video"][:, :k].flatten(1, 2) if k else None,
        )  # fmt: skip
        return {"video": video, "name": batch["name"], "caption": batch["caption"]}

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
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay)
        warmup = max(1, hp.warmup_steps)
        schedule = hp.get("lr_schedule", "constant")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
        total = self.trainer.estimated_stepping_batches if schedule == "cosine" else None
        if total is not None and not math.isfinite(total):
            raise ValueError("lr_schedule='cosine' needs a finite run: set max_steps or max_epochs")

        def factor(step: int) -> float:
            ramp = min(1.0, (step + 1) / warmup)
            if total is None:
                return ramp
            return ramp * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def check_semantic_pack(pack: SemanticPack, dit: Backbone, text_dim: int) -> None:
    """psi joins the DiT's token sequence, so widths and input channels must agree."""
    for name, got, want in (
        ("width", pack.width, dit.width),
        ("latent_channels", pack.latent_channels, dit.latent_channels),
        ("text_dim", pack.text_dim, text_dim),
    ):
        if got != want:
            raise ValueError(f"semantic_pack.{name}={got} must equal the model's {want}")
