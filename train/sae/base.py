"""The shared base of every SAE variant: weights, encode, decode, fold, and the loss.

One file per architecture, each named by its run type's line of the variant table
(``common/variants.py``; built by ``make_sae``, ``train/sae/__init__.py``), as
SAELens' ``saes/``: ``baseline.py`` (SAELens "standard" / "topk" / "jumprelu"), ``fixed.py``
(+ L_ortho between fixed groups), ``adaptive.py`` (+ learned groups and group decoder biases, and
its own SAELens class). This base holds what they share: a ReLU / TopK / BatchTopK encoder
(``activate``, the one encode, also the grouped SAELens class's), a linear decoder with unit-norm
rows, decoder-norm folding (``fold_decoder_norms``, for eval and SAEBench) and the training loss.

Every variant is built from one ``RunConfig`` (``SAE(d_model, run)``, as sparsify's
``SparseCoder(d_in, cfg)``) and reads its settings there under their ``pipeline.toml`` names.

The loss, in one place (``training_forward``), with SAELens 6.x ``StandardTrainingSAE`` conventions:

- ``recon``  = Σ_d (x̂ − x)² per token, mean over tokens (sum over d_in, mean over the batch);
- ``sparse`` = Σ_i f_i · ‖W_dec[i]‖, mean over tokens (the decoder-norm-weighted L1; f ≥ 0);
- ``ortho``  = L_ortho between the feature groups ``groups`` (``ortho.py``; none for the baseline);
- ``total``  = recon + λ1·sparse + w·ortho, where λ1 and w come from the Trainer's schedules
  (``train/trainer.py``: λ1 warm-up, λ2(t), lazy weight).

Differences from SAELens: decoder rows are initialised (and kept, by ``normalize_decoder``) at unit
norm rather than SAELens' ``decoder_init_norm=0.1``; W_enc = W_dec.T at init (tied init, as SAELens).
Initialisation uses a CPU ``torch.Generator`` seeded with the run's ``train.seed`` (its entry of
``seeds = [...]``, else ``[train] seed``), so it is device-independent.

Activation (``[train] activation``), for every run type, following SAELens 6 (``sae_lens/saes/
topk_sae.py``, ``batchtopk_sae.py``):

- ``relu``: f = ReLU(x W_enc + b_enc); sparsity from the L1 term (λ1).
- ``topk``: SAELens ``TopK``: the k largest pre-activations of each row, ReLU'd, the rest 0 — at
  most k active per row (exactly k unless fewer than k pre-activations are positive); the same at
  inference. Exported as SAELens ``"topk"`` (with ``k``).
- ``batchtopk``: SAELens ``BatchTopK`` in training: ReLU, then the k·batch largest activations of the
  whole batch are kept (k per row on average). After each training forward the inference threshold
  moves as SAELens' ``update_topk_threshold``: θ ← (1 − 0.01)·θ + 0.01·(smallest positive kept
  activation). ``encode`` (inference, eval) is then SAELens' JumpReLU: f = ReLU(pre)·[pre > θ], so a
  token's L0 depends on itself alone. Exported, as SAELens does, as ``"jumprelu"`` with
  ``threshold = θ`` for every feature.

Decoder rows have unit norm in training, so TopK on pre-activations is the same as SAELens'
``rescale_acts_by_decoder_norm``. The L1 term is computed and logged for every activation; with
topk / batchtopk it is usually weighted 0 (``l1_coefficient = 0``), as in SAELens' TopK recipes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from orthosae.common.config import RunConfig

from . import ortho


@dataclass(frozen=True)
class Coefficients:
    """One step's coefficient values, all from the Trainer's schedules."""

    lr: float
    lambda1: float | Tensor  # λ1 after its warm-up (a device scalar under the target-L0 controller)
    lambda2: float  # λ2(t), the nominal weight of L_ortho (logged)
    ortho_weight: float  # weight of L_ortho in this step's loss: every·λ2(t) on due steps, else 0
    ortho_due: bool  # whether L_ortho is evaluated this step (lazy: every `every`-th step)


@dataclass
class TrainOutput:
    """The training forward pass: the named loss terms with the activations they came from."""

    total: Tensor  # scalar, for backward
    recon: Tensor  # the terms, as computed (detach before logging)
    sparse: Tensor
    ortho: Tensor | None  # None: not evaluated this step (lazy L_ortho) or no L_ortho at all
    f: Tensor  # feature activations [batch, d_sae], detached
    x_hat: Tensor  # reconstruction [batch, d_model], detached


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    out = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(out, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_grouped(sae: nn.Module) -> bool:
    """THE question "is this SAE grouped?", for our SAEs and sae_lens objects alike: learned feature
    groups with group decoder biases (``groups``, ``group_bias``: ``AdaptiveOrthoSAE`` and its SAELens
    class). A fixed-orthogonal SAE has ``groups`` too, but fixed ones, and is not grouped."""
    return bool(getattr(sae, "grouped", False))


TOPK_THRESHOLD_LR = 0.01  # SAELens BatchTopKTrainingSAEConfig.topk_threshold_lr


def topk_rows(pre: Tensor, k: int) -> Tensor:
    """SAELens ``TopK``: per row, the k largest pre-activations, ReLU'd; every other entry 0."""
    values, indices = torch.topk(pre, k=k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def batch_topk(pre: Tensor, k: int) -> Tensor:
    """SAELens ``BatchTopK``: ReLU, then the k·rows largest activations of the whole batch."""
    acts = pre.relu()
    flat = acts.flatten()
    top = torch.topk(flat, int(k * acts.shape[:-1].numel()), dim=-1)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


def activate(pre: Tensor, activation: str, k: int, threshold: Tensor | None = None, *, inplace: bool = False) -> Tensor:
    """Feature activations at inference from pre-activations: the one encode of every variant and
    of the grouped SAELens class (batchtopk: SAELens' JumpReLU on the learned threshold, so a
    token's L0 depends on itself alone). ``inplace``: relu may overwrite ``pre``."""
    if activation == "topk":
        return topk_rows(pre, k)
    if activation == "batchtopk":
        return pre.relu() * (pre > threshold)
    return pre.relu_() if inplace else pre.relu()


# ---- folding decoder norms into the encoder (one home: eval, SAEBench loading, the SAELens class)


def require_uniform_norms(norms: Tensor) -> None:
    """Folding decoder norms into the encoder rescales f per feature; π is invariant only under a
    uniform scale, so a grouped SAE with non-uniform decoder norms cannot be folded (nor a TopK SAE,
    whose choice of the k largest would change)."""
    if not torch.allclose(norms, norms.mean().expand_as(norms), rtol=1e-3):
        raise ValueError(
            "folding non-uniform decoder norms would change the group-bias mix π "
            "(orthosae_grouped) or the TopK choice (topk)"
        )


@torch.no_grad()
def fold_activation_state(
    norms: Tensor, *, activation: str, grouped: bool, tau: Tensor | None = None, threshold: Tensor | None = None
) -> None:
    """What folding decoder norms n into the encoder (W_enc·n, b_enc·n, W_dec/n: f_i scales by n_i,
    reconstructions unchanged) must do beyond those three products: refuse non-uniform norms where
    they would change the output (grouped: the mix π; topk: the choice of the k largest), scale the
    grouped SAE's τ (activation units) by the uniform norm, and the batchtopk threshold θ (on
    pre-activations, which scale by n)."""
    if grouped or activation == "topk":
        require_uniform_norms(norms)
    if grouped:
        tau.mul_(norms.mean().to(tau.dtype))
    if activation == "batchtopk":
        threshold.mul_(norms.to(threshold.dtype))


@torch.no_grad()
def fold_decoder_norms(sae: nn.Module) -> nn.Module:
    """Copy of our ``sae`` with W_dec rows at unit norm and the norms moved into W_enc columns and
    b_enc (``fold_activation_state`` for what else moves). SAEBench assumes unit-norm decoder rows."""
    out = copy.deepcopy(sae)
    n = out.W_dec.norm(dim=1)
    n = torch.where(n > 0, n, torch.ones_like(n))
    fold_activation_state(
        n,
        activation=getattr(out, "activation", "relu"),
        grouped=is_grouped(out),
        tau=getattr(out, "tau", None),
        threshold=getattr(out, "threshold", None),
    )
    out.W_enc.mul_(n.to(out.W_enc.dtype))
    out.b_enc.mul_(n.to(out.b_enc.dtype))
    out.W_dec.div_(n[:, None].to(out.W_dec.dtype))
    return out


# ---- the SAE


class SAE(nn.Module):
    """Shared base of the variants (``baseline.py``, ``fixed.py``, ``adaptive.py``): ``encode``,
    linear ``decode``, the loss ``training_forward`` and L_ortho between ``groups`` where the run
    has one. Variants set ``groups`` / ``n_groups`` (fixed) and override ``decode`` (adaptive)."""

    @property
    def grouped(self) -> bool:
        """``is_grouped``: the run type's ``grouped`` in the variant table (common/variants.py)."""
        return self.cfg.grouped

    @property
    def architecture(self) -> str:
        """The ``architecture`` of the export's cfg.json (SAELens' name where one fits)."""
        return self.cfg.variant.architecture(self.activation)

    def __init__(
        self,
        d_model: int,
        run: RunConfig,
        *,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.cfg = run
        self.d_model, self.d_sae = int(d_model), int(run.train.d_sae)
        dt = as_dtype(dtype)
        gen = torch.Generator().manual_seed(int(run.train.seed))
        W = torch.randn(self.d_sae, self.d_model, generator=gen, dtype=torch.float32)
        W = W / W.norm(dim=1, keepdim=True)
        kw = dict(dtype=dt, device=device)
        self.W_dec = nn.Parameter(W.to(**kw))
        self.W_enc = nn.Parameter(W.T.contiguous().to(**kw))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(self.d_model, **kw))
        self.activation, self.k = str(run.train.activation), int(run.train.k)
        if self.activation == "batchtopk":  # θ per feature (all equal), SAELens JumpReLU's layout
            self.register_buffer("threshold", torch.zeros(self.d_sae, **kw))

    # SAEBench / SAELens expect these attributes
    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @torch.no_grad()
    def init_b_dec(self, mean: Tensor) -> None:
        """Set b_dec to the mean of the (normalised) activations."""
        if mean.shape != (self.d_model,):
            raise ValueError(f"init_b_dec: expected shape ({self.d_model},), got {tuple(mean.shape)}")
        self.b_dec.copy_(mean.to(self.b_dec))

    def pre_activations(self, x: Tensor) -> Tensor:
        """x W_enc + b_enc on x − b_dec, as ``[rows, d_sae]``."""
        x = x.to(self.dtype) - self.b_dec
        return torch.addmm(self.b_enc, x.reshape(-1, self.d_model), self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations at inference (batchtopk: the learned threshold, per token)."""
        # inplace: relu_ reuses addmm's output (its backward does not need it)
        f = activate(self.pre_activations(x), self.activation, self.k, getattr(self, "threshold", None), inplace=True)
        return f.reshape(*x.shape[:-1], self.d_sae)

    def encode_train(self, x: Tensor) -> Tensor:
        """Feature activations in training: batchtopk picks over the batch; the others as ``encode``."""
        if self.activation != "batchtopk":
            return self.encode(x)
        return batch_topk(self.pre_activations(x), self.k).reshape(*x.shape[:-1], self.d_sae)

    @torch.no_grad()
    def update_threshold(self, f: Tensor) -> None:
        """SAELens ``update_topk_threshold``: EMA of the smallest positive activation BatchTopK kept
        (none kept: θ stays). On the device: no boolean indexing, whose size would sync the host."""
        if self.activation != "batchtopk":
            return
        smallest = torch.where(f > 0, f, torch.inf).min().to(self.threshold.dtype)
        lr = TOPK_THRESHOLD_LR
        moved = (1 - lr) * self.threshold + lr * smallest
        self.threshold.copy_(torch.where(torch.isfinite(smallest), moved, self.threshold))

    def decode(self, f: Tensor, *, nonneg: bool = False) -> Tensor:
        """``nonneg``: f is the encoder's own ReLU output (variants may skip work on that promise)."""
        return torch.addmm(self.b_dec, f.reshape(-1, self.d_sae), self.W_dec).reshape(*f.shape[:-1], self.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def directions(self) -> Tensor:
        """Feature directions as rows ``[d_sae, d_model]`` that L_ortho and condition numbers use
        (``[train.ortho] weights``: rows of W_dec, unit norm, or columns of W_enc, not normalised)."""
        return self.W_dec if self.cfg.ortho.weights == "decoder" else self.W_enc.T

    def group_index(self) -> list:
        """Each group's feature indices, recomputed only when the groups change (a regroup, a load):
        ``nonzero`` per group per step would read sizes back to the host on every step."""
        key = (self.groups.data_ptr(), self.groups._version)
        if getattr(self, "_index_key", None) != key:
            self._index, self._index_key = ortho.group_indices(self.groups, self.n_groups), key
        return self._index

    def ortho_loss(self, activity: Tensor | None = None) -> Tensor | None:
        """L_ortho between the feature groups ``groups`` (``ortho.py``); None for a run without
        L_ortho (the baseline). ``activity`` ([d_sae] activation mass of the batch) weighs the pairs
        when ``[train.ortho] weighting = "activity"``."""
        if not self.cfg.has_ortho:
            return None
        o = self.cfg.ortho
        return ortho.ortho_loss(
            self.directions(),
            self.groups,
            self.n_groups,
            o.alpha,
            o.alpha_mode,
            activity=activity if o.weighting == "activity" else None,
            index=self.group_index(),
            gram_dtype=o.gram_dtype,
        )

    def training_forward(self, x: Tensor, c: Coefficients) -> TrainOutput:
        """One step's loss: recon + λ1·sparse + w·L_ortho, with the terms and f, x̂ for logging."""
        x = x.to(self.dtype)
        f = self.encode_train(x)
        if self.activation == "batchtopk" and torch.is_grad_enabled():
            self.update_threshold(f.detach())
        x_hat = self.decode(f, nonneg=True)
        recon = (x_hat - x).pow(2).sum(dim=-1).mean()
        # Σ_t Σ_i f_ti·||W_dec[i]|| / T, summed over tokens first: no [batch, d_sae] product tensor
        mass = f.sum(dim=0)
        sparse = mass @ self.W_dec.norm(dim=1) / f.shape[0]
        ortho_term = None
        if c.ortho_due:
            # the value is logged even while λ2(t) is 0; it only needs a graph when it is weighted
            with torch.set_grad_enabled(torch.is_grad_enabled() and c.ortho_weight != 0.0):
                ortho_term = self.ortho_loss(mass.detach())
        total = recon + c.lambda1 * sparse + (c.ortho_weight * ortho_term if c.ortho_weight != 0.0 else 0.0)
        return TrainOutput(
            total=total, recon=recon, sparse=sparse, ortho=ortho_term, f=f.detach(), x_hat=x_hat.detach()
        )

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
