"""``build_app`` checks the model path at start-up without loading or downloading it (no Ray cluster needed:
``.bind`` only describes the application)."""
from __future__ import annotations

import hashlib

import cloudpickle
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


def test_the_api_key_never_travels_with_the_application(tiny, monkeypatch):
    """What Serve ships to the replicas (the application and its bound arguments, pickled) holds the key's
    SHA-256 only; the config names the variable, never the key."""
    from serve.app import build_app

    key = "s3cret-" * 4
    monkeypatch.setenv("CONVFM_TEST_KEY", key)
    config = ServeConfig(model=str(tiny.entry), api_key_env="CONVFM_TEST_KEY")
    shipped = cloudpickle.dumps(build_app(config))
    assert hashlib.sha256(key.encode()).hexdigest().encode() in shipped  # so the check below looks at the args
    assert b"s3cret" not in shipped and "s3cret" not in repr(config)


def test_retrieval_candidates_reach_every_ranker_replica_and_each_version_it_loads(tiny):
    """The fields travel from the config to the Ranker's arguments, and a replica's slots (its primary and a
    traffic split's other versions) load Scorers that build the index (or keep scans) with them."""
    from serve.app import build_app
    from serve.model_slot import ModelSlot, VersionSlots

    one = build_app(ServeConfig(model=str(tiny.entry), retrieval_candidates=40, score_cache_mib=3),
                    node_cpus=2)._bound_deployment
    two = build_app(ServeConfig(model=str(tiny.entry), retrieval_candidates=40, score_cache_mib=3, replicas=2),
                    node_cpus=2)._bound_deployment
    for ranker_args in (one.init_args[0].args, two.init_args[0]._bound_deployment.init_args):
        assert ranker_args[0] == str(tiny.entry) and ranker_args[-2:] == (40, 3)

    primary = ModelSlot(tiny.entry, retrieval_candidates=40)
    assert primary.load()["ok"] and primary.current.index is not None
    assert primary.current.retrieval_candidates == 40
    variants = VersionSlots(primary)
    assert variants.hold(["v0001"])[0]["ok"] and variants.get("v0001").index is not None
    assert ModelSlot(tiny.entry).retrieval_candidates == 0  # the default: the exact scan
    kept = ModelSlot(tiny.entry, score_cache_mib=3)
    assert kept.load()["ok"] and kept.current.cache.budget_bytes == 3 * 2**20
    kept_variants = VersionSlots(kept)
    assert kept_variants.hold(["v0001"])[0]["ok"] and kept_variants.get("v0001").cache.budget_bytes == 3 * 2**20
    assert ModelSlot(tiny.entry).score_cache_mib == 64  # the service keeps scans by default
    assert primary.current.cache.budget_bytes == 0  # not beside the retrieval index


def test_one_replica_is_one_deployment_sized_as_the_ranker_more_are_an_ingress_and_rankers(tiny):
    """One replica: the Api scores in its own process (``serve.in_process``) and asks for the ranking replica's
    CPUs; two: a 0.1-CPU ingress in front of a Ranker deployment."""
    from serve.app import build_app
    from serve.in_process import InProcess

    one = build_app(ServeConfig(model=str(tiny.entry)), node_cpus=2)._bound_deployment
    assert isinstance(one.init_args[0], InProcess)
    assert one.ray_actor_options["num_cpus"] == 1.0 and one.max_ongoing_requests == 32
    two = build_app(ServeConfig(model=str(tiny.entry), replicas=2), node_cpus=2)._bound_deployment
    ranker = two.init_args[0]._bound_deployment
    assert ranker.name == "Ranker" and ranker.num_replicas == 2 and ranker.ray_actor_options["num_cpus"] == 0.95
    assert two.ray_actor_options["num_cpus"] == 0.1 and two.max_ongoing_requests == 64
