"""Online feedback per model version, from the event log (``convfm report --events LOG``).

The unit is the impression: one ``/recommend`` answer, logged by the service with its ``impression_id`` and
``model_version``. A click (save, apply) rate is the share of a version's impressions that got at least one
click (save, apply) event citing their ``impression_id``: a proportion of independent trials, so its 95%
interval is Wilson's score interval, and the difference between two versions gets Newcombe's hybrid score
interval (method 10 of Newcombe 1998), which stays inside [-1, 1] and behaves at rates near 0, unlike the
normal approximation. Events without an impression id, or citing one the log lacks (impression records are
best effort), are counted apart and left out of the rates. Impressions are read from the impression log beside
the event log (``<live store>/impressions/``) and from the event log itself (where services wrote them before).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from convfm.errors import DataValidationError
from convfm.store.event_log import IMPRESSION, impressions_location, list_segments, read_log

RATED = ("click", "save", "apply")
Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) without trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(a: tuple[int, int], b: tuple[int, int], z: float = Z95) -> tuple[float, float, float]:
    """(difference p_a - p_b, low, high): Newcombe's hybrid score interval from the two Wilson intervals."""
    (sa, na), (sb, nb) = a, b
    pa, pb = (sa / na if na else 0.0), (sb / nb if nb else 0.0)
    (la, ua), (lb, ub) = wilson(sa, na, z), wilson(sb, nb, z)
    diff = pa - pb
    return diff, diff - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2), diff + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)


def feedback_report(root: str | Path) -> dict[str, Any]:
    """Per version: impressions and, per rated event type, impressions with one, the rate and its interval;
    each version after the first (sorted) also gets its difference from the first with Newcombe's interval."""
    versions: dict[str, dict[str, Any]] = {}
    shown: dict[str, str] = {}  # impression id -> version
    events = []
    impressions = impressions_location(root)  # (a log written before that existed holds them among the events)
    for _, records in itertools.chain(read_log(root), read_log(impressions)):
        for r in records:
            if r["type"] == IMPRESSION:
                shown[r["event_id"]] = str(r.get("model_version"))
            else:
                events.append(r)
    if not shown:
        if not list_segments(root):
            raise DataValidationError(f"{root}: no event log there (no segment files); the service writes it in "
                                      "its live store: models/NAME/live/events")
        raise DataValidationError(f"{root}: neither the event log nor {impressions} holds impression records (the "
                                  "service writes one per /recommend answer)")
    for version in sorted(set(shown.values())):
        versions[version] = {"impressions": 0, **{kind: set() for kind in RATED}}
    for version in shown.values():
        versions[version]["impressions"] += 1
    unmatched = 0
    for r in events:
        version = shown.get(r.get("impression_id") or "")
        if version is None:
            unmatched += 1
        elif r["type"] in RATED:
            versions[version][r["type"]].add(r["impression_id"])
    report: dict[str, Any] = {"versions": {}, "events_without_impression": unmatched, "baseline": None}
    baseline = None
    for version, counts in versions.items():
        n = counts["impressions"]
        row: dict[str, Any] = {"impressions": n}
        for kind in RATED:
            hits = len(counts[kind])
            row[kind] = {"impressions_with": hits, "rate": hits / n, "ci95": wilson(hits, n)}
            if baseline is not None:
                base = (len(versions[baseline][kind]), versions[baseline]["impressions"])
                diff, low, high = newcombe((hits, n), base)
                row[kind]["difference"] = {"vs": baseline, "value": diff, "ci95": (low, high)}
        report["versions"][version] = row
        baseline = baseline or version
    report["baseline"] = baseline
    return report


def format_feedback(report: dict[str, Any]) -> str:
    """The report as a table: one row per version, rates with their 95% intervals, differences below."""
    lines = [f"{'version':<12}{'impressions':>12}" + "".join(f"{kind + ' rate (95% CI)':>30}" for kind in RATED)]
    for version, row in report["versions"].items():
        cells = "".join(f"{_rate(row[kind]['rate'], row[kind]['ci95']):>30}" for kind in RATED)
        lines.append(f"{version:<12}{row['impressions']:>12}{cells}")
    for version, row in report["versions"].items():
        if "difference" in row[RATED[0]]:
            cells = "".join(f"{_rate(row[k]['difference']['value'], row[k]['difference']['ci95'], signed=True):>30}"
                            for k in RATED)
            lines.append(f"{version + ' - ' + report['baseline']:<24}{cells}")
    lines.append(f"events without a logged impression (not rated): {report['events_without_impression']}")
    return "\n".join(lines)


def _rate(value: float, interval: tuple[float, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.4f} [{interval[0]:{sign}.4f}, {interval[1]:{sign}.4f}]"
