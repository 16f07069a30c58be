"""An export names its model and hook as SAELens / TransformerLens do, and lines up with them.

`train/sae_lens_names.py` gives cfg.json's `model_name`, `hook_name` and
`model_from_pretrained_kwargs`. Checked here against TransformerLens' and SAELens' own tables, and
for three families (GPT-NeoX as Pythia, GPT-2, Llama) end to end without a download: a tiny
random model of the family, converted to a TransformerLens `HookedTransformer` the way
`from_pretrained` does it, gives at the export's `hook_name` the rows the harvest's capture stores,
and the SAE that `sae_lens.SAE.load_from_disk` returns encodes both alike.
"""

import json

import pytest
import torch

from orthosae.common.capture import residual_after_block
from orthosae.common.config import RunConfig
from orthosae.train.export import load_sae, save_sae
from orthosae.train.sae import make_sae
from orthosae.train.sae_lens_names import sae_lens_metadata, sae_lens_model_name
from tests._families import FAMILIES, VOCAB, D, save_tiny_family

LAYER = 1
IDS = torch.randint(4, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))


def test_model_names_are_the_ones_transformer_lens_resolves_to_the_hub_id():
    loading = pytest.importorskip("transformer_lens.loading_from_pretrained")
    checked = 0
    for official in loading.OFFICIAL_MODEL_NAMES:
        name = sae_lens_model_name(official)
        if name != official:  # a short alias: it must lead TransformerLens back to the same model
            assert loading.get_official_model_name(name) == official, official
            checked += 1
    assert checked >= 70  # every EleutherAI, google and facebook model, and gpt2
    for family, (hub_id, _) in FAMILIES.items():  # the families' hub ids: short alias or themselves
        name = sae_lens_model_name(hub_id)  # (the hub ignores case: EleutherAI/gpt-j-6b is TL's gpt-j-6B)
        assert name == hub_id or loading.get_official_model_name(name).lower() == hub_id.lower(), family
    assert sae_lens_model_name("/data/models/my-llama") == "/data/models/my-llama"
    # the embedded GGUF build: named as the Hub model it is built from, which TransformerLens loads
    assert sae_lens_model_name("embedded:gemma-3-270m") == "gemma-3-270m"
    assert loading.get_official_model_name("gemma-3-270m") == "google/gemma-3-270m"


def test_names_match_saelens_own_releases():
    """SAEBench's Pythia-70M SAEs, Joseph Bloom's GPT-2 small SAEs and Gemma Scope, as SAELens lists them."""
    directory = pytest.importorskip("sae_lens.loading.pretrained_saes_directory")
    releases = directory.get_pretrained_saes_directory()
    for release, hub_id in (
        ("sae_bench_pythia70m_sweep_standard_ctx128_0712", "EleutherAI/pythia-70m-deduped"),
        ("gpt2-small-res-jb", "gpt2"),
        ("gemma-scope-2b-pt-res", "google/gemma-2-2b"),
    ):
        assert releases[release].model == sae_lens_model_name(hub_id), release
    pythia = releases["sae_bench_pythia70m_sweep_standard_ctx128_0712"].saes_map
    for layer in (3, 4):  # its SAE ids are the hook name plus the trainer
        hook = sae_lens_metadata("EleutherAI/pythia-70m-deduped", layer)["hook_name"]
        assert any(sae_id.startswith(hook + "__") for sae_id in pythia), layer


def _hooked_transformer(model_dir, hf_model, tokenizer, **kwargs):
    """`HookedTransformer.from_pretrained` without its hub lookup: the same config conversion,
    state dict conversion and weight processing (fold_ln, center_unembed, fold_value_biases,
    center_writing_weights unless kwargs say otherwise) on a local model."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    cfg = loading.get_pretrained_model_config(str(model_dir), fold_ln=True, device="cpu")
    state = loading.get_pretrained_state_dict(str(model_dir), cfg, hf_model=hf_model)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(
        state,
        fold_ln=True,
        center_unembed=True,
        fold_value_biases=True,
        center_writing_weights=kwargs.get("center_writing_weights", True),
    )
    return model.eval()


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "llama"])
def test_export_lines_up_with_transformer_lens(tmp_path, family):
    sae_lens = pytest.importorskip("sae_lens")
    loading = pytest.importorskip("transformer_lens.loading_from_pretrained")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub_id = FAMILIES[family][0]
    # a directory name without "llama" / "gemma": TransformerLens picks those architectures by name
    model_dir = save_tiny_family(family, tmp_path / "tiny")
    if family == "gpt2":  # TransformerLens reads GPT2Config.n_ctx, which transformers 5 no longer sets
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}))
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    torch.manual_seed(0)
    sae = make_sae(RunConfig.of("baseline", d_sae=64), D)
    save_sae(sae, tmp_path / "run", scale=0.5, extra_cfg=sae_lens_metadata(hub_id, LAYER))
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "run")
    meta = theirs.cfg.metadata
    assert loading.get_official_model_name(meta.model_name) == hub_id
    assert (meta.hook_name, meta.hook_layer) == (f"blocks.{LAYER}.hook_resid_post", LAYER)

    tl = _hooked_transformer(model_dir, hf, tokenizer, **meta.model_from_pretrained_kwargs)
    with torch.no_grad():
        _, cache = tl.run_with_cache(IDS, names_filter=meta.hook_name)
        rows = residual_after_block(hf, LAYER, IDS)
        torch.testing.assert_close(cache[meta.hook_name], rows, rtol=0, atol=1e-6)
        ours, _ = load_sae(tmp_path / "run")
        torch.testing.assert_close(theirs.encode(cache[meta.hook_name]), ours.encode(rows), rtol=1e-4, atol=1e-5)
        if family != "llama":  # LayerNorm models: TransformerLens' default would centre the stream
            _, default = _hooked_transformer(model_dir, hf, tokenizer).run_with_cache(IDS, names_filter=meta.hook_name)
            assert not torch.allclose(default[meta.hook_name], rows, atol=1e-3)
