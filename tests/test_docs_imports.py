"""Every import the docs and the pushed model card tell a user to type works from outside the checkout.

The stage folders install as `orthosae.<stage>` (pyproject.toml), so `from train.export import …`
works only with the repository root on the path; a user who installed the package and runs Python
elsewhere gets ModuleNotFoundError. Each `from <module> import <names>` of ours is run in a fresh
interpreter whose working directory is a temporary folder and whose path holds no checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orthosae.train.export import GROUPED_ARCH
from orthosae.train.push import model_card

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("orthosae", "train", "eval", "common", "harvest")
IMPORT = re.compile(r"from\s+([A-Za-z_][\w.]*)\s+import\s+([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)")


def our_imports(text: str) -> set[str]:
    """`from m import a, b` statements of this package's modules named in ``text``."""
    return {
        f"from {m} import {', '.join(n.strip() for n in names.split(','))}"
        for m, names in IMPORT.findall(text)
        if m.split(".")[0] in OURS
    }


def run_outside(statement: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", statement], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_finder_sees_imports_in_prose_and_code(tmp_path):
    text = "use `from train.export import load_sae; x`\n```python\nfrom orthosae.train import a, b\nimport os\n```"
    assert our_imports(text) == {"from train.export import load_sae", "from orthosae.train import a, b"}
    bad = run_outside("from train.export import load_sae", tmp_path)  # the form the docs used to give
    assert bad.returncode != 0 and "ModuleNotFoundError" in bad.stderr


def documented() -> list[tuple[str, str]]:
    found = {(p.relative_to(ROOT).as_posix(), s) for p in PAGES for s in our_imports(p.read_text())}
    card = model_card("you/sae", [("adaptive", {"architecture": GROUPED_ARCH}, {}, None)])
    sparsify = model_card("you/sae", [("baseline", {"metadata": {"hook_layer": 3}}, {}, None)], "sparsify")
    assert "from sparsify import SparseCoder" in sparsify
    return sorted(found | {("the model card of `pipe push`", s) for s in our_imports(card) | our_imports(sparsify)})


@pytest.mark.parametrize(("where", "statement"), documented())
def test_a_documented_import_runs_outside_the_checkout(where, statement, tmp_path):
    assert statement.startswith("from orthosae."), f"{where}: `{statement}` names no installed module"
    out = run_outside(statement, tmp_path)
    assert out.returncode == 0, f"{where}: `{statement}` fails outside the checkout:\n{out.stderr[-1500:]}"
