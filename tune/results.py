"""What a finished search leaves in its directory (Ray-free): the trial table, the comparison plot, the best
checkpoint found on disk, and the exported model.

  runs/tune-NAME/experiment.json   configs, status, concurrency (``--resume`` reads it)
  runs/tune-NAME/trials.csv        one row per trial: sampled values, best metric, epochs, how it ended
  runs/tune-NAME/trials.png        validation metric per epoch, one line per trial
  runs/tune-NAME/summary.json      best trial, its values and metrics, the published registry version
  runs/tune-NAME/best/             the best trial's best checkpoint as a model directory (+ serving.json,
                                   tune.json; written by train.outputs.export_model)
  runs/tune-NAME/ray/tune-NAME/    Ray Tune's experiment state, one trial-<id>/ folder per trial (with its
                                   checkpoints when the trial trained in its actor: 1 worker per trial)
  runs/tune-NAME/train/train-<id>/ a multi-worker trial's Ray Train run and checkpoints

The directory may be a storage URI (``s3://bucket/runs/tune-NAME``): Tune and Train write ``ray/`` and ``train/``
there themselves, the files above are written to a local staging directory and uploaded (experiment.json last).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from convfm.store import storage
from convfm.store.artifacts import load_model_dir
from convfm.errors import ArtifactError
from convfm.jsonfile import read_json, write_json_atomic
from convfm.store.storage import StagedDir
from convfm.validate import is_number
from tune.space import format_params

EXPERIMENT_FILE = "experiment.json"
PROGRESS_FILE = "progress.csv"  # Tune's per-trial record of every reported result
# How a trial ended: ran all max_t epochs; stopped by ASHA (fewer epochs, not by patience); stopped by the
# run's own early stopping (train.patience); raised.
COMPLETED, ASHA, PATIENCE, ERROR = "completed", "asha", "patience", "error"


def read_experiment(out_dir: str | Path) -> dict[str, Any]:
    return read_json(storage.join(out_dir, EXPERIMENT_FILE), "record of a convfm tune experiment")


def write_experiment(out: StagedDir, experiment: Mapping[str, Any], *outputs: str) -> None:
    """Write experiment.json atomically (an interrupted search never leaves half of it), then upload
    ``outputs`` and experiment.json last (for a URI directory)."""
    write_json_atomic(out.local / EXPERIMENT_FILE, experiment)
    out.sync(*outputs, EXPERIMENT_FILE)


def trial_row(trial_id: str, params: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
              error: Optional[str], metric: str, mode: str, max_t: int) -> dict[str, Any]:
    """One line of trials.csv from a trial's per-epoch records (as reported to Tune)."""
    epochs = sorted({int(r["epoch"]) for r in history if "epoch" in r})
    scored = [r for r in history if is_number(r.get(metric))]
    best = (max if mode == "max" else min)(scored, key=lambda r: float(r[metric])) if scored else None
    if error is not None:
        ended = ERROR
    elif history and int(history[-1].get("stop", 0)) == 1:
        ended = PATIENCE
    elif len(epochs) < max_t:
        ended = ASHA
    else:
        ended = COMPLETED
    return {
        "trial_id": trial_id,
        **{name: _cell(value) for name, value in sorted(params.items())},
        f"best_{metric}": float(best[metric]) if best else math.nan,
        "best_epoch": int(best["epoch"]) + 1 if best else 0,
        "epochs": len(epochs),
        "ended": ended,
        "stopped_by_asha": ended == ASHA,
        "error": _error_line(error),
    }


def trial_history(trial_dir: str | Path) -> list[dict[str, Any]]:
    """A trial's per-epoch records as reported to Tune, from its progress.csv (local or a storage URI), one per
    epoch: after a retry, the retried epochs' later records. Not Tune's ``Result.metrics_dataframe``: Ray 2.60
    reads it from result.json, which a retried trial starts anew, so it would hold only the epochs since the
    retry (progress.csv is appended to)."""
    try:
        text = storage.read_text(storage.join(trial_dir, PROGRESS_FILE))
    except FileNotFoundError:  # the trial never reported
        return []
    frame = pd.read_csv(io.StringIO(text), dtype={"trial_id": str}) if text.strip() else pd.DataFrame()
    if "epoch" not in frame:
        return []
    frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch", kind="stable")
    records = frame.to_dict("records")
    return [{key: value for key, value in record.items() if not _missing(value)} for record in records]


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _error_line(error: Optional[str]) -> str:
    """The exception's own line of a remote traceback (its last non-empty line), shortened."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _cell(value: Any) -> Any:
    return "-".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def format_trials(table: pd.DataFrame, metric: str, best_trial: Optional[str] = None) -> str:
    """The printed table: one aligned line per trial (the best one marked '*'), errors below their trial."""
    columns = [c for c in table.columns if c != "error"]
    header = ["trial"] + [c for c in columns[1:]]
    rows = [[("* " if row["trial_id"] == best_trial else "  ") + str(row["trial_id"])]
            + [_text(row[c]) for c in columns[1:]] for _, row in table.iterrows()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for (_, row), cells in zip(table.iterrows(), rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if row.get("error"):
            lines.append(f"      error: {row['error']}")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def plot_trials(histories: Mapping[str, Sequence[Mapping[str, Any]]], params: Mapping[str, Mapping[str, Any]],
                metric: str, path: Path, best_trial: Optional[str] = None, max_t: Optional[int] = None) -> None:
    """Validation metric per epoch, one line per trial; the best trial drawn thick, ASHA stops marked 'x'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    varied = {name for name in {k for p in params.values() for k in p}
              if len({repr(p.get(name)) for p in params.values()}) > 1}  # the legend shows what differs
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for trial_id, history in sorted(histories.items()):
        points = sorted((int(r["epoch"]) + 1, float(r[metric])) for r in history if is_number(r.get(metric)))
        if not points:
            continue
        xs, ys = zip(*points)
        best = trial_id == best_trial
        shown = {k: v for k, v in params.get(trial_id, {}).items() if k in varied}
        label = f"{'* ' if best else ''}{trial_id}: {format_params(shown)}"
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=3 if best else 1.2, label=label,
                          zorder=3 if best else 2)
        stopped = max_t is not None and len(xs) < max_t and int(history[-1].get("stop", 0)) == 0
        if stopped:
            ax.plot(xs[-1], ys[-1], marker="x", markersize=9, color=line.get_color())
    ax.set(xlabel="epoch (x: stopped by ASHA)", ylabel=metric, title=f"Trials: validation {metric[4:]} per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def best_checkpoint_dir(train_run: Path, metric: str, mode: str) -> tuple[Path, dict[str, Any]]:
    """The model directory of the run's best complete checkpoint, found on disk (works for runs that ASHA
    killed mid-way, which never wrote a final result): every ``checkpoint_*/model`` whose manifest checks."""
    found = []
    for metrics_file in sorted(train_run.glob("checkpoint_*/model/metrics.json")):
        model_dir = metrics_file.parent
        try:
            metrics = load_model_dir(model_dir).metrics  # complete and consistent, not a half-copied checkpoint
        except (ArtifactError, OSError):
            continue
        if is_number(metrics.get(metric)):
            found.append((float(metrics[metric]), model_dir, metrics))
    if not found:
        raise ArtifactError(f"{train_run}: no complete checkpoint with a finite {metric}")
    pick = max if mode == "max" else min
    _, model_dir, metrics = pick(found, key=lambda item: item[0])
    return model_dir, metrics


def fetch_checkpoints(train_run: str | Path, local: Path) -> Path:
    """``train_run`` itself when local; for a URI, a local copy of its checkpoints' model directories (the
    optimizer state in each checkpoint is not needed to export the model)."""
    if not storage.is_uri(train_run):
        return Path(train_run)
    for checkpoint in storage.list_dirs(train_run):
        if checkpoint.startswith("checkpoint_"):
            storage.download_dir(storage.join(train_run, checkpoint, "model"), local / checkpoint / "model")
    return local
