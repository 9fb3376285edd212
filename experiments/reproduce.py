"""The miniature Tab. 1-2 study in one command (paper Sec. 4.3, Tab. 2; App. A.1-A.2).

    python -m experiments.reproduce --out DIR --budget smoke|demo|full [--variants f1,memorypack]

For every seed of the budget it trains, from the shipped configs on one shared synthetic dataset,
FramePack-F1 (relative RoPE), F1 + RoPE consistency, MemoryPack, zero-MemoryPack and structures
B and C (stage 1), then stage 2 from that seed's MemoryPack checkpoint with teacher, direct and
student (k=5) history; and evaluates each on held-out rollouts: Tab. 1's metrics with start/end
drift and per-segment curves (`RolloutEvalCallback`), the memory probe (`eval/probe.py`) and
`generation_quality` (next-segment PSNR against the truth). `experiments/report.py` then writes
DIR/results.md, DIR/results.json and the figures.

Layout: DIR/study.json (the budget; a DIR is never reused with another), DIR/data (the dataset),
DIR/runs/<variant>/seed<s>/ (TensorBoard logs, the composed config.yaml, eval tables and mp4s,
result.json). A run with a result.json is finished and skipped when the command is run again, so
an interrupted study resumes; a run directory without one is an interrupted run, redone.

A progress bar counts the finished runs (on a terminal; the `[study]` lines say which run is
where in any log).

`--jobs N` runs N runs at once, each in its own process with cores / N torch threads (logs in
DIR/logs/); a stage-2 run waits for its seed's MemoryPack run. Small models use a second thread
poorly, so on a free 2-core machine two one-thread runs get through more steps than one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from tqdm.auto import tqdm

from experiments.budgets import BUDGETS, STAGE2_FROM, VARIANTS, Budget, Variant
from lightning_modules.training.checkpoints import read_checkpoint

__all__ = ["main", "run_dir"]

ROOT = Path(__file__).resolve().parents[1]
RESULT = "result.json"
# The data settings stage 2 copies from the stage-1 checkpoint, so both stages read one dataset.
DATA_KEYS = (
    "data_dir", "source", "resolution", "fps", "segment_frames", "num_train_videos",
    "num_val_videos", "min_segments", "max_segments", "seed", "probe_train_videos",
)  # fmt: skip


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed{seed}"


def code_version() -> str:
    """`git rev-parse --short HEAD`, with `+dirty` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def check_study_dir(out: Path, name: str, budget: Budget) -> None:
    """Record the budget in DIR/study.json, or refuse a DIR that holds another budget's study."""
    record = {"budget": name, "settings": budget.as_dict()}
    path = out / "study.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != record:
            raise SystemExit(
                f"{out} holds a study with budget {stored.get('budget')!r} and other settings "
                f"than --budget {name}; resume it with its own budget or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


Layer = Path | dict[str, Any]  # a config file, or a typed override (`train.config_args`)


def _common(out: Path, budget: Budget, variant: Variant, seed: int) -> dict[str, Any]:
    """What every run of the study sets: its seed, where it logs, no callbacks (the study
    evaluates after training, `evaluate` below), and the budget's sampler steps."""
    logger = {"save_dir": str(out / "runs"), "name": variant.name, "version": f"seed{seed}"}
    trainer = {
        "callbacks": [], "enable_checkpointing": False, "limit_val_batches": 0,
        "num_sanity_val_steps": 0, "enable_progress_bar": False,
        "enable_model_summary": False, "logger": {"init_args": logger},
    }  # fmt: skip
    layer: dict[str, Any] = {"seed_everything": seed, "trainer": trainer}
    if budget.sample_steps is not None:
        layer["model"] = {"init_args": {"sample_steps": budget.sample_steps}}
    return layer


def stage1_layers(out: Path, budget: Budget, variant: Variant, seed: int) -> list[Layer]:
    """configs/stage1.yaml, the budget's model sizes, the ablation fragment, then the budget."""
    data = {"data_dir": str(out / "data"), "probe_train_videos": budget.probe_train_videos}
    for key in ("num_train_videos", "num_val_videos", "max_segments", "batch_size"):
        if getattr(budget, key) is not None:
            data[key] = getattr(budget, key)
    run: dict[str, Any] = {"data": {"init_args": data}}
    if budget.stage1_steps is not None:
        run["trainer"] = {"max_steps": budget.stage1_steps}
    sizes = [budget.model_overrides] if budget.model_overrides else []
    fragments = [ROOT / fragment for fragment in variant.fragments]
    return [ROOT / "configs/stage1.yaml", *sizes, *fragments, _common(out, budget, variant, seed),
            run]  # fmt: skip


def stage2_layers(
    out: Path, budget: Budget, variant: Variant, seed: int, checkpoint: Path
) -> list[Layer]:
    """configs/stage2_direct_forcing.yaml from `checkpoint`, on stage 1's data, then the budget."""
    from train import config_args, parse_config

    config = ROOT / "configs/stage2_direct_forcing.yaml"
    model = {"init_checkpoint": str(checkpoint), "history": variant.history, "student_steps": 5}
    data = read_checkpoint(checkpoint).get("datamodule_hyper_parameters") or {}
    missing = [k for k in DATA_KEYS if k not in data]
    if missing:
        raise ValueError(f"{checkpoint} lacks the data settings {missing} stage 2 must share")
    run: dict[str, Any] = {
        "model": {"init_args": model},
        "data": {"init_args": {key: data[key] for key in DATA_KEYS}},
    }
    if budget.stage2_steps is not None:
        shipped = parse_config(config_args(config))
        grow = shipped.data.init_args.curriculum.init_args.grow_every
        scaled = max(1, round(grow * budget.stage2_steps / shipped.trainer.max_steps))
        run["trainer"] = {"max_steps": budget.stage2_steps}
        run["data"]["init_args"]["curriculum"] = {"init_args": {"grow_every": scaled}}
    return [config, _common(out, budget, variant, seed), run]


def fit(layers: list[Layer]) -> Any:
    """Run `train.py fit` in-process (LightningCLI) on the composed layers, without this
    command's own argv."""
    from train import config_args
    from train import main as cli_main

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return cli_main(["fit", *config_args(*layers)])
    finally:
        sys.argv = argv


def evaluate(
    model: L.LightningModule, datamodule: Any, budget: Budget, seed: int, directory: Path
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Tab. 1 metrics + drift + curves + probe (RolloutEvalCallback under `test`), then
    generation_quality; returns (metrics, curves, ground-truth rows)."""
    from callbacks.rollout_eval import RolloutEvalCallback
    from eval.generation_quality import generation_quality
    from eval.probe import PROBE_KEYS

    callback = RolloutEvalCallback(
        lengths=budget.lengths,
        num_videos=budget.eval_videos,
        num_logged_videos=0,
        output_dir=str(directory / "eval"),
        seed=seed,
        probe_videos=budget.probe_videos,
    )
    trainer = L.Trainer(
        accelerator="auto", devices=1, logger=False, callbacks=[callback],
        limit_test_batches=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics: dict[str, float] = {"val_loss": float(trainer.callback_metrics["val/loss"])}
    truth = {}
    for length in budget.lengths:
        metrics.update({f"{length}/{k}": v for k, v in callback.results[length].items()})
        truth[length] = callback.results.get(f"{length}/ground_truth", {})
    probe = callback.results.get("probe", {})  # absent: the model cannot take the probe
    metrics.update({f"probe_{k}": probe.get(k, math.nan) for k in PROBE_KEYS})
    val_set = datamodule.val_set
    examples = [val_set[i] for i in range(min(budget.quality_videos, len(val_set)))]
    quality = generation_quality(
        model, [e for e in examples if e is not None], datamodule.segment_frames, seed=seed
    )
    metrics.update({k: v for k, v in quality.items() if k.endswith(("_psnr", "_ssim"))})
    return metrics, callback.curves, truth


def run_variant(out: Path, budget: Budget, variant: Variant, seed: int, keep: bool) -> None:
    """Train and evaluate one (variant, seed); its result.json marks it finished."""
    directory = run_dir(out, variant.name, seed)
    if directory.exists():  # an interrupted run: start it again
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    start = time.time()
    if variant.stage == 1:
        layers = stage1_layers(out, budget, variant, seed)
    else:
        checkpoint = run_dir(out, STAGE2_FROM, seed) / "model.ckpt"
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"stage 2 starts from {checkpoint}, which is missing: delete "
                f"{checkpoint.parent} so that {STAGE2_FROM} seed {seed} is trained again"
            )
        layers = stage2_layers(out, budget, variant, seed, checkpoint)
    cli = fit(layers)
    train_seconds = time.time() - start
    if variant.name == STAGE2_FROM or keep:
        cli.trainer.save_checkpoint(directory / "model.ckpt")
    train = cli.datamodule.train_set
    start = time.time()
    metrics, curves, truth = evaluate(cli.model, cli.datamodule, budget, seed, directory)
    result = {
        "variant": variant.name,
        "seed": seed,
        "metrics": metrics,
        "curves": curves,
        "ground_truth": truth,
        "trained_segments": max(train.lengths),
        "trained_segments_without_probes": max(
            (n for p, n in zip(train.paths, train.lengths, strict=True) if "probe" not in p.stem),
            default=0,
        ),
        "steps": cli.trainer.global_step,
        "train_seconds": train_seconds,
        "eval_seconds": time.time() - start,
        "code_version": code_version(),
    }
    tmp = directory / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, directory / RESULT)  # atomic: a result.json is always complete
    del cli
    gc.collect()


def study_bar(total: int) -> tqdm:
    """The study's progress: one tick per finished run (shown on a terminal)."""
    return tqdm(total=total, desc="study", unit="run", disable=None, dynamic_ncols=True)


def run_in_parallel(
    out: Path, name: str, todo: list[tuple[Variant, int]], jobs: int, keep: bool
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Run `todo` in up to `jobs` subprocesses (`--run VARIANT:SEED`, one torch thread per core
    share); a stage-2 run waits for its seed's MemoryPack run. Returns (finished, failed)."""
    from experiments.report import write_report

    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running = list(todo), {}
    finished: list[tuple[str, int]] = []
    failed: list[tuple[str, int]] = []
    bar = study_bar(len(todo))
    while pending or running:
        for variant, seed in list(pending):
            if len(running) >= jobs:
                break
            if variant.stage == 2 and not (run_dir(out, STAGE2_FROM, seed) / RESULT).is_file():
                if (STAGE2_FROM, seed) in failed or not any(
                    (v.name, s) == (STAGE2_FROM, seed) for v, s in [*pending, *running]
                ):
                    pending.remove((variant, seed))
                    failed.append((variant.name, seed))
                continue  # its MemoryPack run is still to come
            pending.remove((variant, seed))
            command = [
                sys.executable, "-m", "experiments.reproduce", "--out", str(out),
                "--budget", name, "--run", f"{variant.name}:{seed}", "--threads", str(threads),
            ] + (["--keep_checkpoints"] if keep else [])  # fmt: skip
            log = (logs / f"{variant.name}_seed{seed}.log").open("w")
            print(f"[study] {variant.name} seed {seed} (log: {log.name})", flush=True)
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            running[(variant, seed)] = (process, log)
        time.sleep(0.5)
        for key, (process, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[key]
            done = (key[0].name, key[1])
            (finished if process.returncode == 0 else failed).append(done)
            bar.update(1)
            if process.returncode == 0:
                write_report(out, name, BUDGETS[name])
            else:
                print(f"[study] {done} failed ({process.returncode}): {log.name}", flush=True)
    bar.close()
    return finished, failed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.reproduce", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="study directory")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="demo")
    parser.add_argument(
        "--variants", default=None, help="comma-separated subset (stage 2 adds memorypack)"
    )
    parser.add_argument(
        "--keep_checkpoints", action="store_true", help="save every run's model.ckpt"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel subprocesses (cores shared)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # VARIANT:SEED, internal
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # train.py lives at the repository root
    from experiments.report import write_report

    if args.threads is not None:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    budget = BUDGETS[args.budget]
    if args.run is not None:  # one run of a parallel study (run_in_parallel)
        variant_name, _, seed = args.run.partition(":")
        variant = next(v for v in VARIANTS if v.name == variant_name)
        run_variant(args.out, budget, variant, int(seed), args.keep_checkpoints)
        return {"ran": [(variant_name, int(seed))], "skipped": [], "seconds": 0.0}
    names = [v.name for v in VARIANTS]
    wanted = names if args.variants is None else args.variants.split(",")
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose among {names}")
    if any(v.stage == 2 and v.name in wanted for v in VARIANTS):
        wanted.append(STAGE2_FROM)
    variants = [v for v in VARIANTS if v.name in wanted]
    check_study_dir(args.out, args.budget, budget)
    started = time.time()
    ran, skipped, todo = [], [], []
    for seed in budget.seeds:
        for variant in variants:
            if (run_dir(args.out, variant.name, seed) / RESULT).is_file():
                skipped.append((variant.name, seed))
            else:
                todo.append((variant, seed))
    if args.jobs > 1:
        ran, failed = run_in_parallel(args.out, args.budget, todo, args.jobs, args.keep_checkpoints)
        if failed:
            write_report(args.out, args.budget, budget)
            raise SystemExit(f"runs failed: {failed}; see {args.out / 'logs'}")
    else:
        bar = study_bar(len(todo))
        for variant, seed in todo:
            bar.set_postfix_str(f"{variant.name} seed {seed}")
            print(f"[study] {variant.name} seed {seed}", flush=True)
            run_variant(args.out, budget, variant, seed, args.keep_checkpoints)
            ran.append((variant.name, seed))
            write_report(args.out, args.budget, budget)
            bar.update(1)
        bar.close()
    write_report(args.out, args.budget, budget)
    seconds = time.time() - started
    print(f"[study] {len(ran)} runs trained, {len(skipped)} kept; {seconds:.0f} s; {args.out}")
    return {"ran": ran, "skipped": skipped, "seconds": seconds}


if __name__ == "__main__":
    main()
