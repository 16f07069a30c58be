"""A batch job's config over the synthetic store (its event logs in the test's folder) and its event log."""

from pathlib import Path

from orthosae.common import events
from tests._synthetic import SWEEP
from tests._synthetic import write_config as write_train_config

RUNS = ("baseline", "fixed", "adaptive")


def batch_config(tmp_path: Path, **kwargs) -> Path:
    """test_train's synthetic-store sweep (160 steps), its event logs in tmp_path, a progress event
    every update."""
    return write_train_config(
        tmp_path,
        tokens=20_480,
        runs=SWEEP
        + f"""
[eval]
reports_dir = "{tmp_path / "reports"}"
[log]
progress_seconds = 0
""",
        **kwargs,
    )


def event_log(tmp_path: Path, command: str) -> list[dict]:
    files = sorted((tmp_path / "reports/default/events").glob(f"{command}-*.jsonl"))
    assert len(files) == 1, files
    return events.read(files[0])
