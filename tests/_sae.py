"""Shared helpers of the SAE and Trainer tests (tests/train/): a tiny run of each type."""

from __future__ import annotations

from orthosae.common.config import RunConfig
from orthosae.train.sae import AdaptiveOrthoSAE, Coefficients, make_sae

D, S = 6, 24
COMMON = dict(l1_coefficient=0.01, seed=0, d_sae=S, l1_warmup_steps=0)


def run(kind: str, **keys) -> RunConfig:
    return RunConfig.of(kind, **{**COMMON, **keys})


def adaptive(**kw) -> AdaptiveOrthoSAE:
    return make_sae(run("adaptive", **{"lambda2_max": 0.1, "t0": 10, **kw}), D)


def all_variants():
    return [make_sae(run("baseline"), D), make_sae(run("fixed", lambda2_max=0.1), D), adaptive()]


def coeffs(lambda1=0.01, ortho_weight=0.0, due=True, lambda2=0.0) -> Coefficients:
    return Coefficients(lr=1e-3, lambda1=lambda1, lambda2=lambda2, ortho_weight=ortho_weight, ortho_due=due)
