"""SAEBench 0.6.0 on our exports: its core metrics and unlearning feature selection, loaded via sae_lens.

sae_lens 6 keeps hook_name/hook_layer/... in ``cfg.metadata``; SAEBench's functions read
``sae.cfg.hook_name`` / ``sae.cfg.hook_layer``. A plain ``sae_lens.SAE.load_from_disk`` object
therefore fails inside SAEBench with AttributeError; ``train.export.load_for_saebench`` fixes that.
The LM is a tiny random ``HookedTransformer`` built from a config (no download); the activation
store is a token source with the four members SAEBench's ``run_evals`` touches.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orthosae.common.config import RunConfig
from orthosae.train.export import ExportError, load_sae, register_with_sae_lens, save_sae
from orthosae.train.sae import make_sae
from orthosae.train.trainer import Trainer

pytest.importorskip("sae_lens", reason="sae_lens not installed")
core = pytest.importorskip("sae_bench.evals.core.main", reason="sae_bench not installed")
fa = pytest.importorskip("sae_bench.evals.unlearning.utils.feature_activation", reason="sae_bench not installed")
ul_metrics = pytest.importorskip("sae_bench.evals.unlearning.utils.metrics", reason="sae_bench not installed")
from sae_bench.evals.core.eval_config import CoreEvalConfig  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

D, S, SCALE, LAYER, VOCAB, CTX = 16, 32, 0.25, 1, 40, 8
PAD, EOS, BOS = 0, 1, 2
HOOK = f"blocks.{LAYER}.hook_resid_post"
# what train/runner.py writes (hook_layer included); the grouped case below leaves it out
EXTRA = {
    "model_name": "tiny-ht",
    "hook_name": HOOK,
    "hook_layer": LAYER,
    "context_size": CTX,
    "prepend_bos": True,
    "exclude_special_tokens": True,
    "run_name": "t",
}
COMMON = dict(d_sae=S, l1_coefficient=1e-3, seed=3, lr=3e-2, lr_warmup_steps=0, l1_warmup_steps=0)
RUNS = {
    "standard": RunConfig.of("baseline", **COMMON),
    "orthosae_grouped": RunConfig.of("adaptive", lambda2_max=0.1, t0=4, groups=3, regroup_every=3, **COMMON),
}


@pytest.fixture(scope="module")
def model():
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        n_ctx=CTX,
        d_vocab=VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        device="cpu",
        seed=0,
    )
    m = HookedTransformer(cfg).eval()
    m.tokenizer = SimpleNamespace(
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,  # SAEBench masks these
        padding_side="right",
    )  # read by HookedTransformer.forward
    return m


def _tokens(seed: int, n: int) -> torch.Tensor:
    t = torch.randint(3, VOCAB, (n, CTX), generator=torch.Generator().manual_seed(seed))
    t[:, 0] = BOS
    return t


class TokenStore:
    """The parts of a sae_lens ActivationsStore that SAEBench's core ``run_evals`` uses."""

    context_size = CTX
    store_batch_size_prompts = 3

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.reset_input_dataset()

    def reset_input_dataset(self):
        self._next = self.seed

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        self._next += 1
        return _tokens(self._next, n)


def _export(tmp_path, arch: str, model) -> tuple:
    """Train a few steps on the tiny model's layer-LAYER activations (normalised by SCALE), export."""
    torch.manual_seed(0)
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens(100, 12), names_filter=HOOK)
    acts = cache[HOOK].reshape(-1, D)
    sae = make_sae(RUNS[arch], D)
    sae.init_b_dec(SCALE * acts.mean(0))
    trainer = Trainer(RUNS[arch], sae, 100)
    for i in range(9):
        rows = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(i))[:48]]
        trainer.train_step(SCALE * rows, torch.arange(48) < 16)
    extra = dict(EXTRA)
    if arch == "orthosae_grouped":
        extra.pop("hook_layer")  # load_for_saebench takes it from "blocks.<L>."
    save_sae(sae, tmp_path, scale=SCALE, extra_cfg=extra)
    return tmp_path, sae


def _run_core(sae, model):
    cfg = CoreEvalConfig(
        batch_size_prompts=3,
        n_eval_reconstruction_batches=2,
        n_eval_sparsity_variance_batches=2,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
    )
    with torch.no_grad():
        return core.run_evals(sae, TokenStore(), model, cfg)


def _select_features(sae, model):
    """SAEBench's unlearning selection: per-feature firing rates on forget/retain tokens, then top features."""
    with torch.no_grad():
        forget, retain = fa.calculate_sparsity(model, sae, _tokens(7, 6), _tokens(8, 6), batch_size=4)
    return forget, retain, fa.get_top_features(forget, retain, retain_threshold=0.3)


@pytest.mark.parametrize("arch", ["standard", "orthosae_grouped"])
def test_plain_sae_lens_load_fails_in_saebench(tmp_path, model, arch):
    import sae_lens

    run_dir, _ = _export(tmp_path, arch, model)
    register_with_sae_lens()
    plain = sae_lens.SAE.load_from_disk(run_dir)
    plain.fold_W_dec_norm()
    assert plain.cfg.metadata.hook_name == HOOK  # the information is there, where SAEBench does not look
    with pytest.raises(AttributeError, match="hook_name|hook_layer"):
        _run_core(plain, model)
    with pytest.raises(AttributeError, match="hook_name|hook_layer"):
        _select_features(plain, model)


@pytest.mark.parametrize("arch", ["standard", "orthosae_grouped"])
def test_load_for_saebench_runs_core_and_unlearning_selection(tmp_path, model, arch):
    from orthosae.train.export import load_for_saebench

    run_dir, _ = _export(tmp_path, arch, model)
    sae = load_for_saebench(run_dir, "cpu")
    assert type(sae).__name__ == ("StandardSAE" if arch == "standard" else "OrthoSAEGroupedSAE")
    assert (sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.hook_head_index) == (HOOK, LAYER, None)
    assert sae.cfg.model_name == "tiny-ht" and sae.cfg.context_size == CTX and sae.cfg.architecture_str == arch
    assert sae.cfg.metadata.hook_layer == LAYER
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(S), rtol=0, atol=1e-5)  # SAEBench's unit-norm check

    ours, _ = load_sae(run_dir)  # the reference: our own loader, no sae_lens
    store = TokenStore()
    with torch.no_grad():
        batches = [
            model.run_with_cache(store.get_batch_tokens(3), names_filter=HOOK)[1][HOOK].reshape(-1, D) for _ in range(2)
        ]
    x = torch.cat(batches)
    with torch.no_grad():
        f, xh = ours.encode(x), ours(x)

    metrics, feats = _run_core(sae, model)
    assert metrics["sparsity"]["l0"] == pytest.approx((f > 0).sum(-1).float().mean().item(), rel=1e-5)
    assert metrics["reconstruction_quality"]["cossim"] == pytest.approx(
        torch.nn.functional.cosine_similarity(x, xh, dim=-1).mean().item(), rel=1e-4
    )
    # SAEBench's "mse": per-token squared error divided by the tokens in its batch
    assert metrics["reconstruction_quality"]["mse"] == pytest.approx(
        (x - xh).pow(2).sum(-1).mean().item() / (3 * CTX), rel=1e-4
    )
    for k in ("kl_div_score", "kl_div_with_sae"):
        assert np.isfinite(metrics["model_behavior_preservation"][k]), k
    assert np.isfinite(metrics["model_performance_preservation"]["ce_loss_score"])
    np.testing.assert_allclose(feats["feature_density"], (f > 0).float().mean(0).numpy(), atol=1e-6)
    assert len(feats["encoder_norm"]) == S

    forget, retain, top = _select_features(sae, model)
    with torch.no_grad():  # reference: firing rates with BOS masked, from our loader
        want = []
        for seed in (7, 8):
            t = _tokens(seed, 6)
            acts = model.run_with_cache(t, names_filter=HOOK)[1][HOOK]
            fired = (ours.encode(acts) > 0) & (t != BOS)[..., None]
            want.append((fired.sum((0, 1)).float() / (t != BOS).sum()).numpy())
    np.testing.assert_allclose(forget, want[0], atol=1e-6)
    np.testing.assert_allclose(retain, want[1], atol=1e-6)
    assert len(top) > 0 and all(retain[top] < 0.3) and all(np.diff(forget[top]) <= 0)

    # SAEBench's clamp intervention hooks sae.cfg.hook_name on the model
    tokens = _tokens(9, 2)
    with torch.no_grad():
        before = model(tokens)
        ul_metrics.modify_model(
            model,
            sae,
            intervention_method="clamp_feature_activation",
            features_to_ablate=[int(i) for i in top[:4]],
            multiplier=20.0,
        )
        try:
            after = model(tokens)
        finally:
            model.reset_hooks()
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


def test_load_for_saebench_errors(tmp_path, model):
    from orthosae.train.export import load_for_saebench

    with pytest.raises(ExportError, match="missing"):
        load_for_saebench(tmp_path / "nope")
    save_sae(make_sae(RUNS["standard"], D), tmp_path, scale=1.0, extra_cfg={"model_name": "tiny-ht"})
    with pytest.raises(ExportError, match="no hook_name") as e:
        load_for_saebench(tmp_path)
    assert str(tmp_path) in str(e.value)
