"""RolloutEvalCallback end to end on CPU with a fake generator; reads the TensorBoard events back."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from callbacks.rollout_eval import RolloutEvalCallback
from datamodules.video_io import read_video
from eval.backends.registry import ROLES, build_backends
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
        on_segment: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        assert image.device == self.device and len(captions) == image.shape[0]
        assert frames_per_segment == FRAMES_PER_SEGMENT  # the datamodule's, passed explicitly
        self.generate_calls += 1
        frames = [image.roll(t, dims=-1) for t in range(num_segments * FRAMES_PER_SEGMENT)]
        video = torch.stack(frames, dim=1)  # [b, T, c, h, w] in [-1, 1]
        for k in range(num_segments) if on_segment is not None else ():
            on_segment(k)
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


def _scalars(log_dir: Path) -> tuple[dict[str, list], dict[str, list]]:
    events = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {log_dir}"
    scalars: dict[str, list] = {}
    images: dict[str, list] = {}  # add_video writes an animated-GIF image summary
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return scalars, images


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

    scalars, images = _scalars(Path(logger.log_dir))
    key = "eval/long/subject_consistency@pixel"
    assert key in scalars and 0.0 < scalars[key][-1].value < 1.0  # rolling image: not static
    # 1 px per frame > threshold 6 * 24 / 256 = 0.56 px: the rollout counts as dynamic.
    assert scalars["eval/short/dynamic_degree@opencv_dis_verified"][-1].value == 1.0
    assert "eval/short/drift/subject_consistency@pixel" in scalars
    # Per-segment curves: one tag per segment, at the global step (fit: 1; test: the module's
    # step, 1 again), so each evaluation adds a point instead of overwriting the last one.
    for segment in range(3):
        curve = scalars[f"eval_curve/long/subject_consistency/seg{segment:02d}"]
        assert [event.step for event in curve] == [1, 1]
    assert "eval_curve/long/subject_consistency/seg03" not in scalars
    assert [image.step for image in images["eval_curve/long"]] == [1, 1]  # the curves as a figure
    # PSNR by depth against the held-out video: segment 0 of the rollout is its first segment.
    psnr = scalars["eval_curve/long/psnr/seg00"][-1].value
    assert psnr == pytest.approx(_psnr_segment0(datamodule, module), rel=1e-5)
    # Rollout beside its ground truth: 2 x 32 px + a 2 px gap, one GIF frame per video frame.
    (video,) = [images[t][-1] for t in images if t.startswith("rollout/short/")]
    assert (video.width, video.height) == (2 * 32 + 2, 24)

    run_dir = Path(logger.log_dir)
    mp4s = sorted(run_dir.rglob("*.mp4"))
    assert len(mp4s) == 8
    frames = read_video(next(p for p in mp4s if p.parent.name == "short"))
    assert frames.shape == (2 * FRAMES_PER_SEGMENT, 3, 24, 32)
    assert {p.name for p in run_dir.glob("eval_*.csv")} == {
        "eval_val_step0000001.csv", "eval_test_untrained_step0000001.csv",
    }  # fmt: skip
    (table,) = run_dir.glob("eval_test_*.csv")
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


def _psnr_segment0(datamodule: _FakeDataModule, module: _FakeVideoModule) -> float:
    """Mean over the 2 rollouts of segment 0's PSNR against the true segment 0, by hand."""
    values = []
    for item in datamodule.val_set[:2]:
        truth = _frames(item["video"][:1]).float()
        rollout = module.generate(item["image"][None], [""], 1, frames_per_segment=4)[0].float()
        mse = (rollout - truth).pow(2).mean()
        values.append(float(10 * torch.log10(255**2 / mse)))
    return sum(values) / len(values)


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
    (table,) = tmp_path.glob("eval_val_step*.csv")
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


def test_callback_fires_every_n_epochs_and_at_the_last_epoch(tmp_path: Path) -> None:
    """every_n_epochs=2 over 3 epochs: after epoch 2 and after epoch 3, the last (a config that
    trains fewer epochs than the evaluation's period still ends with one evaluation)."""
    callback = RolloutEvalCallback(lengths={"short": 1}, every_n_epochs=2, num_videos=1,
                                   backends={"subject": "pixel"}, output_dir=str(tmp_path))  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module = _FakeVideoModule()
    trainer.fit(module, datamodule=_FakeDataModule())
    assert module.generate_calls == 2  # 1 video x 1 length, at epochs 2 and 3, not at epoch 1


def test_callback_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        RolloutEvalCallback(lengths={"short": 0})


def test_shards_are_disjoint_and_equally_long() -> None:
    shards = [shard_indices(5, rank, 3) for rank in range(3)]
    assert shards == [[0, 3], [1, 4], [2, None]]
    real = [i for shard in shards for i in shard if i is not None]
    assert sorted(real) == list(range(5))


def test_callback_names_its_tensorboard_charts_and_result_metrics() -> None:
    callback = RolloutEvalCallback(
        lengths={"short": 2, "long": 4}, backends={"subject": "pixel"}, probe_videos=2
    )
    metrics = callback.hparam_metrics()
    assert "eval/long/subject_consistency@pixel" in metrics and "eval/probe/memory" in metrics
    assert "eval/long/drift/subject_consistency@pixel" in metrics
    assert not any("/short/" in m or "/start/" in m for m in metrics)  # the longest, no ends
    layout = callback.tensorboard_layout()
    drift = layout["drift: start vs end (all lengths)"]["subject_consistency"]
    assert drift == ["Multiline", ["eval/[^/]+/start/subject_consistency@.*",
                                   "eval/[^/]+/end/subject_consistency@.*"]]  # fmt: skip
    depth = layout["PSNR against the held-out video, by rollout depth (one line per segment)"]
    assert depth["long"] == ["Multiline", ["eval_curve/long/psnr/.*"]]
    assert "memory probe" in layout


def test_progress_bar_follows_the_rollouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar over every generated segment (rank 0, when the trainer shows a progress bar)."""
    bars: list[dict] = []

    class Bar:
        def __init__(self, total: int, desc: str, **kwargs: object) -> None:
            bars.append({"total": total, "desc": desc, "done": 0, "closed": False})

        def update(self, n: int) -> None:
            bars[-1]["done"] += n

        def set_description(self, desc: str) -> None:
            bars[-1]["desc"] = desc

        def close(self) -> None:
            bars[-1]["closed"] = True

    monkeypatch.setattr("callbacks.rollout_logging.tqdm", Bar)
    cheap = {role: "unavailable" for role in ROLES} | {"subject": "pixel"}
    callback = RolloutEvalCallback(
        lengths={"short": 2}, num_videos=2, backends=cheap, output_dir=str(tmp_path)
    )
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=0, callbacks=[callback], enable_checkpointing=False, logger=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_FakeVideoModule(), datamodule=_FakeDataModule())
    assert bars == [{"total": 4, "desc": "rollout evaluation", "done": 4, "closed": True}]
