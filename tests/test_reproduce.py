"""The study command end to end at the smoke budget: every variant trained from the shipped
configs, evaluated, reported (results.json schema, Tab. 2 table, figures), and resumed."""

import json
import math
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch
import yaml
from PIL import Image

from experiments.budgets import BUDGETS, VARIANTS
from experiments.reproduce import main, run_dir

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

NAMES = [v.name for v in VARIANTS]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The smoke study, on one thread: its ops are tiny, and a second thread only contends
    (three times slower on a busy 2-core box)."""
    out = tmp_path_factory.mktemp("study")
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield out, main(["--out", str(out), "--budget", "smoke"])
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def config(out: Path, variant: str, seed: int) -> dict[str, Any]:
    return yaml.safe_load((run_dir(out, variant, seed) / "config.yaml").read_text())


def test_every_variant_is_trained_evaluated_and_reported(study: tuple[Path, dict]) -> None:
    out, summary = study
    seeds = BUDGETS["smoke"].seeds
    assert sorted(summary["ran"]) == sorted((n, s) for n in NAMES for s in seeds)
    report = json.loads((out / "results.json").read_text())
    assert set(report["variants"]) == set(NAMES)
    for name in NAMES:
        entry = report["variants"][name]
        assert set(entry) == {"metrics", "seeds"} and entry["seeds"] == len(seeds)
        metrics = entry["metrics"]
        assert metrics["probe_chance"] == 1 / 8 and metrics["probe_oracle"] == 1.0
        assert 0 <= metrics["probe_memory"] <= 1
        for key in ("long/subject_consistency@effnet_lite0", "long/drift/imaging_quality@"
                    "niqe_synthetic", "next_segment_psnr", "reference_psnr", "val_loss"):  # fmt: skip
            assert math.isfinite(metrics[key]), (name, key)
    # Memory gates exist exactly where SemanticPack does (NaN for the F1 rows).
    assert math.isnan(report["variants"]["f1"]["metrics"]["probe_memory_gates_shut"])
    assert math.isfinite(report["variants"]["memorypack"]["metrics"]["probe_memory_gates_shut"])
    table = (out / "results.md").read_text()
    assert "| ground truth" in table and "Subject ↑" in table and "ΔSubject ↓" in table
    assert all(v.label in table for v in VARIANTS) and "chance (random colour)" in table
    for figure in ("drift_curves.png", "memory_probe.png"):
        assert f"({figure})" in table
        with Image.open(out / figure) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_variants_come_from_the_shipped_configs(study: tuple[Path, dict]) -> None:
    """The ablation fragments win over the smoke sizes; stage 2 starts from the MemoryPack run
    of its own seed, on the same dataset, with the history mode of its row."""
    out, _ = study
    f1 = config(out, "f1", 0)["model"]["init_args"]
    assert f1["semantic_pack"] is None and f1["dit"]["init_args"]["rope_layout"] == "relative"
    assert f1["dit"]["init_args"]["width"] == 32  # the smoke size
    rope = config(out, "f1_rope", 0)["model"]["init_args"]
    assert rope["semantic_pack"] is None and rope["dit"]["init_args"]["rope_layout"] == "absolute"
    packs = {n: config(out, n, 0)["model"]["init_args"]["semantic_pack"]["init_args"]
             for n in ("memorypack", "zero_memorypack", "structure_b", "structure_c")}  # fmt: skip
    assert [p["structure"] for p in packs.values()] == ["A", "A", "B", "C"]
    assert [p["psi_init"] for p in packs.values()] == ["semantic", "zero", "semantic", "semantic"]
    data = config(out, "memorypack", 1)["data"]["init_args"]
    for mode in ("teacher", "direct", "student"):
        stage2 = config(out, f"stage2_{mode}", 1)
        model = stage2["model"]["init_args"]
        assert stage2["model"]["class_path"].endswith("DirectForcingModule")
        assert model["history"] == mode and model["student_steps"] == 5
        assert model["init_checkpoint"] == str(run_dir(out, "memorypack", 1) / "model.ckpt")
        assert stage2["data"]["init_args"]["data_dir"] == data["data_dir"]
        assert stage2["data"]["init_args"]["num_train_videos"] == data["num_train_videos"]
    assert stage2["trainer"]["max_steps"] == BUDGETS["smoke"].stage2_steps


def test_a_rerun_keeps_finished_runs_and_redoes_an_interrupted_one(
    study: tuple[Path, dict],
) -> None:
    out, _ = study
    again = main(["--out", str(out), "--budget", "smoke"])
    assert again["ran"] == [] and len(again["skipped"]) == len(NAMES) * 2
    interrupted = run_dir(out, "structure_c", 1)
    kept = (run_dir(out, "f1", 0) / "result.json").stat().st_mtime_ns
    (interrupted / "result.json").unlink()  # killed before it finished
    resumed = main(["--out", str(out), "--budget", "smoke", "--variants", "structure_c,f1"])
    assert resumed["ran"] == [("structure_c", 1)]
    assert (interrupted / "result.json").is_file()
    assert (run_dir(out, "f1", 0) / "result.json").stat().st_mtime_ns == kept
    with pytest.raises(SystemExit, match="budget 'smoke'"):
        main(["--out", str(out), "--budget", "demo"])
    # Two runs at once, in subprocesses: a stage-1 run and a stage-2 run (its MemoryPack is done).
    for variant, seed in (("structure_b", 0), ("stage2_direct", 1)):
        (run_dir(out, variant, seed) / "result.json").unlink()
    parallel = main(["--out", str(out), "--budget", "smoke", "--jobs", "2"])
    assert sorted(parallel["ran"]) == [("stage2_direct", 1), ("structure_b", 0)]
    assert (out / "logs" / "stage2_direct_seed1.log").is_file()
    assert json.loads((out / "results.json").read_text())["variants"]["structure_b"]["seeds"] == 2
