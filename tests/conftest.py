"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight 2-layer Gemma2 (d_model 64) with a byte-level tokenizer, built once."""
    from tests._tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))
