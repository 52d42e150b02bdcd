"""The live catalog: jobs added, changed and expired while a model serves, kept as numbered immutable deltas.

``<live_store>/catalog/000001.json``, ``000002.json``, ...: catalog version N is deltas 1..N applied in order,
on top of the serving model's own catalog (``convfm.store.registry.live_location`` says where the live store
is). A delta upserts jobs (every content field, an optional posting time and expiry) and expires ids. It is
written once and never changed: locally through a temp file hard-linked into place, on an object store with one
PUT (``storage.write_new_text``), so a reader never sees half a delta and a replica that lags reads the deltas
it misses.

One writer: the service's single ``Api`` replica. It serialises its writes with a lock and reads the latest
number before each one, so concurrent ``POST /jobs`` calls never lose an update. A second writer (another
process) that raced it for a number fails with ``CatalogConflict`` instead of overwriting: atomically on a
local disk, by a check and a read-back on object stores (see ``write_new_text`` for what that cannot catch).

Readers: every service replica (``serve.live_catalog``) and every batch run (``convfm.model.batch_ranking``,
pinned to the version at the run's start) apply the deltas through ``convfm.store.live_jobs.LiveJobs``, one way
for both. No Ray; the model's parts are passed in.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.liveness import ALWAYS, NEVER, lifetime_ends, to_micros
from convfm.data.schema import JOBS
from convfm.errors import ArtifactError, StorageError
from convfm.features.context import now_micros
from convfm.features.extra_fields import slug
from convfm.jsonfile import parse_json
from convfm.store import storage
from convfm.store.background import BackgroundWrites
from convfm.store.serving_data import SALARY_COLUMNS

log = logging.getLogger(__name__)

CATALOG = "catalog"  # <live_store>/catalog/
FORMAT_VERSION = 2  # 2: an upsert's posted_at may be null (not given); version 1 deltas read the same
READ_VERSIONS = (1, 2)
_DELTA = re.compile(r"^(\d{6,})\.json$")
BUNDLE = 1000  # deltas per bundle: a replica that starts reads one file per this many deltas
BUNDLES = "bundles"  # <live_store>/catalog/bundles/<first>-<last>.json
_BUNDLE = re.compile(r"^(\d{6,})-(\d{6,})\.json$")
# What a job carries besides its id and times: the jobs table's content columns (convfm.data.schema.JOBS).
CONTENT_FIELDS = ("title", "description", "skills", "location", "company", "salary_min", "salary_max", "job_type",
                  "experience_level")


class CatalogConflict(StorageError):
    """Another writer wrote the catalog version this one was about to write; nothing of this change was kept."""


@dataclasses.dataclass(frozen=True)
class Delta:
    """One accepted change. ``upsert``: job records (``job_id``, ``CONTENT_FIELDS``, ``posted_at`` and
    ``expires_at`` as int64 microseconds or None: no posting time given (the job keeps the one it has, a new one
    is posted at ``written_at``), no expiry given (an update of a job's posting keeps its expiry, else
    ``job_lifetime_days`` after the posting: ``dated_times``, ``LiveJobs.apply``); ``extra``, when
    given: the values of extra columns by name, ``DataConfig.extra_columns``); ``expire``: job id ->
    microseconds."""

    version: int
    written_at: int
    upsert: tuple[dict[str, Any], ...] = ()
    expire: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_text(self, writer: str) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "version": self.version, "writer": writer,
                           "written_at": self.written_at, "upsert": list(self.upsert),
                           "expire": dict(self.expire)}, indent=1) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str | Path) -> "Delta":
        """Parse one delta file; ArtifactError naming the file and the field when it is not one."""
        doc = parse_json(text, source, "live catalog delta", ArtifactError)
        if doc.get("format_version") not in READ_VERSIONS:
            raise ArtifactError(f"{source}: format_version {doc.get('format_version')!r}, this convfm reads "
                                f"{', '.join(map(str, READ_VERSIONS))}")
        upsert, expire = doc.get("upsert"), doc.get("expire")
        if not isinstance(doc.get("version"), int) or not isinstance(doc.get("written_at"), int):
            raise ArtifactError(f"{source}: version and written_at must be integers")
        if not isinstance(upsert, list) or not all(isinstance(j, dict) and isinstance(j.get("job_id"), str)
                                                   and isinstance(j.get("posted_at"), (int, type(None)))
                                                   for j in upsert):
            raise ArtifactError(f"{source}: upsert must be a list of jobs with a job_id and a posted_at (an "
                                "integer, or null)")
        if not all(isinstance(j.get("extra", {}), dict) for j in upsert):
            raise ArtifactError(f"{source}: a job's extra must map column names to values")
        if (wrong := misfit_field(upsert)) is not None:
            raise ArtifactError(f"{source}: {wrong}")
        if not isinstance(expire, dict) or not all(isinstance(t, int) for t in expire.values()):
            raise ArtifactError(f"{source}: expire must map job ids to times (integers)")
        return cls(doc["version"], doc["written_at"], tuple(upsert), expire)


def misfit_field(upsert: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """What is wrong with the first content field of ``upsert`` that the service would have refused (text, a
    list of skills, a number or an expiry of the wrong type), or None: a hand-written delta is refused whole when
    it is read, never half applied."""
    for number, job in enumerate(upsert):
        where = f"upsert {number} ({str(job.get('job_id'))[:40]!r})"
        for field in CONTENT_FIELDS:
            value = job.get(field)
            if value is None:
                continue
            if field == "skills":
                fits = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif field in SALARY_COLUMNS:
                fits = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                fits = isinstance(value, str)
            if not fits:
                kind = "a list of text" if field == "skills" else "a number" if field in SALARY_COLUMNS else "text"
                return f"{where}: field {field!r} must be {kind}, got {value!r:.40}"
        if not isinstance(job.get("expires_at"), (int, type(None))) or isinstance(job.get("expires_at"), bool):
            return f"{where}: expires_at must be an integer or null"
    return None


class UpsertedJobs(NamedTuple):
    """A delta's upserts as ``JobFeatureExtractor.put_jobs`` takes them."""

    frame: pd.DataFrame  # job_id and CONTENT_FIELDS (skills ";"-joined, salaries numeric, missing text "")
    posted: np.ndarray  # (n,) int64 microseconds (where not dated: a placeholder)
    expires: np.ndarray  # (n,) int64 microseconds, NEVER for none
    dated: np.ndarray  # (n,) bool: whether the upsert gave its posting time

    def dated_at(self, held: Mapping[str, tuple[int, int]], written_at: int) -> "UpsertedJobs":
        """These jobs with the times their upserts left out (``dated_times``)."""
        posted, expires = dated_times(self.frame["job_id"].tolist(), self.posted, self.expires, self.dated, held,
                                      written_at)
        return self._replace(posted=posted, expires=expires, dated=np.ones(len(posted), dtype=bool))


def dated_times(ids: Sequence[str], posted: np.ndarray, expires: np.ndarray, dated: np.ndarray,
                held: Mapping[str, tuple[int, int]], written_at: int) -> tuple[np.ndarray, np.ndarray]:
    """Upserted jobs' (posting, expiry) with what their upserts left out. An upsert of a job the catalog holds
    (``held``: job id -> its (posting, expiry) in microseconds, ``ALWAYS``/``NEVER`` for none) without a posting
    time, or with the one it has, updates that posting: it keeps the posting time and, unless it gives one, the
    expiry (a daily re-sync of a board's file leaves a job closed by ``expire`` closed). A new job without a
    posting time is posted at ``written_at`` (has none when it closed before then). ``NEVER`` is left where an
    expiry is still to come from the job's lifetime."""
    posted, expires = posted.copy(), expires.copy()
    for i, job_id in enumerate(ids):
        if job_id in held and (not dated[i] or posted[i] == held[job_id][0]):
            posted[i] = held[job_id][0]
            expires[i] = held[job_id][1] if expires[i] == NEVER else expires[i]
        elif not dated[i]:
            posted[i] = written_at if expires[i] > written_at else ALWAYS
    return posted, expires


def upserted_jobs(upsert: Sequence[Mapping[str, Any]], version: Optional[int] = None) -> UpsertedJobs:
    """Delta job records -> the jobs table the extractor encodes (``kept_upserts``, ``upsert_frame``)."""
    upsert = kept_upserts(upsert, version)
    return UpsertedJobs(upsert_frame(upsert), *upsert_times(upsert))


def kept_upserts(upsert: Sequence[Mapping[str, Any]], version: Optional[int] = None) -> list[Mapping[str, Any]]:
    """The records of a delta that are read: jobs with a blank id, written before the service refused them, are
    left out (row 0 is no job's); of an id upserted twice (a hand-written delta: the service refuses it) the last
    is read, by serving and training alike (ids as the service writes them: text, outer spaces cut)."""
    kept = [j for j in upsert if str(j["job_id"]).strip()]
    if len(kept) < len(upsert):
        log.warning("live catalog v%s: %d job(s) with a blank id left out", version, len(upsert) - len(kept))
    last = {str(j["job_id"]).strip(): i for i, j in enumerate(kept)}
    if len(last) < len(kept):
        log.warning("live catalog v%s: %d repeated upsert(s) of a job id: the last of each read", version,
                    len(kept) - len(last))
    return [kept[i] for i in sorted(last.values())]


def upsert_times(upsert: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(posted, expires, dated) of ``UpsertedJobs`` for kept records."""
    dated = np.array([j.get("posted_at") is not None for j in upsert], dtype=bool)
    posted = np.array([j["posted_at"] if d else ALWAYS for j, d in zip(upsert, dated)], dtype=np.int64)
    expires = np.array([NEVER if j.get("expires_at") is None else j["expires_at"] for j in upsert], dtype=np.int64)
    return posted, expires, dated


def upsert_frame(upsert: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Kept records -> the shape of the training jobs file: extra values one column per name, case and
    punctuation aside, named as first written, lists ``;``-joined, "" where a job has none)."""
    names: dict[str, str] = {}  # slug -> the column, as the first job named it
    for job in upsert:
        for name in job.get("extra", {}):
            names.setdefault(slug(name), name)
    frame = pd.DataFrame({"job_id": [str(j["job_id"]).strip() for j in upsert], **{
        f: [";".join(j.get(f) or ()) if f == "skills" else j.get(f) for j in upsert] for f in CONTENT_FIELDS}})
    for key, column in names.items():
        values = [next((v for n, v in j.get("extra", {}).items() if slug(n) == key), None) for j in upsert]
        frame[column] = [";".join(v) if isinstance(v, list) else ("" if v is None else v) for v in values]
    for column in SALARY_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    text = [c for c in CONTENT_FIELDS if c not in SALARY_COLUMNS]
    frame[text] = frame[text].fillna("")
    return frame


def jobs_after(jobs: pd.DataFrame, deltas: Sequence[Delta],
               lifetime_days: Optional[float] = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """A loaded jobs table (canonical columns, ``posted_at``/``expires_at`` datetimes) as ``deltas`` left it,
    in order: an upsert replaces the job of its id (moved to the end) or is appended, an expiry sets
    ``expires_at`` unless the job closed sooner (its own, or ``lifetime_days`` after its posting: as served).
    Training on the service's event log reads it, so the jobs posted live carry their fields, not the unknown
    job's. The deltas are folded first (times per id, the last upsert of each), so the table is built once (an
    extra column's value a job's upsert lacks reads "", as beside a job that has one, or NaN: both missing).
    Returns the table and counts of distinct jobs: added (not in ``jobs``), replaced (in ``jobs``, upserted
    again) and expired (once or more)."""
    table = jobs.set_index("job_id", drop=False)
    kept = {c: c in table.columns for c in ("posted_at", "expires_at")}  # a time the table lacks reads as none
    times = {c: dict(zip(table.index, to_micros(table[c]) if kept[c] else np.full(len(table), ALWAYS)))
             for c in kept}  # job id -> microseconds, ALWAYS for none (NaT), as the table holds them
    upserted: dict[str, Mapping[str, Any]] = {}  # id -> its last upsert, in the order of last upserts
    expired: set[str] = set()
    for delta in deltas:
        records = kept_upserts(delta.upsert, delta.version)
        ids = [str(j["job_id"]).strip() for j in records]
        held = {j: (times["posted_at"][j], NEVER if times["expires_at"][j] == ALWAYS else times["expires_at"][j])
                for j in ids if j in times["posted_at"]}
        posted, expires = dated_times(ids, *upsert_times(records), held, delta.written_at)
        for job_id, record, *values in zip(ids, records, posted.tolist(), expires.tolist()):
            upserted.pop(job_id, None)
            upserted[job_id] = record
            for column, value in zip(kept, values):
                times[column][job_id] = value if kept[column] and value != NEVER else ALWAYS
        hit = [j for j in delta.expire if j in times["posted_at"]]
        if hit and kept["expires_at"]:  # closed then, unless it closed sooner (as served)
            given = np.array([times["expires_at"][j] for j in hit], dtype=np.int64)
            posted = np.array([times["posted_at"][j] for j in hit], dtype=np.int64)
            ends = np.where(given == ALWAYS, lifetime_ends(posted, lifetime_days), given)
            closes = np.minimum(ends, np.array([delta.expire[j] for j in hit], dtype=np.int64))
            times["expires_at"].update((j, ALWAYS if t == NEVER else t) for j, t in zip(hit, closes.tolist()))
            expired.update(hit)
    frame = upsert_frame(list(upserted.values()))
    columns = {slug(c): c for c in table.columns if c not in JOBS.names}  # extra keys, case aside
    frame = frame.rename(columns=lambda c: c if c in JOBS.names else columns.get(slug(c), c))
    frame = frame.set_index("job_id", drop=False).reindex(columns=table.columns)
    stayed = table[~table.index.isin(list(upserted))].copy()
    closed = [j for j in stayed.index if j in expired]
    if closed:
        stayed.loc[closed, "expires_at"] = _datetimes(np.array([times["expires_at"][j] for j in closed])).to_numpy()
    for column in (c for c in kept if kept[c]):
        frame[column] = _datetimes(np.array([times[column][j] for j in frame.index], dtype=np.int64)).to_numpy()
    before = set(table.index)
    counts = {"added": len(upserted.keys() - before), "replaced": len(upserted.keys() & before),
              "expired": len(expired)}
    return pd.concat([stayed, frame]).reset_index(drop=True), counts


def _datetimes(micros: np.ndarray) -> pd.Series:
    """int64 microseconds -> naive UTC datetimes; ``NEVER`` (no expiry) and ``ALWAYS`` (no posting time) -> NaT."""
    values = np.asarray(micros, dtype=np.int64)
    return pd.Series(np.where((values == NEVER) | (values == ALWAYS), np.datetime64("NaT"),
                              values.astype("datetime64[us]")))


def grown(values: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """``values`` (M,) extended to n rows with ``fill`` (a copy: readers may hold the old array)."""
    return np.concatenate([values, np.full(n - len(values), fill, dtype=values.dtype)])


def delta_name(version: int) -> str:
    return f"{version:06d}.json"


class CatalogStore:
    """The deltas under ``<live_store>/catalog/`` (a local path or a storage URI): read by every replica,
    appended to by the one writer (see the module docstring)."""

    def __init__(self, live_store: str | Path) -> None:
        self.root = storage.join(live_store, CATALOG)
        self.writer = uuid.uuid4().hex  # recorded in each delta: who wrote it (and the read-back's proof)
        self._lock = threading.Lock()
        self._seen = 0  # the newest version this object has seen on the store
        self._bundling = BackgroundWrites("convfm-catalog-bundle")

    def latest(self) -> int:
        """The newest catalog version on the store (0: no delta yet). The deltas are listed once; later calls
        look for the numbers after the newest seen, one existence check each, so what a change costs the writer
        does not grow with the catalog's history (an object store's listing pages through every key)."""
        seen = self._seen
        if seen == 0:
            seen = max((int(m[1]) for m in map(_DELTA.match, storage.list_files(self.root)) if m), default=0)
        while storage.exists(storage.join(self.root, delta_name(seen + 1))):
            seen += 1
        self._seen = max(self._seen, seen)
        return seen

    def read(self, after: int = 0, upto: Optional[int] = None) -> list[Delta]:
        """Deltas ``after + 1 .. upto`` (default: the latest), in order; ArtifactError for a missing or
        invalid one (a replica must never skip a change). A replica that starts reads the whole catalog: each
        whole block of ``BUNDLE`` deltas from its bundle (one file), the rest delta by delta, many files at once
        (``storage.fetched``: one request each on an object store)."""
        upto = self.latest() if upto is None else upto
        bundled = self._bundled(after, upto)
        parts, version = [], after + 1
        while version <= upto:
            parts.append((version, version in bundled))
            version += BUNDLE if version in bundled else 1
        return [delta for part in storage.fetched(self._read_part, parts) for delta in part]

    def _bundle_path(self, first: int) -> str | Path:
        return storage.join(self.root, BUNDLES, f"{first:06d}-{first + BUNDLE - 1:06d}.json")

    def _bundled(self, after: int, upto: int) -> set[int]:
        """First versions of the bundles within ``after + 1 .. upto``."""
        if upto - after < BUNDLE:
            return set()
        names = map(_BUNDLE.match, storage.list_files(storage.join(self.root, BUNDLES)))
        return {int(m[1]) for m in names if m and int(m[2]) == int(m[1]) + BUNDLE - 1
                and after < int(m[1]) and int(m[2]) <= upto}

    def _read_part(self, part: tuple[int, bool]) -> list[Delta]:
        """One delta, or a bundle's (one unreadable: its deltas one by one, they stay the record)."""
        first, bundle = part
        found = self._bundle_deltas(first, "reading its deltas one by one") if bundle else None
        return found or [self._read_one(version) for version in range(first, first + (BUNDLE if bundle else 1))]

    def _bundle_deltas(self, first: int, then: str) -> Optional[list[Delta]]:
        """The deltas of the bundle from ``first``; None (logged, with what happens ``then``) when it cannot be
        read or does not hold versions ``first .. first + BUNDLE - 1`` in order."""
        path = self._bundle_path(first)
        try:
            deltas = [Delta.from_text(text, path) for text in
                      parse_json(storage.read_text(path), path, "live catalog bundle", ArtifactError)["deltas"]]
            if [d.version for d in deltas] != list(range(first, first + BUNDLE)):
                raise ArtifactError(f"{path}: does not hold versions {first}..{first + BUNDLE - 1} in order")
            return deltas
        except (ArtifactError, OSError, KeyError, TypeError) as exc:
            log.warning("live catalog bundle %s unreadable (%s); %s", path, exc, then)
            return None

    def _write_bundle(self, first: int, replace: bool = False) -> bool:
        """Bundle deltas ``first .. first + BUNDLE - 1`` into one file (``replace``: over one there), best effort
        (the deltas stay the record); False when it could not be written."""
        texts = storage.fetched(lambda v: storage.read_text(storage.join(self.root, delta_name(v))),
                                range(first, first + BUNDLE))
        try:
            doc = {"format_version": 1, "first": first, "last": first + BUNDLE - 1, "deltas": list(texts)}
            write = storage.write_text if replace else storage.write_new_text
            write(self._bundle_path(first), json.dumps(doc) + "\n")
        except FileExistsError:
            pass
        except Exception as exc:  # noqa: BLE001 - best effort: a delta that cannot be read, a failed write
            log.warning("live catalog: bundling versions %d..%d failed (%s); readers read them one by one",
                        first, first + BUNDLE - 1, exc)
            return False
        return True

    def bundle_missing(self) -> tuple[list[int], list[int]]:
        """Write the bundles the store's whole blocks lack (a store written before bundles existed), and again
        those that cannot be read: the first versions of the blocks bundled and of those that could not be."""
        latest = self.latest()
        have = self._bundled(0, latest)
        done: list[int] = []
        failed: list[int] = []
        for first in range(1, latest - BUNDLE + 2, BUNDLE):
            if first not in have or self._bundle_deltas(first, "writing it again") is None:
                (done if self._write_bundle(first, replace=first in have) else failed).append(first)
        return done, failed

    def _read_one(self, version: int) -> Delta:
        path = storage.join(self.root, delta_name(version))
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise ArtifactError(f"{path}: live catalog version {version} is missing") from None
        delta = Delta.from_text(text, path)
        if delta.version != version:
            raise ArtifactError(f"{path}: holds version {delta.version}, expected {version}")
        return delta

    def append(self, upsert: Sequence[dict[str, Any]] = (), expire: Sequence[str] = (),
               now: Optional[int] = None) -> Delta:
        """Write the next version: ``upsert`` job records (``posted_at`` None: the job's own, or now for a
        new job: ``UpsertedJobs.dated_at``), ``expire`` ids (expired now). Returns the delta written;
        CatalogConflict when another writer took its number."""
        now = now_micros() if now is None else int(now)
        if any(not str(job["job_id"]).strip() for job in upsert) or any(not str(j).strip() for j in expire):
            raise ValueError("a live catalog job id must not be blank")
        jobs = tuple({**job, "posted_at": None if job.get("posted_at") is None else int(job["posted_at"])}
                     for job in upsert)
        try:  # read as every replica will apply it: a delta they cannot read is never written
            if (wrong := misfit_field(jobs)) is not None:
                raise TypeError(wrong)
            upserted_jobs(jobs)
        except (ValueError, TypeError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
            raise ValueError(f"these jobs cannot be read back as a catalog: {type(exc).__name__}: {exc}") from None
        with self._lock:
            delta = Delta(self.latest() + 1, now, jobs, {str(job_id): now for job_id in expire})
            path = storage.join(self.root, delta_name(delta.version))
            try:
                storage.write_new_text(path, delta.to_text(self.writer))
            except FileExistsError:
                raise CatalogConflict(f"{path}: another writer wrote live catalog version {delta.version} "
                                      "first; this change was not kept (run one writer: one Api replica)") from None
            self._seen = max(self._seen, delta.version)
        if delta.version % BUNDLE == 0:  # in a thread: the change that completes a block does not wait for it
            self._bundling.start(self._write_bundle, delta.version - BUNDLE + 1)
        return delta

    def settle(self, timeout_s: Optional[float] = None) -> None:
        """Wait for the bundle writes in flight (a writer that stops, tests); one cut short is written by
        ``convfm catalog bundle``, and its deltas read one by one meanwhile."""
        self._bundling.settle(timeout_s)
