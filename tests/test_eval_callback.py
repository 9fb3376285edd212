"""RolloutEvalCallback end to end on CPU with a fake generator; reads the TensorBoard events back."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from callbacks.rollout_eval import RolloutEvalCallback
from datamodules.video_io import read_video
from eval.backends.registry import build_backends
from eval.rollout import shard_indices
from eval.video_scores import score_video

FRAMES_PER_SEGMENT = 4


class _FakeVideoModule(L.LightningModule):
    """Tiny module whose `generate` slides the image right by one pixel per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.generate_calls = 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("test_loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def generate(
        self,
        image: torch.Tensor,
        captions: list[str],
        num_segments: int,
        generator: torch.Generator | None = None,
        frames_per_segment: int | None = None,
    ) -> torch.Tensor:
        assert image.device == self.device and len(captions) == image.shape[0]
        assert frames_per_segment == FRAMES_PER_SEGMENT  # the datamodule's, passed explicitly
        self.generate_calls += 1
        frames = [image.roll(t, dims=-1) for t in range(num_segments * FRAMES_PER_SEGMENT)]
        video = torch.stack(frames, dim=1)  # [b, T, c, h, w] in [-1, 1]
        return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class _FakeDataModule(L.LightningDataModule):
    fps, segment_frames = 8.0, FRAMES_PER_SEGMENT

    def __init__(self, num_val: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        images = torch.nn.functional.interpolate(
            torch.rand(num_val, 3, 6, 8, generator=gen), size=(24, 32)
        )
        # Held-out videos [s, f, 3, H, W] in [-1, 1]: the image sliding down; video 1 is shorter.
        self.val_set = [
            {
                "image": img * 2 - 1,
                "caption": f"clip {i}",
                "video": torch.stack(
                    [
                        img.roll(t, dims=-2) * 2 - 1
                        for t in range(FRAMES_PER_SEGMENT * (2 + (i != 1)))
                    ]
                ).unflatten(0, (-1, FRAMES_PER_SEGMENT)),
            }
            for i, img in enumerate(images)
        ]

    def _loader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()


def _scalars(log_dir: Path) -> tuple[dict[str, list], list[str]]:
    events = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {log_dir}"
    scalars: dict[str, list] = {}
    videos: list[str] = []
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(acc.Scalars(tag))
        videos += acc.Tags()["images"]  # add_video writes an animated-GIF image summary
    return scalars, videos


def _trainer(callback: RolloutEvalCallback, **kwargs: object) -> L.Trainer:
    """One epoch of one train and one val batch on CPU, the callback attached."""
    return L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=0, callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, **kwargs,
    )  # fmt: skip


@pytest.mark.slow
def test_callback_logs_metrics_curves_videos_and_tables(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="run")
    callback = RolloutEvalCallback(
        lengths={"short": 2, "long": 3},
        every_n_epochs=1,
        num_videos=2,
        backends={"subject": "pixel"},
        num_logged_videos=1,
    )
    module, datamodule = _FakeVideoModule(), _FakeDataModule()
    trainer = _trainer(callback, logger=logger, limit_test_batches=1)
    trainer.fit(module, datamodule=datamodule)
    assert module.generate_calls == 4  # 2 videos x 2 lengths after epoch 0
    trainer.test(module, datamodule=datamodule)
    assert module.generate_calls == 8  # test runs regardless of every_n_epochs

    scalars, videos = _scalars(Path(logger.log_dir))
    key = "eval/long/subject_consistency@pixel"
    assert key in scalars and 0.0 < scalars[key][-1].value < 1.0  # rolling image: not static
    # 1 px per frame > threshold 6 * 24 / 256 = 0.56 px: the rollout counts as dynamic.
    assert scalars["eval/short/dynamic_degree@opencv_dis_verified"][-1].value == 1.0
    assert "eval/short/drift/subject_consistency@pixel" in scalars
    curve = scalars["eval_curve/long/subject_consistency@pixel"]
    assert sorted({event.step for event in curve}) == [0, 1, 2]
    assert any(tag.startswith("rollout/short/") for tag in videos), videos

    run_dir = Path(logger.log_dir)
    mp4s = sorted(run_dir.rglob("*.mp4"))
    assert len(mp4s) == 8
    frames = read_video(next(p for p in mp4s if p.parent.name == "short"))
    assert frames.shape == (2 * FRAMES_PER_SEGMENT, 3, 24, 32)
    (table,) = run_dir.glob("eval_test_epoch*.csv")
    rows = list(csv.DictReader(table.open()))
    assert [(r["model"], r["length"]) for r in rows] == [
        ("_FakeVideoModule", "short"),
        ("ground truth", "short"),
        ("_FakeVideoModule", "long"),
        ("ground truth (1/2 shorter)", "long"),  # val video 1 has 2 segments, long needs 3
    ]
    assert float(rows[2]["subject_consistency@pixel"]) == pytest.approx(scalars[key][-1].value)
    assert table.with_suffix(".md").read_text().count("|") > 20

    # The ground-truth rows are the held-out videos (cut to the length) scored alike.
    backends = build_backends({"subject": "pixel"})
    for row, segments in ((rows[1], 2), (rows[3], 3)):
        truth = [
            score_video(_frames(datamodule.val_set[i]["video"][:segments]), backends, fps=8.0)
            for i in range(2)
        ]
        for column in ("imaging_quality@niqe_synthetic", "drift/imaging_quality@niqe_synthetic"):
            expected = (truth[0][column] + truth[1][column]) / 2
            assert float(row[column]) == pytest.approx(expected, rel=1e-6), column
    long_truth = scalars["eval/long/ground_truth/subject_consistency@pixel"][-1].value
    assert long_truth == pytest.approx(float(rows[3]["subject_consistency@pixel"]), rel=1e-6)
    shorter = scalars["eval/long/ground_truth/fraction_shorter"][-1].value
    assert shorter == pytest.approx(0.5)


def _frames(video: torch.Tensor) -> torch.Tensor:
    """[s, f, 3, H, W] in [-1, 1] -> uint8 [s * f, 3, H, W]."""
    return ((video.flatten(0, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_callback_without_pixel_videos_warns_and_skips_ground_truth(tmp_path: Path) -> None:
    callback = RolloutEvalCallback(
        lengths={"short": 1}, num_videos=1, backends={"subject": "pixel"}, output_dir=str(tmp_path)
    )
    datamodule = _FakeDataModule()
    for item in datamodule.val_set:
        del item["video"]  # as latent-cache items: no pixel video
    trainer = _trainer(callback, logger=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="no ground-truth row"):
        trainer.fit(_FakeVideoModule(), datamodule=datamodule)
    (table,) = tmp_path.glob("eval_val_epoch*.csv")
    assert [r["model"] for r in csv.DictReader(table.open())] == ["_FakeVideoModule"]


def test_callback_skips_without_val_set(tmp_path: Path) -> None:
    callback = RolloutEvalCallback(lengths={"short": 1}, backends={"subject": "pixel"})
    datamodule = _FakeDataModule()
    datamodule.val_set = None
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    module = _FakeVideoModule()
    with pytest.warns(UserWarning, match="no val_set"):
        trainer.fit(module, datamodule=datamodule)
    assert module.generate_calls == 0


def test_callback_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        RolloutEvalCallback(lengths={"short": 0})


def test_shards_are_disjoint_and_equally_long() -> None:
    shards = [shard_indices(5, rank, 3) for rank in range(3)]
    assert shards == [[0, 3], [1, 4], [2, None]]
    real = [i for shard in shards for i in shard if i is not None]
    assert sorted(real) == list(range(5))
