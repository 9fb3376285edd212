"""The CLI end to end on tiny configs: fit, validate, test, predict, print_config, media written."""

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from callbacks.video_logger import contact_sheet
from datamodules.video_io import read_video
from eval.probe import main as probe_main
from train import main

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

ROOT = Path(__file__).resolve().parents[1]


def cli_args(tmp: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs/stage1.yaml"),
        "--config", str(ROOT / "tests/configs/tiny.yaml"),
        f"--data.init_args.data_dir={tmp / 'data'}",
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'runs'}",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("cli")
    cli = main(["fit", *cli_args(tmp)])
    return tmp, cli


def test_fast_dev_run(tmp_path: Path) -> None:
    cli = main(["fit", *cli_args(tmp_path, "--trainer.fast_dev_run=1")])
    assert cli.trainer.global_step == 1
    assert "train/loss" in cli.trainer.callback_metrics


def test_fit_logs_video_and_writes_mp4(trained: tuple[Path, object]) -> None:
    tmp, cli = trained
    log_dir = Path(cli.trainer.log_dir)
    events = list(log_dir.glob("events.out.tfevents.*"))
    assert events, f"no event file in {log_dir}"
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "val/loss" in acc.Tags()["scalars"]
    # add_video writes an animated-GIF image summary; it is silently empty without moviepy<2.
    assert "rollout/val" in acc.Tags()["images"], acc.Tags()
    assert len(acc.Images("rollout/val")[0].encoded_image_string) > 100
    # The contact sheet: ground truth over rollout for each logged example, as PNG and image.
    assert "rollout/sheet" in acc.Tags()["images"], acc.Tags()
    sheet = np.asarray(Image.open(log_dir / "rollouts" / "sheet.png"))
    frames, size, scale = 3 * cli.datamodule.segment_frames, cli.datamodule.resolution, 3
    assert sheet.shape[0] == 2 * 2 * (size[0] * scale + 2) + 2  # 2 x (truth, rollout), gaps
    assert sheet.shape[1] >= frames * size[1] * scale
    mp4s = sorted((log_dir / "rollouts").glob("*.mp4"))
    assert mp4s
    with av.open(str(mp4s[0])) as container:
        n = sum(1 for _ in container.decode(video=0))
    assert n == 3 * cli.datamodule.segment_frames  # RolloutVideoLogger num_segments = 3
    # The run's config as text, hparams with result metrics (not hp_metric = -1), the layout.
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    (experiment,) = [
        data.experiment
        for data in map(HParamsPluginData.FromString, acc.PluginTagToContent("hparams").values())
        if data.HasField("experiment")
    ]
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert {"val/loss", "eval/long/drift/subject_consistency@effnet_lite0"} <= set(metrics)
    assert "hp_metric" not in metrics and "hp_metric" not in acc.Tags()["scalars"]
    params = {h.name for h in experiment.hparam_infos}
    assert "model/init_args/dit/init_args/width" in params and "trainer/max_steps" in params


def test_validate_and_test_run_from_checkpoint(trained: tuple[Path, object]) -> None:
    tmp, cli = trained
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    assert Path(ckpt).is_file()
    for sub in ("validate", "test"):
        out = main([sub, *cli_args(tmp), f"--ckpt_path={ckpt}"])
        assert "val/loss" in out.trainer.callback_metrics
    # `test` runs the long-rollout evaluation: metrics per length, backend in every name.
    metrics = out.trainer.callback_metrics
    assert "eval/long/subject_consistency@effnet_lite0" in metrics, sorted(metrics)
    assert "eval/short/drift/background_consistency@pixel" in metrics
    # Named by the checkpoint's run and step (test has no step of its own).
    assert list(Path(out.trainer.log_dir).glob("eval_test_stage1_version_0_step0000002.md"))


def test_predict_writes_decodable_mp4(trained: tuple[Path, object]) -> None:
    """One folder per run and step, a fresh one when predicting the same checkpoint again; a
    sampler flag applies on top of the checkpoint, another model flag is refused."""
    tmp, cli = trained
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    out_dir = tmp / "pred"
    args = ["predict", *cli_args(tmp), f"--ckpt_path={ckpt}",
            f"--trainer.callbacks.output_dir={out_dir}"]  # fmt: skip
    first = main(args)
    assert first.model.hparams.sample_steps == 2  # the checkpoint's (tiny.yaml)
    files = sorted((out_dir / "stage1_version_0").glob("*/*.mp4"))
    assert files == sorted(out_dir.rglob("*.mp4")) and len(files) == 2  # num_predict_videos
    assert files[0].parent.name == "step_0000002"
    with av.open(str(files[0])) as container:
        n = sum(1 for _ in container.decode(video=0))
    assert n == 2 * cli.datamodule.segment_frames  # rollout_segments = 2 in tiny.yaml
    again = main([*args, "--model.init_args.sample_steps=1"])
    assert again.model.hparams.sample_steps == 1  # applied, not silently ignored
    assert len(list(out_dir.rglob("step_0000002-2/*.mp4"))) == 2  # nothing overwritten
    with pytest.raises(ValueError, match=r"--model.init_args.lr=0.5 \(the checkpoint has 0.001"):
        main([*args, "--model.init_args.lr=0.5"])


def test_predict_continues_the_held_out_videos(trained: tuple[Path, object]) -> None:
    """data predict_prefix_segments=1: each mp4 starts with its real video's first segment (a
    data setting: LightningCLI replaces model arguments with the checkpoint's under ckpt_path)."""
    tmp, cli = trained
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    out_dir = tmp / "continued"
    main([
        "predict", *cli_args(tmp), f"--ckpt_path={ckpt}",
        f"--trainer.callbacks.output_dir={out_dir}", "--data.init_args.predict_prefix_segments=1",
    ])  # fmt: skip
    dm, frames = cli.datamodule, cli.datamodule.segment_frames
    files = sorted(out_dir.rglob("*.mp4"))
    assert [f.stem for f in files] == sorted(dm.val_set.paths[i].stem for i in range(2))
    for path in files:
        written = read_video(path)
        assert written.shape[0] == 2 * frames  # rollout_segments = 2, the prefix included
        source = dm.val_set.paths[[p.stem for p in dm.val_set.paths].index(path.stem)]
        real = read_video(source, dm.fps, dm.resolution, frames)
        # Two H.264 round trips at CRF 12: a few grey levels apart, not a generated segment.
        assert (written[:frames].float() - real.float()).abs().mean() < 4.0


def test_memory_probe_runs_offline_on_a_checkpoint(trained: tuple[Path, object]) -> None:
    """`python -m eval.probe --ckpt`: the checkpoint's data size and segment length, JSON out."""
    tmp, cli = trained
    out = tmp / "probe.json"
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    probe_main(["--ckpt", ckpt, "--num_videos", "2", "--decode_videos", "4", "--json", str(out)])
    scores = json.loads(out.read_text())
    assert scores["videos"] == 2 and scores["chance"] == 1 / 8 and scores["oracle"] == 1.0
    assert scores["decode_videos"] == 4 and 0 <= scores["decodable_return"] <= 1
    assert 0 <= scores["memory"] <= 1 and 0 <= scores["memory_gates_shut"] <= 1


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *cli_args(tmp_path), "--print_config"])
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["dit"]["init_args"]["width"] == 32
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    cli = main(["fit", "--config", str(path), "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1


def test_contact_sheet_places_truth_over_rollout() -> None:
    torch.manual_seed(0)
    truth = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    rollout = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    sheet = contact_sheet([truth], [rollout], scale=2, gap=1)
    cell = 8 * 2 + 1  # an enlarged frame and its gap
    assert sheet.shape == (3, 2 * cell + 1, 8 * cell + 1)
    for k in (0, 5):  # row 0 is the truth, row 1 the rollout, frame k in column k
        left = 1 + k * cell
        torch.testing.assert_close(sheet[:, 1:17:2, left : left + 16 : 2], truth[k])
        torch.testing.assert_close(
            sheet[:, 1 + cell : 17 + cell : 2, left : left + 16 : 2], rollout[k]
        )
    left = 1 + 7 * cell  # the truth is shorter than the rollout: its cell stays blank
    assert (sheet[:, 1:17, left : left + 16] == 255).all()


def test_generation_quality_benchmark_reads_a_trained_checkpoint(
    trained: tuple[Path, object], tmp_path: Path
) -> None:
    from benchmarks.generation_quality import main as generation_quality

    _, cli = trained
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    out = generation_quality(
        ["--ckpt", ckpt, "--num_videos", "2", "--rollout_videos", "2", "--depth", "2",
         "--json", str(tmp_path / "q.json")]
    )  # fmt: skip
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved == json.loads(json.dumps(out))  # what main returns is what it wrote
    for key in ("reference_psnr", "next_segment_psnr", "next_segment_ssim", "copy_last_psnr"):
        assert math.isfinite(saved[key]), key
    assert math.isfinite(saved["untrained"]["next_segment_psnr"])
    assert saved["sample_steps"] == cli.model.hparams.sample_steps
    rollout = saved["rollout"]
    assert len(rollout["psnr_by_depth"]) == len(rollout["static_by_depth"]) == 2
    assert rollout["rollout_videos"] == 2 and math.isfinite(rollout["grid_edge_truth"])


def test_drift_benchmark_compares_each_checkpoint_on_the_same_rollouts(
    trained: tuple[Path, object], tmp_path: Path
) -> None:
    """Two runs of the same checkpoint differ by exactly zero at every depth (same videos, same
    noise); a checkpoint with another output head is read as itself, not as the first run's;
    depths past the training length (tiny: 3 segments) are apart."""
    from benchmarks.drift_by_history import main as drift

    _, cli = trained
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    other = torch.load(ckpt, weights_only=False)
    torch.manual_seed(0)  # the tiny run's head is still near its zero init: give it a real one
    for key in ("dit.head.linear.weight", "dit.head.linear.bias"):
        other["state_dict"][key] = 0.3 * torch.randn_like(other["state_dict"][key])
    torch.save(other, tmp_path / "other_head.ckpt")
    out = drift(
        ["--run", f"a={ckpt}", "--run", f"b={ckpt},{ckpt}", "--run", f"z={tmp_path / 'other_head.ckpt'}",
         "--videos", "2", "--depth", "3", "--json", str(tmp_path / "d.json"),
         "--plot", str(tmp_path / "d.png")]
    )  # fmt: skip
    assert json.loads((tmp_path / "d.json").read_text()) == json.loads(json.dumps(out))
    assert Image.open(tmp_path / "d.png").size[0] > 0
    summary = out["summary"]
    assert summary["inside_depths"] == [2] and summary["beyond_depths"] == [3]  # 1 + 3 > 3
    same = summary["by_run"]["b"]["vs_a"]
    assert [mean for mean, _ in same] == [0.0, 0.0, 0.0] and len(out["runs"]["b"]) == 2
    changed = out["runs"]["z"][0]["margin"]
    assert all(
        abs(m - n) > 1e-3 for m, n in zip(changed, out["runs"]["a"][0]["margin"], strict=True)
    )
    for seed in out["runs"]["a"]:  # margins are the rollout's PSNR over the static copy's
        margin = [p - s for p, s in zip(seed["psnr"], seed["static"], strict=True)]
        assert seed["margin"] == pytest.approx(margin)
        assert all(math.isfinite(x) for x in seed["true"] + seed["edge"])


def test_fit_resumes_the_latest_run_with_ckpt_path_last(
    trained: tuple[Path, object], caplog: pytest.LogCaptureFixture
) -> None:
    """`fit --ckpt_path last` continues the newest run of the config in its own version
    directory and says which file it loaded (Lightning's `last` looked in a new, empty one)."""
    tmp, cli = trained
    last = Path(cli.trainer.checkpoint_callback.last_model_path)
    with caplog.at_level("INFO"):
        resumed = main(["fit", *cli_args(tmp), "--ckpt_path", "last", "--trainer.max_steps=3"])
    assert f"--ckpt_path last: resuming from {last}" in caplog.text
    assert resumed.trainer.ckpt_path == str(last) and resumed.trainer.global_step == 3
    assert resumed.trainer.log_dir == cli.trainer.log_dir  # the same version directory
    assert torch.load(last, weights_only=False)["global_step"] == 3
    with pytest.raises(FileNotFoundError, match="--ckpt_path last: no last.ckpt in"):
        main(["fit", *cli_args(tmp / "elsewhere"), "--ckpt_path", "last"])
