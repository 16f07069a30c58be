"""The names SAELens and TransformerLens give the model and hook an SAE was trained on.

An export's ``cfg.json`` metadata carries ``model_name`` and ``hook_name`` so that
``sae_lens.SAE.load_from_disk`` plus ``HookedTransformer.from_pretrained(model_name,
**model_from_pretrained_kwargs)`` (SAELens, SAEBench) or the same hub model hooked at that block
lines up with the rows the harvest stored:

- ``model_name``: TransformerLens' short alias where its tables name every model of the hub
  organisation by the name after the slash (EleutherAI, google, facebook: ``pythia-70m-deduped``,
  ``gemma-2-2b``, ``opt-125m``, as SAELens' own releases name them) and ``gpt2`` -> ``gpt2-small``;
  otherwise the hub id itself (``meta-llama/Llama-3.1-8B``, ``Qwen/Qwen2.5-7B``,
  ``mistralai/Mistral-7B-v0.1``), which TransformerLens accepts as the official name. The embedded
  GGUF model is named as the Hub model it is a build of (``google/gemma-3-270m`` ->
  ``gemma-3-270m``); the export keeps the local source in its own ``model_source`` key. Local
  directories keep their path: TransformerLens cannot load them by name.
  Tested against TransformerLens' and SAELens' own tables (tests/train/test_sae_lens_names.py).
- ``hook_name``: ``blocks.<L>.hook_resid_post``, the residual stream after block L before any
  final norm, exactly what the harvest stores for every family.
- ``model_from_pretrained_kwargs``: ``center_writing_weights = False`` (SAELens' own default for
  training): TransformerLens' default processing would centre the residual stream, which the
  harvested rows are not.
"""

from __future__ import annotations

from orthosae.common.model import hub_model_id

# hub organisations whose models TransformerLens aliases by the bare name after the slash
BARE_NAME_ORGS = ("EleutherAI/", "google/", "facebook/")
SPECIAL_NAMES = {"gpt2": "gpt2-small"}


def sae_lens_model_name(model_id: str | None) -> str | None:
    """The name SAELens / TransformerLens use for the hub model ``model_id`` (see the module doc)."""
    if not isinstance(model_id, str):
        return model_id
    model_id = hub_model_id(model_id)
    if model_id in SPECIAL_NAMES:
        return SPECIAL_NAMES[model_id]
    if model_id.startswith(BARE_NAME_ORGS) and model_id.count("/") == 1:
        return model_id.split("/", 1)[1]
    return model_id


def sae_lens_metadata(model_id: str | None, layer: int, hook: str = "resid_post") -> dict:
    """The ``cfg.json`` metadata keys that place an SAE on its model and hook in SAELens."""
    return {
        "model_name": sae_lens_model_name(model_id),
        "hook_name": f"blocks.{layer}.hook_{hook}",
        "hook_layer": layer,
        "model_from_pretrained_kwargs": {"center_writing_weights": False},
    }
