"""LightningDataModule over a folder of captioned videos, by default the embedded synthetic set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from datamodules.curriculum import CurriculumBatchSampler, LengthCurriculum
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
        self.train_set: VideoFolderDataset | None = None
        self.val_set: VideoFolderDataset | None = None

    def prepare_data(self) -> None:
        """Render the synthetic dataset if it is missing or was made with other arguments."""
        if self.source != "synthetic":
            return  # folder data must already exist; setup() reports what is missing
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
        )

    def _dataset(self, split: str) -> VideoFolderDataset:
        return VideoFolderDataset(
            self.data_dir,
            split=split,
            segment_frames=self.segment_frames,
            fps=self.fps,
            size=self.resolution,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets `stage` needs: both for fit (or None), only val otherwise."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset("train")
        if self.val_set is None:
            self.val_set = self._dataset("val")

    @property
    def num_skipped(self) -> int:
        """Total videos skipped across the datasets built so far."""
        return sum(d.num_skipped for d in (self.train_set, self.val_set) if d is not None)

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
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_videos,
            drop_last=False,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "train_set")
        if self.curriculum is not None:
            sampler = CurriculumBatchSampler(dataset.lengths, self.batch_size, self.curriculum)
            return DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate_videos,
                persistent_workers=self.num_workers > 0,
            )
        # A dedicated seeded generator makes the shuffle order reproducible run to run.
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(dataset, self.batch_size, shuffle=True, generator=generator)

    @property
    def curriculum_max_segments(self) -> int | None:
        """Longest video the curriculum admits now (None without a curriculum)."""
        if self.curriculum is None:
            return None
        if self.train_set is None:
            return self.curriculum.max_segments()
        lengths = self.train_set.lengths
        return self.curriculum.max_segments(max(lengths), min(lengths))

    def state_dict(self) -> dict[str, Any]:
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
        count = min(self.num_predict_videos, len(dataset))
        return self._loader(Subset(dataset, range(count)), batch_size=1, shuffle=False)
