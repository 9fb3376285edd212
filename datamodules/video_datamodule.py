"""LightningDataModule over a folder of captioned videos, by default the embedded synthetic set."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from datamodules.conditioning_cache import (
    ConditionedDataset,
    conditioning_key,
    prepare_conditioning,
)
from datamodules.curriculum import LengthCurriculum
from datamodules.curriculum import sampler_for_trainer as curriculum_sampler
from datamodules.latent_cache import LatentCacheDataset, build_cache, cache_key, collate_latents
from datamodules.resumable_sampler import sampler_for_trainer
from datamodules.synthetic import generate_dataset
from datamodules.video_dataset import VideoFolderDataset, collate_videos

__all__ = ["VideoDataModule"]


class VideoDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders of whole videos split into `segment_frames`-frame segments.

    `source="synthetic"` renders the procedural dataset into `data_dir` on first use and then reads
    the mp4 files back like any real folder; `source="folder"` expects `data_dir/metadata.jsonl`.
    Batches are dicts from `collate_videos`, or None when every video in a batch failed to decode.
    With a `curriculum` (stage 2, A.2) training batches hold equal-length videos admitted by
    length; its state is saved in checkpoints so a resumed run continues at the same length.

    `latent_cache`: a directory; when set, `prepare_data` (rank 0) encodes the videos once
    through the model's codec (`trainer.lightning_module.codec`, or one given to `attach_codec`)
    and every split is then read as pre-encoded latents (`datamodules/latent_cache.py`).
    `conditioning_cache`: a directory; `prepare_data` computes the frozen text/image encoders'
    outputs once (`trainer.lightning_module.text_encoder`, or one given to `attach_text_encoder`;
    on the trainer's device, unloaded afterwards) and batches carry them, so training never
    loads the encoders (`datamodules/conditioning_cache.py`).

    `probe_train_videos` (synthetic source): extra training videos of memory-probe events
    (`datamodules/synthetic/probe_scene.py`), so that a model can learn to remember what left the view.

    `predict_prefix_segments` k > 0 makes `predict` continue videos (README "Video continuation"):
    its batches carry `prefix_segments` = k and the model keeps their first k real segments as
    the prefix. The predict set is then the first `num_predict_videos` val videos with at least
    k segments; shorter ones are passed over with a warning naming them and counted
    (`predict_skipped`).
    `keep_decoded`: decode each video once and keep its uint8 frames in memory (small datasets
    such as the demo's, where decoding costs more than a training step; see VideoFolderDataset).
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic",
        source: Literal["synthetic", "folder"] = "synthetic",
        resolution: tuple[int, int] = (32, 32),
        fps: float = 8.0,
        segment_frames: int = 8,
        batch_size: int = 8,
        num_workers: int = 0,
        num_train_videos: int = 64,
        num_val_videos: int = 8,
        min_segments: int = 1,
        max_segments: int = 6,
        seed: int = 0,
        num_predict_videos: int = 2,
        curriculum: LengthCurriculum | None = None,
        latent_cache: str | None = None,
        conditioning_cache: str | None = None,
        predict_prefix_segments: int = 0,
        probe_train_videos: int = 0,
        keep_decoded: bool = False,
    ) -> None:
        super().__init__()
        if source not in ("synthetic", "folder"):
            raise ValueError(f"source must be 'synthetic' or 'folder', got {source!r}")
        if len(resolution) != 2 or min(resolution) <= 0:
            raise ValueError(f"resolution must be (height, width) > 0, got {resolution!r}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        for name, value, low in (
            ("segment_frames", segment_frames, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("num_train_videos", num_train_videos, 1),
            ("num_val_videos", num_val_videos, 1),
            ("min_segments", min_segments, 1),
            ("num_predict_videos", num_predict_videos, 1),
            ("predict_prefix_segments", predict_prefix_segments, 0),
            ("probe_train_videos", probe_train_videos, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if max_segments < min_segments:
            raise ValueError(
                f"max_segments ({max_segments}) must be >= min_segments ({min_segments})"
            )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.source = source
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps = float(fps)
        self.segment_frames = segment_frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_train_videos = num_train_videos
        self.num_val_videos = num_val_videos
        self.min_segments = min_segments
        self.max_segments = max_segments
        self.seed = seed
        self.num_predict_videos = num_predict_videos
        self.curriculum = curriculum
        self.latent_cache = Path(latent_cache) if latent_cache else None
        self.conditioning_cache = Path(conditioning_cache) if conditioning_cache else None
        self._text_encoder: torch.nn.Module | None = None
        self.predict_prefix_segments = predict_prefix_segments
        self.probe_train_videos = probe_train_videos
        self.predict_skipped: list[str] = []
        self.keep_decoded = keep_decoded
        self._codec: torch.nn.Module | None = None
        self.train_set: VideoFolderDataset | None = None
        self.val_set: VideoFolderDataset | None = None

    def prepare_data(self) -> None:
        """Render the synthetic dataset if needed, then fill the latent cache (if enabled)."""
        if self.source == "synthetic":
            self._render_synthetic()
        if self.latent_cache is not None:
            self._prepare_cache()
        if self.conditioning_cache is not None:
            self._prepare_conditioning()

    def _render_synthetic(self) -> None:
        generate_dataset(
            self.data_dir,
            num_train=self.num_train_videos,
            num_val=self.num_val_videos,
            min_segments=self.min_segments,
            max_segments=self.max_segments,
            segment_frames=self.segment_frames,
            fps=self.fps,
            size=self.resolution,
            seed=self.seed,
            probe_train=self.probe_train_videos,
        )

    def _dataset(self, split: str) -> VideoFolderDataset:
        return VideoFolderDataset(
            self.data_dir,
            split=split,
            segment_frames=self.segment_frames,
            fps=self.fps,
            size=self.resolution,
            keep_decoded=self.keep_decoded,
        )

    def attach_codec(self, codec: torch.nn.Module) -> None:
        """The codec the latent cache encodes with, when no Trainer/LightningModule supplies it."""
        self._codec = codec

    def _model_codec(self) -> torch.nn.Module | None:
        """The codec to encode with: an attached one, else the Trainer's LightningModule's."""
        if self._codec is not None:
            return self._codec
        module = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(module, "codec", None)

    def attach_text_encoder(self, encoder: torch.nn.Module) -> None:
        """The encoder the conditioning cache is computed with, without a Trainer."""
        self._text_encoder = encoder

    def _conditioning_dir(self) -> Path:
        """`conditioning_cache/<key>`: the key changes with the encoder, resolution, data."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        self._text_encoder = self._text_encoder or getattr(module, "text_encoder", None)
        if self._text_encoder is None:
            raise RuntimeError(
                f"conditioning_cache={str(self.conditioning_cache)!r} needs the model's text "
                "encoder: run under a Trainer, or call attach_text_encoder(encoder) first"
            )
        key = conditioning_key(self._text_encoder, self.resolution, self.data_dir)
        return self.conditioning_cache / key

    def _prepare_conditioning(self) -> int:
        """Encode missing or corrupt conditioning shards, on the trainer's device."""
        directory = self._conditioning_dir()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        datasets = {split: self._dataset(split) for split in ("train", "val")}
        return prepare_conditioning(directory, self._text_encoder, datasets, device)

    def fit_codec(self, codec: torch.nn.Module) -> None:
        """Stage 0: a codec learned from data (`needs_fit`, e.g. PatchPCACodec) is fitted on up
        to `codec.fit_frames` training frames, the first videos' frames in order (deterministic,
        so every DDP rank fits the same codec). A fitted codec is left alone."""
        if not getattr(codec, "needs_fit", False):
            return
        dataset = self.train_set if isinstance(self.train_set, VideoFolderDataset) else None
        dataset = dataset or self._dataset("train")
        frames, count = [], 0
        for index in range(len(dataset)):
            item = dataset[index]
            if item is None:
                continue
            frames.append(item["video"].flatten(0, 1))
            count += frames[-1].shape[0]
            if count >= codec.fit_frames:
                break
        if not frames:
            raise RuntimeError(f"no training video could be read to fit {type(codec).__name__}")
        frames = torch.cat(frames)[: codec.fit_frames]
        psnr = codec.fit(frames)
        rank_zero_info(
            f"stage 0: fitted {type(codec).__name__} on {len(frames)} training frames "
            f"({codec.latent_channels} latent channels): reconstruction {psnr:.1f} dB PSNR"
        )

    def _cache_dir(self) -> Path:
        """`latent_cache/<key>`: the key changes with codec, resolution, fps, segment length, data."""
        codec = self._model_codec()
        if codec is None:
            raise RuntimeError(
                f"latent_cache={str(self.latent_cache)!r} needs a codec: run under a Trainer whose "
                f"LightningModule has `.codec`, or call attach_codec(codec) first"
            )
        self.fit_codec(codec)  # the key hashes the codec's weights: fit before hashing
        key = cache_key(codec, self.resolution, self.fps, self.segment_frames, self.data_dir)
        return self.latent_cache / key

    def _prepare_cache(self) -> int:
        """Encode missing or corrupt shards of both splits; returns how many videos were encoded."""
        directory, codec = self._cache_dir(), self._model_codec()
        return sum(
            build_cache(directory, split, self._dataset(split), codec) for split in ("train", "val")
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets `stage` needs: both for fit (or None), only val otherwise.

        The model's codec is fitted here if it learns from data (stage 0): the datamodule's setup
        runs before callbacks and the module are set up, so e.g. an EMA copy of the module
        already holds the fitted codec.
        """
        codec = self._model_codec()
        if codec is not None:
            self.fit_codec(codec)
        if self.latent_cache is not None:
            directory = self._cache_dir()
            if stage in (None, "fit") and self.train_set is None:
                self.train_set = self._conditioned(LatentCacheDataset(directory, "train"), "train")
            if self.val_set is None:
                self.val_set = self._conditioned(LatentCacheDataset(directory, "val"), "val")
            return
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._conditioned(self._dataset("train"), "train")
        if self.val_set is None:
            self.val_set = self._conditioned(self._dataset("val"), "val")

    def _conditioned(self, dataset: Any, split: str) -> Any:
        """`dataset` with its cached conditioning (when `conditioning_cache` is set)."""
        if self.conditioning_cache is None:
            return dataset
        return ConditionedDataset(dataset, self._conditioning_dir(), split)

    def _collate(self, dataset: Any, base: Any = None) -> Any:
        """The collate function for `dataset` (a Subset's too): videos or latents, + parts."""
        base = base or (collate_videos if self.latent_cache is None else collate_latents)
        inner = dataset.dataset if isinstance(dataset, Subset) else dataset
        return partial(inner.collate, base) if isinstance(inner, ConditionedDataset) else base

    @property
    def num_skipped(self) -> int:
        """Videos and metadata lines skipped by the datasets built so far; every split reads the
        whole metadata file, so a skipped line is counted once, not once per split."""
        built = [d.skipped for d in (self.train_set, self.val_set) if d is not None]
        return len(set().union(*built))

    def _require(self, dataset: VideoFolderDataset | None, name: str) -> VideoFolderDataset:
        if dataset is None:
            raise RuntimeError(f"{name} is not built; call setup() first")
        return dataset

    def _loader(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        sampler: torch.utils.data.Sampler | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self._collate(dataset),
            drop_last=False,
            generator=generator,
            sampler=sampler,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "train_set")
        collate = self._collate(dataset)
        if self.curriculum is not None:
            # Resumes at the restored batch count (replayed schedule), like the plain sampler.
            sampler = curriculum_sampler(
                dataset.lengths, self.batch_size, self.curriculum, self.trainer
            )
            return DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
                persistent_workers=self.num_workers > 0,
            )
        # The order of epoch e depends on (seed, e) only and resumes mid-epoch (exact resume).
        sampler = sampler_for_trainer(dataset, self.batch_size, self.seed, self.trainer)
        return self._loader(dataset, self.batch_size, shuffle=False, sampler=sampler)

    @property
    def curriculum_max_segments(self) -> int | None:
        """Longest video the curriculum admits for the batch being trained (None without one).

        While fitting, that is the trainer's batch index, not the sampler's position: loader
        workers draw batches ahead of training, which would make the logged length run early.
        """
        if self.curriculum is None:
            return None
        trainer = self.trainer
        batches = max(trainer.fit_loop.total_batch_idx, 0) if trainer and trainer.training else None
        if self.train_set is None:
            return self.curriculum.max_segments(batches=batches)
        lengths = self.train_set.lengths
        return self.curriculum.max_segments(max(lengths), min(lengths), batches=batches)

    def state_dict(self) -> dict[str, Any]:
        # The curriculum's position as the sampler last left it (possibly ahead of training by
        # the loader's prefetch): for inspection and for use without a Trainer. A restored fit
        # loop replays the schedule to its exact batch count instead (`sampler_for_trainer`).
        return {} if self.curriculum is None else {"curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.curriculum is not None and "curriculum" in state_dict:
            self.curriculum.load_state_dict(state_dict["curriculum"])

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_set, "val_set"), self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_set, "val_set"), self.batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self._require(self.val_set, "val_set")
        k = self.predict_prefix_segments
        if not k:
            count = min(self.num_predict_videos, len(dataset))
            return self._loader(Subset(dataset, range(count)), batch_size=1, shuffle=False)
        if self.latent_cache is not None:
            raise ValueError(
                f"predict_prefix_segments={k} continues real videos, which needs their pixels; "
                f"the val set is read from latent_cache={str(self.latent_cache)!r}: unset it"
            )
        chosen: list[int] = []
        for index, length in enumerate(dataset.lengths):
            if len(chosen) == self.num_predict_videos:
                break
            if length >= k:
                chosen.append(index)
                continue
            self.predict_skipped.append(str(dataset.paths[index]))
            warnings.warn(
                f"predict: {dataset.paths[index]} has {length} segments, fewer than "
                f"predict_prefix_segments={k}; skipped ({len(self.predict_skipped)} so far)",
                stacklevel=2,
            )
        if not chosen:
            raise ValueError(f"no val video has predict_prefix_segments={k} segments to continue")
        return DataLoader(
            Subset(dataset, chosen),
            batch_size=1,
            num_workers=self.num_workers,
            collate_fn=self._collate(dataset, partial(collate_with_prefix, k)),
            persistent_workers=self.num_workers > 0,
        )


def collate_with_prefix(prefix_segments: int, items: list[dict[str, Any] | None]) -> Any:
    """`collate_videos`, marking the batch's first `prefix_segments` segments as the prefix."""
    batch = collate_videos(items)
    if batch is not None:
        batch["prefix_segments"] = prefix_segments
    return batch
