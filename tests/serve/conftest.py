"""The serve tests use the session fixtures of tests/conftest.py: ``tiny`` (a tiny trained job-market model,
exported and published as ``registry/tiny`` v0001), ``break_version`` and ``ray_local``; and ``local_service``
here."""
from __future__ import annotations

import hashlib
import types
import warnings
from pathlib import Path
from typing import Callable

import pytest

with warnings.catch_warnings():  # starlette's note about its httpx-based TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def start_local_service(entry: Path, live_root: Path, key: str) -> types.SimpleNamespace:
    """A fresh model slot of ``entry``, a live store at ``live_root``/live and the HTTP app without Ray
    (LocalBackend) behind the API key ``key``: client, store, slot."""
    from convfm.store.live_catalog import CatalogStore
    from serve.http import LocalBackend, build_http_app
    from serve.model_slot import ModelSlot

    slot = ModelSlot(entry)
    assert slot.load()["ok"]
    store = CatalogStore(live_root / "live")
    digest = hashlib.sha256(key.encode()).hexdigest()
    app = build_http_app(LocalBackend(slot, store.root.parent), api_key_digest=digest)
    return types.SimpleNamespace(client=TestClient(app, base_url="http://localhost"), store=store, slot=slot)


@pytest.fixture(scope="session")
def local_service() -> Callable[[Path, Path, str], types.SimpleNamespace]:
    """``local_service(entry, tmp_path, key)``: ``start_local_service``, one per test that asks (the live catalog
    changes the scorer in place)."""
    return start_local_service
