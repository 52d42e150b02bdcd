"""What reading a long event log costs a replica that starts, with and without the log's bundles.

A log of ``--segments`` segments of ``--events`` events each (a client posting one body per call writes one
segment each) is written under a temp folder, as a writer before bundles would have left it, then bundled as
``convfm catalog bundle`` does (``event_log.bundle_missing``). Each row times, median of ``--repeats``:

- open: ``EventLog.open``, what the ``Api`` does at start (every event id read back);
- replica start: ``LiveEvents.catch_up`` from nothing, what a Ranker replica does at start;

with the bundles and with the segments alone (the bundles folder moved aside), on the local disk and with
``--delay-ms`` added to every file read (a stand-in for an object store's latency per GET; files are fetched 16
at a time either way).

A second table is a replica serving a model trained on the log's first ``--trained`` share of segments (its
``LogMark``): the overlay cut at the mark against one holding every event, local disk, bundles kept: its start
(median), the events it holds and the memory they take (``tracemalloc``, what stays allocated after the start).

    .venv/bin/python benchmarks/event_log.py [--segments 20000 --events 1 --delay-ms 20 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

from convfm.config import EVENTS
from convfm.store import event_log, log_bundles, storage
from convfm.store.event_log import EventLog
from convfm.store.log_mark import LogMark
from serve.events import LiveEvents


def write_log(root: Path, segments: int, events: int) -> None:
    """``segments`` segments as the writer names them, written without fsync (the write is not what is timed)."""
    start = time.time_ns()
    for s in range(segments):
        lines = [json.dumps({"event_id": f"e{s}-{e}", "type": "apply" if e % 7 == 0 else "view",
                             "user_id": f"u{(s * 31 + e) % 5000}", "job_id": f"j{(s * 17 + e) % 20000}",
                             "timestamp": "2026-12-01T10:00:00.000000Z", "impression_id": None,
                             "model_version": "v0001", "known_job": True,
                             "received_at": "2026-12-01T10:00:00.100000Z"}) for e in range(events)]
        storage.write_text(root / f"{start + s:019d}-{s % 16**8:08x}.jsonl", "\n".join(lines) + "\n")


def overlay_rows(root: Path, trained: float, repeats: int) -> list[tuple[str, float, int, float]]:
    """(overlay, replica start s, events held, MiB held) uncut and cut at the mark of a model trained on the
    first ``trained`` share of the log's segments."""
    names = event_log.list_segments(root)
    count = max(1, int(len(names) * trained))
    rows = []
    for label, mark in (("every event", None), (f"cut at segment {count:,}", LogMark(names[count - 1], count,
                                                                                      frozenset(EVENTS)))):
        start = median_s(lambda: LiveEvents(root, mark).catch_up(), repeats)
        tracemalloc.start()
        live = LiveEvents(root, mark)
        live.catch_up()
        held = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        assert live.position == len(names)
        rows.append((label, start, live.held, held))
    return rows


def median_s(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1, help="events per segment (default 1)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added to every read in the delayed rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trained", type=float, default=0.9, help="share of the segments the served model was "
                        "trained on (the overlay table; default 0.9)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convfm-event-log-") as tmp:
        root = Path(tmp) / "events"
        started = time.perf_counter()
        write_log(root, args.segments, args.events)
        wrote = time.perf_counter() - started
        started = time.perf_counter()
        done = event_log.bundle_missing(root)
        bundling = time.perf_counter() - started
        assert done["segments"] == args.segments and done[log_bundles.WRITTEN] == args.segments // log_bundles.BUNDLE
        print(f"{args.segments:,} segments of {args.events} event(s) written in {wrote:.1f} s; "
              f"{done[log_bundles.WRITTEN]} bundles of {log_bundles.BUNDLE} written in {bundling:.2f} s\n")
        real_read, rows = storage.read_text, []
        try:
            for delay in (0.0, args.delay_ms):
                slowed = lambda path, d=delay: time.sleep(d / 1000) or real_read(path)  # noqa: E731
                storage.read_text = slowed if delay else real_read
                for bundled in (True, False):
                    if not bundled:
                        (root / log_bundles.BUNDLES_DIR).rename(Path(tmp) / "aside")
                    opened = median_s(lambda: EventLog.open(root), args.repeats)
                    start = median_s(lambda: LiveEvents(root).catch_up(), args.repeats)
                    assert len(EventLog.open(root)) == args.segments * args.events
                    if not bundled:
                        (Path(tmp) / "aside").rename(root / log_bundles.BUNDLES_DIR)
                    rows.append((delay, bundled, opened, start))
        finally:
            storage.read_text = real_read  # the slowed reads never outlive the measurement
        overlays = overlay_rows(root, args.trained, args.repeats)
    print("| reads | files | open (Api) s | replica start s |")
    print("|---|---|---:|---:|")
    for delay, bundled, opened, start in rows:
        where = f"+{delay:g} ms each" if delay else "local disk"
        print(f"| {where} | {'bundles' if bundled else 'segments alone'} | {opened:.2f} | {start:.2f} |")
    for delay in (0.0, args.delay_ms):
        with_b, without = [r for r in rows if r[0] == delay]
        print(f"{'local disk' if not delay else f'+{delay:g} ms'}: open {without[2] / with_b[2]:.1f}x faster with "
              f"bundles, replica start {without[3] / with_b[3]:.1f}x")
    print(f"\nA replica serving a model trained on {args.trained:.0%} of the log (local disk, bundles):\n")
    print("| overlay | replica start s | events held | MiB held |")
    print("|---|---:|---:|---:|")
    for label, start, held, mib in overlays:
        print(f"| {label} | {start:.2f} | {held:,} | {mib:.1f} |")
    (_, every_s, _, every_mib), (_, cut_s, _, cut_mib) = overlays
    print(f"cut overlay: start {every_s / cut_s:.1f}x faster, {every_mib / max(cut_mib, 1e-9):.1f}x less memory")


if __name__ == "__main__":
    main()
