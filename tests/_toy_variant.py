"""A toy SAE variant, added the documented way (common/variants.py): this file holds its class, and
one ``register(...)`` line declares it (``TOY``, registered by the test that uses it)."""

from __future__ import annotations

from orthosae.common.variants import Variant
from orthosae.train.sae.baseline import BaselineSAE


class ToySAE(BaselineSAE):
    """The baseline SAE under another name: same init, same loss, so the same weights."""


TOY = Variant(name="toy", sae_class="tests._toy_variant:ToySAE", has_ortho=False, grouped=False)
