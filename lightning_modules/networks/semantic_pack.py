"""SemanticPack: the long-term memory of MemoryPack (Sec. 3.1, Eq. 1; structures of App. A.1).

    psi_0     = Pool_m(concat(prompt features, reference-image features))      (Sec. 3.1, n = 0)
    psi_{n+1} = Squeeze(psi_n, Memorize(x^n))                                   (Eq. 1)

Memorize runs self-attention inside windows of a segment's latent tokens and reduces them to m
visual tokens; Squeeze is a cross-attention layer (+ MLP) whose query is the Memorize output and
whose key/value is psi_n (structure A, the paper's choice). The output has the query's tokens.

Token counts (App. A.1 argues with them). A's query is the visual summary, so psi is m tokens
(psi_0 is pooled to m slots so that it has the shape of every later psi). B's query is psi itself,
seeded by the n_text + n_image prompt and image tokens, unpooled, so psi keeps that many. C's first
query concatenates those tokens with the first segment's m visual tokens, then follows B, so psi
has n_text + n_image + m tokens (psi_0 holds m learned placeholders where the first window's tokens
will go). Whatever the structure, psi's shape is FIXED over the video, so every update and every
DiT call costs the same: N segments cost O(N).

Retention (`update`). Eq. 1 replaces psi by Squeeze's output each segment; under structure A that
output is built on the new segment's visual tokens (the query), so what an old segment left in psi
survives only as far as each update chooses to read it back. `update="gated"` (not in the paper;
an option beside it) keeps psi unless a write gate opens, as a GRU does:
psi_{n+1} = psi_n + z * (Squeeze(psi_n, Memorize(x^n)) - psi_n), z = sigmoid(W [psi_n, cand] + b),
with W = 0 and b = -`keep_bias` at initialisation (each update first keeps ~88% of psi).
"""

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_modules.networks.attention import attend
from lightning_modules.networks.gelu import GELUTanh
from lightning_modules.networks.patch_embed import patch_embed
from lightning_modules.networks.rope import Rope3D, apply_rope, grid_positions

Structure = Literal["A", "B", "C"]
PsiInit = Literal["semantic", "zero"]
Update = Literal["squeeze", "gated"]


class MultiHeadAttention(nn.Module):
    """Attention from `query` [b, m, d] to `context` [b, n, d] with QK-RMSNorm (as in the DiT).

    With `rotation` (self-attention only, query is context) q and k are rotated by 3D RoPE.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"SemanticPack width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.q_norm = nn.RMSNorm(width // heads)
        self.k_norm = nn.RMSNorm(width // heads)
        self.proj = nn.Linear(width, width)

    def forward(self, query: Tensor, context: Tensor, rotation: Tensor | None = None) -> Tensor:
        q = self.q_norm(rearrange(self.q(query), "b m (h d) -> b h m d", h=self.heads))
        k, v = rearrange(self.kv(context), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        k = self.k_norm(k)
        if rotation is not None:
            q, k = apply_rope(q, rotation), apply_rope(k, rotation)
        return self.proj(rearrange(attend(q, k, v), "b h m d -> b m (h d)"))


def learned_tokens(n: int, width: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(n, width) * width**-0.5)


def mlp(width: int, ratio: float) -> nn.Sequential:
    hidden = int(width * ratio)
    return nn.Sequential(nn.Linear(width, hidden), GELUTanh(), nn.Linear(hidden, width))


class AttentionPool(nn.Module):
    """m learned query slots read a variable number of tokens: [b, n, d] -> [b, m, d].

    The reduction to a fixed m (Perceiver / Q-Former style) is what makes psi's size independent
    of the segment's resolution and of the prompt length, so psi_0 and psi_n share one shape.
    """

    def __init__(self, width: int, heads: int, slots: int) -> None:
        super().__init__()
        self.slots = learned_tokens(slots, width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)

    def forward(self, tokens: Tensor) -> Tensor:
        slots = repeat(self.slots, "m d -> b m d", b=tokens.shape[0]).to(tokens.dtype)
        return slots + self.attn(slots, self.norm_kv(tokens))


def pad_to_patch(latents: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """Latent frames [b, f, c, h, w] as [b, c, f, h, w], replicate-padded to multiples of the
    (t, h, w) patch (also the memory-recall targets, `memory_recall.py`)."""
    x = rearrange(latents, "b f c h w -> b c f h w")
    pt, ph, pw = patch
    pad = (0, -x.shape[-1] % pw, 0, -x.shape[-2] % ph, 0, -x.shape[-3] % pt)
    return F.pad(x, pad, mode="replicate") if any(pad) else x


class Memorize(nn.Module):
    """Memorize(x^n): windowed self-attention over a segment's latent tokens, reduced to m tokens.

    Latents are cut into `patch` (t, h, w) patches (coarser than the DiT's 1x2x2 keeps Memorize
    cheap: it runs on every history segment in training). A window is `window_frames`
    consecutive latent frames of the segment (all of their patches); attention never crosses windows, so its cost is linear in the segment length
    (Sec. 3.1: "self-attention within windows ... mitigates the prohibitive quadratic complexity").
    Tokens carry 3D RoPE at window-local positions so the summary keeps layout and motion cues.
    Reduction: m learned queries attend to every window's output (AttentionPool), i.e. a learned,
    content-dependent summary rather than fixed pooling, with m independent of grid and length.
    """

    def __init__(
        self,
        latent_channels: int,
        width: int,
        heads: int,
        mlp_ratio: float,
        memory_tokens: int,
        window_frames: int,
        patch: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if min(patch) < 1 or window_frames % patch[0]:
            raise ValueError(
                f"Memorize patch {patch} must be >= 1 with window_frames={window_frames} a "
                f"multiple of its temporal size"
            )
        self.window_frames = window_frames
        self.patch = patch
        self.embed = nn.Conv3d(latent_channels, width, patch, stride=patch)
        self.rope = Rope3D(width // heads)
        self.norm1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = mlp(width, mlp_ratio)
        self.reduce = AttentionPool(width, heads, memory_tokens)

    def tokens(self, latents: Tensor) -> Tensor:
        """Patchify latent frames [b, f, c, h, w] -> [b, f', h', w', d] (also used for the image).

        Frames and grid are replicate-padded to multiples of the patch, as FramePack pads history
        (so the single reference frame fills a whole temporal patch).
        """
        return patch_embed(self.embed, pad_to_patch(latents, self.patch))

    def forward(self, segment: Tensor) -> Tensor:
        b, f = segment.shape[:2]
        if f % self.window_frames:
            raise ValueError(
                f"segment of {f} latent frames is not divisible by window_frames="
                f"{self.window_frames}"
            )
        tok = self.tokens(segment)
        h, w = tok.shape[2:4]
        window = self.window_frames // self.patch[0]  # in token frames
        x = rearrange(tok, "b (n f) h w d -> (b n) (f h w) d", f=window)
        t_local = torch.arange(window, device=segment.device)[None]
        pos = rearrange(grid_positions(t_local, h, w), "b three f h w -> b (f h w) three")
        x = x + self.attn(self.norm1(x), self.norm1(x), rotation=self.rope(pos))
        x = x + self.mlp(self.norm2(x))
        return self.reduce(rearrange(x, "(b n) l d -> b (n l) d", b=b))


class Squeeze(nn.Module):
    """Squeeze: cross-attention (query -> key/value) + MLP, both residual on the query.

    The output has the query's shape. The final LayerNorm bounds psi: the recurrence applies this
    layer to its own output up to thousands of times in a long rollout.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = mlp(width, mlp_ratio)
        self.out_norm = nn.LayerNorm(width)

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        x = query + self.attn(self.norm_q(query), self.norm_kv(key_value))
        x = x + self.mlp(self.norm2(x))
        return self.out_norm(x)


class WriteGate(nn.Module):
    """psi_n + z * (candidate - psi_n), z = sigmoid(W [psi_n, candidate] + b) per token and
    channel; W starts at 0 and b at -keep_bias, so an untrained gate mostly keeps psi."""

    def __init__(self, width: int, keep_bias: float = 2.0) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, -keep_bias)

    def forward(self, psi: Tensor, candidate: Tensor) -> Tensor:
        z = torch.sigmoid(self.proj(torch.cat((psi, candidate), dim=-1)))
        return psi + z * (candidate - psi)


class SemanticPack(nn.Module):
    """Long-term memory psi [b, n_psi, width] updated once per segment by Eq. 1.

    Args:
        latent_channels: channels of the codec's latent (the DiT's `latent_channels`).
        text_dim: width of the text encoder's features.
        width: memory token width; must equal the DiT's width (psi joins its token sequence).
        memory_tokens: m, Memorize's visual tokens per segment; psi's size for structure A.
        window_frames: latent frames per Memorize attention window (divides the segment length).
        patch: Memorize's (t, h, w) patch of the latent; coarser is cheaper.
        heads, mlp_ratio: size of the Memorize / Squeeze layers.
        structure: `A` query = Memorize(x^n), key/value = psi_n (the paper's); psi: m tokens.
            `B` query = psi_n, seeded by the prompt + image tokens, key/value = Memorize(x^n);
            psi: n_text + n_image tokens. `C` the first query is the prompt + image tokens
            concatenated with Memorize(x^0), then B; psi: n_text + n_image + m tokens (App. A.1).
        psi_init: `semantic` psi_0 from prompt + image (Sec. 3.1); `zero` the zero-MemoryPack
            ablation (Sec. 4.3).
        memory_bptt: teacher forcing backpropagates through the last `memory_bptt` updates of the
            recurrence only; older updates run without gradient (truncated BPTT). None: through
            every update back to psi_0, so a target can train what was kept from its first segment.
        memory_checkpoint: recompute Memorize and each Squeeze step in backward (activation
            checkpointing), so the memory of a long backpropagated recurrence stays its inputs'.
        update: `squeeze` (Eq. 1 as the paper writes it) or `gated` (a write gate that keeps psi
            unless it opens; module docstring).
    """

    def __init__(
        self,
        latent_channels: int = 48,
        text_dim: int = 128,
        width: int = 128,
        memory_tokens: int = 16,
        window_frames: int = 2,
        patch: tuple[int, int, int] = (1, 2, 2),
        heads: int = 4,
        mlp_ratio: float = 2.0,
        structure: Structure = "A",
        psi_init: PsiInit = "semantic",
        memory_bptt: int | None = 2,
        memory_checkpoint: bool = False,
        update: Update = "squeeze",
    ) -> None:
        super().__init__()
        if structure not in ("A", "B", "C"):
            raise ValueError(f"unknown SemanticPack structure {structure!r}; expected A, B or C")
        if psi_init not in ("semantic", "zero"):
            raise ValueError(f"unknown psi_init {psi_init!r}; expected 'semantic' or 'zero'")
        for name, value in (("memory_tokens", memory_tokens), ("window_frames", window_frames)):
            if value < 1:
                raise ValueError(f"SemanticPack {name} must be >= 1, got {value}")
        if memory_bptt is not None and memory_bptt < 0:
            raise ValueError(f"memory_bptt must be >= 0 or None (every update), got {memory_bptt}")
        if update not in ("squeeze", "gated"):
            raise ValueError(f"unknown SemanticPack update {update!r}; expected squeeze or gated")
        self.latent_channels = latent_channels
        self.text_dim = text_dim
        self.width = width
        self.memory_tokens = memory_tokens
        self.structure = structure
        self.psi_init = psi_init
        self.memory_bptt = memory_bptt
        self.memory_checkpoint = memory_checkpoint
        self.update = update
        self.memorize = Memorize(
            latent_channels, width, heads, mlp_ratio, memory_tokens, window_frames, tuple(patch)
        )
        self.squeeze = Squeeze(width, heads, mlp_ratio)
        if update == "gated":
            self.write_gate = WriteGate(width)
        if psi_init == "semantic":
            self.text_proj = nn.Linear(text_dim, width)
            if structure == "A":  # psi_0 takes the shape of A's psi: m tokens
                self.init_pool = AttentionPool(width, heads, memory_tokens)
        if structure == "C":  # stand-ins for the first window's visual tokens until it exists
            self.first_window = learned_tokens(memory_tokens, width)

    # ----------------------------------------------------------------- n = 0
    def init(self, text: Tensor, image: Tensor) -> Tensor:
        """psi_0 from prompt features [b, n, text_dim] and the reference latent [b, 1, c, h, w].

        Sec. 3.1 sets psi_0 to the concatenation of prompt and image features (as tokens; the
        image in Memorize's patches). A pools them to its m slots, B keeps them, C appends the
        m placeholders of the first window: psi_0 has the shape of every later psi.
        Padding text tokens are kept, as in the DiT, so the empty prompt is a distinct condition.
        """
        b = image.shape[0]
        if self.psi_init == "zero":
            return image.new_zeros(b, self.psi_tokens(text.shape[1], image), self.width)
        img = rearrange(self.memorize.tokens(image), "b f h w d -> b (f h w) d")
        psi = torch.cat((self.text_proj(text), img), dim=1)
        if self.structure == "A":
            return self.init_pool(psi)
        if self.structure == "C":
            slots = repeat(self.first_window, "m d -> b m d", b=b).to(psi.dtype)
            psi = torch.cat((psi, slots), dim=1)
        return psi

    def psi_tokens(self, text_tokens: int, image: Tensor) -> int:
        """psi's (fixed) token count for this structure, prompt length and image latent."""
        if self.structure == "A":
            return self.memory_tokens
        pt, ph, pw = self.memorize.patch
        h, w = image.shape[-2:]
        base = text_tokens + -(-image.shape[1] // pt) * -(-h // ph) * -(-w // pw)
        return base + (self.memory_tokens if self.structure == "C" else 0)

    # ----------------------------------------------------------------- Eq. 1
    def forward(self, psi: Tensor, segment: Tensor, step: int | None = None) -> Tensor:
        """psi_{n+1} from psi_n [b, n_psi, d] and segment x^n [b, T, c, h, w]; `step` is n."""
        return self.squeeze_step(psi, self.memorize(segment), step)

    def squeeze_step(self, psi: Tensor, visual: Tensor, step: int | Tensor | None = None) -> Tensor:
        """The Squeeze half of Eq. 1, given visual = Memorize(x^n) [b, m, d] (then the write
        gate, with `update="gated"`). `step` is n, or one n per video [b]."""
        if self.structure == "A":
            candidate = self.squeeze(visual, psi)
        elif self.structure == "B":
            candidate = self.squeeze(psi, visual)
        else:
            if step is None:
                raise ValueError("SemanticPack structure 'C' needs the segment index `step`")
            # the first window's visual tokens take the placeholders' place
            first = torch.cat((psi[:, : -self.memory_tokens], visual), dim=1)
            if isinstance(step, int):
                psi = first if step == 0 else psi
            else:
                psi = torch.where((step == 0)[:, None, None], first, psi)
            candidate = self.squeeze(psi, visual)
        return candidate if self.update == "squeeze" else self.write_gate(psi, candidate)

    def _trains(self) -> bool:
        """Whether this call builds a graph that reaches trainable SemanticPack weights."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _maybe_checkpointed(self, fn: Callable[..., Tensor], *args: object) -> Tensor:
        """fn(*args), recomputed in backward under `memory_checkpoint`."""
        if self.memory_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # ----------------------------------------------------------------- teacher forcing
    def teacher_forced(self, psi0: Tensor, segments: Tensor, target: Tensor) -> Tensor:
        """psi_{i_b} for each video b: Eq. 1 run over its ground-truth segments 0..i_b-1.

        segments [b, s, T, c, h, w] (s >= max i_b), target [b] = i_b. Videos are batched: the
        update at step n only applies where n < i_b. Gradient flows through the last
        `memory_bptt` updates of each video; earlier ones are detached (truncated BPTT).
        Memorize does not depend on psi, so it runs once, batched, on exactly the (video, step)
        pairs that are used: without gradient outside the windows (forward only, linear in the
        history) and with gradient inside (at most b * memory_bptt segments, whatever the length).
        Only the cheap Squeeze over m tokens runs step by step.
        """
        b, steps = target.shape[0], int(target.max())
        if steps == 0 and segments.shape[1] and self._trains():
            # Every target is a first segment: nothing to remember, yet every parameter must
            # take part in the step. Data-parallel ranks reduce the same gradients, and a rank
            # whose batch skipped memory would leave the others waiting (DDP and FSDP2 hang).
            idle = self.squeeze_step(psi0[:1], self.memorize(segments[:1, 0]), 0)
            return psi0 + 0 * idle.sum()
        reach = steps if self.memory_bptt is None else min(self.memory_bptt, steps)
        start = (target - reach).clamp(min=0)  # [b]: each video's first update with gradient
        n = torch.arange(steps, device=target.device)
        live = n[None] < target[:, None]  # [b, s]: steps each video's recurrence runs
        in_window = n[None] >= start[:, None]  # [b, s]: steps with grad
        visual = psi0.new_zeros(b, steps, self.memory_tokens, self.width)
        for grad, used in ((False, live & ~in_window), (True, live & in_window)):
            if used.any():
                with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                    seen = self._maybe_checkpointed(self.memorize, segments[:, :steps][used])
                    visual = visual.index_put((used,), seen)
        # Updates before the window, without a graph: step k moves the videos with k < start.
        psi = psi0
        for k in range(int(start.max())):
            with torch.no_grad():
                new = self.squeeze_step(psi, visual[:, k], k)
            psi = torch.where((k < start)[:, None, None], new, psi)
        # The window, aligned to each video's end: its j-th update is step start + j, so every
        # video backpropagates through `reach` batched updates, however long its history.
        rows = torch.arange(b, device=target.device)
        for j in range(reach):
            k = start + j
            new = self._maybe_checkpointed(
                self.squeeze_step, psi, visual[rows, k.clamp(max=steps - 1)], k
            )
            psi = torch.where((k < target)[:, None, None], new, psi)
        return psi
