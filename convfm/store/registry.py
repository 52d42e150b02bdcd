"""A model registry: ``ROOT/<name>/<version>/`` model directories and a ``latest`` pointer, on a local disk or
behind a storage URI (``s3://``, ``gs://``, ``file://``; see ``convfm.store.storage``).

Versions are ``v0001``, ``v0002``, ... and a version counts as published once its ``manifest.json`` is there.
Locally, publishing copies a model directory into a temp folder beside the versions, verifies it, renames it
into place, then replaces ``latest`` (a one-line text file) atomically; folders and files get the modes the
umask gives (a registry may be shared), and what killed publishes left (``.vNNNN.*``, ``.latest.*``) is
deleted by the next publish once it is ``STALE_AFTER_S`` old. Object stores have no atomic rename:
there every file is uploaded, ``manifest.json`` last, then ``latest`` last of all; a version without its
manifest (an interrupted upload) is never listed or resolved, and its number is not reused.

``resolve`` of a URI downloads the version into a local cache (``$CONVFM_CACHE``, default ``~/.cache/convfm``,
under ``models/<hash of the entry URI>/<name>/<version>``), reuses a cached copy whose manifest matches the
remote one and still verifies, and returns the local directory. Either way, a crash at any point never
leaves ``latest`` naming a partial model.

Promotion (``promote``, ``rollback``; ``convfm models``): once an entry has a promotion history
(``promotions.jsonl``, one JSON record per line, only ever added to), ``latest`` means *the promoted version*:
only ``promote`` and ``rollback`` move it, and ``publish`` adds versions without moving it, so a newly trained
version can be tried on a share of traffic first. An entry never promoted keeps the old rule (publish moves it).
Both verify the version first and refuse a history they cannot read (naming its line) before writing anything;
promote also repairs a ``latest`` that is missing or names no version.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from convfm.store import storage
from convfm.store.artifacts import MANIFEST, manifest_files, verify_model_dir
from convfm.errors import ArtifactError
from convfm.jsonfile import parse_json

LATEST = "latest"
HISTORY = "promotions.jsonl"  # an entry's promotions and rollbacks, oldest first
VERSION_PATTERN = r"^v(\d{4,})$"  # v0001, v0002, ...: the one definition, serve/ imports it
VERSION_RE = re.compile(VERSION_PATTERN)
STAGING_RE = re.compile(r"^\.(v\d{4,}|latest)\..+")  # publish's staging folder, write_text's temp pointer
STALE_AFTER_S = 3600.0  # a staging leftover this old is from a publish that died (copies take seconds)


def _version_dirs(model_root: str | Path) -> list[str]:
    """Every ``vNNNN`` directory, complete or not, oldest first."""
    found = [d for d in storage.list_dirs(model_root) if VERSION_RE.match(d)]
    return sorted(found, key=lambda v: int(v[1:]))


def versions(model_root: str | Path) -> list[str]:
    """Published versions of one model (those with a manifest.json), oldest first."""
    return [v for v in _version_dirs(model_root) if storage.is_file(storage.join(model_root, v, MANIFEST))]


def publish(model_dir: str | Path, registry: str | Path, name: str) -> str | Path:
    """Copy a verified model directory to ``registry/name/vNNNN`` and point ``latest`` at it; returns the
    version's location (a Path, or a URI for a URI registry)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ArtifactError(f"model name {name!r}: use letters, digits, '.', '_' and '-'")
    verify_model_dir(model_dir)
    root = storage.join(registry, name)
    if not is_entry(root) and storage.exists(root):  # the registry root given for an entry (`models`)
        entries = [d for d in storage.list_dirs(root) if is_entry(storage.join(root, d))]
        if entries:
            raise ArtifactError(f"{root}: holds registry entries ({', '.join(sorted(entries)[:3])}), so it is no "
                                f"entry itself: publish into one, {storage.join(root, 'NAME')}")
    existing = _version_dirs(root)  # partial uploads included: their number is never reused
    version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
    if storage.is_uri(root):
        target = storage.join(root, version)
        storage.upload_dir(model_dir, target, last=(MANIFEST,))
        if not storage.exists(storage.join(root, HISTORY)):
            storage.write_text(storage.join(root, LATEST), version + "\n")
        return target
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)
    staging = root / f".{version}.{uuid.uuid4().hex}"
    staging.mkdir()  # not mkdtemp: its 0700 would hide a shared registry from everyone but the publisher
    mode = staging.stat().st_mode  # what the umask gives
    try:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True, copy_function=shutil.copyfile)  # file modes too
        staging.chmod(mode)  # copytree copied the source folder's mode (save_model_dir's, a run's, anyone's)
        verify_model_dir(staging)
        os.replace(staging, root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not storage.exists(root / HISTORY):  # once promoted, only promote/rollback move `latest`
        storage.write_text(root / LATEST, version + "\n")  # temp file + rename
    return root / version


def latest_note(published: str | Path) -> str:
    """What a publish did to its entry's ``latest``, for the commands that publish: "latest of ENTRY", or, for an
    entry with a promotion history (``latest`` stays), the promote command that would serve this version."""
    entry, version = storage.parent(published), storage.name(published)
    if not storage.exists(storage.join(entry, HISTORY)):
        return f"latest of {entry}"
    try:
        stays = f"{entry}'s latest stays {storage.read_text(storage.join(entry, LATEST)).strip()}"
    except FileNotFoundError:  # a hand-deleted pointer: publish never writes one into a promoted entry
        stays = f"{entry} has no latest"
    return f"{stays}: the entry has a promotion history; `convfm models promote {entry} {version}` serves this version"


def _remove_stale_staging(root: Path) -> None:
    """Delete what killed publishes left in an entry: ``.vNNNN.*`` staging folders and ``.latest.*`` temp files
    untouched for ``STALE_AFTER_S`` (a younger one may belong to a publish still running)."""
    cutoff = time.time() - STALE_AFTER_S
    for path in root.iterdir():
        if not STAGING_RE.match(path.name) or path.is_symlink():
            continue
        try:
            inside = list(path.iterdir()) if path.is_dir() else []
            if max(p.lstat().st_mtime for p in [path, *inside]) >= cutoff:
                continue
        except FileNotFoundError:  # another publish cleaned it meanwhile
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def locate(path: str | Path, version: Optional[str] = None) -> str | Path:
    """Where the model is, without downloading: ``version`` of the entry ``path`` belongs to (``path`` is
    the entry or one of its versions), else ``registry/name`` -> its ``latest``, else a version or model dir."""
    if version is not None:
        return _version_of(path, version)
    pointer = storage.join(path, LATEST)
    if storage.is_file(pointer):
        latest = storage.read_text(pointer).strip()
        target = storage.join(path, latest)
        if not VERSION_RE.match(latest) or not storage.is_file(storage.join(target, MANIFEST)):
            raise ArtifactError(f"{pointer}: points to version {latest!r}, which does not exist")
        return target
    if not storage.exists(path):
        raise ArtifactError(f"{path}: no such model or registry entry")
    if not storage.is_file(storage.join(path, MANIFEST)):
        raise ArtifactError(f"{path}: neither a model directory (no manifest.json) nor a registry entry (no latest)")
    return path


LIVE = "live"  # the live catalog and the event log of a registry entry: ``ROOT/<name>/live/``


def live_location(path: str | Path) -> str | Path:
    """Where the service keeps what changes between model versions (live catalog, event log) for the model at
    ``path``: ``live/`` in its registry entry (``path`` is the entry or one of its versions), shared by every
    version so a traffic split and a promotion see the same state; beside a plain model directory,
    ``<dir>.live`` (inside it, the manifest check would refuse the model)."""
    if storage.is_file(storage.join(path, LATEST)):
        return storage.join(path, LIVE)
    if VERSION_RE.match(storage.name(path)):
        return storage.join(storage.parent(path), LIVE)
    return storage.join(storage.parent(path), storage.name(path) + ".live")


def model_identity(path: Path) -> tuple[str, str]:
    """(name, version) of a local model directory: registry layout ``NAME/vNNNN``, else the directory name and
    a hash of its manifest (what responses and batch outputs record as the model version)."""
    if VERSION_RE.match(path.name):
        return path.parent.name, path.name
    digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()[:12]
    return path.name, f"sha-{digest}"


def is_entry(path: str | Path) -> bool:
    """Whether ``path`` is a registry entry: it has a ``latest`` or a promotion history (whose ``latest`` was
    lost; ``promote`` writes it again)."""
    return storage.is_file(storage.join(path, LATEST)) or storage.is_file(storage.join(path, HISTORY))


def require_entry(path: str | Path) -> None:
    """ArtifactError unless ``path`` is a registry entry (``is_entry()``)."""
    if not is_entry(path):
        raise ArtifactError(f"{path}: not a registry entry (no latest); publish a model there first")


def _version_of(path: str | Path, version: str) -> str | Path:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ArtifactError(f"version {version!r}: must look like v0001")
    if is_entry(path):
        root = path
    elif VERSION_RE.match(storage.name(path)):
        root = storage.parent(path)
    else:
        raise ArtifactError(f"{path}: a single model directory, not a registry entry; it has no versions")
    target = storage.join(root, version)
    if not storage.is_file(storage.join(target, MANIFEST)):
        raise ArtifactError(f"{target}: no such version; available: {versions(root)}")
    return target


def promotion_history(entry: str | Path) -> list[dict[str, Any]]:
    """The entry's promotion records, oldest first ([] when it was never promoted)."""
    path = storage.join(entry, HISTORY)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return []
    records: list[dict[str, Any]] = []
    stack: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            record = parse_json(line, f"{path} line {number}", "promotion record", ArtifactError)
            if not isinstance(record, dict) or not VERSION_RE.match(str(record.get("version"))):
                raise ArtifactError(f"{path} line {number}: not a promotion record with a version")
            if not _apply(stack, record):
                raise ArtifactError(f"{path} line {number}: a rollback with no promotion in force before it "
                                    "(a hand-edited or merged history?)")
            records.append(record)
    return records


def promoted_stack(records: list[dict[str, Any]]) -> list[str]:
    """Promoted versions in force, oldest first: a promotion pushes its version (the first one also what
    ``latest`` named before it), a rollback pops one; the last is the version promoted now."""
    stack: list[str] = []
    for number, record in enumerate(records, 1):
        if not _apply(stack, record):
            raise ArtifactError(f"promotion record {number}: a rollback with no promotion in force before it")
    return stack


def _apply(stack: list[str], record: dict[str, Any]) -> bool:
    """One step of ``promoted_stack()``; False for a rollback with nothing to pop."""
    if record.get("action") == "rollback":
        if not stack:
            return False
        stack.pop()
        return True
    if not stack and record.get("previous") and record["previous"] != record["version"]:
        stack.append(record["previous"])
    stack.append(record["version"])
    return True


def promote(entry: str | Path, version: str) -> dict[str, Any]:
    """Make ``version`` the entry's promoted version: record it in the history, then point ``latest`` at it
    (atomically). Returns the record; ArtifactError for an unknown or broken version or a path that is no entry."""
    require_entry(entry)
    promotion_history(entry)  # a history list and rollback cannot read is refused, not added to
    _verified(_version_of(entry, version))  # names the versions there when it does not exist
    try:  # not locate(): promote is how a `latest` naming no version gets repaired
        named = storage.read_text(storage.join(entry, LATEST)).strip()
    except FileNotFoundError:
        named = None
    record = {"action": "promote", "version": version, "previous": named if named in versions(entry) else None}
    if record["previous"] is None:  # what `latest` said instead of a version (None: there was no latest)
        record["latest_was"] = named if named is None else named[:100]
    return _record(entry, record)


def rollback(entry: str | Path) -> dict[str, Any]:
    """Point ``latest`` back at the version promoted before the current one, and record that."""
    stack = promoted_stack(promotion_history(entry))
    if len(stack) < 2:
        raise ArtifactError(f"{storage.join(entry, HISTORY)}: no earlier promoted version to roll back to"
                            + (f" ({stack[0]} is the earliest promotion in force)" if stack
                               else " (nothing was promoted)"))
    _verified(_version_of(entry, stack[-2]))
    return _record(entry, {"action": "rollback", "version": stack[-2], "previous": stack[-1]})


def _verified(version_dir: str | Path) -> None:
    """Check a version as loading it would (manifest, file list, checksums) before ``latest`` may name it; a
    URI version is checked through its verified cached copy."""
    if storage.is_uri(version_dir):
        cached_copy(str(version_dir))
    else:
        verify_model_dir(version_dir)


def _record(entry: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Add ``record`` (with its time) to the history (the whole file rewritten atomically: object stores have
    no append; one promoter per entry), then move ``latest``: a crash between leaves the history ahead, and
    the next promote or rollback writes ``latest`` again."""
    record = {**record, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = storage.join(entry, HISTORY)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        text = ""
    if text and not text.endswith("\n"):  # a hand-edited last line: the new record starts a line of its own
        text += "\n"
    storage.write_text(path, text + json.dumps(record) + "\n", durable=True)
    storage.write_text(storage.join(entry, LATEST), record["version"] + "\n", durable=True)
    return record


def resolve(path: str | Path, version: Optional[str] = None) -> Path:
    """The local model directory of ``locate(path, version)``; a URI is downloaded to the cache first."""
    found = locate(path, version)
    return cached_copy(str(found)) if storage.is_uri(found) else Path(found)


def cached_copy(uri: str) -> Path:
    """A verified local copy of the model directory at ``uri``: reused when its manifest equals the remote
    one and its files still check, else downloaded (temp dir, verified, renamed into place)."""
    try:
        manifest = storage.read_text(storage.join(uri, MANIFEST))
    except FileNotFoundError:
        raise ArtifactError(f"{uri}: no manifest.json; not a complete model directory") from None
    entry = storage.parent(uri)
    target = storage.cache_dir() / "models" / storage.uri_key(str(entry)) / storage.name(entry) / storage.name(uri)
    if _is_copy_of(target, manifest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        listed = manifest_files(parse_json(manifest, storage.join(uri, MANIFEST), "model directory manifest",
                                           ArtifactError), storage.join(uri, MANIFEST))
        storage.download_dir(uri, tmp, [*listed, MANIFEST])  # only those: any other key may be crafted
        try:
            verify_model_dir(tmp)
        except ArtifactError as exc:  # name the remote file, not the temp copy
            raise ArtifactError(str(exc).replace(str(tmp), uri.partition("?")[0])) from None
        if (tmp / MANIFEST).read_text() != manifest:
            raise ArtifactError(f"{uri}: changed while it was downloaded; try again")
        # Serve starts several replicas per node: another process may have put a copy in place meanwhile and
        # be loading it, so a valid copy is never deleted, only a stale one moved aside.
        if not _is_copy_of(target, manifest):
            _replace_stale(tmp, target, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_stale(tmp: Path, target: Path, manifest: str) -> None:
    """Put ``tmp`` at ``target``, moving a stale ``target`` aside first (renames only, never a delete in place)."""
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    try:
        os.replace(target, stale)
    except FileNotFoundError:
        pass
    try:
        os.replace(tmp, target)
    except OSError:  # another process put its copy in place between the two renames
        if not _is_copy_of(target, manifest):
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _is_copy_of(local: Path, manifest: str) -> bool:
    try:
        if (local / MANIFEST).read_text() != manifest:
            return False
        verify_model_dir(local)
    except (OSError, ArtifactError):
        return False
    return True
