"""The SAE variants, one table: each [[runs]] type and what every stage asks of it.

Adding a variant is one new file plus one line: ``train/sae/<name>.py`` holds its SAE class (on the
shared base, ``train/sae/base.py``), and one ``register(Variant(...))`` line below declares it.
Config validation (the [[runs]] type, the [train.ortho] keys a run may set), training (``make_sae``,
L_ortho, the regroup schedule), the export's SAELens architecture, ``pipe push``'s model card, eval
and the report all read this table, never a type string. ``common`` imports no stage, so the class
is named by its import path (``module:Class``) and ``train/sae`` (``make_sae``) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

# SAELens' own architecture for each [train] activation ("batchtopk" infers as JumpReLU)
SAELENS_BY_ACTIVATION = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu"}
GROUPED_ARCH = "orthosae_grouped"  # the grouped SAE's own SAELens architecture (train/sae/adaptive.py)

# The [train.ortho] keys, by what reads them: every L_ortho reads the first, learned groups the second
# (tests/common/test_variants.py checks that together they are [train.ortho], each key once).
ORTHO_FORM_KEYS = ("lambda2_max", "alpha", "alpha_mode", "weights", "weighting", "groups", "gram_dtype", "every")
GROUPING_KEYS = (
    "t0",
    "regroup_every",
    "regroup_min_mass",
    "regroup_margin",
    "stats_decay",
    "tau",
    "stop_eff_rank",
    "stop_max_cos",
)


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str  # its [[runs]] type
    sae_class: str  # "module:Class" of its SAE, built by train.sae.make_sae
    has_ortho: bool  # an L_ortho term between feature groups (the class has ``groups``, ``n_groups``)
    grouped: bool  # learned feature groups with group decoder biases (train.sae.is_grouped)
    baseline: bool = False  # the frontier's baseline curve, which "who wins" compares the others against
    saelens_architecture: str = ""  # the export's cfg.json architecture; "" = SAELens' own for the activation
    ortho_keys: tuple[str, ...] = ()  # the [train.ortho] keys it reads; a [[runs]] table may set only these

    def architecture(self, activation: str) -> str:
        return self.saelens_architecture or SAELENS_BY_ACTIVATION[activation]


VARIANTS: dict[str, Variant] = {}


def register(v: Variant) -> Variant:
    """Add ``v`` to the table (again: the same declaration is a no-op, another one an error)."""
    if VARIANTS.get(v.name, v) != v:
        raise ValueError(f"SAE variant {v.name!r} is already registered as {VARIANTS[v.name]}")
    if v.grouped and not v.has_ortho:
        raise ValueError(f"SAE variant {v.name!r}: grouped needs has_ortho (learned groups are L_ortho's groups)")
    VARIANTS[v.name] = v
    return v


# what a type that is no variant (a label-using reference's "reference", a missing one) answers
OTHER = Variant(name="", sae_class="", has_ortho=False, grouped=False)


def of(type_name: str | None) -> Variant:
    """The variant of a [[runs]] type, ``OTHER`` for any other type (eval reads types from reports)."""
    return VARIANTS.get(type_name, OTHER) if isinstance(type_name, str) else OTHER


register(
    Variant(
        name="baseline",
        sae_class="orthosae.train.sae.baseline:BaselineSAE",
        has_ortho=False,
        grouped=False,
        baseline=True,
    )
)
register(
    Variant(
        name="fixed",
        sae_class="orthosae.train.sae.fixed:FixedOrthoSAE",
        has_ortho=True,
        grouped=False,
        ortho_keys=ORTHO_FORM_KEYS,
    )
)
register(
    Variant(
        name="adaptive",
        sae_class="orthosae.train.sae.adaptive:AdaptiveOrthoSAE",
        has_ortho=True,
        grouped=True,
        saelens_architecture=GROUPED_ARCH,
        ortho_keys=ORTHO_FORM_KEYS + GROUPING_KEYS,
    )
)
