"""Local paths and storage URIs (``s3://``, ``gs://``, ``file://``...) behind one small API, over ``pyarrow.fs``.

A URI is resolved by ``pyarrow.fs.FileSystem.from_uri``: credentials come from the standard places (AWS/GCS
environment variables, config files, instance roles), and query parameters configure the store, e.g.
``s3://bucket/runs?endpoint_override=minio:9000&scheme=http``. ``join`` keeps that query at the end.

Local paths keep plain-filesystem behaviour (``write_text`` is atomic there). Object stores have no atomic
rename, so writers upload a directory's files one by one and the marker file last (``upload_dir(last=...)``);
readers treat a directory without its marker as absent. ``StagedDir`` lets a command write its outputs to a
local directory and mirror them to a URI.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import pyarrow
import pyarrow.fs as pafs

from convfm.errors import StorageError

CACHE_ENV = "CONVFM_CACHE"
GCS_RETRY_ENV, GCS_RETRY_DEFAULT_S = "CONVFM_GCS_RETRY_S", 30.0
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHUNK = 1 << 20
FETCH_THREADS, FETCH_WINDOW = 16, 256  # ``fetched``: reads at once, results held at most
T, R = TypeVar("T"), TypeVar("R")


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain local path."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def _split(uri: str) -> tuple[str, str]:
    base, sep, query = uri.partition("?")
    return base.rstrip("/"), sep + query


def local_or_uri(path: str) -> str | Path:
    """A command-line path as a URI string or a Path (``Path("s3://b/x")`` would collapse to ``s3:/b/x``)."""
    return path if is_uri(path) else Path(path)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base/part/...``: a Path for a local base, a URI (query kept at the end) for a URI base."""
    if not is_uri(base):
        return Path(base).joinpath(*parts)
    path, query = _split(str(base))
    return "/".join([path, *(p.strip("/") for p in parts)]) + query


def name(path: str | Path) -> str:
    """The last path segment (``s3://b/runs/x?q`` -> ``x``)."""
    return _split(str(path))[0].rsplit("/", 1)[-1] if is_uri(path) else Path(path).name


def parent(path: str | Path) -> str | Path:
    """The enclosing directory, a URI for a URI."""
    if not is_uri(path):
        return Path(path).parent
    base, query = _split(str(path))
    return base.rsplit("/", 1)[0] + query


def cache_dir() -> Path:
    """Where remote models are downloaded: ``$CONVFM_CACHE``, else ``~/.cache/convfm``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "convfm").expanduser()


def uri_key(uri: str) -> str:
    """A short stable folder name for a URI (its cache slot)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _error(uri: str | Path, exc: BaseException) -> StorageError:
    """One line naming the URI and what the store said (no request ids, no traceback)."""
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(exc)).strip().splitlines()
    return StorageError(f"{uri}: {text[0][:300] if text else type(exc).__name__}")


def with_store_defaults(uri: str) -> str:
    """A ``gs://`` URI without ``retry_limit_seconds`` gets ``$CONVFM_GCS_RETRY_S`` (default 30): the GCS client
    otherwise retries a failing request (no network, no credentials) for many minutes before it errors."""
    if uri.split("://", 1)[0].lower() not in ("gs", "gcs") or "retry_limit_seconds=" in uri:
        return uri
    limit = float(os.environ.get(GCS_RETRY_ENV, GCS_RETRY_DEFAULT_S))
    return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={limit:g}"


def _fs(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of a local path or URI; StorageError for an unusable URI."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).expanduser().absolute())
    try:
        fs, inner = pafs.FileSystem.from_uri(with_store_defaults(str(path)))
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise _error(path, exc) from None
    return fs, inner.rstrip("/")


def _info(path: str | Path) -> pafs.FileInfo:
    fs, inner = _fs(path)
    try:
        return fs.get_file_info(inner)
    except OSError as exc:
        raise _error(path, exc) from None


def exists(path: str | Path) -> bool:
    """A file or directory at ``path``."""
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: str | Path) -> bool:
    return _info(path).type == pafs.FileType.File


def read_text(path: str | Path) -> str:
    """The file's text; FileNotFoundError when it does not exist, StorageError when the store fails."""
    fs, inner = _fs(path)
    try:
        with fs.open_input_stream(inner) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if _info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(path)) from None
        raise _error(path, exc) from None


def fetched(read: Callable[[T], R], items: Sequence[T], threads: int = FETCH_THREADS) -> Iterator[R]:
    """``read(item)`` for every item, in order, up to ``threads`` at a time: many small files of a log, one
    request each on an object store, fetched concurrently. At most ``FETCH_WINDOW`` results wait unread; the
    first error is raised where its item falls."""
    if len(items) < 2 * threads:
        yield from map(read, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="fetch") as pool:
        for start in range(0, len(items), FETCH_WINDOW):
            yield from pool.map(read, items[start:start + FETCH_WINDOW])


def _write_local(target: Path, text: str, new: bool, durable: bool = False) -> None:
    """A temp file beside ``target``, then renamed over it, or (``new``) hard-linked to it: FileExistsError when
    it exists, never replacing what another writer wrote. Either way no reader sees half a file. ``durable``:
    fsync the file and its folder before returning, so the write also survives a power cut."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its files are private (0600), and a registry's ``latest`` or a served model's files must
    # stay readable as the umask says; the .tmp suffix keeps a leftover out of every "*.json" glob
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with tmp.open("x") as file:
            file.write(text)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        (os.link if new else os.replace)(tmp, target)
        if durable:
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """Write a small text file: atomically (temp + rename) on a local disk, one PUT on an object store.
    ``durable``: locally, fsync the file and its folder before returning, so an acknowledged write (an event
    log segment) also survives a power cut, not only a killed process."""
    if not is_uri(path):
        return _write_local(Path(path), text, new=False, durable=durable)
    fs, inner = _fs(path)
    try:
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores, needed on file://
        with fs.open_output_stream(inner) as stream:
            stream.write(text.encode())
    except OSError as exc:
        raise _error(path, exc) from None


def write_new_text(path: str | Path, text: str) -> None:
    """Create a small text file that must not exist yet; FileExistsError when it does (another writer got there).

    Locally the refusal is atomic (``_write_local``). Object stores have no create-if-absent
    here: ``path`` is checked before the PUT and read back after it, so a writer that raced another one on the
    same key fails loudly when the other's PUT landed last; two PUTs that both finish before either read-back
    cannot be told apart, so callers keep one writer per store and this only catches a second one."""
    if not is_uri(path):
        return _write_local(Path(path), text, new=True)
    if exists(path):
        raise FileExistsError(str(path))
    write_text(path, text)
    if read_text(path) != text:
        raise FileExistsError(f"{path}: written by another writer at the same time")


def _entries(path: str | Path, kind: pafs.FileType) -> list[str]:
    """Names of the entries of type ``kind`` directly under ``path`` (sorted; [] when it does not exist)."""
    fs, inner = _fs(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except OSError as exc:
        raise _error(path, exc) from None
    return sorted(i.base_name for i in infos if i.type == kind)


def list_dirs(path: str | Path) -> list[str]:
    """Names of the directories directly under ``path`` (sorted; [] when ``path`` does not exist)."""
    return _entries(path, pafs.FileType.Directory)


def list_files(path: str | Path) -> list[str]:
    """Names of the files directly under ``path`` (sorted; [] when ``path`` does not exist)."""
    return _entries(path, pafs.FileType.File)


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    with src_fs.open_input_stream(src) as reader, dst_fs.open_output_stream(dst) as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)


def upload_file(local: Path, target: str | Path) -> None:
    """Copy one local file to ``target``."""
    fs, inner = _fs(target)
    try:
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        _copy(pafs.LocalFileSystem(), str(local), fs, inner)
    except OSError as exc:
        raise _error(target, exc) from None


def upload_dir(local: str | Path, target: str | Path, last: Sequence[str] = ()) -> None:
    """Copy every file under ``local`` to ``target``; the relative paths in ``last`` go after all others, in
    that order (a reader that waits for them never sees a half-written directory)."""
    local = Path(local)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    ordered = [f for f in files if f not in last] + [f for f in last if f in files]
    fs, inner = _fs(target)
    try:
        fs.create_dir(inner, recursive=True)
        for relative in ordered:
            if "/" in relative:
                fs.create_dir(f"{inner}/{relative.rsplit('/', 1)[0]}", recursive=True)
            _copy(pafs.LocalFileSystem(), str(local / relative), fs, f"{inner}/{relative}")
    except OSError as exc:
        raise _error(target, exc) from None


def download_dir(source: str | Path, local: str | Path, names: Optional[Sequence[str]] = None) -> None:
    """Copy the files under ``source`` into the local directory ``local`` (created if needed): the relative
    paths ``names`` (a model's manifest says which), else every file listed there. Every path is checked
    before anything is written: an object key is any string, and ``..`` in one would land outside ``local``."""
    fs, inner = _fs(source)
    local = Path(local)
    try:
        if names is None:
            infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
            names = [i.path[len(inner):].lstrip("/") for i in infos if i.type == pafs.FileType.File]
        targets = {relative: _inside(local, relative, source) for relative in names}
        for relative, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy(fs, f"{inner}/{relative}", pafs.LocalFileSystem(), str(target))
            except FileNotFoundError:
                raise StorageError(f"{join(source, relative)}: not found") from None
    except FileNotFoundError:
        raise StorageError(f"{source}: not found") from None
    except OSError as exc:
        raise _error(source, exc) from None


def _inside(local: Path, relative: str, source: str | Path) -> Path:
    """``local/relative`` when ``relative`` is a plain relative path that stays under ``local``; else a
    StorageError naming ``source`` and the path (absolute, ``..``, empty parts, or a symlink out of ``local``)."""
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"{source}: refusing to download {relative!r}: not a plain relative path")
    target = local / relative
    if not target.resolve().is_relative_to(local.resolve()):
        raise StorageError(f"{source}: refusing to download {relative!r}: it resolves outside {local}")
    return target


class StagedDir:
    """An output directory written locally and, when its target is a URI, mirrored there by ``sync``.

    ``local`` is the directory to write into: the target itself for a local path, else a fresh temporary
    directory (removed by ``close``). ``location(name)`` is where a file ends up (a Path or a URI)."""

    def __init__(self, target: str | Path) -> None:
        self.remote = is_uri(target)
        if self.remote:
            self.target: str | Path = str(target)
            self.local = Path(tempfile.mkdtemp(prefix=f"convfm-{name(target)}-"))
        else:
            self.target = self.local = Path(target).expanduser().resolve()

    @property
    def name(self) -> str:
        return name(self.target)

    def location(self, *parts: str) -> str | Path:
        return join(self.target, *parts)

    def sync(self, *entries: str) -> None:
        """Upload the named files/directories of ``local``, in the given order (a directory with its
        ``manifest.json`` last, so a half-uploaded model directory never verifies); no-op for a local target."""
        if not self.remote:
            return
        for entry in entries:
            path = self.local / entry
            if path.is_dir():
                upload_dir(path, join(self.target, entry), last=("manifest.json",))
            elif path.is_file():
                upload_file(path, join(self.target, entry))

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> "StagedDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

