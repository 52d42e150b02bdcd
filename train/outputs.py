"""What a finished run leaves in its directory (Ray-free): metrics.csv, curves.png, run.json, best/.

  runs/NAME/run.json      configs, Ray run name and storage, status, best epoch, stopped_early, wall time
  runs/NAME/metrics.csv   one row per epoch (resumed runs included, each epoch once)
  runs/NAME/curves.png    train/validation loss and validation AUC (popularity and oracle beside it)
  runs/NAME/best/         the best checkpoint's model directory (loads with convfm.store.artifacts.load_model_dir;
                          serving.json included for job-market data, so ``convfm serve`` can serve it)
  runs/NAME/ray/NAME/     Ray Train's storage: checkpoints (kept best N by validation AUC, plus the latest)

The run directory may be a storage URI (``s3://bucket/runs/NAME``): the files are then written to a local
staging directory (``convfm.store.storage.StagedDir``) and uploaded, run.json at start and failure, everything at the
end with run.json last; Ray Train writes its checkpoints to ``URI/ray`` itself.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from convfm.store import storage
from convfm.store.artifacts import load_model_dir, save_model_dir
from convfm.jsonfile import read_json, write_json_atomic
from convfm.data.prepare import PreparedData
from convfm.store.serving_data import serving_extra_json
from convfm.store.storage import StagedDir

RUN_FILE = "run.json"


def read_run(out_dir: str | Path) -> dict[str, Any]:
    return read_json(storage.join(out_dir, RUN_FILE), "record of a convfm training run")


def write_run(out: StagedDir, run: Mapping[str, Any], *outputs: str) -> None:
    """Atomically, so an interrupted run never leaves half a run.json; then upload ``outputs`` and run.json
    last (for a URI run directory)."""
    write_json_atomic(out.local / RUN_FILE, run)
    out.sync(*outputs, RUN_FILE)


def write_metrics_csv(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    epochs = [int(r["epoch"]) for r in history]
    if epochs != list(range(len(epochs))):  # resume must neither skip nor repeat an epoch
        raise RuntimeError(f"run history has gaps or duplicates: epochs {epochs}")
    pd.DataFrame(list(history)).to_csv(path, index=False)


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = pd.DataFrame(list(history))
    epochs = frame["epoch"] + 1
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, frame["train_loss"], marker="o", label="train loss")
    loss_ax.plot(epochs, frame["val_loss"], marker="o", label="validation log loss")
    loss_ax.set(xlabel="epoch", ylabel="binary cross-entropy", title="Loss")
    auc_ax.plot(epochs, frame["val_roc_auc"], marker="o", label="ConvFM")
    if "popularity_roc_auc" in frame:
        auc_ax.plot(epochs, frame["popularity_roc_auc"], linestyle="--", label="popularity baseline")
    if "oracle_roc_auc" in frame and not math.isnan(frame["oracle_roc_auc"].iloc[-1]):
        auc_ax.axhline(frame["oracle_roc_auc"].iloc[-1], color="grey", linestyle=":", label="oracle (true p)")
    auc_ax.set(xlabel="epoch", ylabel="ROC-AUC", title="Validation ROC-AUC")
    for ax in (loss_ax, auc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export_model(checkpoint_model_dir: Path, target: Path, data: Optional[PreparedData],
                 extra_json: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Path:
    """Write a checkpoint's model directory at ``target`` as a servable model: plus ``serving.json`` for
    job-market data (titles, seen jobs, popularity fallback; what ``convfm serve`` reads) and ``extra_json``
    (tune.json...), through save_model_dir so the manifest covers them and ``target`` is swapped in whole.
    ``data`` None: data prepared on the cluster (a table has no serving.json; a job market's comes in
    ``extra_json``, from ``train.prepare_market``)."""
    extra = dict(extra_json or {})
    if data is not None and data.config.kind == "jobs":
        extra.update(serving_extra_json(data))
    loaded = load_model_dir(checkpoint_model_dir)
    return save_model_dir(target, loaded.model, loaded.extractor, metrics=loaded.metrics,
                          extra_json={**loaded.extra, **extra})
