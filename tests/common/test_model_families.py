"""Every decoder-only family the tests cover: its blocks and final norm are found, and the harvest
stores exactly its own hidden states (end to end through `pipe harvest`).

Tiny random-weight models from each family's `transformers` config (tests/_families.py); the
capture itself, per family and block, is tests/common/test_capture.py.
"""

import pytest
import torch
from torch import nn

from orthosae.common.model import LAYER_PATHS, ModelError, decoder_layers, decoder_layers_path, final_norm
from tests._families import FAMILIES, N_LAYERS, family_forward, tiny_family_model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return family_forward(request.param)


def test_blocks_are_found(family):
    name, model, hidden = family
    assert len(decoder_layers(model)) == N_LAYERS == len(hidden) - 1
    known = decoder_layers_path(model) in LAYER_PATHS
    assert known == (name != "mpt")  # MPT's transformer.blocks: found by the general rule


def test_general_rule_finds_the_one_stack_and_names_the_class_otherwise():
    class Body(nn.Module):
        def __init__(self, n_blocks: int, n_heads: int):
            super().__init__()
            self.config = type("Config", (), {"num_hidden_layers": 3})()
            self.trunk = nn.Module()
            self.trunk.stack = nn.ModuleList(nn.Linear(2, 2) for _ in range(n_blocks))
            self.heads = nn.ModuleList(nn.Linear(2, 2) for _ in range(n_heads))

    model = Body(3, 2)
    assert decoder_layers_path(model) == "trunk.stack" and decoder_layers(model) is model.trunk.stack
    with pytest.raises(
        ModelError,
        match=r"^Body: cannot find its decoder layers \(no ModuleList of "
        r"num_hidden_layers = 3 blocks\)$",
    ):
        decoder_layers(Body(4, 2))
    with pytest.raises(
        ModelError,
        match=r"^Body: cannot tell its decoder layers apart: trunk.stack, "
        r"heads each hold 3 modules",
    ):
        decoder_layers(Body(3, 3))
    with pytest.raises(ModelError, match=r"^Linear: cannot find its decoder layers"):
        decoder_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("family_name, bos", [("gpt_neox", True), ("qwen2", False)])
def test_pipe_harvest_stores_the_hidden_states(tmp_path, family_name, bos):
    """The harvest runner end to end on a saved tiny Pythia, and on a Qwen2 whose tokenizer has no
    BOS (EOS takes its place, as in TransformerLens): every stored row is the model's own hidden
    state of its batch, bit for bit."""
    from transformers import AutoModelForCausalLM

    from orthosae.common.config import load_config
    from orthosae.common.store import StoreReader
    from orthosae.harvest import harvest
    from tests._configs import DOCS
    from tests._families import save_tiny_family

    model_dir = save_tiny_family(family_name, tmp_path / family_name, bos=bos)
    path = tmp_path / "p.toml"
    path.write_text(f"""
[model]
id = "{model_dir}"
device = "cpu"
[harvest]
layer = 1
store = "{tmp_path / "s.zarr"}"
context_length = 16
batch_size = 8
chunk_tokens = 60
storage_dtype = "float32"
[corpora.retain]
source = "file:{DOCS}"
role = "retain"
tokens = 320
[eval]
reports_dir = "{tmp_path / "reports"}"
""")
    cfg = load_config(path)
    harvest(cfg, show_progress=False)
    reader = StoreReader(cfg.harvest.store)
    info = reader.corpora()["retain"]
    assert info.complete and info.n_chunks > 1
    start_id = 2 if bos else 1  # the test tokenizer's <bos>, else its <eos>
    assert f":bos={start_id}:" in reader.meta["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    C, T = info.contexts_per_chunk, 15
    for k in range(info.n_chunks):  # one forward per chunk, as the harvest batches it here
        n = min(C, info.n_contexts - k * C)
        ctx = reader.contexts("retain", k * C, n, bos_token_id=start_id)
        with torch.no_grad():
            hidden = model(ctx, output_hidden_states=True, use_cache=False).hidden_states[2]
        stored = reader.read_rows("retain", k * C * T, (k * C + n) * T)
        assert torch.equal(stored, hidden[:, 1:].reshape(-1, hidden.shape[-1])), f"chunk {k}"


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_browser_final_norm_gain_is_the_norms_elementwise_scale(family_name):
    """`pipe inspect` folds the final norm's gain g into W_U: on a centred row x, norm(x) − bias is
    g ⊙ x times a positive per-row scalar, whatever the norm (LayerNorm with or without bias,
    RMSNorm, Gemma's 1 + weight)."""
    from orthosae.eval.browser_data import final_norm_gain

    model = tiny_family_model(family_name)
    norm = final_norm(model)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
        gain, _ = final_norm_gain(model, 32)
        x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
        x -= x.mean(-1, keepdim=True)
        bias = getattr(norm, "bias", None)
        out = norm(x) - (0 if bias is None else bias)
    cos = torch.nn.functional.cosine_similarity(out, gain * x, dim=-1)
    assert torch.all(cos > 0.9999), (family_name, cos)
