"""report.json's own integrity: the report carries the sha256 of its content (``integrity``), so a
reader (`pipe status`, `pipe push`'s model card, `pipe run`'s "is the report current", the feature
browser) tells a report cut short, flipped or swapped for another JSON file from a real one, instead
of quoting wrong figures. Light on imports: `pipe status` reads it and must stay instant."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

KEY = "integrity"


class ReportUnreadable(ValueError):
    """report.json exists but is not an intact report; the message says why (one line)."""


def digest(report: dict) -> str:
    """sha256 of the report without its ``integrity`` key, as JSON with sorted keys."""
    body = {k: v for k, v in report.items() if k != KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def seal(text: str) -> str:
    """The report's JSON ``text`` with its ``integrity`` added (computed on what a reader parses)."""
    report = json.loads(text)
    report[KEY] = digest(report)
    return json.dumps(report, indent=1, allow_nan=True)


def read_report(path: Path) -> dict:
    """The report at ``path``; ``ReportUnreadable`` when it does not parse, is no report, or its
    content does not match its ``integrity`` (reports older than the key are taken as they are)."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ReportUnreadable(f"{path}: unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if not isinstance(report, dict) or not isinstance(report.get("runs"), dict):
        raise ReportUnreadable(f"{path}: not a report of `pipe eval` (no 'runs' table)")
    if KEY in report and report[KEY] != digest(report):
        raise ReportUnreadable(f"{path}: content does not match its integrity digest (damaged or edited)")
    return report
