"""SAEBench 0.6.0's own runners (core ``multiple_evals``, sparse probing ``run_eval``) on an exported SAE,
offline, through eval/saebench_runner.py.

TransformerLens hardcodes gemma-3-270m's shape (18 blocks, d_model 640), so a tiny random model cannot
stand under that name; the tiny model here is a GPT-2 (TransformerLens reads GPT-2's shape from the
Hub config, here the seeded cache's), 3 blocks, d_model 32, the byte-level test tokenizer (one token
per byte). The reference figures come from the transformers model's own hidden states and our own
loader (no TransformerLens, no sae_lens), on the tokens we build by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("sae_bench.evals.core.main", reason="sae_bench not installed")

from orthosae.common.config import RunConfig  # noqa: E402
from orthosae.eval import saebench_runner as sr  # noqa: E402
from orthosae.train.export import load_sae, save_sae  # noqa: E402
from orthosae.train.sae import make_sae  # noqa: E402
from orthosae.train.sae_lens_names import sae_lens_metadata  # noqa: E402
from orthosae.train.trainer import Trainer  # noqa: E402
from tests._families import D, save_tiny_family  # noqa: E402
from tests._tiny import byte_tokenizer  # noqa: E402

LAYER, CTX, BOS, S, SCALE = 1, 16, 2, 48, 0.5
BATCH, N_BATCHES = 3, 2
RUN = RunConfig.of("baseline", d_sae=S, l1_coefficient=1e-3, seed=3, lr=3e-2, lr_warmup_steps=0, l1_warmup_steps=0)


def _core_texts() -> list[str]:
    """BATCH * N_BATCHES texts of CTX - 1 bytes: SAELens packs each into one context, BOS first."""
    rng = np.random.default_rng(0)
    return ["".join(chr(c) for c in rng.integers(97, 123, CTX - 1)) for _ in range(BATCH * N_BATCHES)]


def _probe_texts(n: int, offset: int) -> dict[str, list[str]]:
    """Five classes whose texts repeat a class's own letters: separable by any model's mean activation."""
    rng = np.random.default_rng(offset)
    letters = {"alpha": "abc", "beta": "xyz", "gamma": "mno", "delta": "def", "eps": "rst"}
    return {c: ["".join(rng.choice(list(ls), 20)) + f" {offset + i}" for i in range(n)] for c, ls in letters.items()}


def _hidden(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[LAYER + 1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny GPT-2 saved as a local model folder and an SAE trained a few steps on its block-1 stream."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("saebench_runner")
    model_dir = save_tiny_family("gpt2", root / "model")
    config = json.loads((model_dir / "config.json").read_text())  # the Hub's gpt2 config.json has n_ctx,
    (model_dir / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}))  # TL reads it
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(4, 260, (12, CTX), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = BOS
    acts = _hidden(model, ids)[:, 1:].reshape(-1, D)
    torch.manual_seed(0)
    sae = make_sae(RUN, D)
    sae.init_b_dec(SCALE * acts.mean(0))
    trainer = Trainer(RUN, sae, 100)
    for i in range(12):
        rows = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(i))[:64]]
        trainer.train_step(SCALE * rows, torch.arange(64) < 32)
    extra = {
        **sae_lens_metadata("gpt2", LAYER),
        "context_size": CTX,
        "model_source": str(model_dir),
        "prepend_bos": True,
        "exclude_special_tokens": True,
        "run_name": "baseline",
    }
    save_sae(sae, root / "run", scale=SCALE, extra_cfg=extra)
    return root, model_dir, model


def test_seed_model_cache_layout(tmp_path, exported):
    _, model_dir, _ = exported
    snap = sr.seed_model_cache(tmp_path, "gpt2", model_dir)
    assert snap.parent.parent == tmp_path / "models--gpt2"
    assert (tmp_path / "models--gpt2" / "refs" / "main").read_text() == snap.name
    assert (snap / "config.json").resolve() == (model_dir / "config.json").resolve()
    assert sr.seed_model_cache(tmp_path, "gpt2", model_dir) == snap  # idempotent


def test_probe_rows_map_classes_to_professions():
    rows, mapping = sr.probe_rows({"b": ["x", "y"], "a": ["z", "w", "v"], "e": ["e"], "d": ["d"], "c": ["c"]})
    assert mapping == {"a": "0", "b": "1", "c": "2", "d": "6", "e": "9"}
    assert [(r["hard_text"], r["profession"], r["gender"]) for r in rows[:5]] == [
        ("z", 0, 0),
        ("w", 0, 1),
        ("v", 0, 0),
        ("x", 1, 0),
        ("y", 1, 1),
    ]
    assert [r["profession"] for r in rows[5:]] == [2, 6, 9]
    with pytest.raises(sr.SaebenchError, match="1 classes"):
        sr.probe_rows({"a": ["x"]})


def test_bad_inputs_name_the_path(tmp_path, exported):
    root, model_dir, _ = exported
    with pytest.raises(sr.SaebenchError, match="cfg.json is missing"):
        sr.prepare(tmp_path / "nope", tmp_path / "w", model_dir=model_dir, core_texts=[], probe=None, release="r")
    with pytest.raises(sr.SaebenchError, match="no config.json"):
        sr.seed_model_cache(tmp_path, "gpt2", tmp_path)
    with pytest.raises(sr.SaebenchError, match="'no-such-model'"):
        sr.official_model_name("no-such-model")


def test_saebench_runners_offline(tmp_path, exported):
    root, model_dir, model = exported
    texts = _core_texts()
    plan_path = sr.prepare(
        root / "run",
        tmp_path / "work",
        model_dir=model_dir,
        core_texts=texts,
        probe=(_probe_texts(20, 0), _probe_texts(10, 1000)),
        release="orthosae-baseline",
        core={"n_batches": N_BATCHES, "batch_size_prompts": BATCH},
        probing={"train_size": 40, "test_size": 20, "context_length": 32, "llm_batch_size": 8, "k_values": [1, 2]},
    )
    out = sr.launch(plan_path, timeout=300)
    core, probing = (json.loads(out[e].read_text()) for e in ("core", "sparse_probing"))

    # the reference: [BOS] + the text's bytes per context, the transformers model, our own loader
    tok = byte_tokenizer()
    ids = torch.tensor([[BOS] + tok(t, add_special_tokens=False)["input_ids"] for t in texts])
    x = _hidden(model, ids)[:, 1:].reshape(-1, D)  # BOS masked, as SAEBench's ignore_tokens does
    ours, _ = load_sae(root / "run")
    with torch.no_grad():
        f, xh = ours.encode(x), ours(x)
    m = core["eval_result_metrics"]
    assert m["sparsity"]["l0"] == pytest.approx((f > 0).sum(-1).float().mean().item(), rel=1e-5)
    assert m["reconstruction_quality"]["cossim"] == pytest.approx(
        torch.nn.functional.cosine_similarity(x, xh, dim=-1).mean().item(), rel=1e-4
    )
    resid = (x - xh).pow(2).sum(-1)
    # SAEBench 0.6.0's explained_variance: 1 - E|x - x̂|² / (E|x|² - (mean over dims of E[x_d²])²)
    assert m["reconstruction_quality"]["explained_variance"] == pytest.approx(
        (1 - resid.mean() / (x.pow(2).sum(-1).mean() - x.pow(2).mean(0).mean() ** 2)).item(), rel=1e-4
    )
    assert m["reconstruction_quality"]["explained_variance_legacy"] == pytest.approx(
        np.mean(
            np.concatenate(
                [
                    (1 - r / (b - b.mean(0)).pow(2).sum(-1)).numpy()
                    for r, b in zip(resid.split(BATCH * (CTX - 1)), x.split(BATCH * (CTX - 1)))
                ]
            )
        ),
        rel=1e-4,
    )
    density = np.array([d["feature_density"] for d in core["eval_result_details"]])
    np.testing.assert_allclose(density, (f > 0).float().mean(0).numpy(), atol=1e-6)
    assert m["token_stats"]["total_tokens_eval_sparsity_variance"] == BATCH * N_BATCHES * CTX
    assert core["eval_config"]["dataset"] == str(tmp_path / "work" / "core_texts")
    assert np.isfinite(m["model_performance_preservation"]["ce_loss_with_sae"])

    p = probing["eval_result_metrics"]
    assert probing["eval_config"]["dataset_names"] == [sr.PROBE_DATASET]
    assert set(probing["eval_result_unstructured"][f"{sr.PROBE_DATASET}_results"]["llm_test_accuracy"]) == set(
        sr.PROBE_CLASSES
    )
    assert p["llm"]["llm_test_accuracy"] > 0.9  # the classes differ in every byte
    for key in ("sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy"):
        assert 0.0 <= p["sae"][key] <= 1.0, key
