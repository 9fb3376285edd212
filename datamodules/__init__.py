"""Video data: PyAV decoding, the embedded synthetic dataset, folder datasets and the DataModule."""

from datamodules.synthetic import generate_dataset, render_video
from datamodules.video_datamodule import VideoDataModule
from datamodules.video_dataset import VideoFolderDataset, collate_videos
from datamodules.video_io import probe_video, read_video, write_video

__all__ = [
    "VideoDataModule",
    "VideoFolderDataset",
    "collate_videos",
    "generate_dataset",
    "probe_video",
    "read_video",
    "render_video",
    "write_video",
]
