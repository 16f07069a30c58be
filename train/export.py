"""Export trained SAEs in the SAELens on-disk layout, load them back, and register with sae_lens.

Layout (``run_dir/``): ``sae_weights.safetensors`` + ``cfg.json``, each written atomically
(temporary file in the same directory + ``os.replace``; weights first, cfg last).

Tensors: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``; the
grouped SAE adds ``group_bias [G, d_in]``, ``groups [d_sae]`` (int64) and ``tau`` (scalar: π's τ). Training ran on
x_n = scale·x; the scale is folded in so the saved SAE works on RAW activations:
W_enc' = scale·W_enc, W_dec' = W_dec/scale, b_dec' = b_dec/scale, group_bias' = group_bias/scale
(b_enc unchanged; feature activations are identical, reconstructions are x̂_norm/scale). This is
SAELens' ``fold_activation_norm_scaling_factor``. Decoder rows therefore have norm 1/scale.

cfg.json keys read by sae_lens 6.x: ``architecture`` (baseline/fixed: "standard" for
``activation = "relu"``, "topk" (with ``k``) for topk, "jumprelu" for batchtopk with the learned
threshold as the ``threshold`` tensor, which is how SAELens itself saves BatchTopK SAEs for
inference; adaptive: "orthosae_grouped" with ``activation`` and ``k`` for every activation), ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input`` (true), ``normalize_activations`` ("none": already folded),
``reshape_activations`` ("none"), ``metadata`` (``sae_lens_version``, which makes sae_lens skip
its pre-6.0 conversion, plus any of hook_name/model_name/context_size/... found in ``extra_cfg``;
``load_for_saebench`` copies them onto ``sae.cfg`` for SAEBench), and for the grouped SAE ``n_groups``. Ours:
``activation_scale``, ``orthosae`` (= the run's whole ``RunConfig.to_dict()``: every setting under
its ``pipeline.toml`` name, what ``load_sae`` rebuilds from),
and the caller's ``extra_cfg`` keys (top level; a key that collides with the above is an error).

Using an export elsewhere:

- sae_lens, baseline/fixed: ``sae_lens.SAE.load_from_disk(run_dir)`` (a ``StandardSAE``).
- sae_lens, adaptive: ``from train.export import register_with_sae_lens; register_with_sae_lens();
  sae_lens.SAE.load_from_disk(run_dir)`` returns an ``OrthoSAEGroupedSAE`` (``train/sae/adaptive.py``) whose ``decode`` adds
  the per-token group bias. ``fold_W_dec_norm()`` works (decoder norms are uniform, 1/scale, so
  the group-bias mix π is unchanged) and raises if norms are not uniform.
- SAEBench (sae-bench 0.6.0): ``load_for_saebench(run_dir, device)``. sae_lens 6 keeps
  hook_name/hook_layer/model_name/... in ``cfg.metadata``, but SAEBench's metric functions read
  them as ``sae.cfg.hook_name``, ``sae.cfg.hook_layer``, ... (AttributeError on a plain
  ``load_from_disk`` object; only its ``run_eval`` entry points patch the cfg themselves). The
  helper registers our grouped architecture, loads through sae_lens, folds the decoder norms
  (SAEBench assumes unit-norm decoder rows) and copies those fields onto ``sae.cfg``. Our
  ``load_sae`` objects have encode/decode and the weights but no sae_lens ``cfg``.
- Without sae_lens: ``load_sae(run_dir) -> (sae, cfg)``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from orthosae.common.config import OrthoConfig, RunConfig, TrainConfig
from orthosae.common.errors import UserError, write_tensors

from .digests import write_atomic
from .sae import SAE, is_grouped, make_sae
from .sae.adaptive import GROUPED_ARCH, sae_lens_classes
from .sae.base import dtype_name
from .sae.baseline import fold_sae_lens_decoder_norms

WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"
DEFAULT_SAE_LENS_FORMAT = "6.0.0"
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "context_size",
    "prepend_bos",
    "dataset_path",
    "dataset_trust_remote_code",
    "model_from_pretrained_kwargs",
    "seqpos_slice",
    "exclude_special_tokens",
    "neuronpedia_id",
)


class ExportError(UserError, RuntimeError):
    """A run directory that cannot be written or read as an exported SAE (one line, names the path)."""


def sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:
        return DEFAULT_SAE_LENS_FORMAT


@torch.no_grad()
def export_tensors(sae: SAE, scale: float) -> dict[str, torch.Tensor]:
    """The raw-activation tensors of ``sae`` (scale folded in, computed in float32 or better)."""
    ct = torch.promote_types(sae.dtype, torch.float32)
    out = {
        "W_enc": sae.W_enc.to(ct) * scale,
        "W_dec": sae.W_dec.to(ct) / scale,
        "b_enc": sae.b_enc.to(ct),
        "b_dec": sae.b_dec.to(ct) / scale,
    }
    if is_grouped(sae):
        out["group_bias"] = sae.group_bias.to(ct) / scale
    if getattr(sae, "activation", "relu") == "batchtopk":
        out["threshold"] = sae.threshold.to(ct)  # on pre-activations, which the fold leaves unchanged
    out = {k: v.to(sae.dtype).detach().cpu().contiguous() for k, v in out.items()}
    if is_grouped(sae):
        out["tau"] = sae.tau.detach().to(sae.dtype).cpu().reshape(())  # f is unchanged by the folding
        out["groups"] = sae.groups.detach().to(torch.int64).cpu().contiguous()
    return out


def save_sae(
    sae: SAE,
    run_dir: str | Path,
    *,
    scale: float,
    extra_cfg: dict[str, Any] | None = None,
    stamp: str | None = None,
    run_dict: dict | None = None,
) -> Path:
    """Write ``sae_weights.safetensors`` + ``cfg.json`` (SAELens layout) into ``run_dir``; returns it.
    ``stamp`` (cfg.json's sae_lens_version) / ``run_dict``: what a repair restores (the export's own stamp and run
    settings, as recorded in the checkpoint), instead of today's installed sae-lens and settings."""
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ExportError(f"save_sae: scale must be a positive finite number, got {scale} ({run_dir})")
    run_dir = Path(run_dir)
    extra = dict(extra_cfg or {})
    version = stamp or sae_lens_version()
    metadata = {"sae_lens_version": version, "sae_lens_training_version": version}
    metadata.update({k: extra[k] for k in METADATA_KEYS if k in extra})
    metadata.update(extra.pop("metadata", None) or {})
    cfg: dict[str, Any] = {
        "architecture": sae.architecture,
        "d_in": sae.d_model,
        "d_sae": sae.d_sae,
        "dtype": dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        "activation_scale": scale,
        "orthosae": run_dict if run_dict is not None else sae.cfg.to_dict(),
    }
    if is_grouped(sae):
        cfg["n_groups"] = sae.n_groups
        cfg["activation"] = sae.activation  # our grouped class reads these; SAELens' topk/jumprelu need none
    if sae.activation == "topk":
        cfg["k"] = sae.k
    clash = sorted(set(extra) & set(cfg))
    if clash:
        raise ExportError(f"save_sae: extra_cfg may not set reserved key(s) {clash} ({run_dir})")
    cfg.update(extra)
    try:
        text = json.dumps(cfg, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ExportError(f"save_sae: cfg for {run_dir} is not plain JSON: {e}") from None
    tensors = export_tensors(sae, scale)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / WEIGHTS_FILENAME, lambda p: write_tensors(tensors, p, save_file))
    write_atomic(run_dir / CFG_FILENAME, lambda p: p.write_text(text + "\n"))
    return run_dir


def load_sae(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[SAE, dict[str, Any]]:
    """Our own loader (no sae_lens): ``(sae, cfg)`` with raw-activation weights (scale folded in).

    The returned SAE is for inference: its decoder rows have norm 1/scale, so do not train it
    further with ``on_step_end`` (which renormalises). A plain SAELens "standard" export without
    our ``orthosae`` key loads as a baseline ``SAE`` with ``l1_coefficient = 0``.
    """
    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / CFG_FILENAME, run_dir / WEIGHTS_FILENAME
    if not run_dir.is_dir():
        raise ExportError(f"not an exported SAE: {run_dir} is not a directory")
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ExportError(f"not an exported SAE: {p} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("orthosae"):
            run = RunConfig.from_dict(cfg["orthosae"])
        elif cfg.get("architecture", "standard") == "standard":
            run = RunConfig(
                name=run_dir.name,
                type="baseline",
                train=TrainConfig(d_sae=cfg["d_sae"], l1_coefficient=0.0),
                ortho=OrthoConfig(),
            )
        else:
            raise ValueError(f"architecture {cfg.get('architecture')!r} without an 'orthosae' section")
        sae = make_sae(run, cfg["d_in"], dtype=cfg.get("dtype", "float32"), device=device)
        tensors = load_file(str(w_path), device=str(device))
    except Exception as e:  # noqa: BLE001 - one line naming the path, whatever went wrong
        raise ExportError(f"cannot load SAE from {run_dir}: {type(e).__name__}: {e}".replace("\n", " ")) from None
    expected = (
        {"W_enc", "W_dec", "b_enc", "b_dec"}
        | ({"group_bias", "groups", "tau"} if is_grouped(sae) else set())
        | ({"threshold"} if sae.activation == "batchtopk" else set())
    )
    if set(tensors) != expected:
        raise ExportError(f"cannot load SAE from {run_dir}: tensors {sorted(tensors)} != expected {sorted(expected)}")
    with torch.no_grad():
        for name, t in tensors.items():
            target = getattr(sae, name)
            if t.shape != target.shape:
                raise ExportError(
                    f"cannot load SAE from {run_dir}: {name} has shape {tuple(t.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(t.to(target.dtype))
    return sae, cfg


# ---------------------------------------------------------------- sae_lens integration (optional)


def register_with_sae_lens() -> tuple[type, type]:
    """Register architecture "orthosae_grouped" with sae_lens (idempotent); returns (SAE class, config class).

    Imports sae_lens only when called. The classes are the grouped SAE's own, defined beside it
    (``train.sae.adaptive.OrthoSAEGroupedSAE`` / ``OrthoSAEGroupedConfig``).
    """
    from sae_lens import register_sae_class
    from sae_lens.registry import SAE_CLASS_REGISTRY

    if GROUPED_ARCH in SAE_CLASS_REGISTRY:
        return SAE_CLASS_REGISTRY[GROUPED_ARCH]
    sae_cls, cfg_cls = sae_lens_classes()
    register_sae_class(GROUPED_ARCH, sae_cls, cfg_cls)
    return sae_cls, cfg_cls


# What SAEBench 0.6.0 reads from ``sae.cfg`` that sae_lens 6 keeps in ``cfg.metadata``: the same
# fields, with the same defaults, that its own ``general_utils._standardize_sae_cfg`` copies over.
SAEBENCH_CFG_FIELDS = (
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "model_name",
    "context_size",
    "prepend_bos",
    "exclude_special_tokens",
    "dataset_trust_remote_code",
    "model_from_pretrained_kwargs",
)


def load_for_saebench(run_dir: str | Path, device: torch.device | str = "cpu", *, fold_decoder_norms: bool = True):
    """An exported SAE as a sae_lens object that SAEBench's metric functions accept.

    Registers "orthosae_grouped" with sae_lens, loads ``run_dir`` with ``sae_lens.SAE.load_from_disk``,
    folds the decoder norms into the encoder (``fold_W_dec_norm``; decoder rows become unit norm,
    reconstructions unchanged, feature activations scaled by the old norm 1/scale) unless
    ``fold_decoder_norms=False``, and copies ``SAEBENCH_CFG_FIELDS`` from ``cfg.metadata`` onto
    ``sae.cfg`` (plus ``cfg.architecture_str``), as SAEBench 0.6.0 reads ``sae.cfg.hook_name``,
    ``sae.cfg.hook_layer``, ``sae.cfg.hook_head_index``, ``sae.cfg.model_name``, ... directly.
    ``hook_layer`` missing from the metadata is taken from a ``blocks.<L>.`` hook name. Requires
    sae_lens; raises ``ExportError`` (one line naming the path) when the export cannot be loaded
    or has no hook_name (save it with ``extra_cfg={"hook_name": ..., "model_name": ...}``).
    """
    import sae_lens

    run_dir = Path(run_dir)
    for p in (run_dir / CFG_FILENAME, run_dir / WEIGHTS_FILENAME):
        if not p.is_file():
            raise ExportError(f"not an exported SAE: {p} is missing")
    register_with_sae_lens()
    try:
        sae = sae_lens.SAE.load_from_disk(run_dir, device=str(device))
        if fold_decoder_norms:
            fold_sae_lens_decoder_norms(sae)
    except Exception as e:  # noqa: BLE001 - one line naming the path, whatever went wrong
        raise ExportError(
            f"cannot load SAE from {run_dir} with sae_lens: {type(e).__name__}: {e}".replace("\n", " ")
        ) from None
    cfg, meta = sae.cfg, sae.cfg.metadata
    values = {k: getattr(meta, k, None) for k in SAEBENCH_CFG_FIELDS}
    if not values["hook_name"]:
        raise ExportError(f"cannot use {run_dir} with SAEBench: cfg.json metadata has no hook_name")
    if values["hook_layer"] is None:
        m = re.search(r"blocks\.(\d+)\.", str(values["hook_name"]))
        if m is None:
            raise ExportError(
                f"cannot use {run_dir} with SAEBench: no hook_layer in cfg.json metadata "
                f"and none in hook_name {values['hook_name']!r}"
            )
        values["hook_layer"] = int(m.group(1))
    values["model_from_pretrained_kwargs"] = values["model_from_pretrained_kwargs"] or {}
    for k, v in values.items():
        setattr(cfg, k, v)
        setattr(meta, k, v)
    cfg.architecture_str = cfg.architecture() if callable(cfg.architecture) else cfg.architecture
    return sae
