"""`convfm demo`: the newcomer's tour on synthetic data: synthesize, train (Ray Train), evaluate, tune
(Ray Tune + ASHA), serve (Ray Serve) and query over real HTTP, post a job to the live catalog and send an
event (``convfm.cli.demo_service``), then shut everything down. Every stage runs on one local Ray, started by
the training stage; each prints its seconds, and the last line sums them up."""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from convfm.store.artifacts import load_model_dir
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.evaluation.report import evaluate_split, format_report
from convfm.data.prepare import PreparedData, prepare_data
from convfm.data.synth import generate_market, write_market

STAGES = 8
# On the demo's one-node local Ray nothing can be preempted and no metrics exporter listens: each of these Ray
# Train features starts one more actor process per Train run (and per Tune trial), CPU a 2-core machine lacks.
LOCAL_RAY_TRAIN_ENV = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED")
# Positives that each epoch's validation ranks against the live catalog (training's default: 1000). Ranking
# every validation positive cost ~8 s an epoch on 2 cores, four times an epoch's training; the per-epoch ranking
# figures only inform (early stopping and Tune read the validation log loss and AUC), and stage 3 ranks every
# test positive.
VALIDATION_EVENTS = 150


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", metavar="DIR", help="where data, runs and models go "
                        "(default runs/demo; a previous demo's is replaced, any other non-empty one refused)")
    parser.add_argument("--users", type=int, default=3_000, help="synthetic users (default 3000)")
    parser.add_argument("--jobs", type=int, default=3_000, help="synthetic jobs (default 3000)")
    parser.add_argument("--interactions", type=int, default=15_000, help="synthetic interactions (default 15000)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train CPU workers (default 2)")
    parser.add_argument("--trials", type=int, default=2, help="Tune trials, run 2 at a time (default 2; 0 skips)")
    parser.add_argument("--trial-epochs", type=int, default=2, help="epochs per Tune trial, at most (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


MARKER = ".convfm-demo"  # written first into every demo workdir: only such a directory may be wiped


def claim_workdir(workdir: Path) -> None:
    """Make `workdir` an empty demo directory, wiping it only when an earlier demo made it.

    The path comes from the user (`--workdir ~` is one typo away), so a non-empty directory without the
    marker is refused untouched."""
    real = workdir.resolve()  # a symlinked workdir: judge and replace the directory it points at
    if real.exists() and not real.is_dir():
        raise ConfigError(f"--workdir {workdir} is not a directory: choose another --workdir", field="workdir")
    if real.is_dir() and any(real.iterdir()):
        if not (real / MARKER).is_file():
            raise ConfigError(f"--workdir {workdir} is not empty and not a previous demo's (no {MARKER}): "
                              "the demo replaces its workdir, so choose an empty or new directory",
                              field="workdir")
        shutil.rmtree(real)
    real.mkdir(parents=True, exist_ok=True)
    (real / MARKER).write_text("made by `convfm demo`; the next demo run with this --workdir replaces it\n")


class StageClock:
    """Prints each stage's header and, when the next starts, its seconds; ``summary`` is the closing line."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: list[float] = []
        self._since: float | None = None

    def __call__(self, title: str) -> None:
        self._close()
        print(f"\n== [{len(self.seconds) + 1}/{STAGES}] {title}", flush=True)
        self._since = time.perf_counter()

    def _close(self) -> None:
        if self._since is not None:
            self.seconds.append(time.perf_counter() - self._since)
            print(f"   ({self.seconds[-1]:.1f}s)", flush=True)
            self._since = None

    def summary(self) -> str:
        self._close()
        split = "  ".join(f"[{n}] {s:.0f}s" for n, s in enumerate(self.seconds, 1))
        return f"demo finished in {time.perf_counter() - self.started:.0f}s: {split}"


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).absolute()
    claim_workdir(workdir)  # a fresh tour every time, in a directory the demo made
    data_dir = workdir / "data"
    stage = StageClock()

    stage(f"synthesize a job market ({args.users} users, {args.jobs} jobs, {args.interactions} interactions)")
    market = generate_market(args.users, args.jobs, args.interactions, seed=args.seed)
    write_market(market, data_dir)
    data = prepare_data(DataConfig(path=str(data_dir), seed=args.seed))
    fields = ", ".join(f.name for f in data.extractor.feature_map.fields)
    print(f"   {data_dir}: examples {data.summary()}\n   fields: {fields}")

    for name in LOCAL_RAY_TRAIN_ENV:  # set before Ray starts, so its processes see them too
        os.environ.setdefault(name, "0")
    from convfm.cli.serve import free_ports
    from serve.proxy import ray_environment

    os.environ.update(ray_environment("serve", free_ports))  # Serve's own proxy, as `convfm serve`'s default
    best_dir = train_stage(args, data, workdir, stage)
    model_dir = better_model(best_dir, tune_stage(args, data, workdir, stage)) if args.trials else best_dir
    from convfm.cli.demo_service import serve_and_query  # Ray Serve and HTTP from here on

    serve_and_query(model_dir, market.users, data.frames["test"]["user_id"], stage)
    print(f"\n== {stage.summary()}")
    print("\n== To serve and query the model yourself:\n"
          f"   convfm serve --model {model_dir.parent if model_dir.parent.name != 'train' else model_dir}"
          " --api-key-env CONVFM_API_KEY   # with CONVFM_API_KEY set: POST /jobs and /events need it\n"
          "   convfm recommend --user u000001 -k 10          # in another terminal\n"
          "   convfm catalog push jobs.csv --api-key-env CONVFM_API_KEY   # add or replace jobs without retraining\n"
          "   open http://127.0.0.1:8000/docs                 # the API, with a form to try each endpoint")
    return 0


def train_stage(args: argparse.Namespace, data: PreparedData, workdir: Path, stage: StageClock) -> Path:
    stage(f"train ConvFM with Ray Train: {args.workers} CPU workers (DDP), up to {args.epochs} epochs")
    from train.driver import format_epoch, run_training  # Ray from here on; the library stays Ray-free

    run_dir = workdir / "train"
    train_config = TrainConfig(num_epochs=args.epochs, patience=3, seed=args.seed, num_workers=args.workers,
                               eval_max_events=VALIDATION_EVENTS)
    result = run_training(data.config, ModelConfig(), train_config, run_dir, prepared=data,
                          on_epoch=lambda record: print("   " + format_epoch(record), flush=True))
    print(f"   best epoch {result.best_epoch + 1}; model {result.best_dir}; curves {run_dir / 'curves.png'}")

    stage("evaluate the best checkpoint on the held-out test split (popularity baseline and oracle beside it)")
    loaded = load_model_dir(result.best_dir)
    print(format_report(evaluate_split(loaded.model, data, "test", negatives=train_config.eval_negatives,
                                       protocol=train_config.eval_protocol, seed=args.seed)))
    return result.best_dir


def tune_stage(args: argparse.Namespace, data: PreparedData, workdir: Path, stage: StageClock) -> Path:
    stage(f"tune: {args.trials} Ray Tune trial(s), 2 at a time (ASHA, {args.trial_epochs} epoch(s) max), the best "
          "published to the registry")
    from tune.config import TuneConfig
    from tune.results import format_trials
    from tune.runner import run_tune

    tune_config = TuneConfig(num_samples=args.trials, max_concurrent=2, max_t=args.trial_epochs, seed=args.seed,
                             registry=str(workdir / "models"), name="convfm", space=demo_space())
    train_config = TrainConfig(seed=args.seed, eval_max_events=VALIDATION_EVENTS)
    summary = run_tune(data.config, ModelConfig(), train_config, tune_config, workdir / "tune", prepared=data,
                       progress=True)
    print(format_trials(summary.trials, tune_config.metric, summary.best_trial))
    print(f"   published {summary.model_dir}")
    return summary.model_dir


def better_model(trained: Path, tuned: Path) -> Path:
    """The model to serve: the tuned one (published) unless stage 2's validates better (validation ROC-AUC), which
    is then published as the entry's next version: a 2-trial search of short trials often loses to it."""
    from convfm.errors import ArtifactError
    from convfm.jsonfile import read_json
    from convfm.store.registry import publish

    def auc(path: Path) -> float:
        value = read_json(path / "metrics.json", "a model's metrics", ArtifactError).get("val_roc_auc")
        return float("nan") if value is None else float(value)

    trained_auc, tuned_auc = auc(trained), auc(tuned)
    if not trained_auc > tuned_auc:  # NaN (no AUC) keeps the tuned model
        print(f"   serving the tuned model (validation ROC-AUC {tuned_auc:.4f}; stage 2's {trained_auc:.4f})")
        return tuned
    published = Path(publish(trained, tuned.parent.parent, tuned.parent.name))
    print(f"   stage 2's model validates better (ROC-AUC {trained_auc:.4f} against the tuned {tuned_auc:.4f}): "
          f"published as {published.name} (latest) and served")
    return published


SIZE_FIELDS = ("embedding_dim", "conv_filters", "conv_kernel_size", "hidden_dims", "batch_size")


def demo_space() -> dict[str, Any]:
    """The default search space with the fields that set a trial's cost fixed at the trained model's values:
    an epoch of a trial then costs what one of stage 2 does (sampled sizes up to 128 filters and a 256-wide MLP
    cost ~1.5x as much CPU per epoch in a measured run), and trials still search learning rate, dropout, id
    dropout and regularization."""
    defaults = {**ModelConfig().to_dict(), **TrainConfig().to_dict()}
    return {name: list(defaults[name]) if isinstance(defaults[name], (list, tuple)) else defaults[name]
            for name in SIZE_FIELDS}
