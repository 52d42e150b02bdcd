"""``build_app`` checks the model path at start-up without loading or downloading it (no Ray cluster needed:
``.bind`` only describes the application)."""
from __future__ import annotations

import pytest

from convfm.store import storage
from convfm.errors import ArtifactError
from serve.config import ServeConfig


def test_a_wrong_model_or_version_fails_at_start_up(tiny, tmp_path):
    from serve.app import build_app

    with pytest.raises(ArtifactError, match="no such model or registry entry"):
        build_app(ServeConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ArtifactError, match=r"v0009: no such version; available: \['v0001'\]"):
        build_app(ServeConfig(model=str(tiny.entry), model_version="v0009"))


def test_a_uri_model_is_checked_not_downloaded(tiny, tmp_path, monkeypatch):
    from serve.app import build_app

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    assert build_app(ServeConfig(model=f"file://{tiny.entry}", model_version="v0001")) is not None
    assert not (tmp_path / "cache").exists()  # the replicas download it, not the process that builds the app
