"""Generation: encode -> MemoryPack -> sample -> decode, the autoregressive rollout (Sec. 3).

`VideoPipeline` holds a model's networks (from either stage: `VideoModule.pipeline`) and the
sampler settings, and knows nothing of training or of a Trainer. Segment n is sampled from noise
by the Euler sampler (Eq. 6), conditioned on text, the reference image and what MemoryPack gives
it (FramePack history + psi); it is decoded after the latent frames before it (causal codecs)
and then remembered. Classifier-free guidance batches both halves into one backbone call; the
unconditional half reads its own psi, built from the empty prompt as training builds it for a
dropped prompt.

Memory guidance (`memory_guidance` w, not in the paper; off by default) is classifier-free
guidance on psi: v + w (v - v without psi). The model without psi is the same network with its
read-in skipped, exactly what closed gates give, so it needs no extra training: w > 0 pushes a
segment further in the direction that what psi holds moves it (issue 19).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from lightning_modules import rectified_flow as rf
from lightning_modules.codecs.base import LatentCodec, to_uint8
from lightning_modules.conditioning import CachedConditioning
from lightning_modules.memory_pack import MemoryPack, SegmentContext
from lightning_modules.networks.backbone import Backbone
from lightning_modules.networks.semantic_pack import SemanticPack
from lightning_modules.networks.text_encoder import TextEncoder

__all__ = ["VideoPipeline"]


class VideoPipeline:
    """A model's networks and sampler: `generate` rolls out videos, `encode_*` feed training."""

    def __init__(
        self,
        dit: Backbone,
        codec: LatentCodec,
        text_encoder: TextEncoder,
        semantic_pack: SemanticPack | None = None,
        sample_steps: int = 16,
        sample_shift: float = 1.0,
        cfg_scale: float = 1.0,
        memory_guidance: float = 0.0,
    ) -> None:
        self.dit, self.codec, self.text_encoder = dit, codec, text_encoder
        self.semantic_pack = semantic_pack
        self.sample_steps, self.sample_shift, self.cfg_scale = sample_steps, sample_shift, cfg_scale
        self.memory_guidance = memory_guidance

    # ----------------------------------------------------------------- encoding
    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames of a segment of `pixel_frames` frames (whole latent frames only)."""
        if pixel_frames % self.codec.temporal_factor:
            raise ValueError(
                f"segment of {pixel_frames} frames is not divisible by the codec's temporal factor "
                f"{self.codec.temporal_factor}"
            )
        return pixel_frames // self.codec.temporal_factor

    def encode_video(self, video: Tensor, image: Tensor | None = None) -> tuple[Tensor, int]:
        """Pixel video [b, s, t, c, H, W] -> latents [b, s*T, c, h, w] and T latent frames/segment.

        `image` [b, 3, H, W]: the reference frame, the causal first frame of a causal VAE's clip.
        """
        frames = self.latent_frames(video.shape[2])
        with torch.no_grad():
            flat = rearrange(video, "b s t c h w -> b (s t) c h w")
            return self.codec.encode_video(flat, image), frames

    def encode_image(self, image: Tensor) -> Tensor:
        """The reference latent [b, 1, c, h, w] of image [b, 3, H, W]."""
        with torch.no_grad():
            return self.codec.encode(image[:, None])

    def encode_text(
        self,
        captions: list[str],
        dropout: float = 0.0,
        image: Tensor | None = None,
        cached: CachedConditioning | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Prompt features; encoders with `reads_image` (SigLIP) also get the reference image.
        `dropout`: each caption is replaced by "" with this probability (CFG training).
        `cached`: the batch's precomputed parts (conditioning cache): no encoder runs."""
        keep = None
        if dropout > 0:
            keep = torch.rand(len(captions)) >= dropout
            captions = [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]
        if cached is not None:
            return self.text_encoder.combine(cached.text_keeping(keep), cached.image)
        if self.text_encoder.reads_image:
            if image is None:
                raise ValueError(f"{type(self.text_encoder).__name__} needs the reference image")
            return self.text_encoder(captions, image)
        return self.text_encoder(captions)

    # ----------------------------------------------------------------- sampling
    def velocity_fn(
        self,
        segment_index: Tensor,
        context: SegmentContext,
        image: Tensor,
        text: tuple[Tensor, Tensor],
        null_text: tuple[Tensor, Tensor] | None = None,
    ) -> rf.VelocityFn:
        """v(x, t) of one segment, with classifier-free guidance batched into one call when
        `null_text` is given and cfg_scale != 1 (the unconditional half reads `null_memory`),
        and memory guidance when psi is read and memory_guidance != 0 (module docstring)."""
        scale, history = self.cfg_scale, context.history
        memory, null_memory = context.memory, context.null_memory
        if null_text is not None and scale != 1.0 and (memory is None) != (null_memory is None):
            raise ValueError("classifier-free guidance needs psi for both halves or for neither")

        def text_guided(
            x: Tensor, t: Tensor, memory: Tensor | None, null_memory: Tensor | None
        ) -> Tensor:
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

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            v = text_guided(x, t, memory, null_memory)
            if memory is None or self.memory_guidance == 0:
                return v
            return rf.guided(v, text_guided(x, t, None, None), 1.0 + self.memory_guidance)

        return velocity

    @torch.no_grad()
    def generate(
        self,
        image: Tensor,
        captions: list[str],
        num_segments: int,
        frames_per_segment: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        on_segment: Callable[[int], None] | None = None,
        prefix: Tensor | None = None,
        read_memory: bool = True,
        memory_until: int | None = None,
        cached: CachedConditioning | None = None,
    ) -> Tensor:
        """Rollout: image [b, 3, H, W] in [-1, 1] + prompts -> uint8 video [b, F, 3, H, W].

        Each segment is sampled from noise given what MemoryPack holds after the segments before
        it; under FRAMEPACK only the backbone's window of latent frames is kept and psi has a
        fixed size, so device memory is constant in length (FULL_HISTORY keeps everything).
        `on_segment(k)` is called after segment k. `prefix` [b, k * frames_per_segment, 3, H, W]
        (video continuation): the first k segments of real videos, remembered exactly as
        generated ones would be (true RoPE positions, SemanticPack's recurrence); the returned
        video starts with them. `read_memory=False`: psi is never read (the probe's gates-shut
        ablation). `memory_until` k: only segments 0..k-1 update psi (the probe's oracle psi,
        which keeps exactly what the landmark's segments left). `cached`: the prompts' and
        images' precomputed conditioning parts.
        """
        b = image.shape[0]
        frames = self.latent_frames(frames_per_segment)
        image_lat = self.encode_image(image)
        _, _, c, h, w = image_lat.shape
        text = self.encode_text(list(captions), image=image, cached=cached)
        null_text = None
        if self.cfg_scale != 1.0:
            null_text = (
                self.encode_text([""] * b, image=image) if cached is None
                else self.text_encoder.combine(cached.null(), cached.image)
            )  # fmt: skip
        pack = MemoryPack.start(
            self.dit, self.semantic_pack, text, image_lat, null_text,
            decode_context=self.codec.decode_context, read_memory=read_memory,
        )  # fmt: skip
        out, start = [], 0
        if prefix is not None:
            given = prefix.shape[1]
            if given % frames_per_segment or not 0 < given <= num_segments * frames_per_segment:
                raise ValueError(
                    f"prefix of {given} frames must be 1..{num_segments} whole segments "
                    f"of {frames_per_segment} frames"
                )
            start = given // frames_per_segment
            known = self.codec.encode_video(prefix.to(image_lat), image.to(image_lat))
            for j in range(start):  # the real segments take the place of generated ones
                update = memory_until is None or j < memory_until
                pack.remember(known[:, j * frames : (j + 1) * frames], j, update_psi=update)
            out.append(to_uint8(prefix).cpu())
        for k in tqdm(
            range(start, num_segments), desc="rollout", disable=not progress, leave=False
        ):
            seg_idx = torch.full((b,), k, device=image.device, dtype=torch.long)
            noise = torch.randn((b, frames, c, h, w), generator=generator, device=image.device)
            v = self.velocity_fn(seg_idx, pack.context(), image_lat, text, null_text)
            seg = rf.euler_sample(
                v, noise.to(image_lat), self.sample_steps, shift=self.sample_shift
            )
            out.append(to_uint8(self.codec.decode_continuation(pack.decoded, seg)).cpu())
            # The recurrence runs on what was generated.
            pack.remember(seg, k, update_psi=memory_until is None or k < memory_until)
            if on_segment is not None:
                on_segment(k)
        return torch.cat(out, dim=1)
