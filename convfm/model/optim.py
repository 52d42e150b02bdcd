"""Optimizers for ConvFM: Adam for dense parameters, SparseAdam for sparse embedding tables."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class CombinedOptimizer:
    """Steps several optimizers as one; state_dict/load_state_dict round-trip all of them."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float = 0.0) -> CombinedOptimizer:
    """Adam(W) over dense parameters plus SparseAdam over the parameters ``model.sparse_parameters()`` names.

    Weight decay applies to dense parameters only (SparseAdam has none); with sparse embeddings this is the
    usual choice, since decaying every row on every step would defeat the sparse update. It skips the
    parameters ``model.decay_exempt_parameters()`` names (scale-invariant ones, which it cannot regularize, and
    the skill-match term's two weights).
    """
    core = getattr(model, "module", model)  # unwrap DDP
    sparse_ids = {id(p) for p in core.sparse_parameters()}
    exempt = {id(p) for p in core.decay_exempt_parameters()}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    sparse = [p for p in model.parameters() if id(p) in sparse_ids]
    groups = [{"params": dense}]
    if weight_decay:
        groups = [{"params": [p for p in dense if id(p) not in exempt]},
                  {"params": [p for p in dense if id(p) in exempt], "weight_decay": 0.0}]
    optimizers: list[torch.optim.Optimizer] = [_adam(groups, learning_rate, weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=learning_rate))
    return CombinedOptimizer(optimizers)


def _adam(groups: list[dict[str, Any]], learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay) over parameter groups, with the fused kernel where torch has one for the
    parameters' device.

    The fused kernel updates each parameter in one pass over memory instead of about eight elementwise
    passes. With dense embeddings it updates the whole (V, D) table every step (200k x 64 for 100k users and
    100k jobs), which dominated a CPU training step; fused, dense training ran ~2x faster (see
    benchmarks/train_throughput.py).
    """
    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    options: dict[str, Any] = {"lr": learning_rate, **({"weight_decay": weight_decay} if weight_decay else {})}
    try:
        return cls(groups, fused=True, **options)
    except RuntimeError:  # no fused kernel for this device (or torch < 2.4 on CPU)
        return cls(groups, **options)


class LRSchedule:
    """An epoch-level learning-rate schedule over every optimizer of a CombinedOptimizer.

    ``cosine`` anneals from the initial rate towards 0 over ``num_epochs``; ``plateau`` halves the rate
    after ``patience`` epochs without a better value of the early-stopping metric (``mode`` max for AUC, min for
    log loss); ``none`` keeps it constant. ``step(value)`` is called once per epoch, after validation, on every
    rank with the same value.
    """

    def __init__(self, optimizer: CombinedOptimizer, kind: str, num_epochs: int, patience: int,
                 mode: str = "max") -> None:
        self.kind = kind
        self.schedulers: list[Any] = []
        for opt in optimizer.optimizers:
            if kind == "cosine":
                self.schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(num_epochs, 1)))
            elif kind == "plateau":
                self.schedulers.append(torch.optim.lr_scheduler.ReduceLROnPlateau(
                    opt, mode=mode, factor=0.5, patience=max(patience // 2, 1)))
            elif kind != "none":
                raise ValueError(f"lr_schedule: unknown schedule {kind!r}")
        self._optimizer = optimizer

    def step(self, value: float) -> None:
        for scheduler in self.schedulers:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(value)
            else:
                scheduler.step()

    @property
    def learning_rate(self) -> float:
        """The first parameter group's current rate (all groups share it)."""
        return float(self._optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"lr_schedule: checkpoint used {state['kind']!r}, this run {self.kind!r}")
        for scheduler, scheduler_state in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(scheduler_state)
