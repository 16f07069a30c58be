"""The benchmarks' smoke fixture: the tiny pipeline finished once (harvest, train, eval), so every
`bench/*.py --quick` that reads a config, a store, a run or a report has one."""

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from tests._configs import BASELINE_AND_ADAPTIVE, tiny_eval, write_tiny_pipeline


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory, tiny_model_dir):
    """(config path, tmp dir) of a tiny pipeline with a baseline and an adaptive run, all stages done."""
    tmp = tmp_path_factory.mktemp("bench")
    path = write_tiny_pipeline(
        tmp, tiny_model_dir, d_sae=64, tokens=1920, t0=10, regroup_every=10, rest=BASELINE_AND_ADAPTIVE + tiny_eval(tmp)
    )
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return path, tmp
