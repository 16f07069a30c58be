"""tests/_report_diff.py, the before/after check of a refactor's report: it sees a changed number, a
missing key and a changed sentence, and passes what may differ (the date, wall times, the order of
the plots and of report.md's sections)."""

import json

from tests._report_diff import differences

MD = """# orthosae report: tiny

orthosae 0.1.0 · 2026-01-01 00:00:00

## A
one

## B
two

## Plots
![a.png](a.png)
![b.png](b.png)

## Eval wall time (s)
| family | seconds |
|---|---:|
| x | 1.0 |
"""


def _write(folder, report, md):
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text(md)
    return folder


def test_report_diff_sees_numbers_keys_and_sentences_not_dates_or_order(tmp_path):
    report = {"created": "then", "timings_s": {"x": 1.0}, "plots": ["a.png", "b.png"], "runs": {"r": {"v": 0.5}}}
    before = _write(tmp_path / "before", report, MD)
    moved = MD.replace("## A\none\n\n## B\ntwo", "## B\ntwo\n\n## A\none").replace("00:00:00", "11:11:11")
    moved = moved.replace("![a.png](a.png)\n![b.png](b.png)", "![b.png](b.png)\n![a.png](a.png)").replace(
        "1.0 |", "9.0 |"
    )
    same = {**report, "created": "now", "timings_s": {"x": 9.0}, "plots": ["b.png", "a.png"]}
    assert differences(before, _write(tmp_path / "same", same, moved)) == []

    changed = {**report, "runs": {"r": {"v": 0.25, "w": 1}}}
    found = differences(before, _write(tmp_path / "changed", changed, MD.replace("two", "three")))
    assert found == [
        "/runs/r/v: 0.5 vs 0.25",
        "/runs/r/w: only after",
        "report.md: only before:\n## B\ntwo",
        "report.md: only after:\n## B\nthree",
    ]
