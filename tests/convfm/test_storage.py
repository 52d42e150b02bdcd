"""Storage URIs and the registry behind them: ``file://`` (pyarrow's path, no server) and real S3 protocol
against moto's in-process server. Publishing uploads the manifest last and ``latest`` after it; a version
without its manifest is never listed or resolved; resolve downloads into the cache and verifies."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convfm.store import storage
from convfm.store.artifacts import load_model_dir, save_model_dir
from convfm.config import DataConfig, ModelConfig
from convfm.errors import ArtifactError, StorageError
from convfm.jsonfile import read_json, write_json_atomic
from convfm.model.network import ConvFM
from convfm.data.prepare import prepare_data
from convfm.store.registry import LATEST, promote, publish, resolve, versions
from convfm.training.epoch import predict_proba


@pytest.fixture(scope="module")
def saved(market_dir, tmp_path_factory):
    data = prepare_data(DataConfig(path=str(market_dir)))
    torch.manual_seed(0)
    model = ConvFM(ModelConfig(embedding_dim=8, conv_filters=4, hidden_dims=(8,)), data.extractor.feature_map).eval()
    out = save_model_dir(tmp_path_factory.mktemp("art") / "model", model, data.extractor, metrics={"val_roc_auc": 0.5})
    return data, model, out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_uri_helpers_keep_the_query_at_the_end():
    uri = "s3://bucket/runs/x?endpoint_override=localhost:9000&scheme=http"
    assert storage.is_uri(uri) and storage.is_uri("file:///tmp/a") and storage.is_uri("gs://b")
    assert not storage.is_uri("runs/x") and not storage.is_uri(Path("/tmp/a")) and not storage.is_uri("C:/x")
    query = "?endpoint_override=localhost:9000&scheme=http"
    assert storage.join(uri, "ray", "best/") == "s3://bucket/runs/x/ray/best" + query
    assert storage.name(uri) == "x" and storage.name("s3://bucket/runs/x/") == "x"
    assert storage.parent(uri) == "s3://bucket/runs?endpoint_override=localhost:9000&scheme=http"
    assert storage.join("runs/x", "ray") == Path("runs/x/ray") and storage.parent(Path("a/b")) == Path("a")


def test_file_uri_round_trip_of_text_and_directories(tmp_path):
    root = f"file://{tmp_path}/store"
    assert not storage.exists(root) and storage.list_dirs(root) == []
    storage.write_text(storage.join(root, "a", "note.txt"), "hello\n")
    assert storage.read_text(storage.join(root, "a", "note.txt")) == "hello\n"
    assert (tmp_path / "store" / "a" / "note.txt").read_text() == "hello\n"  # really on disk, via pyarrow
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(root, "a", "nope.txt"))
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "x.bin").write_bytes(bytes(range(256)) * 5000)
    (local / "sub" / "y.txt").write_text("y")
    storage.upload_dir(local, storage.join(root, "d"))
    assert storage.list_dirs(root) == ["a", "d"] and storage.list_dirs(storage.join(root, "d")) == ["sub"]
    storage.download_dir(storage.join(root, "d"), tmp_path / "back")
    assert (tmp_path / "back" / "x.bin").read_bytes() == (local / "x.bin").read_bytes()
    assert (tmp_path / "back" / "sub" / "y.txt").read_text() == "y"


def test_json_files_keep_numpy_scalars_as_numbers(tmp_path):
    path = tmp_path / "doc.json"
    write_json_atomic(path, {"auc": np.float32(0.5), "rows": np.int64(7), "ok": np.bool_(True), "where": tmp_path})
    assert read_json(path, "a document") == {"auc": 0.5, "rows": 7, "ok": True, "where": str(tmp_path)}
    assert '"auc": 0.5' in path.read_text() and '"rows": 7' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]  # no temp file left beside it
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any other written file


def test_json_files_are_strict_json_nan_and_infinities_as_null(tmp_path):
    """A report with a metric that cannot be computed (NaN) must still parse in jq, JavaScript or Go."""
    path = tmp_path / "doc.json"
    write_json_atomic(path, {"auc": float("nan"), "best": [np.float32("inf"), 1.5], "deep": {"x": -np.inf}})
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert read_json(path, "a document") == {"auc": None, "best": [None, 1.5], "deep": {"x": None}}


@pytest.mark.parametrize("text, message", [
    (None, r"doc\.json: test record not found"),
    ('{"auc": ', r"doc\.json: test record is not valid JSON \(Expecting value: line 1"),
    ("[1, 2]", r"doc\.json: test record must hold a JSON object, got list"),
    (b"\xff\xfe", r"doc\.json: test record is not valid JSON \(not UTF-8 at byte 0\)"),
])
def test_json_read_errors_name_the_file_and_what_it_should_hold(tmp_path, text, message):
    path = tmp_path / "doc.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ArtifactError, match=message):
        read_json(path, "test record", ArtifactError)


def test_upload_puts_the_named_files_last(tmp_path, monkeypatch):
    local = tmp_path / "m"
    local.mkdir()
    for name in ("manifest.json", "a.json", "z.json", "weights.pt"):
        (local / name).write_text(name)
    order = []
    real = storage._copy
    monkeypatch.setattr(storage, "_copy", lambda sf, s, df, d: (order.append(Path(d).name), real(sf, s, df, d)))
    storage.upload_dir(local, f"file://{tmp_path}/out", last=("manifest.json",))
    assert order == ["a.json", "weights.pt", "z.json", "manifest.json"]


def test_unusable_uris_fail_in_one_line_naming_them(tmp_path):
    with pytest.raises(StorageError, match=r"^nosuch://bucket/x: .*") as error:
        storage.exists("nosuch://bucket/x")
    assert "\n" not in str(error.value)


def test_registry_on_a_file_uri_publishes_resolves_and_caches(saved, tmp_path, cache):
    data, model, out = saved
    registry = f"file://{tmp_path}/registry"
    first, second = publish(out, registry, "jobs"), publish(out, registry, "jobs")
    assert (first, second) == (f"{registry}/jobs/v0001", f"{registry}/jobs/v0002")
    entry = storage.join(registry, "jobs")
    assert versions(entry) == ["v0001", "v0002"] and storage.read_text(storage.join(entry, LATEST)) == "v0002\n"
    local = resolve(entry)
    assert local.is_relative_to(cache) and local.name == "v0002" and local.parent.name == "jobs"
    assert digests(local) == digests(out)
    inode = (local / "weights.pt").stat().st_ino  # a verified cached copy is reused, not downloaded again
    assert resolve(entry) == local and (local / "weights.pt").stat().st_ino == inode
    (local / "marker").write_text("unlisted")  # a file its manifest does not list: not a copy, fetched again
    assert resolve(entry) == local and not (local / "marker").exists()
    assert resolve(entry, "v0001").name == "v0001" and resolve(f"{entry}/v0001").name == "v0001"
    weights = local / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # a damaged cached copy is downloaded again
    assert resolve(entry) == local and digests(local)["weights.pt"] == digests(out)["weights.pt"]


def test_promote_on_a_file_uri_verifies_the_version_first(saved, tmp_path):
    _, _, out = saved
    registry = f"file://{tmp_path}/registry"
    publish(out, registry, "jobs")
    publish(out, registry, "jobs")
    entry = storage.join(registry, "jobs")
    (tmp_path / "registry" / "jobs" / "v0001" / "weights.pt").write_bytes(b"torn")
    with pytest.raises(ArtifactError, match=re.escape(f"{entry}/v0001/weights.pt: checksum mismatch")):
        promote(entry, "v0001")
    assert storage.read_text(storage.join(entry, LATEST)) == "v0002\n"
    assert promote(entry, "v0002")["previous"] == "v0002"


def test_a_copy_another_process_put_in_place_is_kept(saved, tmp_path, monkeypatch):
    """Two replicas download the same version at once: the one that finishes second uses the first one's copy
    (which that replica may be loading) instead of deleting it and renaming its own into place."""
    _, _, out = saved
    registry = f"file://{tmp_path}/registry"
    publish(out, registry, "jobs")
    local = resolve(f"{registry}/jobs")
    theirs = tmp_path / "theirs"
    local.rename(theirs)  # the other replica's finished download, not in place yet
    inode = (theirs / "weights.pt").stat().st_ino  # the file it is loading
    download = storage.download_dir

    def download_while_the_other_finishes(uri, directory, names=None):
        download(uri, directory, names)
        theirs.rename(local)  # it wins the race while this download was running

    monkeypatch.setattr(storage, "download_dir", download_while_the_other_finishes)
    assert resolve(f"{registry}/jobs") == local
    assert (local / "weights.pt").stat().st_ino == inode and digests(local)["weights.pt"] == digests(out)["weights.pt"]
    assert sorted(p.name for p in local.parent.iterdir()) == ["v0001"]  # no temp or stale copies left


def test_a_stale_cached_copy_is_moved_aside_and_replaced(saved, tmp_path):
    _, _, out = saved
    registry = f"file://{tmp_path}/registry"
    publish(out, registry, "jobs")
    local = resolve(f"{registry}/jobs")
    manifest = local / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", '{"stale": true, ', 1))  # another manifest: not a copy
    assert resolve(f"{registry}/jobs") == local and digests(local) == digests(out)
    assert sorted(p.name for p in local.parent.iterdir()) == ["v0001"]


def test_partial_upload_is_never_listed_or_resolved(saved, tmp_path):
    _, _, out = saved
    registry = f"file://{tmp_path}/registry"
    entry = storage.join(registry, "jobs")
    publish(out, registry, "jobs")
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "manifest.json").unlink()
    storage.upload_dir(partial, storage.join(entry, "v0002"))  # an upload killed before its manifest
    assert versions(entry) == ["v0001"] and resolve(entry).name == "v0001"
    with pytest.raises(ArtifactError, match=r"registry/jobs/v0002: no such version; available: \['v0001'\]"):
        resolve(entry, "v0002")
    assert storage.name(publish(out, registry, "jobs")) == "v0003"  # the partial number is not reused
    assert versions(entry) == ["v0001", "v0003"] and resolve(entry).name == "v0003"


def test_resolve_errors_name_the_uri(saved, tmp_path):
    _, _, out = saved
    registry = f"file://{tmp_path}/registry"
    with pytest.raises(ArtifactError, match=f"^{registry}/nothing: no such model or registry entry$"):
        resolve(f"{registry}/nothing")
    publish(out, registry, "jobs")
    storage.write_text(f"{registry}/jobs/{LATEST}", "v0007\n")
    with pytest.raises(ArtifactError, match=f"^{registry}/jobs/latest: points to version 'v0007', which does not"):
        resolve(f"{registry}/jobs")
    with pytest.raises(ArtifactError, match="a single model directory, not a registry entry"):
        resolve(f"file://{out}", "v0001")


# ------------------------------------------------------------------------------------------------ real S3 (moto)
def test_s3_registry_round_trip_gives_identical_scores(saved, s3_bucket, cache):
    data, model, out = saved
    registry = s3_bucket("registry-roundtrip")
    first = publish(out, registry, "jobs")
    assert storage.name(first) == "v0001" and storage.name(publish(out, registry, "jobs")) == "v0002"
    entry = storage.join(registry, "jobs")
    assert versions(entry) == ["v0001", "v0002"]
    local = resolve(entry)
    assert local.is_relative_to(cache) and local.name == "v0002" and digests(local) == digests(out)
    loaded = load_model_dir(local)
    before = predict_proba(model, data.sets["valid"], 512, torch.device("cpu"))
    reloaded = loaded.extractor.example_set(data.frames["valid"], history=data.extractor.history)  # the data's past
    after = predict_proba(loaded.model, reloaded, 512, torch.device("cpu"))
    assert np.array_equal(before, after) and loaded.metrics == {"val_roc_auc": 0.5}
    assert resolve(first).name == "v0001" and resolve(entry, "v0001") == resolve(first)


def test_s3_partial_version_is_skipped_and_errors_name_the_uri(saved, s3_bucket, tmp_path):
    _, _, out = saved
    registry = s3_bucket("registry-partial")
    entry = storage.join(registry, "jobs")
    publish(out, registry, "jobs")
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "manifest.json").unlink()
    storage.upload_dir(partial, storage.join(entry, "v0002"))
    storage.write_text(storage.join(entry, LATEST), "v0002\n")  # even a pointer to it is refused
    assert versions(entry) == ["v0001"]
    with pytest.raises(ArtifactError, match=r"^s3://convfm-test/registry-partial/jobs/latest\?.*: points to version "
                                            r"'v0002', which does not exist$"):
        resolve(entry)
    assert storage.name(publish(out, registry, "jobs")) == "v0003" and resolve(entry).name == "v0003"
    with pytest.raises(ArtifactError, match=r"^s3://convfm-test/registry-partial/nothing\?.*: no such model"):
        resolve(s3_bucket("registry-partial/nothing"))
    missing_bucket = entry.replace("convfm-test", "no-such-bucket")
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket/.*(not found|NO_SUCH_BUCKET|does not exist)"):
        publish(out, storage.parent(missing_bucket), "jobs")


def test_s3_keys_with_dot_dot_never_land_outside_the_download(saved, s3_bucket, tmp_path, cache):
    """An object key is any string: ``v0001/../../../escaped.json`` lists under the version, S3 serves the
    bucket's ``escaped.json`` for it, and a local path built from the key would lie three folders up."""
    import boto3

    _, _, out = saved
    registry = s3_bucket("registry-escape")
    publish(out, registry, "jobs")
    endpoint = re.search(r"endpoint_override=([^&]+)", registry).group(1)
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    for key in ("registry-escape/jobs/v0001/../../../escaped.json", "escaped.json"):
        client.put_object(Bucket="convfm-test", Key=key, Body=b"{}")
    local = resolve(storage.join(registry, "jobs"))  # only the files its manifest names are fetched
    assert digests(local) == digests(out) and not list(cache.rglob("escaped.json"))
    with pytest.raises(StorageError, match=r"refusing to download '\.\./\.\./\.\./escaped\.json': not a plain "):
        storage.download_dir(storage.join(registry, "jobs", "v0001"), tmp_path / "a" / "b" / "c" / "dl")
    assert not list(tmp_path.rglob("escaped.json"))


def test_a_remote_manifest_naming_a_path_outside_its_version_is_refused_before_download(saved, tmp_path, cache):
    _, _, out = saved
    registry = f"file://{tmp_path}/registry"
    publish(out, registry, "jobs")
    manifest = tmp_path / "registry" / "jobs" / "v0001" / "manifest.json"
    document = read_json(manifest, "manifest")
    document["files"]["../../escaped.json"] = hashlib.sha256(b"{}").hexdigest()
    write_json_atomic(manifest, document)
    (tmp_path / "registry" / "escaped.json").write_text("{}")
    refused = r"v0001/manifest.json: entry '\.\./\.\./escaped\.json' is not a plain file name"
    with pytest.raises(ArtifactError, match=refused):
        resolve(f"{registry}/jobs")
    assert not list(cache.rglob("escaped.json"))


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", ""])
def test_download_refuses_names_that_are_not_plain_relative_paths(tmp_path, name):
    (tmp_path / "src").mkdir()
    with pytest.raises(StorageError, match=f"refusing to download {re.escape(repr(name))}: not a plain relative"):
        storage.download_dir(f"file://{tmp_path}/src", tmp_path / "dl", names=[name])
    assert not (tmp_path / "dl").exists()  # refused before anything is written


def test_download_refuses_a_name_resolving_through_a_symlink_out_of_the_target(tmp_path):
    (tmp_path / "src" / "link").mkdir(parents=True)
    (tmp_path / "src" / "link" / "f").write_text("x")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(StorageError, match=r"refusing to download 'link/f': it resolves outside"):
        storage.download_dir(f"file://{tmp_path}/src", tmp_path / "dl", names=["link/f"])
    assert not (tmp_path / "elsewhere").exists()


def test_gcs_uris_get_a_bounded_retry_unless_they_set_one(monkeypatch):
    assert storage.with_store_defaults("gs://b/models") == "gs://b/models?retry_limit_seconds=30"
    assert storage.with_store_defaults("gs://b/m?scheme=http") == "gs://b/m?scheme=http&retry_limit_seconds=30"
    assert storage.with_store_defaults("gs://b/m?retry_limit_seconds=5") == "gs://b/m?retry_limit_seconds=5"
    assert storage.with_store_defaults("s3://b/m") == "s3://b/m"
    monkeypatch.setenv(storage.GCS_RETRY_ENV, "2")
    assert storage.with_store_defaults("gs://b/m") == "gs://b/m?retry_limit_seconds=2"


@pytest.mark.timeout(60)
def test_unreachable_gcs_fails_fast_with_the_uri_in_the_error(monkeypatch):
    import time

    monkeypatch.setenv(storage.GCS_RETRY_ENV, "2")  # no network, no credentials here: every request fails
    uri = "gs://convfm-no-such-bucket/models/convfm"
    started = time.perf_counter()
    with pytest.raises(StorageError, match="gs://convfm-no-such-bucket/models/convfm"):
        storage.read_text(storage.join(uri, LATEST))
    assert time.perf_counter() - started < 30


def test_fetched_reads_many_at_once_and_gives_them_back_in_order(monkeypatch):
    import threading
    import time

    monkeypatch.setattr(storage, "FETCH_WINDOW", 50)  # four windows
    threads = set()

    def read(i: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.001 * (i % 3))  # finishing out of order
        if i == 170:
            raise FileNotFoundError(f"item {i}")
        return 2 * i

    got = []
    with pytest.raises(FileNotFoundError, match="item 170"):
        for value in storage.fetched(read, range(200)):
            got.append(value)
    assert got == [2 * i for i in range(170)] and len(threads) > 1
    assert list(storage.fetched(read, range(10))) == [2 * i for i in range(10)]  # few: read in this thread
