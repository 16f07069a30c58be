"""One tiny finished pipeline (store, two trained runs, a report, a feature browser, a probe cache),
built once per session: each fault case works on a copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common import preempt
from tests._configs import BASELINE_AND_FIXED, write_tiny_pipeline

RUNS = ("baseline", "fixed")


@pytest.fixture(autouse=True)
def _no_leftover_request():
    """A test that requests preemption in-process leaves no request behind for the next one."""
    yield
    preempt.clear()


def finished_config(tmp: Path, model_dir: Path) -> Path:
    """The tiny model's pipeline, cut to what every artefact needs: two runs of 40 steps, an eval
    without the slow families (only reconstruction and CE), the browser on a few rows."""
    return write_tiny_pipeline(
        tmp,
        model_dir,
        tokens=2560,
        rest=BASELINE_AND_FIXED
        + f"""
    [eval]
    reports_dir = "{tmp / "reports"}"
    name = "tiny"
    rows = 200
    ce_contexts = 2
    batch_size = 4
    [eval.unlearning]
    modes = []
    """,
    )


def cache_value() -> dict:
    """What the probe cache holds in the matrix: nested tensors, lists of text and numbers, as
    eval/probe_data.py and eval/absorption.py cache them."""
    g = torch.Generator().manual_seed(0)
    return {
        "train": {
            "ids": {"a": torch.randint(0, 9, (3, 4), generator=g)},
            "acts": {"a": torch.randn(3, 4, generator=g).to(torch.bfloat16)},
            "mask": {"a": torch.rand(3, 4, generator=g) > 0.5},
            "words": ["ab", "cd"],
        },
        "vocab_size": 52,
    }


def cache_file(work: Path) -> Path:
    from orthosae.eval.probe_data import cache_path

    return cache_path(work / "reports/cache", "probing", {"model_id": "tiny"}, {"dataset": "fault-matrix"})


@pytest.fixture(scope="session")
def finished(tmp_path_factory, tiny_model_dir) -> Path:
    """The pristine finished pipeline (do not change it: `work` copies it); returns its folder."""
    from orthosae.eval.probe_data import cached

    root = tmp_path_factory.mktemp("faults") / "pristine"
    root.mkdir()
    path = finished_config(root, tiny_model_dir)
    for command in (["harvest"], ["train"], ["eval"], ["inspect", "--max-rows", "60", "--top-k", "3"]):
        res = CliRunner().invoke(main, ["--config", str(path), *command])
        assert res.exit_code == 0, (command, res.output, res.exception)
    cached(cache_file(root), cache_value)
    cached(cache_file(root).with_name("probing-other.safetensors"), lambda: {"x": torch.ones(2)})  # another key's
    shutil.rmtree(root / "reports/tiny/events")  # each command adds one; not what the cases compare
    return root


@pytest.fixture
def work(finished):
    """``work(store=, browser=)``: a copy of the finished pipeline at the same path each time
    (configs name absolute paths). The store is linked, not copied, unless ``store`` (no command of
    the matrix but harvest writes it); the feature browser is left out unless ``browser``."""
    dest = finished.parent / "work"

    def make(store: bool = False, browser: bool = False) -> Path:
        shutil.rmtree(dest, ignore_errors=True)
        skip = {"s.zarr"} | (set() if browser else {"inspect"})
        shutil.copytree(finished, dest, ignore=lambda d, names: [n for n in names if n in skip])
        if store:
            shutil.copytree(finished / "s.zarr", dest / "s.zarr")
        else:
            (dest / "s.zarr").symlink_to(finished / "s.zarr")
        (dest / "p.toml").write_text((finished / "p.toml").read_text().replace(str(finished), str(dest)))
        return dest

    return make
