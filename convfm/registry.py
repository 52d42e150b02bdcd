"""A file-system model registry: ``ROOT/<name>/<version>/`` model directories and a ``latest`` pointer.

Versions are ``v0001``, ``v0002``, ... Publishing copies a model directory into a temp folder beside the
versions, verifies it, renames it into place, then replaces ``latest`` (a one-line text file) atomically, so
a crash at any point never leaves ``latest`` naming a partial model.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from convfm.artifacts import verify_model_dir
from convfm.errors import ArtifactError

LATEST = "latest"
_VERSION = re.compile(r"^v(\d{4,})$")


def versions(model_root: str | Path) -> list[str]:
    """Published versions of one model, oldest first."""
    root = Path(model_root)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def publish(model_dir: str | Path, registry: str | Path, name: str) -> Path:
    """Copy a verified model directory to ``registry/name/vNNNN`` and point ``latest`` at it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ArtifactError(f"model name {name!r}: use letters, digits, '.', '_' and '-'")
    verify_model_dir(model_dir)
    root = Path(registry) / name
    root.mkdir(parents=True, exist_ok=True)
    existing = versions(root)
    version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    try:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        verify_model_dir(staging)
        os.replace(staging, root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(version + "\n")
    os.replace(pointer, root / LATEST)
    return root / version


def resolve(path: str | Path) -> Path:
    """A model directory from ``registry/name`` (follows ``latest``), ``registry/name/vNNNN`` or any model dir."""
    path = Path(path)
    pointer = path / LATEST
    if pointer.is_file():
        version = pointer.read_text().strip()
        target = path / version
        if not _VERSION.match(version) or not target.is_dir():
            raise ArtifactError(f"{pointer}: points to version {version!r}, which does not exist")
        return target
    if not path.exists():
        raise ArtifactError(f"{path}: no such model or registry entry")
    if not (path / "manifest.json").exists():
        raise ArtifactError(f"{path}: neither a model directory (no manifest.json) nor a registry entry (no latest)")
    return path
