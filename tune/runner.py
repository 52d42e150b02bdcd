"""Hyperparameter search with Ray Tune: one function trainable per trial. A 1-worker trial trains in its own
actor (``train.loop.train_in_trial``); a trial with more workers fits its own TorchTrainer (DDP).

Order matters, as in ``train.driver``: configs and the search space are validated, the run directory is
claimed and the data is prepared (extractor fitted once, on the driver) before Ray starts. The prepared
shards go to the object store once and reach every trial through ``tune.with_parameters``; a trial only
adds its sampled ModelConfig / TrainConfig to the worker config built by ``train.driver.loop_config``.

Resources (``TuneConfig.trial_resources``): a 1-worker trial's actor holds its worker's CPUs. A multi-worker
trial's driver holds a 0.01-CPU sliver and its Train workers ``cpus_per_worker`` each, but Tune reserves only
the sliver (Train V2 places its workers itself). So the number of trials running at once is capped here by
what the cluster can hold, workers included: more would start trial drivers whose workers never get CPUs,
and every trial would wait on the others forever.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import pandas as pd
import ray
import ray.train
from ray import tune as ray_tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

import tune as tune_package
from convfm.config import DataConfig, ModelConfig, TrainConfig, as_config
from convfm.errors import ConfigError, ConvFMError
from convfm.jsonfile import write_json_atomic
from convfm.data.prepare import PreparedData, data_reads, first_reads, prepare_data
from convfm.store import storage
from convfm.store.registry import publish
from convfm.store.storage import StagedDir
from train.checks import check_training_data, check_unchanged
from train.cluster import init_ray, sigterm_as_ctrl_c
from train.driver import failure_summary, loop_config
from train.outputs import export_model
from train.loop import train_in_trial
from train.ray_configs import build_trainer, checkpoint_policy
from tune.config import DRIVER_CPU, TuneConfig
from tune.results import (ASHA, EXPERIMENT_FILE, best_checkpoint_dir, fetch_checkpoints, plot_trials,
                          read_experiment, trial_history, trial_row, write_experiment)
from tune.space import SearchSpace, format_params

log = logging.getLogger(__name__)
_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"  # "0": Tune's legacy console reporter


class TuneError(ConvFMError):
    """The search ended without any trial that reported the metric."""


class SearchInterrupted(TuneError):
    """Ctrl-C (or, with ``sigterm_interrupts``, SIGTERM) stopped the search; Tune saved it for ``--resume``."""


@dataclasses.dataclass
class TuneSummary:
    out_dir: str | Path  # a local path, or the storage URI the outputs were uploaded to
    trials: pd.DataFrame  # trials.csv
    best_trial: str
    best_params: dict[str, Any]  # the best trial's sampled field values
    best_metrics: dict[str, Any]  # metrics.json of the exported checkpoint (its epoch's record)
    model_dir: str | Path  # registry/name/vNNNN (a URI for a URI registry)
    concurrency: int
    wall_seconds: float


def run_tune(
    data_config: DataConfig | Mapping[str, Any],
    model_config: ModelConfig | Mapping[str, Any],
    train_config: TrainConfig | Mapping[str, Any],
    tune_config: TuneConfig | Mapping[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    *,
    address: Optional[str] = None,
    prepared: Optional[PreparedData] = None,
    progress: bool = False,
    quiet: bool = True,
    loop_options: Optional[Mapping[str, Any]] = None,
    sigterm_interrupts: bool = False,
) -> TuneSummary:
    """Search, then write ``out_dir`` (trials.csv/png, summary.json, best/) and publish the best model to
    ``tune_config.registry/name``. Both may be storage URIs (``s3://...``): Tune and the trials' Train runs then
    keep their state under ``out_dir/ray`` and ``out_dir/train``, and the summary files are uploaded.
    ``model_config``/``train_config`` are the base every trial starts from.
    ``resume`` continues the interrupted experiment in ``out_dir`` (same configs). ``progress`` prints one
    line per trial epoch; ``quiet`` keeps worker logs off the terminal when this call starts Ray.
    ``loop_options`` adds keys to every trial's worker config, as ``run_training``'s do (``crash_at_epoch``...).
    ``sigterm_interrupts`` (the CLI): a SIGTERM to this process stops the search as Ctrl-C does (Tune saves its
    state; SearchInterrupted), or, outside ``Tuner.fit()``, interrupts (KeyboardInterrupt)."""
    started = time.perf_counter()
    data_config = as_config(data_config, DataConfig, "data")
    tune_config = as_config(tune_config, TuneConfig, "tune")
    base_model, base_train = tune_config.trial_base(as_config(model_config, ModelConfig, "model"),
                                                    as_config(train_config, TrainConfig, "train"))
    _check_search_alg(tune_config.search_alg)
    with StagedDir(out_dir) as out:  # a URI experiment directory: written here, uploaded as it goes
        experiment = _experiment(out, resume, data_config, base_model, base_train, tune_config)
        if prepared is not None and prepared.config != data_config:
            raise ConfigError("prepared: data was prepared from a different DataConfig than data_config")
        read_before = first_reads(experiment, data_config, f"search {out.target}") if resume else None
        data = prepared or prepare_data(data_config, read_before=read_before)  # a resume: what its start read
        check_training_data(data, base_train, workers_field="workers_per_trial")
        experiment = {**experiment, **data_reads(data)}
        write_experiment(out, {**experiment, "status": "running"})

        init_ray(address, quiet, packages=[tune_package], sigterm_interrupts=sigterm_interrupts)
        _pin_state_api_address()
        concurrency = trial_concurrency(tune_config, ray.cluster_resources(), may_autoscale=address is not None)
        space = tune_config.search_space()
        setup = {"model": base_model.to_dict(), "train": base_train.to_dict(), "space": space.to_dict(),
                 "storage": str(out.location("train")), "metric": tune_config.metric, "mode": tune_config.mode,
                 "in_trial": tune_config.trains_in_trial}
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(run_trial, shared=loop_config(data, base_model, base_train, loop_options),
                                     setup=setup),
            tune_config.trial_resources())
        experiment_path = out.location("ray", experiment["name"])
        if resume and ray_tune.Tuner.can_restore(str(experiment_path)):
            tuner = ray_tune.Tuner.restore(str(experiment_path), trainable=trainable, resume_errored=True)
        else:
            tuner = ray_tune.Tuner(
                trainable, param_space=space.param_space(),
                tune_config=ray_tune.TuneConfig(
                    metric=tune_config.metric, mode=tune_config.mode, num_samples=tune_config.num_samples,
                    scheduler=ASHAScheduler(time_attr="training_iteration", max_t=tune_config.max_t,
                                            grace_period=tune_config.grace_period,
                                            reduction_factor=tune_config.reduction_factor),
                    search_alg=ConcurrencyLimiter(make_searcher(tune_config), max_concurrent=concurrency),
                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
                run_config=ray_tune.RunConfig(
                    name=experiment["name"], storage_path=str(out.location("ray")), verbose=0,
                    checkpoint_config=ray_tune.CheckpointConfig(
                        **checkpoint_policy(base_train, tune_config.metric, tune_config.mode)),
                    failure_config=ray_tune.FailureConfig(max_failures=tune_config.max_failures),
                    callbacks=[_ProgressPrinter(tune_config.metric)] if progress else None),
            )
        # our printer shows the trials (Ray's banner would repeat them); SIGTERM then stops as Ctrl-C does
        with _ray_tune_output(quiet=progress), sigterm_as_ctrl_c(sigterm_interrupts):
            grid = tuner.fit()
        return _finish(out, experiment, grid, space, tune_config, data, concurrency, started)


def run_trial(config: dict[str, Any], shared: dict[str, Any], setup: dict[str, Any]) -> None:
    """One trial (runs in its Tune actor): sampled config -> validated configs -> training that reports to Tune
    once per epoch (one Tune iteration per epoch, so ASHA counts epochs). When Tune retries the trial or
    ``--resume`` restarts it, training continues from the trial's last checkpoint.

    One worker: the loop runs here (``train_in_trial``), its checkpoints kept by Tune. More: a TorchTrainer whose
    reports reach Tune through TuneReportCallback; the same run name + storage on a retry = Ray Train resumes
    the trial's run."""
    trial_id = ray_tune.get_context().get_trial_id()
    space = SearchSpace.from_overrides(setup["space"])
    try:
        model, train = space.configs(ModelConfig.from_dict(setup["model"]), TrainConfig.from_dict(setup["train"]),
                                     config)
    except ConfigError as exc:
        raise ConfigError(f"trial {trial_id}: sampled configuration refused: {exc}") from None
    worker_config = {**shared, "model": model.to_dict(), "train": train.to_dict()}
    if setup["in_trial"]:
        train_in_trial(worker_config)
        return
    trainer = build_trainer(
        worker_config, train,
        name=f"train-{trial_id}", storage_path=setup["storage"], callbacks=[TuneReportCallback()],
        metric=setup["metric"], mode=setup["mode"],
        # No worker-group restarts inside a trial: when Tune stops a trial (ASHA, or max_t reached) its
        # workers die first, and a controller that restarts them creates a placement group that nobody
        # frees once the controller dies a moment later; the next trial then waits for CPUs forever.
        # Tune retries a failed trial instead (tune.max_failures), resuming this run from its checkpoint.
        max_failures=0)
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TuneError(f"trial {trial_id}: training failed: {failure_summary(exc)}") from exc


def trial_dirname(trial: Any) -> str:
    return trial_dirname_of(trial.trial_id)


def trial_dirname_of(trial_id: str) -> str:
    return f"trial-{trial_id}"


def trial_checkpoints(out: StagedDir, experiment: str, trial_id: str, config: TuneConfig) -> str | Path:
    """Where a trial's checkpoint_* folders are: its Tune trial folder when it trained in its actor, else its
    Ray Train run."""
    if config.trains_in_trial:
        return out.location("ray", experiment, trial_dirname_of(trial_id))
    return out.location("train", f"train-{trial_id}")


def make_searcher(config: TuneConfig) -> Searcher:
    """The seeded search algorithm: the same seed suggests the same configs in the same order (for TPE and
    HyperOpt: their random start-up suggestions; later ones also depend on the trials' results)."""
    if config.search_alg == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=config.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one "study created" line per search

    if config.search_alg == "random":
        return OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=config.seed))
    return OptunaSearch(seed=config.seed)  # TPE


def trial_concurrency(config: TuneConfig, resources: Mapping[str, float], may_autoscale: bool = False) -> int:
    """Trials that can run at once with all their workers placed: min(max_concurrent, what fits).

    ``may_autoscale`` (a joined cluster, not a local Ray): a cluster whose GPU/CPU workers scale up from zero
    holds no trial yet; then ``max_concurrent`` stands and the autoscaler adds nodes as trials ask for them."""
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    per_trial = config.workers_per_trial * config.cpus_per_worker + DRIVER_CPU
    fits = math.floor(cpus / per_trial + 1e-6)
    need = f"{per_trial:g} CPU"
    if config.use_gpu:
        fits = min(fits, math.floor(gpus / config.workers_per_trial + 1e-6))
        need += f" and {config.workers_per_trial} GPU(s)"
    if fits < 1 and may_autoscale:
        log.warning("the cluster holds no trial now (%g CPU, %g GPU); running %d at once as the autoscaler "
                    "adds nodes", cpus, gpus, config.max_concurrent)
        return config.max_concurrent
    if fits < 1:
        raise ConfigError(f"workers_per_trial: one trial needs {need} ({config.workers_per_trial} worker(s) x "
                          f"cpus_per_worker {config.cpus_per_worker:g} + {DRIVER_CPU} for its driver) but the "
                          f"cluster has {cpus:g} CPU and {gpus:g} GPU")
    if fits < config.max_concurrent:
        log.info("max_concurrent %d lowered to %d: that many trials fit", config.max_concurrent, fits)
    return min(config.max_concurrent, fits)


def _check_search_alg(name: str) -> None:
    import importlib.util

    package = "hyperopt" if name == "hyperopt" else "optuna"
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"search_alg: {name!r} needs the {package} package (pip install {package})")


def _experiment(out: StagedDir, resume: bool, data: DataConfig, model: ModelConfig, train: TrainConfig,
                tune_config: TuneConfig) -> dict[str, Any]:
    """experiment.json's identity: a new search must not reuse a directory, a resumed one keeps its configs."""
    out_dir = out.target
    identity = {"name": out.name, "data": data.to_dict(), "model": model.to_dict(), "train": train.to_dict(),
                "tune": tune_config.to_dict()}
    if not resume:
        if storage.exists(out.location(EXPERIMENT_FILE)):
            raise ConfigError(f"{out_dir} already holds a search; pass --resume {out_dir} or choose another --out")
        return {**identity, "attempts": 1}
    saved = read_experiment(out_dir)
    if saved.get("status") == "finished":
        raise ConfigError(f"--resume {out_dir}: the search already finished (best model {saved.get('model_dir')}); "
                          "start a new one with another --out")
    check_unchanged(out_dir, saved, {section: identity[section] for section in ("model", "train", "tune", "data")},
                    "experiment", "a resumed search keeps its configs")
    return {**saved, "data": identity["data"], "attempts": int(saved.get("attempts", 1)) + 1}


@contextlib.contextmanager
def _ray_tune_output(quiet: bool) -> Iterator[None]:
    """With ``quiet``, Tune's legacy reporter at verbose=0 (prints nothing) instead of its experiment banner."""
    if not quiet:
        yield
        return
    before = os.environ.get(_NEW_OUTPUT)
    os.environ[_NEW_OUTPUT] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_NEW_OUTPUT, None)
        else:
            os.environ[_NEW_OUTPUT] = before


def _pin_state_api_address() -> None:
    """Point every trial at this cluster's GCS for Ray's State API.

    When ASHA kills a trial, Ray Train's PlacementGroupCleaner (a detached actor its controller started)
    frees the trial's worker CPUs once the State API says the controller is dead. It finds the State API
    through RAY_ADDRESS, else by scanning ``ps`` for GCS processes, which fails when another Ray runs on the
    same machine: the CPUs are never freed and the next trial waits for workers forever (seen on a shared
    2-core box). Tune starts trial actors with ``class_cache.DEFAULT_ENV_VARS`` in their runtime env, and
    the controller and cleaner a trial starts inherit it, so the address set there reaches the cleaner.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # moved in a later Ray: trials still run; only the shared-machine case can hang
        log.warning("cannot pin RAY_ADDRESS for trials; ASHA-stopped trials may leak CPUs if several Ray "
                    "instances run on this machine")
        return
    class_cache.DEFAULT_ENV_VARS["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


class _ProgressPrinter(ray_tune.Callback):
    """One line per trial epoch and per trial end, on the driver."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.metric in result:
            print(f"trial {trial.trial_id}  epoch {int(result.get('epoch', 0)) + 1:3d}  "
                  f"{self.metric} {float(result[self.metric]):.4f}  ({format_params(_sampled(trial.config))})",
                  flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id}  done", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id}  FAILED (see trials.csv)", flush=True)


def _sampled(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def saved_statuses(grid: ray_tune.ResultGrid) -> list[str]:
    """Each trial's status in the experiment state Tune saved as ``fit()`` returned, which ``Tuner.restore``
    reads. Not ``grid``'s own: on Ctrl-C Tune saves its state, then stops the running trials and marks them
    TERMINATED in memory, as if they had finished."""
    saved = ray_tune.ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem)
    return [trial.status for trial in saved.trials]


def search_progress(statuses: Sequence[str], num_samples: int) -> tuple[int, bool]:
    """(trials finished, whether the search ended) from the trials' saved ``statuses``. A finished trial is
    TERMINATED (it ran its epochs, or ASHA or patience stopped it): a resume skips it. The search ended when
    all ``num_samples`` trials are TERMINATED or ERROR; else a resume trains the PENDING, RUNNING and PAUSED
    trials and those not sampled yet, and retries the ERROR ones (``resume_errored``)."""
    finished = sum(status == Trial.TERMINATED for status in statuses)
    failed = sum(status == Trial.ERROR for status in statuses)
    return finished, len(statuses) == num_samples == finished + failed


def _finish(out: StagedDir, experiment: dict[str, Any], grid: Any, space: SearchSpace, config: TuneConfig,
            data: PreparedData, concurrency: int, started: float) -> TuneSummary:
    finished, ended = search_progress(saved_statuses(grid), config.num_samples)
    if not ended:  # Ctrl-C: Tune saved its state and returned
        write_experiment(out, {**experiment, "status": "interrupted"})
        raise SearchInterrupted(f"search interrupted with {finished} of {config.num_samples} trial(s) finished; "
                                f"continue it with: convfm tune --resume {out.target}")
    rows, histories, params = [], {}, {}
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial-")
        history = trial_history(out.location("ray", experiment["name"], trial_dirname_of(trial_id)))
        try:
            params[trial_id] = space.decode(result.config)
        except ConfigError:
            params[trial_id] = _sampled(result.config)
        error = None if result.error is None else str(result.error)
        histories[trial_id] = history
        rows.append(trial_row(trial_id, params[trial_id], history, error, config.metric, config.mode, config.max_t))
    table = pd.DataFrame(rows).sort_values("trial_id", ignore_index=True)
    table.to_csv(out.local / "trials.csv", index=False)
    column = f"best_{config.metric}"
    scored = table[table[column].notna()]
    if scored.empty:
        write_experiment(out, {**experiment, "status": "failed"}, "trials.csv")
        first = next((e for e in table["error"] if e), "no trial reported a metric")
        raise TuneError(f"no trial reported {config.metric}; first error: {first}")
    best = scored.loc[scored[column].idxmax() if config.mode == "max" else scored[column].idxmin()]
    best_trial = str(best["trial_id"])
    plot_trials(histories, params, config.metric, out.local / "trials.png", best_trial, config.max_t)

    train_run = fetch_checkpoints(trial_checkpoints(out, experiment["name"], best_trial, config),
                                  out.local / "checkpoints" / best_trial)
    checkpoint_dir, best_metrics = best_checkpoint_dir(train_run, config.metric, config.mode)
    extra = {"tune": {"experiment": experiment["name"], "trial_id": best_trial, "params": params[best_trial],
                      "metric": config.metric, "mode": config.mode}}
    best_dir = export_model(checkpoint_dir, out.local / "best", data, extra)
    published = publish(best_dir, config.registry, config.name)
    model_dir = published if storage.is_uri(published) else Path(published).resolve()
    wall = time.perf_counter() - started
    summary = TuneSummary(out.target, table, best_trial, params[best_trial], best_metrics, model_dir, concurrency, wall)
    write_json_atomic(out.local / "summary.json", {
        "experiment": experiment["name"], "best_trial": best_trial, "best_params": params[best_trial],
        "metric": config.metric, "mode": config.mode, f"best_{config.metric}": float(best[column]),
        "best_epoch": int(best["best_epoch"]), "best_metrics": best_metrics, "model_dir": str(model_dir),
        "registry_version": storage.name(model_dir), "trials": len(table),
        "stopped_by_asha": int((table["ended"] == ASHA).sum()),
        "errored": int((table["ended"] == "error").sum()), "search_alg": config.search_alg, "seed": config.seed,
        "concurrency": concurrency, "wall_seconds": round(wall, 2),
    })
    write_experiment(out, {**experiment, "status": "finished", "best_trial": best_trial, "model_dir": str(model_dir)},
                     "trials.csv", "trials.png", "best", "summary.json")  # experiment.json uploaded last
    return summary
