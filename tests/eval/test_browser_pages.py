"""eval.browser_pages: the pages are self-contained and render in a real browser (headless
Chromium, skipped where it is not installed)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._browser_site import feature

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_site_is_self_contained(site):
    _, root, _ = site
    assert (root / "index.html").is_file()
    for run in ("baseline", "adaptive"):
        for page in ("index.html", "feature.html", "groups.html"):
            text = (root / run / page).read_text()
            # no network at view time: nothing is loaded from anywhere but the site's own folder
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), page
            assert "@@" not in text
        js = sorted((root / run / "features").glob("*.js"))
        assert len(js) == len(list((root / run / "features").glob("*.json"))) > 0
        assert js[0].read_text().startswith("orthosaeFeature({")


def _chromium(tmp_path: Path, url: str, *extra: str) -> str:
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
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_pages_render_in_headless_chromium(site, tmp_path):
    _, root, _ = site
    index = json.loads((root / "adaptive/index.json").read_text())
    live = [r for r in index["features"] if not r["silent"]]

    dom = _chromium(tmp_path, (root / "adaptive/index.html").as_uri(), "--dump-dom")
    ids = [int(x) for x in re.findall(r'<tr class="feat" data-id="(\d+)"', dom)]
    assert len(ids) == len(live) > 0  # silent features hidden by default
    # default order: forget share, descending
    shares = [index["features"][i]["forget_share"] for i in ids]
    assert shares == sorted(shares, reverse=True)

    best = max(live, key=lambda r: r["max_act"])["id"]
    dom = _chromium(tmp_path, (root / "adaptive/feature.html").as_uri() + f"#{best}", "--dump-dom")
    assert f"feature #{best}" in dom
    spans = re.findall(r'<span class="tok tok-on[^"]*"[^>]*>', dom)
    alpha = [float((re.search(r"rgba?\(234, 88, 12(?:, ([0-9.]+))?\)", s).group(1) or 1)) for s in spans]
    assert len(alpha) >= 1 and max(alpha) == 1.0 and min(alpha) > 0  # tokens shaded by activation
    assert 'class="tok tok-on tok-focus"' in dom  # the top token is outlined
    assert dom.count('class="ctx"') == len(feature(root, "adaptive", best)["top"])
    assert 'class="hbar"' in dom  # histogram bars
    assert "promoted tokens" in dom and "nearest features in its group" in dom

    dom = _chromium(tmp_path, (root / "adaptive/groups.html").as_uri(), "--dump-dom")
    assert dom.count('<tr class="group">') == 2 and "forget-leaning" in dom and 'class="selection"' in dom

    shot = tmp_path / "feature.png"
    _chromium(
        tmp_path,
        (root / "adaptive/feature.html").as_uri() + f"#{best}",
        f"--screenshot={shot}",
        "--window-size=1200,900",
    )
    assert shot.stat().st_size > 10_000
