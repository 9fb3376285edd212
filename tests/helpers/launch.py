"""Launch `train.py` as a multi-rank subprocess (DDP/FSDP tests must not share our process)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240

# An in-process DDP run earlier in the session (test_direct_forcing) leaves MASTER_PORT etc. in
# os.environ; two launches inheriting one port collide (EADDRINUSE, or one run's rank 1 joins the
# other's store and both hang). Each launch must pick its own free port.
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def launcher_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Run `cmd` from the checkout root (`tests.helpers.step_probe` importable)."""
    path = str(ROOT)
    env = {**launcher_env(), "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> str:
    """Wait for a launch; its log is the failure message if it times out or fails."""
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()  # the launcher's rank-1 child dies with it (Lightning's death watch)
        pytest.fail(f"timed out after {TIMEOUT}s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text
