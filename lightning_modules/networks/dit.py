"""The autoregressive image-to-video DiT (Sec. 3, Fig. 1).

To generate segment n the network attends jointly over one token sequence

    [ text | psi_n (memory) | reference image | FramePack context | noisy segment ]

with adaLN-Zero timestep conditioning (Peebles & Xie, 2023) and 3D RoPE on the visual tokens.
The output head (final norm + linear) reads only the noisy tokens and predicts a velocity in the
convention of `rectified_flow.py`. Text and memory tokens come first and are not rotated.

Memory read-in is gated (see `Attention`): psi_n is carried as a second token stream through the
same blocks, and the other tokens read it through a separate softmax scaled by a learnable
per-head gate that starts at zero, so enabling SemanticPack leaves the output of a trained
FramePack-F1 model unchanged at step 0. `context="full_history"` replaces FramePack's packed
context by every previous latent frame at 1x: the quadratic baseline the paper argues against.
`VideoDiT` implements the `Backbone` contract (networks/backbone.py), as the pretrained
FramePack-F1 adapter does.
"""

import math
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_modules.networks.attention import (
    MemoryRead,
    attend,
    check_memory_read,
    read_memory,
)
from lightning_modules.networks.backbone import Backbone, ContextMode
from lightning_modules.networks.frame_pack import FramePackContext
from lightning_modules.networks.gelu import GELUTanh
from lightning_modules.networks.patch_embed import patch_embed
from lightning_modules.networks.rope import (
    Rope3D,
    RopeLayout,
    apply_rope,
    frame_indices,
    grid_positions,
    identity_rotation,
)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (1 + scale) + shift per sample, in one kernel (shift, scale [b, d]; x [b, n, d])."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def gated(x: Tensor, gate: Tensor, update: Tensor) -> Tensor:
    """The adaLN-Zero residual x + gate * update (gate [b, d]), in one kernel."""
    return torch.addcmul(x, gate[:, None], update)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t in [0, 1] (scaled to 0..1000 as in DiT) followed by an MLP."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = 1000 * t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Joint self-attention with (optional) QK-RMSNorm and RoPE (networks/attention.py).

    QK-RMSNorm (as in HunyuanVideo/FramePack) bounds every logit by sqrt(head_dim) times the
    norms' weights, which start at 1: a small model trained briefly cannot sharpen attention
    enough to copy a co-located context token (with head_dim 32 the weights had moved < 7% after
    600 demo steps). `qk_norm=False` leaves the logits free, as in DiT.

    With memory tokens psi (unrotated), the joint attention is split (LLaMA-Adapter's zero-init
    attention, Zhang et al., 2023): the other tokens attend among themselves exactly as in
    FramePack-F1 and read psi in their own softmax over the m memory keys, added with a
    per-head gate g initialised to 0:  out = softmax(q K^T) V + g * softmax(q K_psi^T) V_psi.
    At g = 0 this is bit-identical to the F1 output, yet dL/dg = <dL/dout, read> is non-zero, so
    the gate opens during training. The extra cost is one n x m attention (m << n). Memory tokens
    themselves attend to the whole joint sequence (their own stream, as extra tokens would).
    psi's m tokens ride at the end of the same tensor as extra rows of every per-token op (one
    linear, norm, MLP over n + m rows instead of a second, tiny stream: issue 24); the tokens'
    rows come out as without psi (per-row GEMMs: tests/test_semantic_pack.py checks bit-equality
    at closed gates; tests/test_fast_paths.py checks open gates against the two-stream form).
    """

    def __init__(
        self, width: int, heads: int, qk_norm: bool = True, memory_read: MemoryRead = "softmax"
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.memory_read = memory_read
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(width // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(width // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)
        self.register_parameter("memory_gate", None)  # created by VideoDiT.enable_memory()

    def heads_of(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v

    def forward(
        self,
        x: Tensor,
        rotation: Tensor,
        memory: int = 0,
        memory_out: bool = True,
        keep: int | None = None,
    ) -> Tensor:
        """x [b, n + memory, d]: n tokens, then `memory` psi tokens (their rotation rows are the
        identity). Returns [b, n + memory, d], or [b, n, d] when `memory_out` is False (the last
        block: nothing reads psi after it, but the tokens still read psi). `keep` (the last
        block) queries only the last `keep` of the n tokens, the rows the head reads; keys and
        values still come from all of them. Returns [b, keep, d] then."""
        if keep is not None and memory and memory_out:
            raise ValueError(
                "keep drops rows nothing reads: only for the last block (memory_out=False)"
            )
        q, k, v = self.heads_of(x)
        q, k = apply_rope(q, rotation), apply_rope(k, rotation)
        n = x.shape[1] - memory
        q_tok = q[:, :, 0 if keep is None else n - keep : n]
        out = attend(q_tok, k[:, :, :n], v[:, :, :n])
        merge = "b h n d -> b n (h d)"
        if not memory:
            return self.proj(rearrange(out, merge))
        if self.memory_gate is None:
            raise ValueError("memory tokens were given but this DiT has no memory gates")
        k_psi, v_psi = k[:, :, n:], v[:, :, n:]
        out = rearrange(
            read_memory(out, q_tok, k_psi, v_psi, self.memory_gate, self.memory_read), merge
        )
        if memory_out:  # psi's own queries attend to the whole joint sequence
            out = torch.cat((out, rearrange(attend(q[:, :, n:], k, v), merge)), dim=1)
        return self.proj(out)


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by c, residuals gated (adaLN-Zero)."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        qk_norm: bool = True,
        memory_read: MemoryRead = "softmax",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, qk_norm, memory_read)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), GELUTanh(), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: every block starts as identity
        nn.init.zeros_(self.modulation[1].bias)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        rotation: Tensor,
        memory: int = 0,
        memory_out: bool = True,
        keep: int | None = None,
    ) -> Tensor:
        """x [b, n + memory, d]: the tokens, then SemanticPack's `memory` psi tokens, which run
        through the same weights as their own stream (per-token ops see them as extra rows; in
        attention they are read only through the gated read-in, see `Attention`). Returns the
        updated sequence, without psi when `memory_out` is False, and only its last `keep` token
        rows when `keep` is given (the last block: the rows the head reads)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        attn = self.attn(h, rotation, memory, memory_out, keep)
        if memory and not memory_out:
            x = x[:, :-memory]
        if keep is not None:
            x = x[:, x.shape[1] - keep :]
        x = gated(x, gate1, attn)
        return gated(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class OutputHead(nn.Module):
    """Final adaLN norm + linear: the only part Direct Forcing trains (Sec. 4.1, A.2).

    `smooth` (latent channels, or 0 for none) adds a zero-initialised residual 3x3 convolution over
    each output frame's latent grid: each token's linear predicts its own 2 x 2 latent patch, and
    errors that differ from token to token show as seams on the token grid; the convolution lets
    a prediction see its neighbours across token borders. At init the head is the plain one.
    """

    def __init__(self, width: int, out_dim: int, smooth: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)
        self.smooth = nn.Conv2d(smooth, smooth, 3, padding=1) if smooth else None
        layers = (self.modulation[1], self.linear, *([self.smooth] if smooth else []))
        for layer in layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class VideoDiT(Backbone):
    """Autoregressive image-to-video DiT with FramePack-F1 context and a slot for memory tokens.

    Args:
        latent_channels: channels of the codec's latent (48 for the default 4x4 space-to-depth).
        text_dim: width of the text encoder's features.
        width, depth, heads, mlp_ratio: transformer size.
        frame_pack: history latent frames packed at (1x, 2x, 4x); FramePack-F1 uses (1, 2, 16).
        rope_layout: `absolute` (the paper's RoPE consistency) or `relative` (FramePack windows).
        rope_theta: RoPE base.
        context: `framepack` (fixed token budget) or `full_history` (every previous latent frame
            at 1x; cost grows with the video: the quadratic baseline of the scaling benchmark).
        qk_norm: RMS-normalise queries and keys per head (HunyuanVideo/FramePack do); off lets a
            small model trained briefly sharpen attention (see `Attention`).
        grad_checkpointing: recompute block activations in backward to save memory.
        head: `linear` (DiT's per-token output) or `smooth` (plus a residual 3x3 convolution
            across token borders, `OutputHead`).
        patch: latents per token side at 1x (FramePack: 2; its 2x and 4x kernels scale with it).
            1 gives 4x the tokens, each covering less than an object's motion in a segment.
        memory_read: how tokens read psi (`attention.read_memory`): `softmax` (every token reads
            a full mixture of psi's values) or `off_by_one` (a null key: a token may read nothing).
    """

    def __init__(
        self,
        latent_channels: int = 48,
        text_dim: int = 128,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        frame_pack: tuple[int, int, int] = (1, 2, 16),
        rope_layout: RopeLayout = "absolute",
        rope_theta: float = 10000.0,
        context: Literal["framepack", "full_history"] = "framepack",
        qk_norm: bool = True,
        grad_checkpointing: bool = False,
        head: Literal["linear", "smooth"] = "linear",
        patch: Literal[1, 2] = 2,
        memory_read: MemoryRead = "softmax",
    ) -> None:
        super().__init__()
        check_memory_read(memory_read)
        if head not in ("linear", "smooth"):
            raise ValueError(f"unknown head {head!r}; expected 'linear' or 'smooth'")
        if patch not in (1, 2):
            raise ValueError(f"unknown patch {patch!r}; expected 1 or 2 latents per token side")
        if context not in ("framepack", "full_history"):
            raise ValueError(f"unknown context {context!r}; expected 'framepack' or 'full_history'")
        self.latent_channels = latent_channels
        self.width = width
        self.context_mode = ContextMode(context)
        self.rope_layout = rope_layout
        self.grad_checkpointing = grad_checkpointing
        self.patch = (1, patch, patch)
        self.x_embed = nn.Conv3d(latent_channels, width, self.patch, stride=self.patch)
        self.context = FramePackContext(latent_channels, width, frame_pack, patch)
        self.text_proj = nn.Linear(text_dim, width)
        self.t_embed = TimestepEmbedder(width)
        self.text_pool = nn.Sequential(nn.SiLU(), nn.Linear(width, width))
        self.rope = Rope3D(width // heads, rope_theta)
        self.blocks = nn.ModuleList(
            DiTBlock(width, heads, mlp_ratio, qk_norm, memory_read) for _ in range(depth)
        )
        smooth = latent_channels if head == "smooth" else 0
        self.head = OutputHead(width, latent_channels * math.prod(self.patch), smooth)

    @property
    def text_dim(self) -> int:
        """Width of the text features this DiT reads (the text encoder's `dim`)."""
        return self.text_proj.in_features

    def check_text_encoder(self, encoder: nn.Module) -> None:
        """Raise if `encoder`'s features are not what this DiT reads (its `dim`)."""
        if encoder.dim != self.text_dim:
            raise ValueError(f"text encoder width {encoder.dim} != dit.text_dim {self.text_dim}")

    @property
    def history_frames(self) -> int:
        """Latent frames of the FramePack window (`full_history` reads every frame instead)."""
        return self.context.history_frames

    def enable_memory(self) -> None:
        """Add the zero-initialised per-head memory-read gates (one per block), once."""
        for block in self.blocks:
            if block.attn.memory_gate is None:
                block.attn.memory_gate = nn.Parameter(torch.zeros(block.attn.heads))

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
        """Velocity for the noisy segment.

        noisy [b, T, c, h, w] at time t [b]; segment_index [b] (which segment of the video);
        history [b, K, c, h, w] the K latent frames before the segment, oldest first, zeros where
        the video has none (any K >= 0 in `full_history` mode); image [b, 1, c, h, w] the reference latent; text [b, n, text_dim]
        with text_mask [b, n] (used for pooling); memory [b, n_psi, width] SemanticPack's psi_n.
        """
        b, frames, _, h, w = noisy.shape
        hist_t, noisy_t = frame_indices(segment_index, frames, history.shape[1], self.rope_layout)
        zero_t = torch.zeros(b, 1, device=noisy.device)

        # Visual tokens and their RoPE tables at (t, h, w): image | context | noisy.
        img_tok, img_rot = self.context.embed(image, zero_t, 1, self.rope)
        if self.context_mode == ContextMode.FRAMEPACK:
            ctx_tok, ctx_rot = self.context(history, hist_t, self.rope)
        elif history.shape[1]:  # full history: every previous latent frame, uncompressed
            ctx_tok, ctx_rot = self.context.embed(history, hist_t, 1, self.rope)
        else:
            ctx_tok, ctx_rot = img_tok[:, :0], img_rot[:, :0]
        x_tok = rearrange(
            patch_embed(self.x_embed, rearrange(noisy, "b f c h w -> b c f h w")),
            "b f h w d -> b (f h w) d",
        )
        x_pos = rearrange(
            grid_positions(noisy_t, h // self.patch[1], w // self.patch[2]),
            "b three f h w -> b (f h w) three",
        )
        x_rot = self.rope(x_pos)

        # Unrotated leading text tokens; memory psi_n, unrotated too, rides at the end of the
        # sequence as its own gated stream (`DiTBlock`); the last block drops it.
        txt_tok = self.text_proj(text)
        parts = [txt_tok, img_tok, ctx_tok, x_tok]
        n_psi = 0 if memory is None else memory.shape[1]
        if n_psi:
            parts.append(memory.to(txt_tok.dtype))
        tokens = torch.cat(parts, dim=1)
        txt_rot = identity_rotation(b, txt_tok.shape[1], x_rot.shape[2], x_rot)
        psi_rot = identity_rotation(b, n_psi, x_rot.shape[2], x_rot)
        rotation = torch.cat((txt_rot, img_rot, ctx_rot, x_rot, psi_rot), dim=1)

        # Conditioning vector: timestep + pooled prompt (MM-DiT style), drives every adaLN.
        mask = text_mask.to(txt_tok.dtype)[..., None]
        pooled = (txt_tok * mask).sum(1) / mask.sum(1).clamp(min=1)
        c = self.t_embed(t) + self.text_pool(pooled)

        # The head reads only the noisy tokens: the last block updates only them (and not psi);
        # its keys and values still come from every token.
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            args = (tokens, c, rotation, n_psi, not last, x_tok.shape[1] if last else None)
            if self.grad_checkpointing and self.training:
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)

        out = self.head(tokens, c)
        kt, kh, kw = self.patch
        out = rearrange(
            out,
            "b (f h w) (c pt ph pw) -> b (f pt) c (h ph) (w pw)",
            f=frames // kt, h=h // kh, w=w // kw, pt=kt, ph=kh, pw=kw,
        )  # fmt: skip
        if self.head.smooth is not None:
            out = out + self.head.smooth(out.flatten(0, 1)).view_as(out)
        return out

    def tokens_per_segment(self, frames: int, h: int, w: int, text_tokens: int) -> int:
        """Sequence length seen per segment (without memory tokens): constant in video length
        for `framepack`; `full_history` adds (h/p)(w/p) tokens per history frame instead."""
        if self.context_mode == ContextMode.FULL_HISTORY:
            raise ValueError("full_history has no fixed token budget per segment")
        image = (h // self.patch[1]) * (w // self.patch[2])
        noisy = frames * image
        return text_tokens + image + self.context.num_tokens(h, w) + noisy
