"""Sides (``convfm.model.network.Side``: nested NamedTuples of tensors, parts may be None) as trees: a function
over each tensor, or over the matching tensors of several Sides."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch


def zip_map(fn: Callable[[list[torch.Tensor]], torch.Tensor], sides: list[Any]) -> Any:
    """``fn`` over the matching tensors of several Sides (nested NamedTuples of tensors or None) -> one Side."""
    first = sides[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        parts = (zip_map(fn, list(parts)) for parts in zip(*sides))
        return type(first)(*parts) if hasattr(first, "_fields") else tuple(parts)
    return fn(sides)


def leaves(side: Any) -> Iterator[torch.Tensor]:
    """The tensors of a Side."""
    for part in side:
        if isinstance(part, tuple):
            yield from leaves(part)
        elif part is not None:
            yield part


def map_side(fn: Callable[[torch.Tensor], torch.Tensor], side: Any) -> Any:
    """``fn`` over each tensor of one Side."""
    return zip_map(lambda tensors: fn(tensors[0]), [side])
