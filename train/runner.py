"""`pipe train`: one pass over the cached activations feeds every run of the sweep.

Reads top to bottom (nanoGPT style): open the store and check it matches the config, build the
stream, build or resume each run, then per batch: for each run, loss -> backward -> clip -> Adam
-> decoder renorm / regroup -> log -> checkpoint. Each batch is read once and fed to all runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from common.config import Config, ConfigError, RunConfig, run_sections
from common.model import pick_device
from common.progress import console, progress
from common.store import StoreReader, open_store_for
from train.checkpoint import load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint
from train.export import save_sae
from train.resample import resample_dead
from train.sae import make_sae
from train.sae.grouping import should_stop
from train.stream import ActivationStream, estimate_scale


@dataclass
class RunState:
    """Everything one run of the sweep carries through the loop."""
    cfg: RunConfig
    dir: Path
    sae: torch.nn.Module
    opt: torch.optim.Optimizer
    train: object
    ortho: object
    steps_since_fired: torch.Tensor
    fingerprint: str = ""
    step: int = 0
    status: str = "running"  # running | complete | early_stopped | failed
    message: str = ""
    last: dict = field(default_factory=dict)
    log: object = None


def train_groups(cfg: Config) -> list[str]:
    return [name for name, c in cfg.corpora.items() if c.split == "train"]


def run_fingerprint(cfg: Config, run: RunConfig, reader: StoreReader) -> str:
    """Changes when anything that shapes this run's weights changes (settings or cached data)."""
    train, ortho = run_sections(cfg.train, cfg.ortho, run)
    data = {n: g.attrs.get("tokens_fingerprint") for n, g in reader.groups().items()}
    blob = json.dumps([run.type, asdict(train), asdict(ortho), data, reader.meta.get("model_id"),
                       reader.meta.get("layer")], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_is_done(run_dir: Path, fingerprint: str) -> bool:
    summary = run_dir / "summary.json"
    if not summary.exists():
        return False
    s = json.loads(summary.read_text())
    return s.get("fingerprint") == fingerprint and s.get("status") in ("complete", "early_stopped")


def lr_at(step: int, total: int, train) -> float:
    """Linear warm-up, constant, then linear decay over the last lr_decay_frac of steps."""
    if train.lr_warmup_steps and step < train.lr_warmup_steps:
        return train.lr * (step + 1) / train.lr_warmup_steps
    decay_start = int(total * (1 - train.lr_decay_frac))
    if train.lr_decay_frac and step >= decay_start:
        return train.lr * max(0.0, (total - step) / max(1, total - decay_start))
    return train.lr


def _sae_for(run: RunConfig, d_model: int, train, ortho, device) -> torch.nn.Module:
    common = dict(l1_coefficient=train.l1_coefficient, seed=train.seed, device=device)
    if run.type == "fixed":
        common.update(lambda2=ortho.lambda2_max, alpha=ortho.alpha, n_groups=ortho.groups,
                      ortho_weights=ortho.weights, ortho_every=ortho.every)
    elif run.type == "adaptive":
        common.update(lambda2_max=ortho.lambda2_max, t0=ortho.t0, alpha=ortho.alpha,
                      n_groups=ortho.groups, ortho_weights=ortho.weights, ortho_every=ortho.every,
                      regroup_every=ortho.regroup_every, stats_decay=ortho.stats_decay)
    return make_sae(run.type, d_model, train.d_sae, **common)


def _new_run(cfg: Config, run: RunConfig, d_model: int, device, mean: torch.Tensor) -> RunState:
    train, ortho = run_sections(cfg.train, cfg.ortho, run)
    sae = _sae_for(run, d_model, train, ortho, device)
    sae.init_b_dec(mean.to(device))
    opt = torch.optim.Adam(sae.parameters(), lr=train.lr, betas=tuple(train.adam_betas))
    return RunState(cfg=run, dir=Path(cfg.train.runs_dir) / run.name, sae=sae, opt=opt, train=train,
                    ortho=ortho, steps_since_fired=torch.zeros(train.d_sae, dtype=torch.long, device=device))


def _checkpoint(rs: RunState, stream_state: dict, scale: float) -> None:
    save_checkpoint(rs.dir, {
        "fingerprint": rs.fingerprint, "step": rs.step, "status": rs.status, "message": rs.message, "scale": scale,
        "sae": rs.sae.state_dict(), "opt": optimizer_state(rs.opt),
        "steps_since_fired": rs.steps_since_fired, "rng": torch.get_rng_state(),
        "stream": stream_state, "last": rs.last,
    })


def _restore(rs: RunState, ckpt: dict) -> None:
    rs.sae.load_state_dict(ckpt["sae"])
    load_optimizer_state(rs.opt, ckpt["opt"])
    rs.steps_since_fired = ckpt["steps_since_fired"].to(rs.steps_since_fired.device)
    rs.step, rs.status, rs.message, rs.last = ckpt["step"], ckpt["status"], ckpt["message"], ckpt["last"]


def _finish(rs: RunState, cfg: Config, reader: StoreReader, scale: float, fingerprint: str,
            seconds: float) -> None:
    """Export the SAE (SAELens layout) and write the run's summary."""
    if rs.status != "failed":
        save_sae(rs.sae, rs.dir, scale=scale, extra_cfg={
            "model_name": reader.meta.get("model_id"), "hook_name": f"blocks.{cfg.harvest.layer}.hook_resid_post",
            "hook_layer": cfg.harvest.layer, "context_size": cfg.harvest.context_length,
            "store": cfg.harvest.store, "run_name": rs.cfg.name, "run_type": rs.cfg.type,
            "steps": rs.step, "prepend_bos": True, "exclude_special_tokens": True})
    summary = {"run": rs.cfg.name, "type": rs.cfg.type, "status": rs.status, "message": rs.message,
               "steps": rs.step, "seconds": round(seconds, 2), "fingerprint": fingerprint,
               "activation_scale": scale, "store": cfg.harvest.store, "config": str(cfg.path),
               "final": rs.last}
    (rs.dir / "summary.json").write_text(json.dumps(summary, indent=2))


def _batch_stats(x: torch.Tensor, out, sae) -> dict:
    with torch.no_grad():
        x_hat = sae.decode(out.f)
        resid = (x - x_hat).pow(2).sum(-1).mean()
        total = (x - x.mean(0)).pow(2).sum(-1).mean()
        stats = {k: float(v) for k, v in out.terms.items()}  # l0 among them
        stats["explained_variance"] = float(1 - resid / total)
    return stats


def train(cfg: Config, *, run_names: list[str] | None = None, force: bool = False,
          show_progress: bool = True) -> list[dict]:
    """Train the config's runs (or `run_names`) in one pass; returns their summaries."""
    selected = [cfg.run(n) for n in run_names] if run_names else list(cfg.runs)
    reader = open_store_for(cfg)
    groups = train_groups(cfg)
    device = pick_device(cfg.train.device)
    steps = cfg.train.tokens // cfg.train.batch_size
    if steps < 1:
        raise ConfigError(f"{cfg.path}: [train] tokens: {cfg.train.tokens} is less than one batch "
                          f"({cfg.train.batch_size})")
    todo, summaries = [], []
    for run in selected:
        fp = run_fingerprint(cfg, run, reader)
        run_dir = Path(cfg.train.runs_dir) / run.name
        if not force and run_is_done(run_dir, fp):
            console.print(f"[green]{run.name}[/]: complete, left alone ({run_dir})")
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
            continue
        todo.append((run, fp))
    if not todo:
        return summaries

    # Scale and b_dec init come from the data, once per sweep; a resumed run restores its own scale.
    scale = estimate_scale(reader, groups, seed=cfg.train.seed) if cfg.train.normalize else 1.0
    mean = torch.cat([reader.read_rows(g, 0, min(4096, reader.groups()[g].n_rows)) for g in groups]).mean(0) * scale
    torch.manual_seed(cfg.train.seed)
    states, rng = [], None
    for run, fp in todo:
        rs = _new_run(cfg, run, reader.d_model, device, mean)
        rs.fingerprint = fp
        rs.dir.mkdir(parents=True, exist_ok=True)
        ckpt = None if force else load_checkpoint(rs.dir)
        if ckpt is not None and ckpt["fingerprint"] == fp:
            _restore(rs, ckpt)
            rng = ckpt["rng"]
            console.print(f"{run.name}: resuming from step {rs.step}")
        elif (rs.dir / "log.jsonl").exists():
            (rs.dir / "log.jsonl").unlink()  # a fresh start: the old log belongs to other weights
        rs.log = open(rs.dir / "log.jsonl", "a")
        states.append(rs)
    if rng is not None:
        torch.set_rng_state(rng)

    start = min(rs.step for rs in states if rs.status == "running") if any(
        rs.status == "running" for rs in states) else steps
    stream = ActivationStream(reader, groups, batch_size=cfg.train.batch_size,
                              buffer_rows=cfg.train.buffer_rows, seed=cfg.train.seed,
                              mix=cfg.train.mix or None, heldout_rows=cfg.train.heldout_rows,
                              device=device, scale=scale, total_batches=steps)
    stream.load_state_dict({"batches_served": start})
    t0 = time.perf_counter()
    names = ", ".join(rs.cfg.name for rs in states)
    console.print(f"training {len(states)} run(s) ({names}) on {device}, {steps} steps of "
                  f"{cfg.train.batch_size} rows from {cfg.harvest.store}")
    try:
        with progress("step", disable=not show_progress, extra="{task.fields[stats]}") as bar:
            task = bar.add_task("train", total=steps, completed=start, stats="")
            for step, (x, is_forget) in zip(range(start, steps), stream):
                for rs in states:
                    if rs.status != "running" or rs.step > step:
                        continue
                    _train_step(rs, x, is_forget, step, steps)
                    if rs.status == "running" and (step + 1) % cfg.train.checkpoint_every == 0:
                        _checkpoint(rs, {"batches_served": step + 1}, scale)
                live = [rs for rs in states if rs.last]
                bar.update(task, advance=1, stats=" ".join(
                    f"{rs.cfg.name}:{rs.last.get('loss', 0):.3g}/L0 {rs.last.get('l0', 0):.0f}"
                    for rs in live[:3]) + (" ..." if len(live) > 3 else ""))
                if all(rs.status != "running" for rs in states):
                    break
    finally:
        for rs in states:
            rs.log.close()
    seconds = time.perf_counter() - t0
    for rs in states:
        if rs.status == "running":
            rs.status = "complete"
        if rs.status != "failed":
            _checkpoint(rs, {"batches_served": rs.step}, scale)
        _finish(rs, cfg, reader, scale, rs.fingerprint, seconds)
        summaries.append(json.loads((rs.dir / "summary.json").read_text()))
        colour = {"complete": "green", "early_stopped": "yellow", "failed": "red"}[rs.status]
        console.print(f"[{colour}]{rs.cfg.name}[/]: {rs.status} at step {rs.step}  "
                      f"L0 {rs.last.get('l0', float('nan')):.1f}  "
                      f"EV {rs.last.get('explained_variance', float('nan')):.3f}  -> {rs.dir}"
                      + (f"  ({rs.message})" if rs.message else ""), highlight=False)
    return summaries


def _train_step(rs: RunState, x: torch.Tensor, is_forget: torch.Tensor, step: int, steps: int) -> None:
    train = rs.train
    lr = lr_at(step, steps, train)
    for group in rs.opt.param_groups:
        group["lr"] = lr
    l1_scale = min(1.0, (step + 1) / train.l1_warmup_steps) if train.l1_warmup_steps else 1.0
    out = rs.sae.training_loss(x, is_forget, step, l1_scale=l1_scale)
    if not torch.isfinite(out.total):
        rs.status = "failed"
        rs.message = (f"loss became {out.total.item()} at step {step}; weights not saved, last good "
                      f"checkpoint kept in {rs.dir / 'checkpoint'}")
        console.print(f"[red]{rs.cfg.name}: {rs.message}[/]")
        return
    rs.opt.zero_grad(set_to_none=True)
    out.total.backward()
    if train.grad_clip:
        torch.nn.utils.clip_grad_norm_(rs.sae.parameters(), train.grad_clip)
    rs.opt.step()
    info = rs.sae.on_step_end(step + 1, out.f, is_forget) or {}
    rs.steps_since_fired = torch.where(out.fired, 0, rs.steps_since_fired + 1)
    dead = rs.steps_since_fired > train.dead_window
    if train.resample_dead and (step + 1) % train.dead_window == 0 and dead.any():
        resample_dead(rs.sae, rs.opt, dead, x)
        rs.steps_since_fired[dead] = 0
    rs.step = step + 1
    if info.get("regrouped") and should_stop(info["cond"], rs.ortho.cond_max):
        rs.status = "early_stopped"
        rs.message = (f"group condition number {max(info['cond']):.3g} > cond_max "
                      f"{rs.ortho.cond_max:g} at step {rs.step}")
    if rs.step % train.log_every == 0 or rs.step == steps or info.get("regrouped") or rs.status != "running":
        stats = _batch_stats(x, out, rs.sae)
        stats.update({"step": rs.step, "loss": float(out.total.detach()), "lr": lr, "l1_scale": l1_scale,
                      "dead": int(dead.sum()), "dead_frac": float(dead.float().mean())})
        for key in ("group_sizes", "cond", "eff_rank", "regrouped", "n_moved"):
            if key in info:
                value = info[key]
                stats[key] = value.tolist() if isinstance(value, torch.Tensor) else value
        stats = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in stats.items()}
        rs.last = stats
        rs.log.write(json.dumps(stats) + "\n")
        rs.log.flush()
