"""One process's training and evaluation steps, shared by the in-process trainer and the Ray Train loop."""
from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from torch import nn

from convfm.data.batching import ExampleSet
from convfm.model.optim import CombinedOptimizer

if TYPE_CHECKING:
    from convfm.training.averaging import WeightAverage


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU when ``enabled``; nothing on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(
    model: nn.Module,
    examples: ExampleSet,
    optimizer: CombinedOptimizer,
    batch_size: int,
    device: torch.device,
    epoch_seed: int,
    use_amp: bool = False,
    on_batch: Callable[[int], None] | None = None,
    embedding_l2: float = 0.0,
    average: Optional[WeightAverage] = None,
) -> dict[str, float]:
    """One pass over ``examples`` in a seeded shuffle order -> {"train_loss", "train_seconds", "samples"}.

    The step minimises log loss + ``embedding_l2`` * the model's embedding penalty (``ConvFM.forward`` with
    ``penalty``: the rows each batch reads); ``embedding_l2`` 0 takes the plain log-loss step. ``train_loss``
    is the log loss alone, so it stays comparable with the validation log loss whatever ``embedding_l2`` is.
    ``average`` (a ``WeightAverage``) folds the weights in after every step.
    """
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total, count, start = 0.0, 0, time.perf_counter()
    pin = device.type == "cuda"
    for step, (batch, labels) in enumerate(examples.batches(batch_size, shuffle=True, seed=epoch_seed, drop_last=len(examples) > batch_size)):
        if pin:
            batch, labels = batch.pin_memory(), labels.pin_memory()
        batch, labels = batch.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)
        optimizer.zero_grad()
        with autocast(device, use_amp):
            logits, penalty = model(*batch, penalty=True) if embedding_l2 else (model(*batch), None)  # (B,), ()
        log_loss = loss_fn(logits.float(), labels)
        loss = log_loss if penalty is None else log_loss + embedding_l2 * penalty.float()
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
        total += float(log_loss.detach()) * len(labels)
        count += len(labels)
        if on_batch is not None:
            on_batch(step)
    seconds = time.perf_counter() - start
    return {"train_loss": total / max(count, 1), "train_seconds": seconds, "samples": float(count)}


@torch.no_grad()
def predict_proba(
    model: nn.Module, examples: ExampleSet, batch_size: int, device: torch.device, use_amp: bool = False
) -> np.ndarray:
    """Sigmoid scores for every example, in order -> (N,) float64."""
    model.eval()
    out = []
    for batch, _ in examples.batches(batch_size):
        with autocast(device, use_amp):
            logits = model(*batch.to(device))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
