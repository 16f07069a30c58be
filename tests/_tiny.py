"""The tiny random-weight model the tests load like a hub model (offline, built in a second)."""

from pathlib import Path

import torch

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma


def build_tiny_model(out_dir: Path, d_model: int = 64, n_layers: int = 2, vocab: int = 512, seed: int = 0) -> Path:
    """Write a random-weight Gemma2 model and a byte-level tokenizer that `load_model` can load."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = byte_tokenizer()
    if len(tokenizer) > vocab:
        raise ValueError(f"tiny model: vocab {vocab} < tokenizer size {len(tokenizer)}")
    config = Gemma2Config(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        intermediate_size=2 * d_model,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=d_model // 2,
        query_pre_attn_scalar=d_model // 2,
        max_position_embeddings=1024,
        sliding_window=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic without touching the caller's RNG
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def byte_tokenizer():
    """Gemma-like special ids, then the 256 byte-level symbols; no merges, so no training needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    symbols = _SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Like Gemma, plain encode() prepends <bos>; corpora.tokenize_corpus asks for no specials.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
