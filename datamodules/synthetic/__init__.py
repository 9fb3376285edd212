"""The embedded synthetic data: procedural scenes rendered to mp4 (no download, any resolution).

`drawing.py` holds what every scene draws with; `scene.py` is the training scene, `probe_scene.py`
the memory-probe scene, `dataset.py` writes them as a folder of videos. Nothing imports back up.
"""

from datamodules.synthetic.dataset import generate_dataset, held_out_videos
from datamodules.synthetic.probe_scene import (
    ProbeSchedule,
    ProbeVideo,
    probe_set,
    render_probe_video,
)
from datamodules.synthetic.scene import render_video

__all__ = [
    "ProbeSchedule",
    "ProbeVideo",
    "generate_dataset",
    "held_out_videos",
    "probe_set",
    "render_probe_video",
    "render_video",
]
