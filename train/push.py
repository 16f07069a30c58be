"""`pipe push RUN... --repo OWNER/NAME`: trained runs to the Hugging Face Hub in SAELens' layout.

The repo holds one folder per run, as SAELens' own releases do, and a model card at its root:

    README.md                       library saelens; model, layer, hook; each run's settings and
                                    report figures; how to load (the grouped SAE needs orthosae)
    <run>/cfg.json                  the export, as `pipe train` wrote it
    <run>/sae_weights.safetensors
    <run>/sparsity.safetensors      log10 feature densities (train/sparsity.py)

so ``sae_lens.SAE.from_pretrained("OWNER/NAME", "<run>")`` loads a run. The folder is staged on
disk first (``stage``: ``<reports_dir>/<eval name>/hub/<OWNER>--<NAME>/``, kept for inspection) and
sent whole with ``huggingface_hub``'s ``create_repo`` + ``upload_folder`` (``upload``): the network
sees exactly the staged files. The Hub token comes from ``huggingface-cli login`` or ``HF_TOKEN``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from orthosae.common import owned, variants
from orthosae.common.config import Config, ConfigError
from orthosae.common.errors import UserError
from orthosae.common.markdown import cell
from orthosae.common.model import hub_model_id
from orthosae.train.export import CFG_FILENAME, GROUPED_ARCH, WEIGHTS_FILENAME
from orthosae.train.sparsity import SPARSITY_FILENAME
from orthosae.train.verify import read_summary, require_intact_export

FILES = (CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME)
REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# report.json figures shown per run on the card: (section, key, label)
FIGURES = (
    ("reconstruction", "l0", "L0"),
    ("reconstruction", "explained_variance", "explained variance"),
    ("reconstruction", "mse", "MSE"),
    ("reconstruction", "cossim", "cos sim"),
    ("reconstruction", "frac_dead", "dead fraction"),
    ("downstream", "ce_loss_score", "CE-loss score"),
    ("downstream", "kl_div_score", "KL score"),
    ("unlearning", "unlearning_score", "MCQ unlearning score"),
    ("unlearning", "loss_unlearning_score", "loss unlearning score"),
    ("unlearning", "best_selectivity", "best selectivity"),
)


def check_repo(cfg: Config, repo: str) -> None:
    if not REPO_RE.match(repo):
        raise ConfigError(f"{cfg.path}: --repo {repo}: expected OWNER/NAME (a Hugging Face model repo id)")


def staging_dir(cfg: Config, repo: str) -> Path:
    return Path(cfg.eval.reports_dir) / cfg.eval.name / "hub" / repo.replace("/", "--")


def _report_runs(cfg: Config) -> dict:
    path = Path(cfg.eval.reports_dir) / cfg.eval.name / "report.json"
    if not path.exists():
        return {}
    from orthosae.common.report_json import ReportUnreadable, read_report

    try:
        return read_report(path)["runs"]
    except ReportUnreadable as e:  # the card would quote wrong figures
        raise ReportError(f"{e}; `pipe eval` writes it again") from None


def _run_dir(cfg: Config, name: str) -> Path:
    """The run's folder, its export verified against its digests first: what is staged is what
    `pipe train` wrote, never a truncated or swapped file."""
    cfg.run(name)  # a name the config does not have: one line naming the config
    run_dir = Path(cfg.train.runs_dir) / name
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in ("complete", "early_stopped"):
        raise ConfigError(f"{run_dir}: not a trained run (no complete summary.json); `pipe train --run {name}` first")
    require_intact_export(run_dir, summary)
    return run_dir


def _ensure_sparsity(cfg: Config, run_dir: Path) -> None:
    """Runs exported before sparsity.safetensors existed get it now, from the config's store."""
    if (run_dir / SPARSITY_FILENAME).is_file():
        return
    from orthosae.common.store import open_store_for
    from orthosae.train.export import load_sae
    from orthosae.train.runner import train_corpora
    from orthosae.train.sparsity import feature_density, save_sparsity, sparsity_rows

    sae, _ = load_sae(run_dir)  # raw-activation weights: the rows need no scale
    save_sparsity(run_dir, feature_density(sae, sparsity_rows(open_store_for(cfg), train_corpora(cfg)), 1.0))


def stage(cfg: Config, run_names: list[str], repo: str, dest: Path | None = None, fmt: str = "saelens") -> Path:
    """The repo's files for ``run_names`` in ``dest`` (replaced), returns it. ``fmt``: "saelens" (one
    SAELens folder per run) or "sparsify" (``<run>/layers.<L>/`` in sparsify's layout, train/sparsify_export.py)."""
    check_repo(cfg, repo)
    if not run_names:
        raise ConfigError(f"{cfg.path}: pipe push: name at least one run (have: {', '.join(r.name for r in cfg.runs)})")
    dirs = {name: _run_dir(cfg, name) for name in run_names}
    dest = Path(dest) if dest is not None else staging_dir(cfg, repo)
    tmp = dest.with_name(dest.name + ".tmp")
    owned.remove(tmp, "pipe push")  # only ever a folder this command made
    cards, reported = [], {}
    for layer in {cfg.run(name).layer for name in run_names}:  # each run's figures from its layer's report
        reported.update(_report_runs(cfg.at_layer(layer)))
    owned.make(tmp)
    for name, run_dir in dirs.items():
        if fmt == "sparsify":
            from orthosae.train.sparsify_export import save_sparsify

            save_sparsify(run_dir, tmp / name)
        else:
            _ensure_sparsity(cfg.view_of(name), run_dir)
            (tmp / name).mkdir()
            for f in FILES:
                shutil.copy2(run_dir / f, tmp / name / f)
        summary = json.loads((run_dir / "summary.json").read_text())
        report = reported.get(name)
        if report is not None and report.get("summary", {}).get("fingerprint") != summary.get("fingerprint"):
            report = None  # the report measured other weights
        cards.append((name, json.loads((run_dir / CFG_FILENAME).read_text()), summary, report))
    (tmp / "README.md").write_text(model_card(repo, cards, fmt))
    (tmp / owned.MARK).unlink()  # the staged folder holds exactly what is uploaded
    owned.remove(dest, "pipe push", "README.md")
    tmp.rename(dest)
    return dest


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def model_card(repo: str, cards: list[tuple[str, dict, dict, dict | None]], fmt: str = "saelens") -> str:
    """The repo's README.md: front matter for the Hub (library saelens), then per run what it is,
    how it was trained, what the report measured, and how to load it."""
    meta = cards[0][1].get("metadata", {})
    model, hook = meta.get("model_name"), meta.get("hook_name")
    hooks = {name: c.get("metadata", {}).get("hook_name") for name, c, _, _ in cards}
    layers = sorted({c.get("hook_layer", c.get("metadata", {}).get("hook_layer")) for _, c, _, _ in cards}, key=str)
    layer = ", ".join(map(str, layers))
    front = ["---", "library_name: saelens"] if fmt == "saelens" else ["---"]
    base = hub_model_id(cards[0][1].get("model_source", model))  # exports before model_source: model_name
    if base and re.match(r"^[\w.-]+/[\w.-]+$", str(base)) and not Path(str(base)).exists():  # a Hub id, not a path
        front.append(f"base_model: {base}")
    front += ["tags:", f"- {fmt}", "- sparse-autoencoder", "- orthosae", "---"]
    grouped = [n for n, cfg, _, _ in cards if cfg.get("architecture") == GROUPED_ARCH]
    lines = front + [
        "",
        f"# {repo}",
        "",
        f"Sparse autoencoders trained with orthosae on **{model}**, layer{'s' if len(layers) > 1 else ''} "
        f"**{layer}**, hook `{hook if len(layers) == 1 else 'blocks.<layer>.hook_resid_post'}`, in SAELens' layout: one folder per SAE (`cfg.json`, `sae_weights.safetensors`, "
        "`sparsity.safetensors` = log10 feature density on training rows). The weights work on raw "
        "activations (the training normalisation is folded in).",
        "",
        "| SAE (folder) | hook | type | architecture | d_in | d_sae | steps | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, cfg, summary, _ in cards:
        lines.append(
            f"| `{name}` | `{hooks[name]}` | {summary.get('type')} | {cfg.get('architecture')} | {cfg.get('d_in')} | "
            f"{cfg.get('d_sae')} | {summary.get('steps')} | {summary.get('status')} |"
        )
    if fmt == "sparsify":
        from orthosae.train.sparsify_export import hookpoint

        point = f"{cards[0][0]}/{hookpoint(cards[0][1])}"
        lines[len(front) + 3] = (
            f"Sparse autoencoders trained with orthosae on **{model}**, layer"
            f"{'s' if len(layers) > 1 else ''} **{layer}**, in EleutherAI sparsify's layout: "
            "`<SAE folder>/layers.<layer>/` holds `cfg.json` and `sae.safetensors` (raw "
            "activations; a relu SAE is its top-k coder with k = d_sae, exactly)."
        )
        lines += [
            "",
            "## Load",
            "",
            "```python",
            "from sparsify import SparseCoder",
            f'sae = SparseCoder.load_from_hub("{repo}", hookpoint="{point}")',
            "```",
            "",
        ]
    else:
        lines += ["", "## Load", "", "```python", "from sae_lens import SAE"]
    if grouped and fmt != "sparsify":
        lines += [
            "from orthosae.train.export import register_with_sae_lens  # orthosae: the grouped architecture",
            "register_with_sae_lens()",
        ]
    if fmt != "sparsify":
        lines += [f'sae = SAE.from_pretrained("{repo}", "{(grouped or [cards[0][0]])[0]}")', "```", ""]
    if grouped and fmt != "sparsify":
        lines += [
            f"{', '.join(f'`{n}`' for n in grouped)} "
            f"{'is' if len(grouped) == 1 else 'are'} orthosae's grouped adaptive-orthogonal SAE "
            f"(architecture `{GROUPED_ARCH}`: per-token group decoder biases), which sae_lens loads "
            "once orthosae's `register_with_sae_lens()` has registered it (install orthosae from its "
            "repository: `bash setup.sh`). The other runs are plain SAELens architectures.",
            "",
        ]
    lines += ["## Evaluation (orthosae report)"]
    measured = [(n, r) for n, _, _, r in cards if r is not None]
    if measured:
        lines += ["", "| SAE | " + " | ".join(label for _, _, label in FIGURES) + " |", "|---|" + "---|" * len(FIGURES)]
        lines += [
            f"| `{n}` | " + " | ".join(cell(_get(r, sec, key)) for sec, key, _ in FIGURES) + " |" for n, r in measured
        ]
        lines += [
            "",
            "Held-out rows (reconstruction), the SAE spliced into the model (CE / KL), SAEBench's "
            "unlearning protocol and orthosae's loss mode (selectivity = ΔCE forget − ΔCE retain).",
        ]
    missing = [n for n, _, _, r in cards if r is None]
    if missing:
        lines += ["", f"Not evaluated for these weights: {', '.join(f'`{n}`' for n in missing)} (`pipe eval`)."]
    lines += ["", "## Training settings", ""]
    for name, cfg, _, _ in cards:
        o = cfg.get("orthosae", {})
        train, ortho = o.get("train", {}), o.get("ortho", {})
        keys = {
            k: train[k]
            for k in ("d_sae", "tokens", "batch_size", "lr", "l1_coefficient", "activation", "k", "target_l0", "seed")
            if k in train
        }
        read = variants.of(o.get("type")).ortho_keys
        keys.update(
            {
                k: ortho[k]
                for k in ("lambda2_max", "alpha", "alpha_mode", "groups", "weighting", "regroup_every", "t0", "tau")
                if k in ortho and k in read
            }
        )
        lines.append(
            f"- `{name}` ({o.get('type')}): "
            + ", ".join(f"{k} = {v}" for k, v in keys.items())
            + (f"; command-line overrides: {', '.join(cfg['sets'])}" if cfg.get("sets") else "")
        )
    lines += ["", "Every setting, under its `pipeline.toml` name, is in each folder's `cfg.json` (`orthosae`)."]
    return "\n".join(lines) + "\n"


def upload(staged: Path, repo: str, *, private: bool = False, token: str | None = None) -> str:
    """Create ``repo`` (if absent) and upload the staged folder as one commit; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=str(staged),
            repo_type="model",
            commit_message=f"orthosae: {', '.join(sorted(p.name for p in staged.iterdir() if p.is_dir()))}",
        )
    except Exception as e:  # noqa: BLE001 - no network, no token, no write access (the hub's HTTP errors
        # come from its own client library): one line, the staged files kept
        raise PushError(f"upload of {staged} to {repo} failed: {type(e).__name__}: {e}".replace("\n", " ")) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"


class ReportError(UserError):
    """A report the model card would quote does not read (one line naming it)."""


class PushError(RuntimeError):
    """The Hub refused or could not be reached (one line; the staged folder stays)."""
