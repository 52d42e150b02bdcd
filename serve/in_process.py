"""The ``Ranker`` inside the ingress's own process, for a service of one replica.

With one ranking replica, the hop from the ingress to a second deployment is pure cost: an actor call each way
(5-14 ms of a lone request on the 2-core box, measured alternately: docs/SERVING.md, "Benchmark"). ``build_app`` then gives the ``Api`` an
``InProcess`` spec instead of a ``Ranker`` deployment; the ``Api`` builds the ranker from it when its replica
starts and calls it through ``LocalHandle``, which answers the ``DeploymentHandle`` calls the ``Api`` makes
(``handle.method.remote(...)``, ``handle.broadcast(...)``). Everything else (batching, the model slot, events,
the live catalog, splits) is the same ``Ranker`` code. More replicas, or autoscaling, keep the two deployments.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any, Awaitable, Callable, Optional


@dataclasses.dataclass(frozen=True)
class InProcess:
    """The ``Ranker``'s constructor arguments, carried to the ingress's replica (built there, never here)."""

    args: tuple

    def start(self) -> "LocalHandle":
        from serve.ranker import Ranker

        return LocalHandle(Ranker.func_or_class(*self.args))


async def _call(method: Callable[..., Any], args: tuple) -> Any:
    result = method(*args)
    return await result if inspect.isawaitable(result) else result


class _Method:
    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method

    def remote(self, *args: Any) -> Awaitable[Any]:
        return _call(self.method, args)


class _Broadcast:
    def __init__(self, method: Callable[..., Any], args: tuple) -> None:
        self.method, self.args = method, args

    async def results_async(self, timeout_s: Optional[float] = None, return_exceptions: bool = False) -> list[Any]:
        """One result: this process holds the only replica."""
        try:
            return [await asyncio.wait_for(_call(self.method, self.args), timeout_s)]
        except asyncio.TimeoutError:
            raise TimeoutError(f"{self.method.__name__} did not finish in {timeout_s}s") from None
        except Exception as exc:  # noqa: BLE001 - as a DeploymentHandle broadcast reports a replica's failure
            if not return_exceptions:
                raise
            return [exc]


class LocalHandle:
    """A ``Ranker`` object behind the subset of ``DeploymentHandle`` that the ``Api`` uses."""

    def __init__(self, ranker: Any) -> None:
        self.ranker = ranker

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):  # copy, pickle and hasattr probes are not calls to the ranker
            raise AttributeError(method)
        return _Method(getattr(self.ranker, method))

    def broadcast(self, method: str, *args: Any) -> _Broadcast:
        return _Broadcast(getattr(self.ranker, method), args)

    def check_health(self) -> None:
        self.ranker.check_health()
