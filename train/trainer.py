"""One run's training, step by step: ``Trainer(run, sae, total_steps).train_step(x, is_forget)``.

A Trainer owns everything one run of a sweep carries: its SAE, the Adam optimiser, the schedules
of every coefficient (``Schedules``: lr, λ1, λ2(t) and the lazy L_ortho weight), dead-feature
tracking and resampling, the NaN guard, the feature-group statistics, regrouping and the early
stop, and the state a checkpoint needs. One step, top to bottom:

    coefficients -> SAE training forward (loss terms, f, x̂) -> backward -> NaN guard -> clip ->
    Adam -> decoder renorm -> group statistics + regroup every n steps -> dead features
    (resampled here) -> early stop -> log record

``train/runner.py`` feeds each batch of the shared stream to every Trainer (dictionary_learning's
``trainSAE`` shape). One step reads in five files: this one, ``train/sae/base.py`` (encode, decode,
the loss ``SAE.training_forward``), the architecture's own file (``train/sae/adaptive.py``: the
group-bias decode), ``train/sae/ortho.py`` (L_ortho, and the matmul precision) and
``train/sae/grouping.py`` (group statistics, the regroup rule, group health).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch import Tensor

from orthosae.common.config import RunConfig
from orthosae.common.metrics import explained_variance
from orthosae.train.checkpoint import load_optimizer_state, optimizer_state
from orthosae.train.sae import SAE, Coefficients, GroupStats, RegroupReport, assign_groups, group_health, stop_reason
from orthosae.train.sae.ortho import matmul_precision


def _finite(v):
    """JSON has no nan / inf: the log writes null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Schedules:
    """Every coefficient of the loss and the optimiser as a function of the step t (0-based)."""

    def __init__(self, run: RunConfig, total_steps: int):
        self.run, self.total = run, total_steps

    def lr(self, t: int) -> float:
        """Linear warm-up, constant, then linear decay over the last lr_decay_frac of steps."""
        tr = self.run.train
        if tr.lr_warmup_steps and t < tr.lr_warmup_steps:
            return tr.lr * (t + 1) / tr.lr_warmup_steps
        decay_start = int(self.total * (1 - tr.lr_decay_frac))
        if tr.lr_decay_frac and t >= decay_start:
            return tr.lr * max(0.0, (self.total - t) / max(1, self.total - decay_start))
        return tr.lr

    def lambda1(self, t: int) -> float:
        """λ1 ramps linearly from 0 over l1_warmup_steps (SAELens style)."""
        tr = self.run.train
        return tr.l1_coefficient * float(min(1.0, (t + 1) / tr.l1_warmup_steps) if tr.l1_warmup_steps else 1.0)

    def lambda2(self, t: int) -> float:
        """λ2(t) = λ2_max·min(1, t/t0) for the adaptive SAE; constant λ2_max for the fixed one."""
        if not self.run.has_ortho:
            return 0.0
        o = self.run.ortho
        if not self.run.grouped or o.t0 <= 0:
            return float(o.lambda2_max)
        return float(o.lambda2_max) * min(1.0, max(t, 0) / o.t0)

    def at(self, t: int) -> Coefficients:
        """Lazy L_ortho (``every`` = k): evaluated on every k-th step with weight k·λ2(t), so its
        average weight is λ2(t) while its O(d_sae·d_model²) cost is paid once per k steps."""
        lam2 = self.lambda2(t)
        k = self.run.ortho.every
        due = self.run.has_ortho and t % k == 0
        return Coefficients(
            lr=self.lr(t), lambda1=self.lambda1(t), lambda2=lam2, ortho_weight=lam2 * k if due else 0.0, ortho_due=due
        )


class L0Controller:
    """``[train] target_l0`` for ReLU runs: λ1 is multiplied by ``scale``, which moves each step after
    the λ1 warm-up as ``scale *= exp(gain · log(L0_batch / target_l0))`` (log L0 error, clipped to
    ±1): L0 above target raises λ1, below lowers it. An integral controller on log λ1; it needs no
    calibration pass and tracks the target while the weights move, so the final L0 (set when the lr
    decays to 0) lands on it. Off (scale 1) when ``target_l0`` is 0. ``scale`` is a float64 tensor
    on the SAE's device, updated there: the batch L0 is never read back to the host."""

    def __init__(self, run: RunConfig, device: torch.device | str = "cpu"):
        tr = run.train
        self.target, self.gain, self.start = float(tr.target_l0), float(tr.l0_gain), int(tr.l1_warmup_steps)
        self.scale = torch.ones((), dtype=torch.float64, device=device)

    @property
    def active(self) -> bool:
        return self.target > 0

    def update(self, t: int, l0: Tensor) -> None:
        if self.active and t >= self.start:
            err = torch.log(l0.double().clamp_min(0.5) / self.target).clamp(-1.0, 1.0)
            self.scale.mul_(torch.exp(self.gain * err))


class Trainer:
    """Trains one SAE of a sweep; ``status`` is running | complete | early_stopped | failed."""

    def __init__(self, run: RunConfig, sae: SAE, total_steps: int):
        self.run, self.sae, self.total_steps = run, sae, total_steps
        tr = run.train
        self.opt = torch.optim.Adam(sae.parameters(), lr=tr.lr, betas=tuple(tr.adam_betas))
        self.schedules = Schedules(run, total_steps)
        self.steps_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.device)
        self.group_stats = GroupStats(sae.d_sae, run.ortho.stats_decay, sae.device) if run.grouped else None
        self.step = 0
        self.status, self.message = "running", ""
        self.last: dict = {}  # the latest log record
        self._last_ortho: Tensor | None = None  # logged on steps the lazy L_ortho skips
        self.l0_control = L0Controller(run, sae.device)
        # the NaN guard, kept on the device: the first non-finite loss's step and value (-1: none
        # yet), read back only on steps that log or checkpoint (a per-step read would sync the GPU)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=sae.device)
        self._bad_value = torch.zeros((), device=sae.device)
        # per-run randomness (resampling) follows the run's own seed; the data order is the sweep's
        self.generator = torch.Generator().manual_seed(int(tr.seed))

    @property
    def running(self) -> bool:
        return self.status == "running"

    def train_step(self, x: Tensor, is_forget: Tensor) -> dict | None:
        """One optimiser step on the batch; returns the log record when this step logs."""
        tr, t = self.run.train, self.step
        c = self.schedules.at(t)
        if self.l0_control.active:
            c = dataclasses.replace(c, lambda1=(c.lambda1 * self.l0_control.scale).to(self.sae.dtype))
        for group in self.opt.param_groups:
            group["lr"] = c.lr
        with matmul_precision(tr.matmul_precision):  # TF32 on CUDA when "high"; L_ortho keeps fp32
            out = self.sae.training_forward(x, c)
            self.opt.zero_grad(set_to_none=True)
            out.total.backward()
        first_bad = (self._bad_step < 0) & ~torch.isfinite(out.total.detach())
        self._bad_step = torch.where(first_bad, t, self._bad_step)
        self._bad_value = torch.where(first_bad, out.total.detach().float(), self._bad_value)
        # the norm before clipping (logged): clipping hides exploding gradients, the log must not
        params = [p for p in self.sae.parameters() if p.grad is not None]
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
            if tr.grad_clip
            else torch.nn.utils.get_total_norm([p.grad for p in params])
        )
        self.opt.step()
        self.sae.normalize_decoder()
        self.step = t + 1
        if self._syncs_now() and not self.check_finite():  # before anything is logged or saved
            return None

        regroup = None
        if self.group_stats is not None:
            self.group_stats.update(out.f, is_forget)
            # never after the last update: exported groups must be the ones L_ortho and the biases trained with
            if self.step % self.run.ortho.regroup_every == 0 and self.step < self.total_steps:
                regroup = self.regroup()

        active = out.f > 0  # one pass serves L0 and the dead-feature mask
        if self.l0_control.active:
            self.l0_control.update(t, active.sum(dim=-1, dtype=torch.float32).mean())
        self.steps_since_fired = torch.where(active.any(dim=0), 0, self.steps_since_fired + 1)
        dead = self.steps_since_fired > tr.dead_window
        if tr.resample_dead and self.step % tr.dead_window == 0 and dead.any():
            resample_dead(self.sae, self.opt, dead, x, generator=self.generator)
            self.steps_since_fired[dead] = 0

        if regroup is not None:
            reason = stop_reason(regroup.health, self.run.ortho.stop_eff_rank, self.run.ortho.stop_max_cos)
            if reason and self.check_finite():  # a stopped run is saved: never with a non-finite step behind it
                self.status, self.message = "early_stopped", f"{reason} at step {self.step}"
        if out.ortho is not None:
            self._last_ortho = out.ortho.detach()
        if self.step % tr.log_every == 0 or self.step == self.total_steps or regroup is not None or not self.running:
            self.last = self._record(out, c, x, active, dead, regroup, grad_norm)
            return self.last
        return None

    def check_finite(self) -> bool:
        """Read the device-side NaN guard (a host sync): a run whose loss was ever non-finite is
        marked failed, its weights not to be saved. Call before saving at any other step."""
        if self.status != "failed" and int(self._bad_step) >= 0:
            self.status = "failed"
            self.message = f"loss became {float(self._bad_value)} at step {int(self._bad_step)}; weights not saved"
        return self.status != "failed"

    def _syncs_now(self) -> bool:
        """Steps that read values back to the host anyway: log, checkpoint, last step."""
        tr = self.run.train
        return self.step % tr.log_every == 0 or self.step % tr.checkpoint_every == 0 or self.step == self.total_steps

    @torch.no_grad()
    def regroup(self) -> RegroupReport:
        """Re-assign the SAE's feature groups from the statistics (rule: ``grouping.assign_groups``)."""
        sae, o = self.sae, self.run.ortho
        new = assign_groups(
            self.group_stats.forget_share(),
            sae.groups,
            o.groups,
            mass=self.group_stats.mass(),
            min_mass=o.regroup_min_mass,
            margin=o.regroup_margin,
        )
        n_moved = int((new != sae.groups).sum().item())
        sae.groups.copy_(new)
        report = RegroupReport(
            step=self.step, n_moved=n_moved, health=group_health(sae.directions(), sae.groups, o.groups)
        )
        if report.empty_groups:  # L_ortho is 0 and the group's health nan: say so, the stop rule cannot
            warnings.warn(
                f"{self.run.name}: feature group(s) {report.empty_groups} empty after the regroup "
                f"at step {self.step}; L_ortho has nothing to act on",
                stacklevel=2,
            )
        return report

    def _group_sizes(self) -> list[int]:
        return torch.bincount(self.sae.groups, minlength=self.run.ortho.groups).tolist()

    @torch.no_grad()
    def _record(
        self,
        out,
        c: Coefficients,
        x: Tensor,
        active: Tensor,
        dead: Tensor,
        regroup: RegroupReport | None,
        grad_norm: Tensor,
    ) -> dict:
        """The log line: the training forward's own terms (pre-step weights, as the loss saw them)."""
        x = x.to(out.x_hat.dtype)
        resid = (x - out.x_hat).pow(2).sum(-1).mean()
        total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
        rec = {
            "step": self.step,
            "lr": c.lr,
            "lambda1": float(c.lambda1),
            "lambda2": c.lambda2,
            "recon": float(out.recon),
            "sparse": float(out.sparse),
            "total": float(out.total),
            "l0": float(active.sum(dim=-1, dtype=torch.float32).mean()),
            "ev_batch": explained_variance(float(resid), float(total_var)),
            "dead": int(dead.sum()),
            "dead_frac": float(dead.float().mean()),
            "grad_norm": float(grad_norm),
        }
        if self.run.has_ortho:
            # the latest evaluated value (lazy L_ortho); none yet right after a resume on a skipped step
            rec["ortho"] = None if self._last_ortho is None else float(self._last_ortho)
        if self.run.grouped:
            rec["group_sizes"] = self._group_sizes()
        if regroup is not None:
            h = regroup.health
            rec.update(
                regrouped=True,
                n_moved=regroup.n_moved,
                cond=h.cond,
                eff_rank_frac=h.eff_rank_frac,
                max_cos=h.max_cos,
                empty_groups=regroup.empty_groups,
            )
        return {k: [_finite(u) for u in v] if isinstance(v, list) else _finite(v) for k, v in rec.items()}

    # ---- checkpoint state

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "status": self.status,
            "message": self.message,
            "last": self.last,
            "sae": self.sae.state_dict(),
            "opt": optimizer_state(self.opt),
            "steps_since_fired": self.steps_since_fired,
        }
        if self.group_stats is not None:
            state["group_stats"] = self.group_stats.state_dict()
        state["generator"] = self.generator.get_state()
        if self.l0_control.active:
            state["l1_scale"] = self.l0_control.scale.cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        load_optimizer_state(self.opt, state["opt"])
        self.steps_since_fired = state["steps_since_fired"].to(self.steps_since_fired.device)
        if self.group_stats is not None:
            self.group_stats.load_state_dict(state["group_stats"])
        self.generator.set_state(state["generator"])
        if "l1_scale" in state:
            self.l0_control.scale = state["l1_scale"].to(self.l0_control.scale)
        self.step, self.status, self.message, self.last = (
            state["step"],
            state["status"],
            state["message"],
            state["last"],
        )


# ---- dead-feature resampling (optional, `[train] resample_dead`), after Anthropic's recipe, simplified


@torch.no_grad()
def resample_dead(
    sae, opt: torch.optim.Optimizer, dead: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None
) -> int:
    """Dead features get the direction of the reconstruction error of rows drawn in proportion to
    their squared error, so they restart where the SAE is worst; the encoder column is scaled to
    0.2 × the mean norm of live columns, the encoder bias zeroed and the Adam moments of those
    weights reset. Returns the number resampled; rows are drawn with ``generator`` (a CPU
    generator: the run's own)."""
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0:
        return 0
    err = x - sae(x)
    weights = err.pow(2).sum(-1)
    if float(weights.sum()) == 0:
        return 0
    picks = torch.multinomial(weights.float().cpu(), len(idx), replacement=len(idx) > len(x), generator=generator).to(
        err.device
    )
    dirs = err[picks]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    live = ~dead
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs.to(sae.W_dec.dtype)
    sae.W_enc[:, idx] = (dirs.T * 0.2 * enc_norm).to(sae.W_enc.dtype)
    sae.b_enc[idx] = 0
    for param, index in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0
    return len(idx)
