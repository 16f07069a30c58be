"""Tiny random-weight models of every decoder-only family the tests cover, from each family's own
`transformers` config (no download): 3 blocks, d_model 32, a 272-token vocabulary (room for the
byte-level test tokenizer's 260)."""

from __future__ import annotations

import torch
import transformers as T

D, N_LAYERS, VOCAB = 32, 3, 272
_ATTN = dict(num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)
# family -> (the hub model it stands for, its config); the hub ids are those the field trains SAEs on
FAMILIES = {
    "gpt_neox": (
        "EleutherAI/pythia-70m-deduped",
        lambda: T.GPTNeoXConfig(
            hidden_size=D,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=2,
            intermediate_size=64,
            rotary_pct=0.25,
            max_position_embeddings=64,
        ),
    ),
    "gpt2": ("gpt2", lambda: T.GPT2Config(n_embd=D, n_layer=N_LAYERS, n_head=2, n_positions=64)),
    "gemma": (
        "google/gemma-2b",
        lambda: T.GemmaConfig(hidden_size=D, num_hidden_layers=N_LAYERS, head_dim=16, **_ATTN),
    ),
    "gemma2": (
        "google/gemma-2-2b",
        lambda: T.Gemma2Config(hidden_size=D, num_hidden_layers=N_LAYERS, head_dim=16, sliding_window=8, **_ATTN),
    ),
    "gemma3": (
        "google/gemma-3-270m",
        lambda: T.Gemma3TextConfig(hidden_size=D, num_hidden_layers=N_LAYERS, head_dim=16, sliding_window=8, **_ATTN),
    ),
    # multimodal Gemma 3 (4B and up): the text blocks under model.language_model, beside a vision
    # tower with as many blocks here, so only the known path tells them apart
    "gemma3_mm": (
        "google/gemma-3-4b-pt",
        lambda: T.Gemma3Config(
            text_config=T.Gemma3TextConfig(
                hidden_size=D, num_hidden_layers=N_LAYERS, head_dim=16, sliding_window=8, **_ATTN
            ),
            vision_config=T.SiglipVisionConfig(
                hidden_size=D,
                intermediate_size=64,
                num_hidden_layers=N_LAYERS,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
            ),
            mm_tokens_per_image=4,
            boi_token_index=VOCAB - 3,
            eoi_token_index=VOCAB - 2,
            image_token_index=VOCAB - 1,
        ),
    ),
    "llama": ("meta-llama/Llama-3.1-8B", lambda: T.LlamaConfig(hidden_size=D, num_hidden_layers=N_LAYERS, **_ATTN)),
    "qwen2": ("Qwen/Qwen2.5-0.5B", lambda: T.Qwen2Config(hidden_size=D, num_hidden_layers=N_LAYERS, **_ATTN)),
    "qwen3": (
        "Qwen/Qwen3-0.6B",
        lambda: T.Qwen3Config(hidden_size=D, num_hidden_layers=N_LAYERS, head_dim=16, **_ATTN),
    ),
    "mistral": (
        "mistralai/Mistral-7B-v0.1",
        lambda: T.MistralConfig(hidden_size=D, num_hidden_layers=N_LAYERS, **_ATTN),
    ),
    "opt": (
        "facebook/opt-125m",
        lambda: T.OPTConfig(
            hidden_size=D,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=2,
            ffn_dim=64,
            word_embed_proj_dim=D,
            max_position_embeddings=64,
        ),
    ),
    "phi": ("microsoft/phi-2", lambda: T.PhiConfig(hidden_size=D, num_hidden_layers=N_LAYERS, **_ATTN)),
    "phi3": (
        "microsoft/Phi-3-mini-4k-instruct",
        lambda: T.Phi3Config(
            hidden_size=D, num_hidden_layers=N_LAYERS, pad_token_id=0, bos_token_id=1, eos_token_id=2, **_ATTN
        ),
    ),
    "olmo2": (
        "allenai/OLMo-2-0425-1B",
        lambda: T.Olmo2Config(
            hidden_size=D, num_hidden_layers=N_LAYERS, pad_token_id=0, bos_token_id=1, eos_token_id=2, **_ATTN
        ),
    ),
    "stablelm": (
        "stabilityai/stablelm-2-1_6b",
        lambda: T.StableLmConfig(hidden_size=D, num_hidden_layers=N_LAYERS, **_ATTN),
    ),
    "starcoder2": (
        "bigcode/starcoder2-3b",
        lambda: T.Starcoder2Config(hidden_size=D, num_hidden_layers=N_LAYERS, **_ATTN),
    ),
    "gptj": (
        "EleutherAI/gpt-j-6b",
        lambda: T.GPTJConfig(n_embd=D, n_layer=N_LAYERS, n_head=2, rotary_dim=8, n_positions=64),
    ),
    "gpt_neo": (
        "EleutherAI/gpt-neo-125M",
        lambda: T.GPTNeoConfig(
            hidden_size=D,
            num_layers=N_LAYERS,
            num_heads=2,
            window_size=8,
            max_position_embeddings=64,
            attention_types=[[["global", "local"], 1], [["global"], 1]],
        ),
    ),
    "bloom": ("bigscience/bloom-560m", lambda: T.BloomConfig(hidden_size=D, n_layer=N_LAYERS, n_head=2)),
    "falcon": (
        "tiiuae/falcon-7b",
        lambda: T.FalconConfig(hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=2),
    ),
    "codegen": (
        "Salesforce/codegen-350M-mono",
        lambda: T.CodeGenConfig(n_embd=D, n_layer=N_LAYERS, n_head=2, rotary_dim=8, n_positions=64, n_ctx=64),
    ),
    "gpt_bigcode": (
        "bigcode/gpt_bigcode-santacoder",
        lambda: T.GPTBigCodeConfig(n_embd=D, n_layer=N_LAYERS, n_head=2, n_positions=64),
    ),
    # not on a known path: found by the general rule (the one ModuleList of num_hidden_layers blocks)
    "mpt": ("mosaicml/mpt-7b", lambda: T.MptConfig(d_model=D, n_layers=N_LAYERS, n_heads=2, max_seq_len=64)),
}


def tiny_config(family: str):
    config = FAMILIES[family][1]()
    for c in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        c.vocab_size = VOCAB
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # defaults beyond the tiny vocabulary
            value = getattr(c, key, None)
            if isinstance(value, int) and value >= VOCAB:
                setattr(c, key, 0)
    return config


def tiny_family_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A random-weight float32 model of ``family`` in eval mode, the same for a given seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = tiny_config(family)
        if family == "gemma3_mm":
            model = T.Gemma3ForConditionalGeneration(config)
        else:
            model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval().requires_grad_(False)


def save_tiny_family(family: str, out_dir, *, bos: bool = True):
    """``tiny_family_model(family)`` saved with the byte-level test tokenizer, loadable by
    ``common.model.load_model``; ``bos=False`` saves a tokenizer without a BOS token (as Qwen's)."""
    from tests._tiny import byte_tokenizer

    tokenizer = byte_tokenizer()
    if not bos:
        tokenizer.bos_token = None
        tokenizer._tokenizer.post_processor = None  # nothing to prepend
    tiny_family_model(family).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


IDS = torch.randint(4, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))  # a batch of 3 contexts


def family_forward(family: str) -> tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]:
    """(family, its tiny model, the model's own `output_hidden_states` for IDS)."""
    model = tiny_family_model(family)
    with torch.no_grad():
        hidden = model(input_ids=IDS, output_hidden_states=True, use_cache=False).hidden_states
    return family, model, hidden
