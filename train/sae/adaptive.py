"""Grouped adaptive-orthogonal SAE (the method): its inference and training forward, and its SAELens class.

What it adds to ``FixedOrthoSAE`` (``fixed.py``):

1. Learned groups: ``groups [d_sae]`` becomes a persistent buffer (saved and exported), the fixed
   contiguous split until the Trainer's first regroup (rule in ``grouping.py``; λ2(t) and the
   regroup schedule are the Trainer's, ``train/trainer.py``).
2. Group-specific decoder biases with shared weights: parameter ``group_bias [G, d_model]``
   (init 0). Per token, x̂ = f @ W_dec + b_dec + Σ_g π_g · group_bias[g], with the bias mix
   π_g = m_g / (Σ_h m_h + τ), m_g = Σ_{i∈g} f_i (``[train.ortho] tau``). τ makes π continuous:
   without it a token whose only activation is 1e-9 got the whole bias of that group, and
   ∂x̂/∂f ∝ 1/Σf exploded on near-silent tokens; with it π → 0 smoothly and the gradient is at most
   ‖group_bias‖/τ. ``b_dec`` stays shared because it also centres the encoder input, which cannot
   depend on the groups. τ is in activation units: folding a uniform decoder norm c into the
   encoder scales f by c, so ``tau`` (a buffer, exported) scales with it.

The training forward is the shared base's (``base.py``) with this ``decode``. The export is
architecture "orthosae_grouped", which sae_lens loads as ``OrthoSAEGroupedSAE`` (below) once
``train.export.register_with_sae_lens()`` has registered it; it encodes with the base's
``activate`` and decodes with ``grouped_decode``, the same definitions as training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from orthosae.common.variants import GROUPED_ARCH

from .base import activate, fold_activation_state
from .fixed import FixedOrthoSAE
from .ortho import group_onehot


def bias_mix(f: Tensor, groups: Tensor, n_groups: int, *, nonneg: bool = False, tau: float | Tensor = 0.0) -> Tensor:
    """π ``[..., G]``, each group's weight in the token's group-bias mix: m_g / (Σm + τ) per token
    (τ = 0: the plain fraction of the token's activation mass, 0 where no feature fires).

    Mass counts only positive activations: an intervention that clamps features to −m (SAEBench's
    unlearning) must not turn π into huge or negative weights of the group biases. ``nonneg=True``
    says f came straight from the ReLU encoder, which skips that clamp (a full [batch, d_sae] pass
    forward and backward). The mass is a matmul with the one-hot group matrix: on CPU it is about
    twice as fast as ``index_add`` over the feature axis, forward plus backward.
    """
    onehot = group_onehot(groups, n_groups, f.dtype)
    mass = (f if nonneg else f.clamp_min(0)) @ onehot
    tot = mass.sum(dim=-1, keepdim=True) + tau
    return mass / torch.where(tot > 0, tot, torch.ones_like(tot))


def grouped_decode(
    f: Tensor,
    groups: Tensor,
    group_bias: Tensor,
    tau: float | Tensor,
    linear: Callable[[Tensor], Tensor],
    *,
    nonneg: bool = False,
    mix_from: Tensor | None = None,
) -> Tensor:
    """x̂ = linear(f) + Σ_g π_g·group_bias[g] per token, where ``linear(f) = f @ W_dec + b_dec``.
    One definition for training and for the SAELens class of the export (below).

    ``mix_from``: compute π from these activations instead of f. An intervention that clamps
    features passes the unclamped ones, so it edits the features alone and does not also remove
    the clamped group's bias (a second intervention a plain SAE would not get)."""
    pi = bias_mix(
        f if mix_from is None else mix_from, groups, group_bias.shape[0], nonneg=nonneg and mix_from is None, tau=tau
    )
    return linear(f) + pi @ group_bias


class AdaptiveOrthoSAE(FixedOrthoSAE):
    def __init__(self, d_model, run, **kwargs):
        super().__init__(d_model, run, **kwargs)
        self.register_buffer("groups", self.groups.clone())  # learned: persistent from here on
        self.group_bias = nn.Parameter(torch.zeros(self.n_groups, self.d_model, dtype=self.dtype, device=self.device))
        self.register_buffer("tau", torch.tensor(float(run.ortho.tau), dtype=self.dtype, device=self.device))

    def decode(self, f: Tensor, *, nonneg: bool = False, mix_from: Tensor | None = None) -> Tensor:
        return grouped_decode(
            f, self.groups, self.group_bias, self.tau, super().decode, nonneg=nonneg, mix_from=mix_from
        )


# ---------------------------------------------------------------- the export's SAELens class


def sae_lens_classes() -> tuple[type, type]:
    """``(OrthoSAEGroupedSAE, OrthoSAEGroupedConfig)``, the sae_lens classes of architecture
    "orthosae_grouped", built on first call (imports sae_lens only then); they become module
    globals here, so they serialise by reference (copy, multiprocessing). Register them with ``train.export.register_with_sae_lens``."""
    if "OrthoSAEGroupedSAE" in globals():
        return globals()["OrthoSAEGroupedSAE"], globals()["OrthoSAEGroupedConfig"]
    from dataclasses import dataclass

    from sae_lens import SAE as SLSAE
    from sae_lens import SAEConfig

    @dataclass
    class OrthoSAEGroupedConfig(SAEConfig):
        """sae_lens config of the grouped adaptive-orthogonal SAE."""

        n_groups: int = 2
        activation: str = "relu"  # relu | topk | batchtopk (inference: JumpReLU on ``threshold``)
        k: int = 0

        @classmethod
        def architecture(cls) -> str:
            return GROUPED_ARCH

    class OrthoSAEGroupedSAE(SLSAE[OrthoSAEGroupedConfig]):
        """SAE with per-token group decoder bias: x̂ = f W_dec + b_dec + Σ_g π_g(f) group_bias[g]."""

        b_enc: nn.Parameter
        group_bias: nn.Parameter
        groups: torch.Tensor
        grouped = True  # train.sae.is_grouped

        def initialize_weights(self) -> None:
            super().initialize_weights()
            kw = dict(dtype=self.dtype, device=self.device)
            self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, **kw))
            self.group_bias = nn.Parameter(torch.zeros(self.cfg.n_groups, self.cfg.d_in, **kw))
            groups = (torch.arange(self.cfg.d_sae, device=self.device) * self.cfg.n_groups) // self.cfg.d_sae
            self.register_buffer("groups", groups)
            self.register_buffer("tau", torch.zeros((), **kw))
            if self.cfg.activation == "batchtopk":
                self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, **kw))

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            sae_in = self.process_sae_in(x)
            hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
            return self.hook_sae_acts_post(
                activate(hidden_pre, self.cfg.activation, self.cfg.k, getattr(self, "threshold", None))
            )

        def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
            out = grouped_decode(
                feature_acts, self.groups, self.group_bias, self.tau, lambda f: f @ self.W_dec + self.b_dec
            )
            out = self.hook_sae_recons(out)
            out = self.run_time_activation_norm_fn_out(out)
            return self.reshape_fn_out(out, self.d_head)

        def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
            # sae_lens' disk loader casts every tensor to cfg.dtype; group ids are small integers
            if "groups" in state_dict:
                state_dict["groups"] = state_dict["groups"].round().to(torch.int64)

        @torch.no_grad()
        def fold_and_get_W_dec_norm(self) -> torch.Tensor:
            norms = self.get_W_dec_norm()
            fold_activation_state(
                norms,
                activation=self.cfg.activation,
                grouped=True,
                tau=self.tau,
                threshold=getattr(self, "threshold", None),
            )
            return super().fold_and_get_W_dec_norm()

    for cls in (OrthoSAEGroupedConfig, OrthoSAEGroupedSAE):
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    return OrthoSAEGroupedSAE, OrthoSAEGroupedConfig
