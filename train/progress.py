"""Epoch progress of a Ray Train run, relayed to the driver while ``fit()`` blocks: the Train controller puts
rank 0's epoch metrics on a Ray queue (``ProgressCallback``), a driver thread hands each to the caller's
``on_epoch`` (``relay_progress``). Losing progress lines never fails the run."""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterator, Optional

import ray
import ray.train
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]


def progress_queue() -> Queue:
    """The epoch-progress queue, on the driver's own node: a queue actor placed on a worker node would die
    with that node (a lost spot instance) and take the driver down with it."""
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


class ProgressCallback(ray.train.UserCallback):
    """Runs in the Train controller: forwards rank 0's epoch metrics to the driver through a Ray queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and "val_roc_auc" in metrics[0]:
            try:
                self.queue.put_nowait(dict(metrics[0]))
            except Exception:  # progress lines are a courtesy: losing them must not fail the run
                log.warning("could not forward epoch progress to the driver", exc_info=True)


@contextmanager
def relay_progress(progress: Optional[Queue], on_epoch: Optional[EpochCallback]) -> Iterator[None]:
    """Call ``on_epoch`` on the driver for each epoch the controller forwards, while fit() blocks."""
    if progress is None or on_epoch is None:
        yield
        return
    done = threading.Event()

    def drain(block: bool) -> None:
        while True:
            try:
                record = progress.get(block=block, timeout=0.2 if block else None)
            except Empty:
                return
            except ray.exceptions.RayError:  # the queue actor is gone: training goes on without progress lines
                if not done.is_set():
                    log.warning("epoch progress unavailable: its queue actor died")
                done.set()
                return
            try:
                on_epoch(record)
            except Exception:  # a printing error must not kill training
                log.exception("on_epoch callback failed")

    def relay() -> None:
        while not done.is_set():
            drain(block=True)

    thread = threading.Thread(target=relay, name="convfm-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
        drain(block=False)
        with suppress(ray.exceptions.RayError):
            progress.shutdown()
