"""``feature_activity``: eval/core.py's ``FeatureActivity`` over one SAE's batches (the product
feeds every run's accumulator from one read, eval/family.py ``feed``)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from orthosae.eval.core import FeatureActivity


def feature_activity(sae, batches: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """(frequency, mass) per feature, as ``FeatureActivity.result``."""
    acc = FeatureActivity(sae)
    for batch in batches:
        acc.add(batch)
    return acc.result()
