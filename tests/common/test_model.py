"""Model loading: the tiny test model offline, and (slow) the embedded Gemma 3 270M."""

import hashlib
import time

import pytest
import torch
from torch import nn

from orthosae.common.model import (
    EMBEDDED_GEMMA,
    ModelError,
    decoder_layers,
    load_model,
    load_tokenizer,
    pick_device,
    torch_dtype,
)
from tests._tiny import build_tiny_model


def test_tiny_model_loads_like_a_hub_model(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    assert (lm.n_layers, lm.d_model) == (2, 64)
    assert len(decoder_layers(lm.model)) == 2
    assert lm.model_id == str(tiny_model_dir) and lm.file_sha256 is None
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    tok = lm.tokenizer
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == ("<bos>", 2, 1, 0)
    ids = tok.encode("héllo, world")
    assert ids[0] == 2 and tok.decode(ids[1:]) == "héllo, world"
    logits = lm.model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512) and torch.isfinite(logits).all()


def test_tiny_model_is_deterministic(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(tiny_model_dir / name)


def test_dtype_and_device(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert torch_dtype("float16") == torch.float16
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ModelError, match="dtype 'int8'"):
        torch_dtype("int8")


def test_load_errors_name_the_model(tmp_path):
    with pytest.raises(ModelError, match=r"model '.*nowhere'") as err:
        load_model(str(tmp_path / "nowhere"), device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match=r"model '.*nowhere': loading the tokenizer failed"):
        load_tokenizer(str(tmp_path / "nowhere"))


def test_tokenizer_alone_is_the_models(tiny_model_dir):
    alone, lm = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), device="cpu")
    assert alone.get_vocab() == lm.tokenizer.get_vocab() and alone.bos_token_id == lm.tokenizer.bos_token_id


def test_decoder_layers_gpt2_style_and_unknown():
    gpt2_like = nn.Module()
    gpt2_like.transformer = nn.Module()
    gpt2_like.transformer.h = nn.ModuleList([nn.Linear(2, 2)] * 3)
    assert len(decoder_layers(gpt2_like)) == 3
    with pytest.raises(ModelError, match="decoder layers"):
        decoder_layers(nn.Linear(2, 2))


@pytest.mark.slow
def test_embedded_gemma_converts_once_then_loads_fast():
    """First call converts the GGUF (~1 min, cached under ~/.cache/orthosae); later ones take seconds."""
    lm = load_model(EMBEDDED_GEMMA, device="cpu")
    assert (lm.n_layers, lm.d_model, len(decoder_layers(lm.model))) == (18, 640, 18)
    assert lm.file_sha256 and len(lm.file_sha256) == 64 and lm.revision is None
    assert lm.tokenizer.bos_token_id == 2
    start = time.perf_counter()
    again = load_model(EMBEDDED_GEMMA, device="cpu")
    assert time.perf_counter() - start < 30
    ids = again.tokenizer("The capital of France is the city of", return_tensors="pt")["input_ids"]
    next_id = again.model(ids).logits[0, -1].argmax().item()
    assert again.tokenizer.decode([next_id]).strip() == "Paris"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
