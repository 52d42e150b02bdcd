"""Where a ``Ranker`` batch is scored: on the event loop, or in a thread while a live-catalog catch-up holds a
model (the loop must never wait for one: health checks, request bodies and timeouts run on it). No Ray."""
from __future__ import annotations

import asyncio
import threading
import time
import types

from serve.ranker import Ranker


def fake_ranker(*scorers) -> types.SimpleNamespace:
    """What ``Ranker._batch`` reads of a replica: its models (each test gives it a ``_run_batch``)."""
    ranker = types.SimpleNamespace(slot=types.SimpleNamespace(current=scorers[0]), threads=[],
                                   variants=types.SimpleNamespace(scorers=lambda: list(scorers[1:])))
    ranker._hold_models = lambda: Ranker.func_or_class._hold_models(ranker)
    return ranker


def model() -> types.SimpleNamespace:
    return types.SimpleNamespace(live_jobs=types.SimpleNamespace(lock=threading.RLock()))


def free_elsewhere(lock: threading.RLock) -> bool:
    """Whether another thread can take ``lock`` now (an RLock is always free to the thread that holds it)."""
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(lock.acquire(blocking=False)) or (got[0] and lock.release()))
    thread.start()
    thread.join(10)
    return got == [True]


def batch(ranker: types.SimpleNamespace, items: list) -> list:
    return Ranker.func_or_class._batch(ranker, "recommend_many", items)


def test_a_batch_is_scored_on_the_event_loop_holding_every_model():
    primary, variant = model(), model()
    ranker = fake_ranker(primary, variant, primary)  # a model listed twice is held once
    seen = []
    ranker._run_batch = lambda method, items: seen.append(
        (threading.current_thread(), [m.live_jobs.lock._is_owned() for m in (primary, variant)])) or [method]
    assert asyncio.run(batch(ranker, [("v", "r")])) == ["recommend_many"]
    assert seen == [(threading.main_thread(), [True, True])]
    assert free_elsewhere(primary.live_jobs.lock) and free_elsewhere(variant.live_jobs.lock)  # let go again


def test_while_a_catch_up_holds_a_model_the_batch_goes_to_a_thread_and_the_loop_stays_free():
    primary, variant = model(), model()
    ranker = fake_ranker(primary, variant)
    holding, release = threading.Event(), threading.Event()

    def catch_up() -> None:  # as serve.live_catalog.catch_up: the store read and the apply under the lock
        with variant.live_jobs.lock:
            holding.set()
            release.wait(10)

    ranker._run_batch = lambda method, items: (variant.live_jobs.lock.acquire(), variant.live_jobs.lock.release(),
                                               ranker.threads.append(threading.current_thread()), [method])[-1]
    catcher = threading.Thread(target=catch_up)
    catcher.start()
    holding.wait(10)

    async def run() -> float:
        beats: list[float] = []

        async def heartbeat() -> None:
            while not scored.done():
                beats.append(time.monotonic())
                await asyncio.sleep(0.01)

        scored = asyncio.ensure_future(batch(ranker, [("v", "r")]))
        beat = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0.3)
        release.set()
        assert await scored == ["recommend_many"]
        await beat
        return max(b - a for a, b in zip(beats, beats[1:]))

    longest_pause = asyncio.run(run())
    catcher.join(10)
    assert ranker.threads and ranker.threads[0] is not threading.main_thread()
    assert longest_pause < 0.2  # the loop kept running while the batch waited for the catch-up
    assert free_elsewhere(primary.live_jobs.lock)  # taken before the busy one was found, and let go
