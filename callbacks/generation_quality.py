"""Does the model move? `eval.generation_quality.rollout_quality` on held-out videos during
training, logged to TensorBoard as `quality/...` (issue 18's yardstick, the numbers that
`python -m benchmarks.generation_quality` prints, at every `every_n_epochs` validation).

Each held-out video with at least `1 + depth` segments is continued from its first true segment for
`depth` generated segments. Logged: PSNR by depth against the truth beside the static copy of the
last true frame (`quality/psnr/d<k>`, `quality/static/d<k>`, and their mean margin
`quality/margin_over_static`), the verified-flow share and dynamic fraction of the rollout and of
the truth, and the token-grid edge energy after one segment and over the rollout beside the
truth's. Every rank computes the same videos (a sharded model needs all ranks in each forward);
rank 0 writes.
"""

from __future__ import annotations

import warnings

import lightning as L

from eval.generation_quality import rollout_quality

__all__ = ["GenerationQualityCallback"]
SCALARS = ("flow_share", "dynamic_fraction", "grid_edge", "grid_edge_first")


class GenerationQualityCallback(L.Callback):
    """Rollout PSNR by depth vs the static copy, motion and token-grid seams vs the truth."""

    def __init__(
        self, every_n_epochs: int = 1, num_videos: int = 8, depth: int = 3, seed: int = 0
    ) -> None:
        super().__init__()
        for arg, value in (("every_n_epochs", every_n_epochs), ("num_videos", num_videos),
                           ("depth", depth)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value!r}")
        self.every_n_epochs, self.num_videos, self.depth, self.seed = (
            every_n_epochs, num_videos, depth, seed,
        )  # fmt: skip
        self.results: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        val_set = getattr(dm, "val_set", None)
        videos = []  # the first num_videos long enough: no more is loaded than is scored
        for index in range(0 if val_set is None else len(val_set)):
            ex = val_set[index]
            if ex is None:
                warnings.warn(f"GenerationQualityCallback: val_set[{index}] is None; skipped",
                              stacklevel=2)  # fmt: skip
            elif ex["video"].shape[0] >= 1 + self.depth:
                videos.append(ex)
            if len(videos) == self.num_videos:
                break
        if not videos:
            warnings.warn(
                f"GenerationQualityCallback: no held-out video has {1 + self.depth} segments; "
                "skipped", stacklevel=2,
            )  # fmt: skip
            return
        got = rollout_quality(pl_module, videos, dm.segment_frames, self.depth, seed=self.seed)
        out = {f"quality/{k}": got[k] for k in SCALARS}
        out.update({f"quality/{k}_truth": got[f"{k}_truth"] for k in SCALARS})
        pairs = list(zip(got["psnr_by_depth"], got["static_by_depth"], strict=True))
        for d, (gen, static) in enumerate(pairs, 1):
            out[f"quality/psnr/d{d}"], out[f"quality/static/d{d}"] = gen, static
        margins = [gen - static for gen, static in pairs]
        out["quality/margin_over_static"] = sum(margins) / len(margins)
        out["quality/videos"] = got["rollout_videos"]
        for key, value in out.items():  # identical on every rank: no reduction needed
            pl_module.log(key, value, rank_zero_only=True)
        self.results = out
