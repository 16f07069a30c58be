"""An exported run in EleutherAI sparsify's layout: ``<hookpoint>/cfg.json`` + ``sae.safetensors``,
which ``sparsify.SparseCoder.load_from_disk`` (and ``load_many`` / ``load_from_hub``) read.

sparsify's coder is ``top_acts, top_indices = topk(relu(encoder(x − b_dec)), k)``, ``x̂ = top_acts ·
W_dec[top_indices] + b_dec``, with ``encoder.weight = W_encᵀ`` ``[num_latents, d_in]``. orthosae's
encoder also subtracts b_dec first, so the weights carry over as they are (raw-activation weights:
the training scale is folded in). A ``topk`` run keeps its k; a ``relu`` run is exact with ``k =
d_sae`` (the top d_sae of relu(·) are all of them). A ``batchtopk`` run (a learned threshold at
inference) and the grouped SAE (its per-token group decoder bias) have no sparsify form: refused
with one line. The hookpoint is the block's module path below sparsify's ``base_model``
(``layers.<L>``, the residual stream after block L, what the harvest stores).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from orthosae.common.errors import UserError
from orthosae.train.export import load_sae
from orthosae.train.sae import is_grouped

WEIGHTS = "sae.safetensors"


class SparsifyExportError(UserError):
    """A run sparsify's coder cannot represent (one line naming it)."""


def hookpoint(cfg: dict) -> str:
    """sparsify's name of the module an SAE reads: ``layers.<L>`` (the output of block L)."""
    return f"layers.{cfg.get('metadata', {}).get('hook_layer', cfg.get('hook_layer'))}"


def save_sparsify(run_dir: str | Path, dest: str | Path) -> Path:
    """Write the run's SAE to ``dest/<hookpoint>/``; returns that folder."""
    run_dir = Path(run_dir)
    sae, cfg = load_sae(run_dir)
    activation = sae.cfg.train.activation
    if is_grouped(sae):
        raise SparsifyExportError(
            f"{run_dir}: the grouped SAE decodes with per-token group biases, which "
            "sparsify's coder has no place for; export it in SAELens' layout"
        )
    if activation == "batchtopk":
        raise SparsifyExportError(
            f"{run_dir}: a batchtopk SAE encodes with a learned threshold at inference, "
            "which sparsify's top-k coder cannot express"
        )
    k = sae.cfg.train.k if activation == "topk" else sae.d_sae  # relu: every positive latent
    folder = Path(dest) / hookpoint(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "encoder.weight": sae.W_enc.detach().T.contiguous(),
        "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach().contiguous(),
        "b_dec": sae.b_dec.detach(),
    }
    save_file({n: t.float().cpu() for n, t in tensors.items()}, str(folder / WEIGHTS))
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "activation": "topk",
                "expansion_factor": max(1, sae.d_sae // sae.d_model),
                "normalize_decoder": False,
                "num_latents": sae.d_sae,
                "k": k,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": sae.d_model,
                # sparsify drops keys it does not know: where the SAE came from, for a reader
                "orthosae": {
                    "run_name": cfg.get("run_name"),
                    "run_type": cfg.get("run_type"),
                    "activation": activation,
                    "model_name": cfg.get("metadata", {}).get("model_name"),
                    "hook_name": cfg.get("metadata", {}).get("hook_name"),
                },
            },
            indent=1,
        )
    )
    return folder
