"""`convfm demo`: the newcomer's tour on synthetic data: synthesize, train (Ray Train), evaluate, tune
(Ray Tune + ASHA), serve (Ray Serve) and query over real HTTP, then shut everything down."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from convfm.store.artifacts import load_model_dir
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.evaluation.report import evaluate_split, format_report
from convfm.data.prepare import PreparedData, prepare_data
from convfm.data.synth import generate_market, write_market


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", metavar="DIR", help="where data, runs and models go "
                        "(default runs/demo; a previous demo's is replaced, any other non-empty one refused)")
    parser.add_argument("--users", type=int, default=6_000, help="synthetic users (default 6000)")
    parser.add_argument("--jobs", type=int, default=6_000, help="synthetic jobs (default 6000)")
    parser.add_argument("--interactions", type=int, default=30_000, help="synthetic interactions (default 30000)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train CPU workers (default 2)")
    parser.add_argument("--trials", type=int, default=4, help="Tune trials, 2 epochs each (default 4; 0 skips)")
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


def stage(number: int, title: str) -> float:
    print(f"\n== [{number}/6] {title}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).absolute()
    claim_workdir(workdir)  # a fresh tour every time, in a directory the demo made
    data_dir = workdir / "data"

    started = stage(1, f"synthesize a job market ({args.users} users, {args.jobs} jobs, {args.interactions} interactions)")
    write_market(generate_market(args.users, args.jobs, args.interactions, seed=args.seed), data_dir)
    data_config = DataConfig(path=str(data_dir), seed=args.seed)
    data = prepare_data(data_config)
    fields = ", ".join(f.name for f in data.extractor.feature_map.fields)
    print(f"   {data_dir}: examples {data.summary()}\n   fields: {fields} ({time.perf_counter() - started:.1f}s)")

    best_dir = train_stage(args, data, workdir)
    model_dir = tune_stage(args, data, workdir) if args.trials else best_dir
    serve_stage(model_dir, data)
    print("\n== done. To serve and query the model yourself:\n"
          f"   convfm serve --model {model_dir.parent if model_dir.parent.name != 'train' else model_dir}\n"
          "   convfm recommend --user u000001 -k 10          # in another terminal\n"
          "   open http://127.0.0.1:8000/docs                 # the API, with a form to try each endpoint")
    return 0


def train_stage(args: argparse.Namespace, data: PreparedData, workdir: Path) -> Path:
    started = stage(2, f"train ConvFM with Ray Train: {args.workers} CPU workers (DDP), up to {args.epochs} epochs")
    from train.driver import format_epoch, run_training  # Ray from here on; the library stays Ray-free

    run_dir = workdir / "train"
    train_config = TrainConfig(num_epochs=args.epochs, patience=3, seed=args.seed, num_workers=args.workers)
    result = run_training(data.config, ModelConfig(), train_config, run_dir, prepared=data,
                          on_epoch=lambda record: print("   " + format_epoch(record), flush=True))
    print(f"   best epoch {result.best_epoch + 1}; model {result.best_dir}; curves {run_dir / 'curves.png'} "
          f"({time.perf_counter() - started:.1f}s)")

    stage(3, "evaluate the best checkpoint on the held-out test split (popularity baseline and oracle beside it)")
    loaded = load_model_dir(result.best_dir)
    print(format_report(evaluate_split(loaded.model, data, "test", negatives=train_config.eval_negatives,
                                       protocol=train_config.eval_protocol, seed=args.seed)))
    return result.best_dir


def tune_stage(args: argparse.Namespace, data: PreparedData, workdir: Path) -> Path:
    started = stage(4, f"tune: {args.trials} Ray Tune trials (ASHA, 2 epochs max), best one published to the registry")
    from tune.config import TuneConfig
    from tune.results import format_trials
    from tune.runner import run_tune

    tune_config = TuneConfig(num_samples=args.trials, max_concurrent=2, max_t=2, seed=args.seed,
                             registry=str(workdir / "models"), name="convfm")
    summary = run_tune(data.config, ModelConfig(), TrainConfig(seed=args.seed), tune_config, workdir / "tune",
                       prepared=data, progress=True)
    print(format_trials(summary.trials, tune_config.metric, summary.best_trial))
    print(f"   published {summary.model_dir} ({time.perf_counter() - started:.1f}s)")
    return summary.model_dir


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def serve_stage(model_dir: Path, data: PreparedData) -> None:
    started = stage(5, f"serve {model_dir} with Ray Serve on 127.0.0.1 and ask it for recommendations")
    from convfm.cli.recommend import format_table
    from convfm.cli.serve import free_port, running_service
    from serve.app import build_app
    from serve.config import ServeConfig

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the stage prints its own ready line
    config = ServeConfig(model=str(model_dir), port=free_port(), num_cpus=0.5)
    with running_service(config, build_app(config)) as (url, health):  # on the Ray that trained the model
        print(f"   {url} ready: {health.get('model')} {health.get('version')} ({time.perf_counter() - started:.1f}s)")
        user = str(data.frames["test"]["user_id"].iloc[0])
        queries = [
            (f"known user {user}", {"user_id": user, "k": 5, "explain": True}),
            ("cold-start profile: python, sql, docker in Chicago", {
                "profile": {"skills": ["python", "sql", "docker"], "location": "Chicago",
                            "experience_level": "mid"}, "k": 5, "explain": True}),
            ("unknown user without a profile", {"user_id": "somebody-new", "k": 5}),
        ]
        for title, body in queries:
            print(f"\n   POST /recommend  {title}")
            print("   " + format_table(_post(f"{url}/recommend", body), width=150).replace("\n", "\n   "))
        stage(6, "shut down Ray Serve and Ray")
