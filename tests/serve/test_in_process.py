"""``serve.in_process.LocalHandle`` answers the DeploymentHandle calls the Api makes, as one replica would."""
from __future__ import annotations

import asyncio

import pytest

from serve.in_process import LocalHandle


class FakeRanker:
    def __init__(self) -> None:
        self.healthy = True

    def health(self) -> tuple[int, dict]:  # a plain method, as Ranker.health
        return 200, {"status": "ok"}

    async def recommend(self, request: dict, want: str) -> dict:  # a coroutine, as Ranker.recommend
        await asyncio.sleep(0)
        return {"request": request, "want": want}

    async def reload(self, version: str) -> dict:
        if version == "broken":
            raise ValueError("cannot load broken")
        await asyncio.sleep(0.5 if version == "slow" else 0)
        return {"ok": True, "version": version}

    def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("gave up loading")


def test_calls_return_what_the_ranker_returns_sync_or_async():
    handle = LocalHandle(FakeRanker())

    async def calls() -> tuple:
        return await handle.health.remote(), await handle.recommend.remote({"user_id": "u1"}, "v0002")

    assert asyncio.run(calls()) == ((200, {"status": "ok"}), {"request": {"user_id": "u1"}, "want": "v0002"})
    assert not hasattr(handle, "__deepcopy__") and not hasattr(handle, "_private")
    with pytest.raises(AttributeError, match="no_such_method"):
        handle.no_such_method


def test_a_broadcast_reaches_the_one_replica_and_reports_failures_like_serve():
    handle = LocalHandle(FakeRanker())

    def broadcast(version: str, **options) -> list:
        return asyncio.run(handle.broadcast("reload", version).results_async(**options))

    assert broadcast("v0003", timeout_s=5) == [{"ok": True, "version": "v0003"}]
    failed = broadcast("broken", timeout_s=5, return_exceptions=True)
    assert len(failed) == 1 and isinstance(failed[0], ValueError) and "broken" in str(failed[0])
    with pytest.raises(ValueError, match="cannot load broken"):
        broadcast("broken", timeout_s=5)
    with pytest.raises(TimeoutError, match="reload did not finish in 0.05s"):
        broadcast("slow", timeout_s=0.05, return_exceptions=True)


def test_health_checks_reach_the_ranker():
    ranker = FakeRanker()
    handle = LocalHandle(ranker)
    handle.check_health()
    ranker.healthy = False
    with pytest.raises(RuntimeError, match="gave up loading"):
        handle.check_health()
