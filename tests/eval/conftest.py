"""Fixtures of eval's tests: the feature browser's site, built once for its four test files."""

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from tests._browser_site import TOP_K, write_config


@pytest.fixture(scope="session")
def site(tmp_path_factory, tiny_model_dir):
    """Harvest + train two runs, then `pipe inspect` -> (config path, inspect root, CLI output)."""
    tmp = tmp_path_factory.mktemp("inspect")
    path = write_config(tmp, tiny_model_dir)
    runner = CliRunner()
    for args in (["harvest"], ["train"]):
        res = runner.invoke(main, ["--config", str(path), *args])
        assert res.exit_code == 0, res.output + repr(res.exception)
    res = runner.invoke(main, ["--config", str(path), "inspect", "--top-k", str(TOP_K)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return path, tmp / "reports/tiny/inspect", res.output
