"""GPU check: the `--gpu` paths run, learn what the CPU path learns, and leave models a CPU machine loads.

    python benchmarks/gpu_check.py                  # on a machine with one CUDA GPU, ~5 minutes
    python benchmarks/gpu_check.py --smoke          # a tiny market; without a GPU, the same steps on the CPU
                                                    # (a check of this script, not of the GPU path)

Each step runs on its own and reports ok/FAILED with its seconds, so one failure does not hide the others:
1. ``fit_in_process`` (the epoch protocol of `convfm train`, no Ray) on CPU, and on the GPU with and without
   bf16 autocast, from the same seed and data: validation AUC / log loss per run and median epoch seconds;
   then the GPU model ranks the test split's live catalog (``evaluate_split``).
2. What users run: `convfm train --gpu --workers 1` (Ray Train, in-memory preparation), `convfm train --gpu
   --prepare distributed` (Ray Data streams the shard to the GPU worker) and `convfm tune --gpu` (2 trials);
   then `convfm evaluate` of the GPU-trained model with no GPU visible (``CUDA_VISIBLE_DEVICES=""``).
Multi-GPU DDP over NCCL needs a machine with two GPUs and is not covered here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.evaluation.report import evaluate_split
from convfm.training.in_process import fit_in_process

ROOT = Path(__file__).resolve().parents[1]
RESULTS: list[tuple[str, str, float, str]] = []  # (step, ok/FAILED, seconds, detail)


def step(name: str, action: Callable[[], str]) -> None:
    """Run one check, recording its outcome, seconds and a one-line detail (the error's last line if it fails)."""
    started = time.perf_counter()
    try:
        detail, status = action(), "ok"
    except Exception as exc:  # a failed step is a result to report, not the end of the check
        traceback.print_exc()
        detail, status = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:] or ''}", "FAILED"
    RESULTS.append((name, status, time.perf_counter() - started, detail))
    print(f"[{status}] {name}: {detail}", flush=True)


def fit(data: Any, epochs: int, use_gpu: bool, use_amp: bool) -> tuple[Any, str]:
    train = TrainConfig(num_epochs=epochs, patience=epochs, use_gpu=use_gpu, use_amp=use_amp, seed=0)
    model, history = fit_in_process(data, ModelConfig(), train)
    device = next(model.parameters()).device
    if use_gpu and device.type != "cuda":
        raise RuntimeError(f"use_gpu trained on {device}")
    speed = statistics.median(float(r["samples_per_s"]) for r in history)
    last = history[-1]
    return model, (f"device {device}, val AUC {last['val_roc_auc']:.4f}, log loss {last['val_log_loss']:.4f}, "
                   f"median {speed:,.0f} samples/s")


def command(args: list[str], timeout: int, env: dict[str, str] | None = None) -> str:
    """One CLI command as a user runs it; its output's last lines on failure."""
    done = subprocess.run([sys.executable, "-m", "convfm.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", flush=True)
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {(done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]}")
    return (done.stdout.strip().splitlines() or ["(no output)"])[-1][:160]


def metrics_of(run: Path) -> str:
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    keep = {k: v for k, v in zip(header, last) if k in ("epoch", "val_roc_auc", "val_log_loss", "samples_per_s")}
    return ", ".join(f"{k} {float(v):.4g}" for k, v in keep.items())


def hit_rates(report: dict[str, Any]) -> str:
    """A test report's (``evaluate_split``, ``convfm evaluate``) model and popularity figures, one line; a metric
    that could not be computed (null in the JSON report) shows as "-"."""
    def shown(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    return (f"test HR@10 {shown(report['model']['hr@10'])}, AUC {shown(report['model']['roc_auc'])}; popularity "
            f"HR@10 {shown(report['popularity']['hr@10'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny market and one epoch")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        parser.error("no CUDA GPU here (torch.cuda.is_available() is False); --smoke runs the steps on the CPU")
    users, jobs, interactions, epochs = (600, 400, 4_000, 1) if args.smoke else (10_000, 5_000, 100_000, 3)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    market = workdir / "market"
    print(f"torch {torch.__version__}, CUDA available {torch.cuda.is_available()}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
          + f"; {users} users, {jobs} jobs, {interactions} interactions, {epochs} epochs; {workdir}", flush=True)
    write_market(generate_market(users, jobs, interactions, seed=0), market, fmt="parquet", parts=4)
    data = prepare_data(DataConfig(path=str(market), split="global_time"))
    models: dict[str, Any] = {}

    def fitted(name: str, use_gpu: bool, use_amp: bool) -> Callable[[], str]:
        def run() -> str:
            models[name], detail = fit(data, epochs, use_gpu, use_amp)
            return detail
        return run

    step("in-process CPU", fitted("cpu", False, False))
    step("in-process GPU, bf16 autocast", fitted("gpu", gpu, True))
    step("in-process GPU, fp32", fitted("gpu32", gpu, False))
    step("GPU model ranks the live catalog", lambda: hit_rates(evaluate_split(models["gpu"], data, "test",
                                                                             max_events=1000)))
    flag = ["--gpu"] if gpu else []
    base = ["train", "--config", "configs/train.yaml", "--data", str(market), "--workers", "1", *flag,
            "--epochs", str(epochs)]
    run_memory, run_streamed = workdir / "run-gpu", workdir / "run-gpu-distributed"

    def trained(prepare: str, run: Path) -> Callable[[], str]:
        return lambda: (command([*base, "--prepare", prepare, "--out", str(run)], 600), metrics_of(run))[1]

    def evaluated() -> str:
        command(["evaluate", "--model", str(run_memory / "best"), "--data", str(market), "--max-events", "1000"],
                600, env={"CUDA_VISIBLE_DEVICES": ""})
        return hit_rates(json.loads((run_memory / "best.eval_test.json").read_text()))

    step("convfm train --gpu (memory)", trained("memory", run_memory))
    step("convfm train --gpu --prepare distributed", trained("distributed", run_streamed))
    step("convfm tune --gpu, 2 trials",
         lambda: command(["tune", "--config", "configs/tune.yaml", "--data", str(market), "--samples", "2",
                          "--max-concurrent", "1", "--epochs", str(epochs), *flag, "--out", str(workdir / "tune"),
                          "--registry", str(workdir / "models")], 600))
    step("convfm evaluate, GPU-trained model, no GPU visible", evaluated)
    width = max(len(r[0]) for r in RESULTS)
    print(f"\n{'step':<{width}}  status   seconds  detail")
    for name, status, seconds, detail in RESULTS:
        print(f"{name:<{width}}  {status:<7} {seconds:8.1f}  {detail}")
    if args.out:
        args.out.write_text(json.dumps([dict(zip(("step", "status", "seconds", "detail"), r)) for r in RESULTS],
                                       indent=2))
    sys.exit(1 if any(r[1] != "ok" for r in RESULTS) else 0)


if __name__ == "__main__":
    main()
