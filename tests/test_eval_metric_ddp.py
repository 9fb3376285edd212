"""VideoScoreMean: sum states give the same means on 2 CPU ranks (gloo) as in one process.

Run as two subprocesses (this file with --worker) so process groups never touch the pytest process.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.backends.registry import build_backends
from eval.metric import VideoScoreMean
from eval.video_scores import score_keys, score_video
from tests.helpers.launch import launcher_env

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

SPECS = {"subject": "pixel"}
NUM_VIDEOS = 5  # odd: the two shards have different sizes


def _video(i: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(i)
    base = torch.rand(1, 3, 8, 12, generator=gen) * 255
    frames = torch.nn.functional.interpolate(base, size=(32, 48), mode="bilinear")
    frames = frames.expand(12, -1, -1, -1).clone()
    frames[-2:] += torch.rand(2, 3, 32, 48, generator=gen) * 40 * i  # video-specific drift
    return frames.clamp(0, 255).to(torch.uint8)


def _score_shard(rank: int, world: int) -> dict[str, float]:
    backends = build_backends(SPECS)
    metric = VideoScoreMean(score_keys(backends))
    for i in range(rank, NUM_VIDEOS, world):
        metric.update(score_video(_video(i), backends, fps=8))
    return {k: float(v) for k, v in metric.compute().items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values = _score_shard(rank, world)  # every rank calls compute (it all-reduces)
        Path(out, f"rank{rank}.json").write_text(json.dumps(values))
        # Rank 0 hosts the TCP store: leaving before rank 1 is done with it aborts rank 1 (SIGABRT).
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_ddp_equals_single_process(tmp_path: Path) -> None:
    single = _score_shard(0, 1)
    env = {**launcher_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    port = str(_free_port())
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    # Two worker processes launched side by side, like torchrun would.
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(r), port, str(tmp_path)],
            env=env,
            stdout=logs[r].open("w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for r in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    for rank in range(2):
        ddp = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert ddp.keys() == single.keys()
        for key, value in single.items():
            if math.isnan(value):
                assert math.isnan(ddp[key]), key
            else:
                assert ddp[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    # The shards really differ, so equality is not trivial.
    assert _score_shard(0, 2) != _score_shard(1, 2)


def test_nan_scores_are_not_counted() -> None:
    metric = VideoScoreMean(["a@x", "b@unavailable"])
    metric.update({"a@x": 1.0, "b@unavailable": math.nan})
    metric.update({"a@x": 0.0, "b@unavailable": math.nan})
    result = metric.compute()
    assert float(result["a@x"]) == 0.5 and math.isnan(float(result["b@unavailable"]))
    with pytest.raises(KeyError, match="c@y"):
        metric.update({"c@y": 1.0})


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(int(sys.argv[2]), 2, sys.argv[3], sys.argv[4])
