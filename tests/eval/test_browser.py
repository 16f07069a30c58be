"""eval.browser (`pipe inspect`): where the site goes, and its errors as one line."""

from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.config import load_config
from tests._browser_site import write_config


def test_inspect_errors_are_one_line(site, tmp_path, tiny_model_dir):
    path, _, _ = site
    res = CliRunner().invoke(main, ["--config", str(path), "inspect", "--run", "nope"])
    assert res.exit_code == 2 and "no [[runs]] entry named 'nope'" in res.output
    fresh = write_config(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(main, ["--config", str(fresh), "inspect"])
    assert res.exit_code == 2 and "pipe harvest" in res.output


def test_browser_hint_names_the_index(site, tmp_path, tiny_model_dir):
    from orthosae.eval.browser import browser_hint

    path, root, _ = site
    assert browser_hint(load_config(path)) == f"feature browser: {root / 'index.html'}"
    fresh = write_config(tmp_path, tiny_model_dir)
    assert "`pipe inspect` writes" in browser_hint(load_config(fresh))
