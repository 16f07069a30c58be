"""eval.browser_data ``eval_roles``: a feature's page and JSON name where ``pipe eval``'s sparse
probing, TPP and absorption recorded it in report.json; without a report (or one that lacks these
fields, or is of another training) the site says the roles are unknown, and builds all the same."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.config import load_config
from orthosae.eval.browser_data import eval_roles
from tests._browser_site import feature

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _entry(fingerprint) -> dict:
    """A report.json run entry with known latent roles (and the figures beside them)."""
    return {
        "summary": {"fingerprint": fingerprint},
        "probing": {
            "sae_top_1_test_accuracy": 0.9,
            "datasets": {"toy_ds": {"sae_top_1_test_accuracy": 0.9, "top_latents": {"cats": [3, 11], "dogs": [5]}}},
        },
        "tpp": {"tpp_score": 0.1, "dataset": "toy_ds", "ablated_latents": {"cats": [11, 7, 3], "dogs": []}},
        "absorption": {
            "letters": {
                "a": {"split_latents": [11], "absorbing_latents": [9, 3]},
                "b": {"split_latents": [4, 5], "absorbing_latents": []},
            }
        },
    }


def _write(path: Path, runs: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}))
    return path


def test_roles_from_a_planted_report(tmp_path):
    report = _write(tmp_path / "report.json", {"r": _entry("fp1")})
    roles, info = eval_roles(report, "r", "fp1")
    assert info["known"] and info["evals"] == ["sparse_probing", "tpp", "absorption"]
    got = {i: sorted((x["eval"], x["role"], x["class"], x["rank"]) for x in v) for i, v in roles.items()}
    assert got == {
        3: sorted(
            [
                ("sparse_probing", "top_latent", "cats", None),
                ("tpp", "ablated", "cats", 3),
                ("absorption", "absorbing", "a", 2),
            ]
        ),
        11: sorted(
            [
                ("sparse_probing", "top_latent", "cats", None),
                ("tpp", "ablated", "cats", 1),
                ("absorption", "split", "a", None),
            ]
        ),
        5: sorted([("sparse_probing", "top_latent", "dogs", None), ("absorption", "split", "b", None)]),
        7: [("tpp", "ablated", "cats", 2)],
        9: [("absorption", "absorbing", "a", 1)],
        4: [("absorption", "split", "b", None)],
    }
    text = " | ".join(x["text"] for x in roles[11])
    assert "toy_ds" in text and "'cats'" in text and "letter 'A'" in text and "rank 1" in text


@pytest.mark.parametrize("case", ["no report", "no entry", "no fields", "other training", "not json"])
def test_roles_unknown_without_a_usable_report(tmp_path, case):
    report = tmp_path / "report.json"
    if case == "no entry":
        _write(report, {"other": _entry("fp1")})
    elif case == "no fields":  # families off, or a report from before the latents were recorded
        old = _entry("fp1")
        del old["probing"]["datasets"]["toy_ds"]["top_latents"], old["tpp"]["ablated_latents"]
        for v in old["absorption"]["letters"].values():
            v.clear()
        _write(report, {"r": old})
    elif case == "other training":
        _write(report, {"r": _entry("fp0")})
    elif case == "not json":
        report.write_text("{")
    roles, info = eval_roles(report, "r", "fp1")
    assert roles == {} and not info["known"] and info["note"].startswith("roles in pipe eval's probing evals unknown: ")


def test_partial_report_says_what_is_not_recorded(tmp_path):
    entry = _entry("fp1")
    del entry["tpp"], entry["absorption"]
    roles, info = eval_roles(_write(tmp_path / "report.json", {"r": entry}), "r", "fp1")
    assert info["known"] and info["evals"] == ["sparse_probing"] and "not recorded: tpp, absorption" in info["note"]
    assert sorted(roles) == [3, 5, 11]


def test_site_without_report_says_roles_unknown(site):
    """The shared site is built before any `pipe eval`: no report, no crash, a line saying why."""
    _, root, _ = site
    for run in ("baseline", "adaptive"):
        meta = json.loads((root / run / "index.json").read_text())["meta"]["eval_roles"]
        assert not meta["known"] and "unknown" in meta["note"] and "pipe eval" in meta["note"]
        assert feature(root, run, 0)["eval_roles"] == []


@pytest.fixture(scope="module")
def planted(site):
    """`pipe inspect --run adaptive` under another eval name, whose report.json plants roles."""
    path, _, _ = site
    cfg = load_config(path)
    fingerprint = json.loads((Path(cfg.train.runs_dir) / "adaptive/summary.json").read_text())["fingerprint"]
    root = Path(cfg.eval.reports_dir) / "planted"
    _write(root / "report.json", {"adaptive": _entry(fingerprint)})
    res = CliRunner().invoke(
        main, ["--config", str(path), "--set", "eval.name=planted", "inspect", "--run", "adaptive", "--top-k", "2"]
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    return root / "inspect"


def test_planted_report_names_the_roles_in_the_data(planted):
    meta = json.loads((planted / "adaptive/index.json").read_text())["meta"]["eval_roles"]
    assert meta["known"] and meta["evals"] == ["sparse_probing", "tpp", "absorption"]
    d11 = feature(planted, "adaptive", 11)
    assert sorted((r["eval"], r["role"], r["class"]) for r in d11["eval_roles"]) == [
        ("absorption", "split", "a"),
        ("sparse_probing", "top_latent", "cats"),
        ("tpp", "ablated", "cats"),
    ]
    assert [(r["eval"], r["rank"]) for r in feature(planted, "adaptive", 9)["eval_roles"]] == [("absorption", 1)]
    assert feature(planted, "adaptive", 0)["eval_roles"] == []


def _dom(tmp_path: Path, url: str) -> str:
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_feature_page_names_the_roles(planted, site, tmp_path):
    dom = _dom(tmp_path, (planted / "adaptive/feature.html").as_uri() + "#11")
    roles = re.findall(r'<li class="role">([^<]*)</li>', dom)
    assert len(roles) == 3 and any("ablated for class 'cats', rank 1" in r for r in roles)
    assert any("main latent of letter 'A'" in r for r in roles)
    dom = _dom(tmp_path, (planted / "adaptive/feature.html").as_uri() + "#0")
    assert 'class="muted roles-none"' in dom and '<li class="role">' not in dom
    _, root, _ = site  # no report.json: the page says the roles are unknown
    dom = _dom(tmp_path, (root / "adaptive/feature.html").as_uri() + "#0")
    assert 'class="muted roles-unknown"' in dom and "unknown: no " in dom and '<li class="role">' not in dom
