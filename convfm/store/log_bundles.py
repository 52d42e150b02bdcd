"""Bundles of an event log's segments (``convfm.store.event_log``): every ``BUNDLE`` segments in one file.

A client posting one event per call writes a segment per event, and a reader that starts (a replica, the writer
rebuilding its ids, training, ``convfm report``) fetched every one: one GET each on an object store. The writer
also copies each block of ``BUNDLE`` segments (by their place in the listing) into ``bundles/<first>--<last>.json``
(their names without ``.jsonl``), and a reader that wants two or more segments of a block fetches its bundle
instead. The segments stay the record: a bundle that cannot be read, or is not the block its name says, is
logged and its segments read one by one. Blocks over ``MAX_BYTES`` are not bundled (their segments are large
enough that a GET each costs little beside their bytes). Plain Python; the segments' records are parsed by
``event_log``.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Container, Optional, Sequence

from convfm.errors import DataValidationError, StorageError
from convfm.jsonfile import parse_json
from convfm.store import storage

log = logging.getLogger(__name__)
BUNDLE, BUNDLES_DIR = 1000, "bundles"  # segments per bundle; <log>/bundles/<first>--<last>.json
MAX_BYTES = 32 * 2**20  # a block of more text is left as its segments
BUNDLE_RE = re.compile(r"^(\d{19}-[0-9a-f]{8})--(\d{19}-[0-9a-f]{8})\.json$")
SUFFIX = ".jsonl"
WRITTEN, LARGE, FAILED = "written", "large", "failed"  # what ``write_bundle`` did


def stem(segment: str) -> str:
    return segment[:-len(SUFFIX)]


def bundle_names(root: str | Path) -> dict[str, tuple[str, str]]:
    """First segment -> (last segment, bundle file name) for the bundles of the log at ``root``."""
    found = map(BUNDLE_RE.match, storage.list_files(storage.join(root, BUNDLES_DIR)))
    return {m[1] + SUFFIX: (m[2] + SUFFIX, m[0]) for m in found if m}


def plan(root: str | Path, names: list[str], skipped: Container[str]) -> list[tuple[Optional[str], list[str]]]:
    """How to read the segments of ``names`` (the log's, in order) not in ``skipped``: (bundle, the wanted
    segments it gives) for each block with two or more of them and a bundle, else (None, [segment])."""
    wanted = [name for name in names if name not in skipped]
    bundles = bundle_names(root) if len(wanted) > 1 else {}
    if not bundles:
        return [(None, [name]) for name in wanted]
    place = {name: i for i, name in enumerate(names)}
    blocks = {place[first]: bundle for first, (last, bundle) in bundles.items()
              if first in place and place[first] + BUNDLE <= len(names) and names[place[first] + BUNDLE - 1] == last}
    parts: list[tuple[Optional[str], list[str]]] = []
    start = 0
    while start < len(names):
        here = [name for name in names[start:start + BUNDLE] if name not in skipped] if start in blocks else []
        if len(here) > 1:
            parts.append((blocks[start], here))
            start += BUNDLE
            continue
        if names[start] not in skipped:
            parts.append((None, [names[start]]))
        start += 1
    return parts


def bundle_texts(root: str | Path, bundle: str) -> dict[str, str]:
    """A bundle's segment texts by segment name; DataValidationError unless it holds ``BUNDLE`` texts from the
    first to the last segment its name says (OSError, StorageError when it cannot be read)."""
    where = storage.join(root, BUNDLES_DIR, bundle)
    doc = parse_json(storage.read_text(where), where, "event log bundle", DataValidationError)
    segments = doc.get("segments") if isinstance(doc, dict) else None
    first, last = (name + SUFFIX for name in BUNDLE_RE.match(bundle).groups())
    if (not isinstance(segments, list) or not segments
            or not all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, str) for v in s) for s in segments)
            or len(dict(segments)) != BUNDLE or segments[0][0] != first or segments[-1][0] != last):
        raise DataValidationError(f"{where}: does not hold the {BUNDLE} segments {first} .. {last}")
    return dict(segments)


def write_bundle(root: str | Path, names: Sequence[str], replace: bool = False) -> str:
    """Copy the block of segments ``names`` (``BUNDLE`` of them, in order) into one bundle (``replace``: over
    one already there), best effort: the segments stay the record. ``WRITTEN`` (or found there), ``LARGE``: the
    block holds more than ``MAX_BYTES`` of text (left as segments), ``FAILED``: not written (logged)."""
    where = storage.join(root, BUNDLES_DIR, f"{stem(names[0])}--{stem(names[-1])}.json")
    try:
        texts = list(storage.fetched(lambda name: storage.read_text(storage.join(root, name)), names))
        if sum(map(len, texts)) > MAX_BYTES:
            log.info("event log: %s .. %s hold over %d bytes; left as segments", names[0], names[-1], MAX_BYTES)
            return LARGE
        text = json.dumps({"format_version": 1, "segments": [[n, t] for n, t in zip(names, texts)]},
                          ensure_ascii=False) + "\n"
        (storage.write_text if replace else storage.write_new_text)(where, text)
    except FileExistsError:
        pass
    except Exception as exc:  # noqa: BLE001 - best effort: an unreadable segment, a failed write, never the append
        log.warning("event log: bundling %s .. %s failed (%s); readers read them one by one", names[0], names[-1],
                    exc)
        return FAILED
    return WRITTEN


def bundle_missing(root: str | Path, names: list[str]) -> dict[str, int]:
    """Write the bundles the whole blocks of ``names`` (the log's segments) lack, and again those that are not
    readable as their block (a log written before bundles existed, a bundle write that failed or was cut) ->
    how many blocks ``write_bundle`` left ``WRITTEN``, ``LARGE`` and ``FAILED``."""
    have = bundle_names(root)
    done = {WRITTEN: 0, LARGE: 0, FAILED: 0}
    for start in range(0, len(names) - BUNDLE + 1, BUNDLE):
        block = names[start:start + BUNDLE]
        found = have.get(block[0])
        if found is not None and found[0] == block[-1]:
            try:
                bundle_texts(root, found[1])
                continue
            except (DataValidationError, OSError, StorageError) as exc:
                log.warning("event log bundle %s unreadable (%s); writing it again", found[1], exc)
        done[write_bundle(root, block, replace=found is not None and found[0] == block[-1])] += 1
    return done
