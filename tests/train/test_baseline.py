"""train/sae/baseline.py: the baseline exports as SAELens' own architecture for its activation."""

from __future__ import annotations

import pytest

from orthosae.common.variants import SAELENS_BY_ACTIVATION
from orthosae.train.sae import make_sae
from orthosae.train.sae.baseline import BaselineSAE
from tests._sae import D, run


@pytest.mark.parametrize("activation,arch", [("relu", "standard"), ("topk", "topk"), ("batchtopk", "jumprelu")])
def test_export_architecture_follows_the_activation(activation, arch):
    """relu -> SAELens "standard", topk -> "topk", batchtopk -> "jumprelu" (as SAELens saves BatchTopK
    for inference); the fixed-orthogonal SAE exports the same way (its groups are not saved)."""
    keys = {} if activation == "relu" else {"activation": activation, "k": 3}
    for kind in ("baseline", "fixed"):
        sae = make_sae(run(kind, **keys), D)
        assert isinstance(sae, BaselineSAE) and sae.architecture == arch == SAELENS_BY_ACTIVATION[activation]
