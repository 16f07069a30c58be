"""The README and docs/ as a reader meets them: every relative link in README.md and docs/*.md points
to a file that exists, and to a heading that exists in it when the link names one (#anchor, GitHub's
slug rule); the README links every docs page and opens with the two fresh-machine commands."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _outside_code(text: str) -> str:
    """The text with fenced code blocks and inline code removed (their brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        s = slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def relative_links(page: Path) -> list[str]:
    return [
        t for t in LINK.findall(_outside_code(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)
    ]  # http:, https:, mailto: are not checked here


def test_slug_follows_github():
    assert slug("`pipe inspect`: the feature browser") == "pipe-inspect-the-feature-browser"
    assert slug("Overrides on the command line (`--set`)") == "overrides-on-the-command-line---set"
    assert slug("The cost of L_ortho") == "the-cost-of-l_ortho"


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n[ok](a.md#title) [gone](b.md) `[code](c.md)`\n```\n[x](d.md)\n```\n")
    assert relative_links(page) == ["a.md#title", "b.md"]
    assert anchors(page) == {"title"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_links_every_docs_page():
    """A page in docs/ that the README does not link is a page no newcomer finds."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md links none of: {missing}"


def test_readme_opens_with_the_two_fresh_machine_commands():
    """The two commands a newcomer runs stay on the README's first screen, as setup.sh and the
    package's `pipe` script spell them."""
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "bash setup.sh && .venv/bin/pipe run" in first_screen
    assert "bash setup.sh --test && .venv/bin/python -m pytest -q" in first_screen
    setup = (ROOT / "setup.sh").read_text()
    assert "--test" in setup
    assert re.search(r"^pipe\s*=", (ROOT / "pyproject.toml").read_text(), flags=re.M), "no `pipe` script"


REPO_PATH = re.compile(r"`((?:common|harvest|train|eval|bench|tests|configs|docs)/[\w/.-]+\.(?:py|toml|md))(?:::\w+)?`")
BENCH_MODULE = re.compile(r"python -m (bench\.\w+)")


def named_files(page: Path) -> set[str]:
    """The repository files a page names in code spans (`train/trainer.py`, `python -m bench.gpu`)."""
    text = page.read_text()
    return set(REPO_PATH.findall(text)) | {m.replace(".", "/") + ".py" for m in BENCH_MODULE.findall(text)}


def test_the_file_names_are_found(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("`train/trainer.py` and `tests/test_x.py::test_y`, `python -m bench.gpu`, `runs/<run>/`\n")
    assert named_files(page) == {"train/trainer.py", "tests/test_x.py", "bench/gpu.py"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_files_exist(page):
    """A file the docs send a reader to exists: a module moved or renamed updates the docs with it."""
    missing = sorted(f for f in named_files(page) if not (ROOT / f).exists())
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"
