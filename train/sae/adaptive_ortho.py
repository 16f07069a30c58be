"""Grouped adaptive-orthogonal SAE (the method). Differences from ``FixedOrthoSAE``:

1. λ2 ramps: λ2(t) = λ2_max · min(1, t / t0)  (t0 ≤ 0: λ2_max from the start).
2. Groups are learned: ``GroupStats`` tracks each feature's EMA activation mass on forget vs retain
   rows; every ``regroup_every`` steps (when ``step > 0 and step % regroup_every == 0``) the
   features are re-binned by forget share (rule in ``grouping.py``). Before the first regroup the
   groups are the fixed contiguous split. ``groups`` is a persistent buffer (saved and exported).
3. Group-specific decoder biases with shared weights: parameter ``group_bias [G, d_model]`` (init
   0). Per token, x̂ = f @ W_dec + b_dec + Σ_g π_g · group_bias[g], with π_g = Σ_{i∈g} f_i / Σ_i f_i
   (π = 0 when no feature is active). ``b_dec`` stays shared because it also centres the encoder
   input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fixed_ortho import FixedOrthoSAE
from .grouping import GroupStats, assign_groups, group_health


def require_uniform_norms(norms: Tensor) -> None:
    """Folding decoder norms into the encoder rescales f per feature; π is invariant only under a
    uniform scale, so a grouped SAE with non-uniform decoder norms cannot be folded."""
    if not torch.allclose(norms, norms.mean().expand_as(norms), rtol=1e-3):
        raise ValueError("orthosae_grouped: folding non-uniform decoder norms would change the group shares π")


def group_shares(f: Tensor, groups: Tensor, n_groups: int, *, nonneg: bool = False) -> Tensor:
    """π ``[..., G]``: share of each token's activation mass per group (0 where no feature fires).

    Mass counts only positive activations: an intervention that clamps features to −m (SAEBench's
    unlearning) must not turn π into huge or negative weights of the group biases. ``nonneg=True``
    says f came straight from the ReLU encoder, which skips that clamp (a full [batch, d_sae] pass
    forward and backward). The mass is a matmul with the one-hot group matrix: on CPU it is about
    twice as fast as ``index_add`` over the feature axis, forward plus backward.
    """
    onehot = torch.nn.functional.one_hot(groups, n_groups).to(f.dtype)  # [d_sae, G]
    mass = (f if nonneg else f.clamp_min(0)) @ onehot
    tot = mass.sum(dim=-1, keepdim=True)
    return mass / torch.where(tot > 0, tot, torch.ones_like(tot))


class AdaptiveOrthoSAE(FixedOrthoSAE):
    architecture = "orthosae_grouped"
    run_type = "adaptive"

    def __init__(self, d_model, d_sae, *, lambda2_max: float, t0: int, regroup_every: int = 100,
                 stats_decay: float = 0.99, **kwargs):
        super().__init__(d_model, d_sae, lambda2=lambda2_max, **kwargs)
        if regroup_every < 1:
            raise ValueError(f"regroup_every must be >= 1; got {regroup_every}")
        self.t0, self.regroup_every = int(t0), int(regroup_every)
        self.register_buffer("groups", self.block_groups.clone())  # learned, persistent
        self.group_bias = nn.Parameter(torch.zeros(self.n_groups, self.d_model, dtype=self.dtype, device=self.device))
        self.group_stats = GroupStats(self.d_sae, stats_decay, self.device)

    def penalty_groups(self) -> Tensor:
        return self.groups

    def lambda2_at(self, step: int) -> float:
        if self.t0 <= 0:
            return self.lambda2
        return self.lambda2 * min(1.0, max(step, 0) / self.t0)

    def decode(self, f: Tensor, *, nonneg: bool = False) -> Tensor:
        pi = group_shares(f, self.groups, self.n_groups, nonneg=nonneg)
        return super().decode(f) + pi @ self.group_bias

    @torch.no_grad()
    def on_step_end(self, step: int, f: Tensor | None = None, is_forget: Tensor | None = None) -> dict:
        self.normalize_decoder()
        if f is not None and is_forget is not None:
            self.group_stats.update(f, is_forget)
        out = {"regrouped": False, "n_moved": 0, "cond": [], "eff_rank": []}
        if step > 0 and step % self.regroup_every == 0:
            new = assign_groups(self.group_stats.forget_ratio(), self.groups, self.n_groups)
            out["n_moved"] = int((new != self.groups).sum().item())
            self.groups.copy_(new)
            cond, eff_rank = group_health(self.directions(), self.groups, self.n_groups)
            out.update(regrouped=True, cond=cond.tolist(), eff_rank=eff_rank.tolist())
        out["group_sizes"] = torch.bincount(self.groups, minlength=self.n_groups).tolist()
        return out

    def hyperparams(self) -> dict:
        hp = super().hyperparams()
        hp["lambda2_max"] = hp.pop("lambda2")
        return {**hp, "t0": self.t0, "regroup_every": self.regroup_every,
                "stats_decay": self.group_stats.decay}
