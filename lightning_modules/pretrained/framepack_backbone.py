"""The pretrained FramePack-F1 transformer as the MemoryPack denoiser (Sec. 4.1: "We adopt
Framepack-F1 as the backbone model"): a `Backbone` (networks/backbone.py), as `VideoDiT` is.

`FramePackBackbone` wraps diffusers' `HunyuanVideoFramepackTransformer3DModel` (HunyuanVideo's
dual-stream + single-stream MM-DiT, 13B) and runs its own submodules, so that:

- FramePack-F1's history packing is the model's own: the newest latent frame(s) and the reference
  image through `clean_x_embedder.proj` (1x), the next ones through `proj_2x`, older ones through
  `proj_4x`, token order [4x | 2x | image + 1x | noisy] as in diffusers' forward;
- RoPE follows the indices it is given per sample (`rope.frame_indices`): the image at 0, latent
  frame j of the video at 1 + j (`absolute`, the paper's RoPE consistency) or FramePack-F1's
  per-window layout (`relative`: history 1..K, target after it, which reproduces F1 exactly); the
  cos/sin tables of compressed groups are averaged over each group, as FramePack does;
- SemanticPack's psi [b, m, width] is read in by every block through a zero-initialised per-head
  gate (`GatedMemoryAttnProcessor`): the video tokens' joint attention output becomes
  out + g * softmax(q K_psi^T) V_psi, with K_psi, V_psi from the block's own text-stream
  projections of LayerNorm(psi). At g = 0 the output is the pretrained model's, bit for bit.
  Attention and the gated read are the project's one attention path (networks/attention.py).

Conventions: the model is trained with sigma = 1 - t as noise level (timestep 1000 sigma) and
predicts eps - x; the wrapper returns the velocity x - eps of `rectified_flow.py`. FramePack-F1 is
guidance-distilled: `distilled_guidance` (10 in FramePack) feeds its guidance embedder. Text comes
from `HunyuanTextEncoder` (LLaMA tokens, CLIP pooled and SigLIP image features packed in one
tensor, see `text_encoders.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils.checkpoint import checkpoint

from lightning_modules.networks.attention import (
    MemoryRead,
    attend,
    check_memory_read,
    read_memory,
)
from lightning_modules.networks.backbone import Backbone
from lightning_modules.networks.frame_pack import check_frame_pack
from lightning_modules.networks.rope import RopeLayout, frame_indices
from lightning_modules.pretrained.folders import (
    DIFFUSERS_MODEL,
    DType,
    check_folder,
    import_hf,
    torch_dtype,
)
from lightning_modules.pretrained.text_encoders import unpack_conditioning

MODEL_CLASS = "HunyuanVideoFramepackTransformer3DModel"


def has_values(x: Tensor) -> bool:
    """False for tensors that only carry shapes (meta, or the fake tensors of `benchmarks/plan.py`),
    whose values cannot be read."""
    return not (x.is_meta or isinstance(x, FakeTensor))


@dataclass
class RotaryMemory:
    """What the blocks pass to attention as `image_rotary_emb`: per-sample RoPE tables of the video
    tokens (cos, sin [b, n, head_dim]) and SemanticPack's psi [b, m, width] (or None)."""

    cos: Tensor
    sin: Tensor
    memory: Tensor | None = None


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """HunyuanVideo's interleaved RoPE (diffusers `apply_rotary_emb`, use_real) on x [b, n, h, d]
    with per-sample tables [b, n, d]."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack((-imag, real), dim=-1).flatten(3)
    return (x.float() * cos[:, :, None] + rotated.float() * sin[:, :, None]).to(x.dtype)


class GatedMemoryAttnProcessor:
    """HunyuanVideo's joint attention (diffusers `HunyuanVideoAttnProcessor2_0`) with per-sample
    RoPE and the zero-gated read of memory tokens; set on every dual- and single-stream block.
    Tokens are [b, n, heads, d] as in diffusers; attention runs on [b, heads, n, d].
    `memory_read`: `attention.read_memory`'s `read` (softmax or off_by_one)."""

    def __init__(self, memory_read: MemoryRead = "softmax") -> None:
        self.memory_read = memory_read

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb: RotaryMemory | None = None,
    ) -> tuple[Tensor, Tensor]:
        n_video = hidden_states.shape[1]
        dual = attn.add_q_proj is not None
        x = hidden_states if dual else torch.cat((hidden_states, encoder_hidden_states), 1)
        heads = lambda y: y.unflatten(2, (attn.heads, -1))  # noqa: E731  [b, n, h, d]
        q, k, v = heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x))
        q, k = attn.norm_q(q), attn.norm_k(k)
        rope = image_rotary_emb
        q_video = rotate(q[:, :n_video], rope.cos, rope.sin)
        k_video = rotate(k[:, :n_video], rope.cos, rope.sin)
        if dual:  # the text stream has its own projections
            e = encoder_hidden_states
            qt, kt, vt = (
                heads(attn.add_q_proj(e)),
                heads(attn.add_k_proj(e)),
                heads(attn.add_v_proj(e)),
            )
            qt, kt = attn.norm_added_q(qt), attn.norm_added_k(kt)
        else:
            qt, kt, vt = q[:, n_video:], k[:, n_video:], v[:, n_video:]
            v = v[:, :n_video]
        hnd = lambda y: y.transpose(1, 2)  # noqa: E731  [b, n, h, d] <-> [b, h, n, d]
        out = attend(
            hnd(torch.cat((q_video, qt), 1)), hnd(torch.cat((k_video, kt), 1)),
            hnd(torch.cat((v, vt), 1)), attention_mask,
        ).to(q.dtype)  # fmt: skip
        video, text = out[:, :, :n_video], out[:, :, n_video:]
        if rope.memory is not None:
            km, vm = self.memory_keys(attn, rope.memory.to(q_video.dtype))
            video = read_memory(
                video, hnd(q_video), hnd(km), hnd(vm), attn.memory_gate, self.memory_read
            )
        video, text = hnd(video).flatten(2, 3), hnd(text).flatten(2, 3)
        if dual:
            video = attn.to_out[1](attn.to_out[0](video))
            text = attn.to_add_out(text)
        return video, text

    @staticmethod
    def memory_keys(attn: nn.Module, memory: Tensor) -> tuple[Tensor, Tensor]:
        """K_psi, V_psi [b, m, heads, d]: LayerNorm(psi) through the block's text-stream key and
        value projections (the single-stream blocks share one set)."""
        if getattr(attn, "memory_gate", None) is None:
            raise ValueError("memory tokens were given but this backbone has no memory gates")
        psi = F.layer_norm(memory, memory.shape[-1:], eps=1e-6)
        heads = lambda y: y.unflatten(2, (attn.heads, -1))  # noqa: E731
        if attn.add_k_proj is not None:
            return attn.norm_added_k(heads(attn.add_k_proj(psi))), heads(attn.add_v_proj(psi))
        return attn.norm_k(heads(attn.to_k(psi))), heads(attn.to_v(psi))


class FramePackBackbone(Backbone):
    """FramePack-F1 (HunyuanVideo MM-DiT) behind the `Backbone` contract.

    Args:
        pretrained_dir: folder holding `<subfolder>/config.json` and the diffusers weights (the
            FramePack_F1_I2V_HY_20250503 release has them at its root: subfolder ""); None
            builds the architecture below with random weights (tiny tests, throughput checks,
            stage 2, whose weights come from `init_checkpoint`).
        in_channels ... image_proj_dim: the architecture (defaults: FramePack-F1, 13B). With a
            `pretrained_dir` they must equal the folder's config (checked, one error).
        image_tokens: SigLIP tokens in the conditioning (729 = 27^2; 0 = no image projection).
        frame_pack: history latent frames at (1x, 2x, 4x); F1 uses (1, 2, 16).
        rope_layout: `absolute` (RoPE consistency) or `relative` (FramePack-F1's windows).
        distilled_guidance: the guidance-embedder input (FramePack uses 10).
        grad_checkpointing: recompute each block in backward (activation checkpointing).
        dtype: weights' dtype (float32 master weights under bf16-mixed training).
        memory_read: how video tokens read psi (`attention.read_memory`): `softmax` or
            `off_by_one` (a null key, so a token may read nothing).
    """

    def __init__(
        self,
        pretrained_dir: str | None = None,
        subfolder: str = "",
        in_channels: int = 16,
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        num_layers: int = 20,
        num_single_layers: int = 40,
        num_refiner_layers: int = 2,
        mlp_ratio: float = 4.0,
        text_embed_dim: int = 4096,
        pooled_projection_dim: int = 768,
        image_proj_dim: int = 1152,
        rope_axes_dim: tuple[int, int, int] = (16, 56, 56),
        rope_theta: float = 256.0,
        image_tokens: int = 729,
        frame_pack: tuple[int, int, int] = (1, 2, 16),
        rope_layout: RopeLayout = "absolute",
        distilled_guidance: float = 10.0,
        grad_checkpointing: bool = False,
        dtype: DType = "float32",
        memory_read: MemoryRead = "softmax",
    ) -> None:
        super().__init__()
        n1, n2, n4 = check_frame_pack(frame_pack)
        check_memory_read(memory_read)
        if rope_layout not in ("absolute", "relative"):
            raise ValueError(f"unknown rope layout {rope_layout!r}; expected absolute or relative")
        arch = {
            "in_channels": in_channels, "out_channels": in_channels,
            "num_attention_heads": num_attention_heads, "attention_head_dim": attention_head_dim,
            "num_layers": num_layers, "num_single_layers": num_single_layers,
            "num_refiner_layers": num_refiner_layers, "mlp_ratio": mlp_ratio, "patch_size": 2,
            "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True,
            "text_embed_dim": text_embed_dim, "pooled_projection_dim": pooled_projection_dim,
            "rope_theta": rope_theta, "rope_axes_dim": tuple(rope_axes_dim),
            "image_condition_type": None, "has_image_proj": image_tokens > 0,
            "image_proj_dim": image_proj_dim, "has_clean_x_embedder": True,
        }  # fmt: skip
        self.patch = (arch["patch_size_t"], arch["patch_size"], arch["patch_size"])
        diffusers = import_hf("diffusers")
        cls = getattr(diffusers, MODEL_CLASS)
        self._pretrained_folder: str | None = None
        if pretrained_dir is None:
            self.model = cls(**arch)
            if torch_dtype(dtype) != torch.float32:
                self.model.to(torch_dtype(dtype))
            self.pretrained_keys: frozenset[str] = frozenset()
        else:
            folder = check_folder(
                f"{pretrained_dir}/{subfolder}" if subfolder else pretrained_dir,
                f"{type(self).__name__} ({MODEL_CLASS})",
                DIFFUSERS_MODEL,
            )
            self.model = cls.from_pretrained(
                str(folder), torch_dtype=torch_dtype(dtype), local_files_only=True
            )
            self._check_config(folder, arch)
            self._pretrained_folder = str(folder)
            # The state-dict keys the folder provided (before memory gates or adapters are added).
            self.pretrained_keys = frozenset(f"model.{k}" for k in self.model.state_dict())
        self.counts = (n1, n2, n4)
        self.image_tokens = image_tokens
        self.rope_layout = rope_layout
        self.distilled_guidance = distilled_guidance
        self.grad_checkpointing = grad_checkpointing
        self.latent_channels = in_channels
        self.width = num_attention_heads * attention_head_dim
        self.text_dim = text_embed_dim
        processor = GatedMemoryAttnProcessor(memory_read)
        for block in self.blocks:
            block.attn.set_processor(processor)

    def _check_config(self, folder: Any, arch: dict[str, Any]) -> None:
        config = self.model.config
        wrong = [
            f"{k}: config {v!r} vs folder {config.get(k)!r}"
            for k, v in arch.items()
            if (list(config.get(k)) if isinstance(v, tuple) else config.get(k))
            != (list(v) if isinstance(v, tuple) else v)
        ]
        if wrong:
            raise ValueError(
                f"FramePackBackbone: the architecture in the config differs from {str(folder)!r}'s "
                "config.json (set these to the folder's values): " + "; ".join(wrong)
            )

    def pretrained_sources(self) -> list[str]:
        """The folder the weights came from (`training/frozen_parts.py`); none without one."""
        return [] if self._pretrained_folder is None else [self._pretrained_folder]

    # ------------------------------------------------------------------ the Backbone contract
    @property
    def blocks(self) -> list[nn.Module]:
        """The dual- then single-stream blocks: the FSDP2, compile and checkpointing unit."""
        return [*self.model.transformer_blocks, *self.model.single_transformer_blocks]

    @property
    def history_frames(self) -> int:
        return sum(self.counts)

    def check_text_encoder(self, encoder: nn.Module) -> None:
        """The conditioning must be packed as this model reads it (`text_encoders.py`)."""
        want = {"dim": self.text_dim, "pooled_dim": self.model.config.pooled_projection_dim,
                "image_tokens": self.image_tokens}  # fmt: skip
        if self.image_tokens:
            want["image_dim"] = self.model.config.image_proj_dim
        got = {k: getattr(encoder, k, None) for k in want}
        if got != want:
            raise ValueError(
                f"text encoder {type(encoder).__name__} gives {got} but FramePackBackbone needs "
                f"{want} (use HunyuanTextEncoder, with image_encoder_dir iff image_tokens > 0)"
            )

    def enable_memory(self) -> None:
        """Zero-initialised per-head memory-read gates, one per block, created once."""
        for block in self.blocks:
            attn = block.attn
            if getattr(attn, "memory_gate", None) is None:
                param = next(attn.parameters())
                attn.memory_gate = nn.Parameter(
                    torch.zeros(attn.heads, device=param.device, dtype=param.dtype)
                )

    # ------------------------------------------------------------------ RoPE
    def rope_tables(self, t_index: Tensor, h: int, w: int, pool: int = 1) -> tuple[Tensor, Tensor]:
        """cos, sin [b, n, head_dim] of frames at t_index [b, f] on the h x w token grid, averaged
        over pool x pool x pool groups (FramePack's compressed history: tables are computed at full
        resolution, replicate-padded to whole groups and average-pooled)."""
        dims, theta = self.model.config.rope_axes_dim, self.model.config.rope_theta
        b, f = t_index.shape
        grid = torch.meshgrid(
            torch.arange(f, device=t_index.device), torch.arange(h, device=t_index.device),
            torch.arange(w, device=t_index.device), indexing="ij",
        )  # fmt: skip
        pos = (t_index.float()[:, grid[0]], grid[1].float().expand(b, -1, -1, -1),
               grid[2].float().expand(b, -1, -1, -1))  # fmt: skip
        cos, sin = [], []
        for p, dim in zip(pos, dims, strict=True):
            freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, device=p.device).float() / dim))
            angles = (p[..., None] * freqs).repeat_interleave(2, dim=-1)  # [b, f, h, w, dim]
            cos.append(angles.cos())
            sin.append(angles.sin())
        tables = [torch.cat(c, dim=-1) for c in (cos, sin)]
        if pool > 1:
            tables = [self._pool(rearrange(t, "b f h w d -> b d f h w"), pool) for t in tables]
            return tuple(rearrange(t, "b d f h w -> b (f h w) d") for t in tables)
        return tuple(rearrange(t, "b f h w d -> b (f h w) d") for t in tables)

    @staticmethod
    def _pool(x: Tensor, k: int) -> Tensor:
        pad = (0, -x.shape[-1] % k, 0, -x.shape[-2] % k, 0, -x.shape[-3] % k)
        return F.avg_pool3d(F.pad(x, pad, mode="replicate"), k, stride=k)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        noisy: Tensor,
        t: Tensor,
        segment_index: Tensor,
        history: Tensor,
        image: Tensor,
        text: Tensor,
        text_mask: Tensor,
        memory: Tensor | None = None,
    ) -> Tensor:
        """Velocity [b, T, c, h, w] for noisy [b, T, c, h, w] at t [b] (see `Backbone.forward`).

        history [b, K, c, h, w] the K = sum(frame_pack) latent frames before the segment, oldest
        first (zeros where the video has none); image [b, 1, c, h, w] the reference latent;
        text/text_mask the packed conditioning of `HunyuanTextEncoder`; memory [b, m, width] psi.
        """
        model = self.model
        b, frames, _, h, w = noisy.shape
        n1, n2, n4 = self.counts
        if history.shape[1] != n1 + n2 + n4:
            raise ValueError(f"expected {n1 + n2 + n4} history frames, got {history.shape[1]}")
        hist_t, noisy_t = frame_indices(segment_index, frames, history.shape[1], self.rope_layout)
        gh, gw = h // 2, w // 2
        cf = lambda x: rearrange(x, "b f c h w -> b c f h w").to(model.dtype)  # noqa: E731

        # Video tokens [4x | 2x | image + 1x | noisy] and their RoPE tables (diffusers' order).
        clean = torch.cat((image, history[:, n4 + n2 :]), dim=1)
        clean_t = torch.cat((torch.zeros_like(hist_t[:, :1]), hist_t[:, n4 + n2 :]), dim=1)
        tok_1x, tok_2x, tok_4x = model.clean_x_embedder(
            cf(clean), cf(history[:, n4 : n4 + n2]) if n2 else None,
            cf(history[:, :n4]) if n4 else None,
        )  # fmt: skip
        parts = [(tok_4x, hist_t[:, :n4], 4), (tok_2x, hist_t[:, n4 : n4 + n2], 2),
                 (tok_1x, clean_t, 1), (model.x_embedder(cf(noisy)), noisy_t, 1)]  # fmt: skip
        parts = [p for p in parts if p[0] is not None]
        tables = [self.rope_tables(idx, gh, gw, pool) for _, idx, pool in parts]
        video = torch.cat([tok for tok, _, _ in parts], dim=1)
        cos = torch.cat([c for c, _ in tables], dim=1)
        sin = torch.cat([s for _, s in tables], dim=1)

        # Conditioning: timestep (sigma = 1 - t), guidance, CLIP pooled; refined LLaMA tokens
        # after the projected SigLIP tokens (the padding is at the end of the text).
        pooled, image_feat, txt, txt_mask = unpack_conditioning(
            text, text_mask, model.config.pooled_projection_dim, self.image_tokens,
            model.config.image_proj_dim,
        )  # fmt: skip
        timestep = (1 - t.float()) * 1000
        guidance = torch.full_like(timestep, self.distilled_guidance * 1000)
        dtype = video.dtype
        temb, _ = model.time_text_embed(timestep, pooled.to(dtype), guidance)
        cond = model.context_embedder(txt.to(dtype), timestep, txt_mask)
        cond_mask = txt_mask.bool()
        if image_feat is not None:
            img = model.image_projection(image_feat.to(dtype))
            cond = torch.cat((img, cond), dim=1)
            cond_mask = torch.cat((cond_mask.new_ones(img.shape[:2]), cond_mask), dim=1)
        mask = None
        if has_values(cond_mask):  # the memory planner (meta/fake tensors) keeps every token
            keep = int(cond_mask.sum(1).max())  # drop padding every row has; mask the rest
            cond, cond_mask = cond[:, :keep], cond_mask[:, :keep]
            if not bool(cond_mask.all()):
                mask = torch.cat((cond_mask.new_ones(b, video.shape[1]), cond_mask), 1)
                mask = mask[:, None, None]

        rope = RotaryMemory(cos, sin, memory)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                video, cond = checkpoint(block, video, cond, temb, mask, rope, use_reentrant=False)
            else:
                video, cond = block(video, cond, temb, mask, rope)

        out = model.proj_out(model.norm_out(video[:, -frames * gh * gw :], temb))
        out = rearrange(
            out, "b (f h w) (c ph pw) -> b f c (h ph) (w pw)", f=frames, h=gh, w=gw, ph=2, pw=2
        )
        return -out.float()  # the model predicts eps - x; the project's velocity is x - eps

    def tokens_per_segment(self, frames: int, h: int, w: int, text_tokens: int) -> int:
        """Video + conditioning tokens per call (constant in video length, as for `VideoDiT`)."""
        gh, gw = h // 2, w // 2
        n1, n2, n4 = self.counts
        groups = (n4 // 4) * math.ceil(gh / 4) * math.ceil(gw / 4)
        groups += (n2 // 2) * math.ceil(gh / 2) * math.ceil(gw / 2)
        return text_tokens + (1 + n1 + frames) * gh * gw + groups
