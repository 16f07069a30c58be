"""Is an eval report the same before and after a refactor? report.json number for number and key for
key (the date, wall times and the integrity digest excepted; the plots list as a set), report.md
paragraph for paragraph as a multiset (sections may move; the plots' links as a set; the date and
the wall-time table excepted).

    python -m tests._report_diff make WORK        # a tiny store and runs with every family on, `pipe run`
    python -m tests._report_diff eval WORK        # `pipe eval` again (after the change)
    python -m tests._report_diff compare BEFORE AFTER   # two report folders (report.json, report.md)
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from orthosae.cli import main
from tests._tiny import build_tiny_model
from tests.eval.test_probe_families import _config

SKIP = {"created", "timings_s", "integrity"}  # dates, wall times, the digest of both


def _walk(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if path == "" and k in SKIP:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only {'after' if k not in a else 'before'}")
            else:
                _walk(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if path == "/plots":
            a, b = sorted(a), sorted(b)
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: {a!r} vs {b!r}")


def paragraphs(md: str) -> Counter:
    md = re.sub(r"orthosae \S+ · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "orthosae · DATE", md)
    md = re.sub(r"## Eval wall time \(s\)\n.*?(?=\n## |\Z)", "", md, flags=re.S)
    paras = [p.strip() for p in re.split(r"\n\s*\n", md) if p.strip()]
    return Counter("\n".join(sorted(p.splitlines())) if p.startswith("## Plots") else p for p in paras)


def differences(before: Path, after: Path) -> list[str]:
    out: list[str] = []
    _walk(json.loads((before / "report.json").read_text()), json.loads((after / "report.json").read_text()), "", out)
    pa, pb = paragraphs((before / "report.md").read_text()), paragraphs((after / "report.md").read_text())
    out += ["report.md: only before:\n" + p[:400] for p in (pa - pb).elements()]
    out += ["report.md: only after:\n" + p[:400] for p in (pb - pa).elements()]
    return out


def _pipe(work: Path, command: str) -> int:
    if not (work / "p.toml").exists():
        work.mkdir(parents=True, exist_ok=True)
        path = _config(work, build_tiny_model(work / "model"))
        path.write_text(path.read_text() + '\n[eval.spread]\ncondition = "baseline"\nruns = 2\nselection_draws = 2\n')
    res = CliRunner().invoke(main, ["--config", str(work / "p.toml"), command])
    print(res.output[-2000:], res.exception or "")
    return res.exit_code


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "compare":
        found = differences(Path(args[0]), Path(args[1]))
        print(
            "\n".join(found) or "same: report.json key for key and number for number, report.md paragraph for paragraph"
        )
        sys.exit(1 if found else 0)
    sys.exit(_pipe(Path(args[0]), "run" if what == "make" else "eval"))
