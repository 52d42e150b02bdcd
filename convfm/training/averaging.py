"""An exponential moving average (EMA) of the weights: the model that validation, early stopping and the kept
checkpoint see when ``TrainConfig.ema_decay`` is above 0.

With the default AdamW decay the weights keep moving from step to step around their optimum. The average of the
last few hundred steps sits nearer it: on the default synthetic market it scored a higher test ROC-AUC than
the raw weights of the same run (README "Model quality"). The raw weights go on training untouched.

The averaged weights need BatchNorm statistics of their own. An average of noisy weight vectors is shorter than
each of them, so with the running statistics of the raw weights the averaged model's first BatchNorm
normalizes by too wide a spread (it scored 0.70 validation AUC where the raw model scored 0.82).
``refresh_statistics`` recomputes them on training batches before each use, as SWA's ``update_bn`` does.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from convfm.data.batching import ExampleSet
from convfm.training.epoch import autocast

STATISTICS_ROWS = 20_480  # training rows (in whole batches) that set the averaged model's BatchNorm statistics
STATISTICS_SEED = 104_729  # their shuffle and dropout: the same every epoch, so epochs differ only by their weights


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclasses.dataclass
class WeightAverage:
    """``model``: a copy of the trained model whose parameters follow ``decay * average + (1 - decay) * current``
    after every optimizer step, with a lower decay over the first steps (``decay_now``). Its buffers are its own:
    see ``refresh_statistics``."""

    model: nn.Module
    decay: float
    steps: int = 0

    @classmethod
    def of(cls, model: nn.Module, decay: float) -> "WeightAverage":
        average = copy.deepcopy(unwrap(model)).eval()
        for parameter in average.parameters():
            parameter.requires_grad_(False)
        return cls(average, decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the trained ``model``'s current parameters in (after its optimizer step)."""
        mine = list(self.model.parameters())
        current = [p.detach() for p in unwrap(model).parameters()]
        get_ema_multi_avg_fn(self.decay_now)(mine, current, None)
        self.steps += 1

    @property
    def decay_now(self) -> float:
        """The decay of the next update: ``decay``, or less over the first steps, ``(1 + steps) / (10 + steps)``
        (0.1 at the first, which all but copies; 0.9 after 80 steps, 0.99 after 890), so that the average of a
        short run does not lag far behind the weights it averages."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def refresh_statistics(self, examples: ExampleSet, batch_size: int, device: torch.device,
                           use_amp: bool = False) -> nn.Module:
        """Recompute the averaged model's BatchNorm running statistics as a plain mean over the first
        ``STATISTICS_ROWS`` rows of a fixed shuffle of ``examples``, in training mode (dropout on, as the raw
        model's statistics were gathered) with fixed dropout draws; return the model in eval mode."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or not len(examples):
            return self.model.eval()
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches below
        self.model.train()
        seen = 0
        # the same dropout draws every time, and none taken from the training's random stream
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(STATISTICS_SEED)
            for batch, labels in examples.batches(batch_size, shuffle=True, seed=STATISTICS_SEED,
                                                  drop_last=len(examples) > batch_size):
                with autocast(device, use_amp):
                    self.model(*batch.to(device))
                seen += len(labels)
                if seen >= STATISTICS_ROWS:
                    break
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        return self.model.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.model.load_state_dict(state["weights"])
