"""Self-describing model directories: weights + JSON/NPZ, checked by a SHA-256 manifest, never pickled.

A model directory holds ``weights.pt`` (a state_dict read with ``weights_only=True``), ``model_config.json``,
``feature_map.json``, the extractor's ``extractor.json``/``extractor.npz``, ``metrics.json``, any extra JSON
the caller adds (``train_config.json``), and ``manifest.json`` listing every file's SHA-256. The manifest lists
exactly the regular files present, core files included: loading reads files by name, so an unlisted, symlinked
or nested one is refused rather than read unchecked. Nothing else writes into a model directory (evaluation
reports go beside it).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch

from convfm.store.checksums import sha256_file
from convfm.config import ModelConfig
from convfm.errors import ArtifactError, ConfigError
from convfm.features.jobs import load_extractor
from convfm.features.fields import FeatureMap
from convfm.jsonfile import read_json, write_json_atomic
from convfm.model.network import ConvFM

MANIFEST = "manifest.json"
ARTIFACT_VERSION = 1
# what load_model_dir reads whatever the manifest says: each must be listed (and so checked)
CORE_FILES = ("weights.pt", "model_config.json", "feature_map.json", "extractor.json", "extractor.npz", "metrics.json")


@dataclasses.dataclass
class LoadedModel:
    """Everything serving or evaluation needs, rebuilt from files only."""

    model: ConvFM
    extractor: Any
    metrics: dict[str, Any]
    extra: dict[str, Any]
    path: Path


def save_model_dir(
    out_dir: str | Path,
    model: ConvFM,
    extractor: Any,
    metrics: Mapping[str, Any] | None = None,
    extra_json: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a complete model directory atomically (temp dir, then rename) and return its path."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}")
    tmp.mkdir()  # not mkdtemp: a model directory's mode follows the umask, as its files' do
    try:
        core = getattr(model, "module", model)
        state = {k: v.detach().cpu() for k, v in core.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
        core.config.save_json(tmp / "model_config.json")
        core.feature_map.save(tmp / "feature_map.json")
        extractor.save(tmp)
        write_json_atomic(tmp / "metrics.json", metrics or {})
        for name, payload in (extra_json or {}).items():
            write_json_atomic(tmp / f"{name}.json", payload)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json_atomic(tmp / MANIFEST, {"version": ARTIFACT_VERSION, "files": files})
        if out_dir.exists():
            backup = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out_dir, backup)
            os.replace(tmp, out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def manifest_files(manifest: Mapping[str, Any], where: str | Path) -> dict[str, str]:
    """The ``files`` of a parsed manifest (name -> SHA-256), checked before any of them is read or downloaded:
    the artifact version, and names that are plain file names (no ``/``, no ``..``: a crafted manifest must not
    point outside its directory)."""
    if manifest.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"{where}: artifact version {manifest.get('version')!r}, expected {ARTIFACT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{where}: unreadable manifest (no 'files' mapping)")
    for name in files:
        if name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
            raise ArtifactError(f"{where}: entry {name!r} is not a plain file name of the model directory")
    for name in CORE_FILES:
        if name not in files:
            raise ArtifactError(f"{where}: core file {name!r} is not listed")
    return files


def verify_model_dir(path: str | Path) -> dict[str, str]:
    """Check that the manifest lists exactly the regular files present (loading reads files by name, so an
    unlisted or symlinked one would go unchecked) and every file's checksum; ArtifactError names the first
    file that is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: model directory not found")
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path / MANIFEST}: missing; not a complete convfm model directory")
    files = manifest_files(read_json(path / MANIFEST, "model directory manifest", ArtifactError), path / MANIFEST)
    for entry in sorted(path.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            kind = "a symlink" if entry.is_symlink() else "a directory" if entry.is_dir() else "a special file"
            raise ArtifactError(f"{entry}: {kind}, not a regular file; a model directory holds only its files")
        if entry.name != MANIFEST and entry.name not in files:
            raise ArtifactError(f"{entry}: present but not listed in the manifest")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in the manifest but missing")
        if sha256_file(file) != expected:
            raise ArtifactError(f"{file}: checksum mismatch (truncated or modified after export)")
    return files


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild model and extractor from a model directory; refuse anything inconsistent with ArtifactError."""
    path = Path(path)
    verify_model_dir(path)
    try:
        saved = read_json(path / "model_config.json", "ModelConfig file", ArtifactError)
        # a model saved before the pair-match terms existed has none
        before = {"skill_match": False, "history_match": False, "profile_match": False}
        config = ModelConfig.from_dict({**before, **saved}, source=str(path / "model_config.json"))
    except ConfigError as exc:
        raise ArtifactError(str(exc)) from None
    feature_map = FeatureMap.load(path / "feature_map.json")
    extractor = load_extractor(path)
    if extractor.feature_map != feature_map:
        raise ArtifactError(f"{path}: extractor's fields differ from feature_map.json (mismatched extractor)")
    model = ConvFM(config, feature_map)
    try:
        state = torch.load(path / "weights.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    except pickle.UnpicklingError:  # torch's advice to load it unsafely is not for a model server to give
        raise ArtifactError(f"{path / 'weights.pt'}: cannot load weights (not a plain tensor state_dict: "
                            "weights_only loading refused it; the file may be crafted)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ArtifactError(f"{path / 'weights.pt'}: cannot load weights ({first})") from None
    model.to(device).eval()
    extra = {
        p.stem: read_json(p, f"{p.stem} file", ArtifactError)
        for p in sorted(path.glob("*.json"))
        if p.name not in {MANIFEST, "model_config.json", "feature_map.json", "metrics.json", "extractor.json"}
    }
    metrics = read_json(path / "metrics.json", "metrics file", ArtifactError)
    return LoadedModel(model=model, extractor=extractor, metrics=metrics, extra=extra, path=path)
