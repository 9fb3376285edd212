"""MemoryPack (Sec. 3.1): what a segment sees of the video before it, as one state object.

MemoryPack = FramePack (short-term: the last latent frames, packed at fixed ratios by the
backbone) + SemanticPack (long-term: psi, updated once per segment by Eq. 1). `MemoryPack` holds
that state for a batch of videos and is the one place that decides what the next segment sees:

    pack = MemoryPack.start(backbone, semantic_pack, text, image_latent)   # psi_0, no history
    context = pack.context()             # history [b, K, c, h, w] + psi for the backbone
    ... sample or train segment n with it ...
    pack.remember(segment, n)            # history += segment; psi_{n+1} = Squeeze(psi_n, ...)

Generation, video continuation, Direct Forcing's chronological loop, the rollout evaluation and
the memory probe all run this loop; teacher forcing, which trains one ground-truth segment per
video, gets the same context in one batched call (`MemoryPack.teacher_forced`, truncated BPTT).

History: under `ContextMode.FRAMEPACK` the buffer keeps the backbone's `history_frames` latent
frames (zeros before the video starts); under `ContextMode.FULL_HISTORY` it keeps every frame.
`read_memory=False` is the probe's gates-shut ablation: psi still runs its recurrence, but the
backbone never reads it (exactly what memory-read gates at 0 give).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor

from lightning_modules.networks.backbone import Backbone, ContextMode
from lightning_modules.networks.frame_pack import gather_history
from lightning_modules.networks.semantic_pack import SemanticPack

__all__ = ["ContextMode", "MemoryPack", "SegmentContext", "history_reach"]

Rows = Tensor | slice | None  # videos of the batch a call concerns (None: all of them)


class SegmentContext(NamedTuple):
    """What the backbone reads besides the noisy segment, text and image."""

    history: Tensor  # [b, K, c, h, w] latent frames before the segment, oldest first
    memory: Tensor | None  # psi_n [b, n_psi, width]; None: nothing to read
    null_memory: Tensor | None = None  # CFG's unconditional psi (from the empty prompt)


def history_reach(backbone: Backbone) -> float:
    """Latent frames of the past a segment sees: FramePack's window, or inf under FULL_HISTORY."""
    if backbone.context_mode == ContextMode.FULL_HISTORY:
        return math.inf
    return float(backbone.history_frames)


def _rows(x: Tensor | None, rows: Rows) -> Tensor | None:
    return x if x is None or rows is None else x[rows]


class MemoryPack:
    """FramePack history + SemanticPack psi of a batch of videos (module docstring)."""

    def __init__(
        self,
        backbone: Backbone,
        semantic_pack: SemanticPack | None,
        history: Tensor,
        psi: Tensor | None,
        null_psi: Tensor | None = None,
        decoded: Tensor | None = None,
        decode_context: int = 0,
        read_memory: bool = True,
    ) -> None:
        self.mode = ContextMode(backbone.context_mode)
        self.window = backbone.history_frames
        self.semantic_pack = semantic_pack
        self.history = history
        self.psi, self.null_psi = psi, null_psi
        self.decoded, self.decode_context = decoded, decode_context
        self.read_memory = read_memory

    # ----------------------------------------------------------------- n = 0
    @classmethod
    def start(
        cls,
        backbone: Backbone,
        semantic_pack: SemanticPack | None,
        text: tuple[Tensor, Tensor],
        image_latent: Tensor,
        null_text: tuple[Tensor, Tensor] | None = None,
        decode_context: int = 0,
        read_memory: bool = True,
    ) -> MemoryPack:
        """Videos with no segment yet: empty history, psi_0 from prompt + reference latent
        [b, 1, c, h, w] (Sec. 3.1), and with `null_text` CFG's psi_0 of the empty prompt.

        `decode_context` > 0 also keeps that many latent frames (the image latent first) for
        decoding the next segment with a causal codec (`LatentCodec.decode_continuation`).
        """
        b, _, c, h, w = image_latent.shape
        frames = 0 if backbone.context_mode == ContextMode.FULL_HISTORY else backbone.history_frames
        history = image_latent.new_zeros(b, frames, c, h, w)  # zeros: no past yet
        psi = null_psi = None
        if semantic_pack is not None:
            psi = semantic_pack.init(text[0], image_latent)
            if null_text is not None:
                null_psi = semantic_pack.init(null_text[0], image_latent)
        decoded = image_latent if decode_context else None
        return cls(backbone, semantic_pack, history, psi, null_psi, decoded, decode_context,
                   read_memory)  # fmt: skip

    # ----------------------------------------------------------------- what segment n sees
    def context(self, rows: Rows = None) -> SegmentContext:
        """History and psi for the next segment of the videos `rows` (default: all)."""
        read = self.read_memory
        return SegmentContext(
            _rows(self.history, rows),
            _rows(self.psi, rows) if read else None,
            _rows(self.null_psi, rows) if read else None,
        )

    # ----------------------------------------------------------------- after segment n
    def remember(
        self, segment: Tensor, index: int, rows: Rows = None, update_psi: bool = True
    ) -> None:
        """Segment `index` [b', T, c, h, w] of the videos `rows` joins the FramePack history and
        psi's recurrence (Eq. 1); videos not in `rows` (done: a ragged batch's shorter ones)
        get zeros in the history and keep their psi. `update_psi=False` skips Eq. 1 (the
        memory probe's oracle psi, which stops at the landmark)."""
        if rows is None:
            history = torch.cat((self.history, segment), dim=1)
        else:
            stored = self.history.new_zeros(self.history.shape[0], *segment.shape[1:])
            stored[rows] = segment
            history = torch.cat((self.history, stored), dim=1)
        if update_psi:
            self.psi = self._update(self.psi, segment, index, rows)
            self.null_psi = self._update(self.null_psi, segment, index, rows)
        bounded = self.mode == ContextMode.FRAMEPACK
        self.history = history[:, -self.window :] if bounded else history
        if self.decoded is not None:
            self.decoded = torch.cat((self.decoded, segment), dim=1)[:, -self.decode_context :]

    def _update(self, psi: Tensor | None, segment: Tensor, index: int, rows: Rows) -> Tensor | None:
        """Eq. 1: psi_{n+1} = Squeeze(psi_n, Memorize(x^n)) for the videos `rows`; n = `index`
        (structure C's first update differs)."""
        if self.semantic_pack is None or psi is None:
            return psi
        if rows is None:
            return self.semantic_pack(psi, segment, step=index)
        updated = psi.clone()
        updated[rows] = self.semantic_pack(psi[rows], segment, step=index)
        return updated

    # ----------------------------------------------------------------- teacher forcing
    @staticmethod
    def teacher_forced(
        backbone: Backbone,
        semantic_pack: SemanticPack | None,
        latents: Tensor,
        frames: int,
        segment_index: Tensor,
        text: tuple[Tensor, Tensor],
        image_latent: Tensor,
        memory_index: Tensor | None = None,
    ) -> SegmentContext:
        """The context of each video's segment i_b [b] from its ground truth: what the loop above
        gives segment i_b after remembering the true segments 0..i_b-1, in one batched call.

        latents [b, s * frames, c, h, w]. psi runs Eq. 1 over the true segments with gradient
        through the last `memory_bptt` updates only (`SemanticPack.teacher_forced`);
        `memory_index` [b] (default i_b) stops psi earlier: after segments 0..memory_index-1
        (an oracle psi that skips what came between, `VideoModule.memory_oracle`).
        """
        if backbone.context_mode == ContextMode.FULL_HISTORY:
            keep = int(segment_index.max()) * frames  # as long as the longest needs
        else:
            keep = backbone.history_frames
        history = gather_history(latents, segment_index * frames, keep)
        if semantic_pack is None:
            return SegmentContext(history, None)
        psi0 = semantic_pack.init(text[0], image_latent)
        until = segment_index if memory_index is None else memory_index
        n = max(int(until.max()), 1)
        segments = rearrange(latents[:, : n * frames], "b (s t) c h w -> b s t c h w", t=frames)
        return SegmentContext(history, semantic_pack.teacher_forced(psi0, segments, until))
