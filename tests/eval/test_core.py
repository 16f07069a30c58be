"""eval.core: known-answer SAEs and a cross-check against SAEBench's own metric code."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from orthosae.eval.core import reconstruction_metrics
from tests._activity import feature_activity
from tests._identity_sae import IdentitySAE, RandomSAE, ZeroSAE

D, B, CTX, NB = 16, 4, 8, 3  # d_model, prompts per batch, context, batches


def _acts(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # non-zero mean so the centred and uncentred variances differ
    return torch.randn(NB, B, CTX, D, generator=g) * 2.0 + torch.linspace(-1, 3, D)


def _batches(acts: torch.Tensor) -> list[torch.Tensor]:
    return [a.reshape(-1, D) for a in acts]


def test_identity_sae_is_perfect():
    m = reconstruction_metrics(IdentitySAE(D), _batches(_acts()))
    for k in (
        "explained_variance",
        "explained_variance_legacy",
        "explained_variance_dictionary_learning",
        "cossim",
        "l2_ratio",
        "relative_reconstruction_bias",
    ):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    assert m["mse"] == pytest.approx(0.0, abs=1e-10)
    assert m["l0"] == pytest.approx(D, abs=1e-9)  # one of relu(x), relu(-x) per dim
    assert m["frac_dead"] == 0.0 and m["n_rows"] == NB * B * CTX


def test_zero_sae_scores_nothing():
    acts = _acts()
    m = reconstruction_metrics(ZeroSAE(D), _batches(acts))
    assert m["explained_variance_legacy"] <= 0.0
    assert m["explained_variance"] <= 0.0 and m["explained_variance_dictionary_learning"] == pytest.approx(
        0.0, abs=1e-9
    )
    assert m["l0"] == 0 and m["l1"] == 0 and m["cossim"] == 0 and m["l2_ratio"] == 0
    assert m["frac_dead"] == 1.0 and m["freq_over_10_percent"] == 0.0
    assert m["mse"] == pytest.approx(acts.pow(2).sum(-1).mean().item(), rel=1e-5)


def test_feature_frequencies_and_dense():
    sae = IdentitySAE(2)
    rows = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    freq, mass = feature_activity(sae, [rows[:2], rows[2:]])
    # features: relu(x0), relu(x1), relu(-x0), relu(-x1)
    assert freq.tolist() == [0.75, 0.25, 0.25, 0.25]
    assert mass.tolist() == [0.75, 0.25, 0.25, 0.25]  # activations are 1 where active
    _, mass2 = feature_activity(sae, [2 * rows])
    assert mass2.tolist() == [1.5, 0.5, 0.5, 0.5]
    m = reconstruction_metrics(sae, [rows])
    assert m["freq_over_10_percent"] == 1.0 and m["freq_over_1_percent"] == 1.0 and m["frac_dead"] == 0.0


def test_formulas_by_hand():
    acts = _acts(1)
    sae = RandomSAE(D, 48, seed=3)
    m = reconstruction_metrics(sae, _batches(acts))
    x = acts.reshape(-1, D)
    with torch.no_grad():
        xh = sae(x)
    var = x.var(dim=0, unbiased=False).sum()
    assert m["explained_variance"] == pytest.approx(1 - ((x - xh).pow(2).sum(-1).mean() / var).item(), rel=1e-5)
    dl = 1 - (x - xh).var(dim=0).sum() / x.var(dim=0).sum()
    assert m["explained_variance_dictionary_learning"] == pytest.approx(dl.item(), rel=1e-5)


class _FakeSAE:
    """Just enough of a sae_lens SAE for SAEBench's metric function."""

    def __init__(self, sae):
        self._sae = sae
        self.cfg = SimpleNamespace(
            hook_name="blocks.0.hook_resid_post", hook_head_index=None, hook_layer=0, d_sae=sae.d_sae
        )
        self.device = torch.device("cpu")

    def encode(self, x):
        return self._sae.encode(x)

    def decode(self, f):
        return self._sae.decode(f)


def test_matches_saebench_core():
    core = pytest.importorskip("sae_bench.evals.core.main", reason="sae_bench not installed")
    acts = _acts(2)
    sae = RandomSAE(D, 48, seed=5)
    it = iter(acts)
    store = SimpleNamespace(get_batch_tokens=lambda n: torch.full((n, CTX), 7))
    model = SimpleNamespace(run_with_cache=lambda *a, **k: (None, {"blocks.0.hook_resid_post": next(it)}))
    with torch.no_grad():
        ref, feat = core.get_sparsity_and_variance_metrics(
            _FakeSAE(sae),
            model,
            store,
            n_batches=NB,
            compute_l2_norms=True,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
            eval_batch_size_prompts=B,
            model_kwargs={},
        )
    m = reconstruction_metrics(sae, _batches(acts))
    for ours, theirs in [
        ("l0", "l0"),
        ("l1", "l1"),
        ("cossim", "cossim"),
        ("mse_saebench", "mse"),
        ("explained_variance_legacy", "explained_variance_legacy"),
        ("l2_ratio", "l2_ratio"),
        ("relative_reconstruction_bias", "relative_reconstruction_bias"),
    ]:
        assert m[ours] == pytest.approx(ref[theirs], rel=1e-4, abs=1e-4), ours
    freq, _ = feature_activity(sae, _batches(acts))
    assert torch.allclose(freq.float(), torch.tensor(feat["feature_density"]), atol=1e-6)


def test_matches_saelens_explained_variance():
    evals = pytest.importorskip("sae_lens.evals", reason="sae_lens not installed")
    acts = _acts(4)
    sae = RandomSAE(D, 48, seed=6)
    calc = evals.ExplainedVarianceCalculator()
    with torch.no_grad():
        for b in _batches(acts):
            calc.add_batch(sae_output=sae(b), hidden_acts=b)
    m = reconstruction_metrics(sae, _batches(acts))
    assert m["explained_variance"] == pytest.approx(calc.compute(), abs=1e-5)
    assert math.isfinite(m["mse"]) and m["mse"] == pytest.approx(m["mse_saebench"] * B * CTX, rel=1e-5)
