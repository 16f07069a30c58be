"""SAEBench's own runners on one exported orthosae SAE, offline (sae-bench 0.6.0): core and sparse probing.

SAEBench's runners load the model by name (``HookedTransformer.from_pretrained_no_processing``) and
their datasets by Hub name (``datasets.load_dataset``), with no argument for local files. Nothing here
patches them; they are pointed at local files through the libraries' own offline mechanisms:

- **Model**: a private Hugging Face hub cache (``HF_HUB_CACHE``) holding
  ``models--<org>--<name>/snapshots/<rev>/`` (links to the local model's files) and ``refs/main``, so
  that with ``HF_HUB_OFFLINE=1`` TransformerLens' own ``from_pretrained`` of the SAE's ``model_name``
  (``gemma-3-270m`` -> ``google/gemma-3-270m``) resolves to the model orthosae harvested.
- **Core's texts**: core's ``dataset`` argument is a free string that SAELens' ``ActivationsStore``
  hands to ``load_dataset``; a local folder with ``train.jsonl`` (column ``text``) is one.
- **Sparse probing's texts**: its loader dispatches on the Hub name (``LabHC/bias_in_bios_class_set1``),
  so the stand-in is a private datasets cache (``HF_DATASETS_CACHE``) holding ``LabHC/bias_in_bios``
  as ``datasets`` caches a Hub dataset (``LabHC___bias_in_bios/default/0.0.0/<hash>/``): offline,
  ``load_dataset("LabHC/bias_in_bios")`` falls back to it ("Using the latest cached version").
  Its rows are ours (columns ``hard_text``, ``profession``, ``gender``): class i of our labelled
  texts is profession ``chosen_classes[i]``, "gender" alternates 0/1 within a class. A stand-in,
  not SAEBench's dataset: the figures are not comparable with SAEBench's leaderboard.

The environment variables are read when huggingface_hub / datasets are imported, so the runners run
in a child process (``python -m orthosae.eval.saebench_runner PLAN.json``) with that environment.
SAEBench writes its own JSON: ``<out>/<release>_custom_sae_eval_results.json`` per eval folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from orthosae.common.errors import UserError

EVALS = ("core", "sparse_probing")
PROBE_DATASET = "LabHC/bias_in_bios_class_set1"  # the SAEBench name sparse probing runs under
PROBE_HUB = "LabHC/bias_in_bios"
PROBE_CLASSES = ("0", "1", "2", "6", "9")  # SAEBench's chosen professions of class_set1
STANDIN_HASH = "orthosae-standin"
# the figures SAEBench's run_eval leaves out of a JSON, so a missing file means a failure
RESULT_SUFFIX = "_custom_sae_eval_results.json"


class SaebenchError(UserError):
    """A bad input to the SAEBench runner (one line naming the file, run or key)."""


# ---- the local hub cache (model) ----


def official_model_name(model_name: str) -> str:
    """The Hub id TransformerLens loads for ``model_name`` (an alias such as ``gemma-3-270m``)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(model_name)
    except ValueError:
        raise SaebenchError(
            f"cfg.json model_name {model_name!r}: TransformerLens has no model of that name, so SAEBench cannot load it"
        ) from None


def seed_model_cache(hub_cache: Path, repo_id: str, model_dir: Path) -> Path:
    """``hub_cache/models--<org>--<name>/snapshots/<rev>/``: links to ``model_dir``'s files, ``refs/main``
    naming ``<rev>`` (a digest of the file names and sizes). Returns the snapshot folder."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    if not any(p.name == "config.json" for p in files):
        raise SaebenchError(f"{model_dir}: no config.json, not a transformers model folder")
    rev = hashlib.sha1("".join(f"{p.name}:{p.stat().st_size};" for p in files).encode()).hexdigest()
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for p in files:
        link = snap / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


# ---- local datasets ----


def write_core_texts(out_dir: Path, texts: list[str]) -> Path:
    """A local dataset folder (``train.jsonl``, column ``text``) for core's ``dataset`` argument."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "train.jsonl", "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return out_dir


def probe_rows(classes: dict[str, list[str]]) -> tuple[list[dict], dict[str, str]]:
    """bias_in_bios rows for labelled texts: class i -> profession PROBE_CLASSES[i], gender 0/1 alternating."""
    if len(classes) != len(PROBE_CLASSES):  # SAEBench's filter_dataset looks up every chosen class
        raise SaebenchError(
            f"sparse probing stand-in: {len(classes)} classes; {PROBE_DATASET} needs {len(PROBE_CLASSES)}"
        )
    mapping = {label: PROBE_CLASSES[i] for i, label in enumerate(sorted(classes))}
    rows = [
        {"hard_text": t, "profession": int(mapping[label]), "gender": j % 2}
        for label in sorted(classes)
        for j, t in enumerate(classes[label])
    ]
    return rows, mapping


def seed_probe_dataset(datasets_cache: Path, train: dict[str, list[str]], test: dict[str, list[str]]) -> dict:
    """``datasets_cache/LabHC___bias_in_bios/default/0.0.0/<hash>/`` written by datasets' own json builder."""
    from datasets.packaged_modules.json.json import Json

    (train_rows, mapping), (test_rows, _) = probe_rows(train), probe_rows(test)
    final = Path(datasets_cache) / "LabHC___bias_in_bios" / "default" / "0.0.0" / STANDIN_HASH
    shutil.rmtree(final, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=datasets_cache) as tmp:
        files = {}
        for split, rows in (("train", train_rows), ("test", test_rows)):
            files[split] = str(Path(tmp) / f"{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        builder = Json(
            cache_dir=str(Path(tmp) / "cache"),
            dataset_name="bias_in_bios",
            config_name="default",
            hash=STANDIN_HASH,
            data_files=files,
        )
        builder.download_and_prepare()
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(builder.cache_dir, final)  # datasets names the folder default-<files digest>; the Hub's is default
    return mapping


# ---- the plan and the child process ----


def prepare(
    run_dir: Path,
    work: Path,
    *,
    model_dir: Path,
    core_texts: list[str] | None,
    probe: tuple[dict, dict] | None,
    release: str,
    device: str = "cpu",
    core: dict | None = None,
    probing: dict | None = None,
) -> Path:
    """Write the caches, the local datasets and ``work/plan.json``; return the plan's path."""
    run_dir, work = Path(run_dir).resolve(), Path(work).resolve()
    cfg_path = run_dir / "cfg.json"
    if not cfg_path.is_file():
        raise SaebenchError(f"not an exported SAE: {cfg_path} is missing")
    model_name = json.loads(cfg_path.read_text()).get("model_name")
    if not model_name:
        raise SaebenchError(f"{cfg_path}: no model_name")
    repo_id = official_model_name(model_name)
    seed_model_cache(work / "hub", repo_id, model_dir)
    plan = {
        "run_dir": str(run_dir),
        "release": release,
        "device": device,
        "model_name": model_name,
        "repo_id": repo_id,
        "hub_cache": str(work / "hub"),
        "datasets_cache": str(work / "datasets"),
        "out": str(work / "results"),
        "artifacts": str(work / "artifacts"),
        "evals": [],
    }
    if core_texts is not None:
        plan["evals"].append("core")
        plan["core"] = {"dataset": str(write_core_texts(work / "core_texts", core_texts)), **(core or {})}
    if probe is not None:
        (work / "datasets").mkdir(parents=True, exist_ok=True)
        plan["evals"].append("sparse_probing")
        plan["sparse_probing"] = {"class_map": seed_probe_dataset(work / "datasets", *probe), **(probing or {})}
    (work / "plan.json").write_text(json.dumps(plan, indent=2))
    return work / "plan.json"


def offline_env(plan: dict) -> dict[str, str]:
    """The child's environment: the Hub unreachable by choice, the private caches in its place, and
    jaxtyping's runtime shape checks off: sparse probing's ``train_probe_on_activations`` (@jaxtyped) binds
    ``train_dataset_size`` to a class's N rows, then its own call of ``train_sklearn_probe`` (@beartype)
    passes 2N rows under the same name and is refused (probe_training.py, sae-bench 0.6.0, jaxtyping 0.3)."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": plan["hub_cache"],
        "HF_DATASETS_CACHE": plan["datasets_cache"],
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "JAXTYPING_DISABLE": "1",
    }


def launch(plan_path: Path, timeout: float | None = None) -> dict[str, Path]:
    """Run SAEBench in a child process with ``offline_env``; return {eval: its JSON}. Raises
    SaebenchError naming the eval whose JSON SAEBench did not write (its runner logs and skips)."""
    plan = json.loads(Path(plan_path).read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "orthosae.eval.saebench_runner", str(plan_path)], env=offline_env(plan), timeout=timeout
    )
    out = {e: result_path(plan, e) for e in plan["evals"]}
    missing = [e for e, p in out.items() if not p.is_file()]
    if proc.returncode != 0 or missing:
        raise SaebenchError(
            f"SAEBench {', '.join(missing) or 'run'} on {plan['run_dir']}: no result JSON "
            f"(exit {proc.returncode}; its log is above)"
        )
    return out


def result_path(plan: dict, eval_name: str) -> Path:
    return Path(plan["out"]) / eval_name / f"{plan['release']}{RESULT_SUFFIX}"


# ---- `pipe saebench`: one run of the config, the embedded texts as stand-ins ----

STANDIN_TEXTS = "embedded:wiki_topics"  # five topics of held-out wiki extracts (eval/probe_data.py)


def run_for_config(
    cfg,
    run_name: str,
    *,
    out: Path | None,
    device: str,
    n_batches: int,
    batch_size: int,
    probe_train: int,
    probe_test: int,
) -> dict[str, Path]:
    """SAEBench core + sparse probing on ``runs_dir/<run_name>``; returns {eval: SAEBench's JSON}."""
    import random

    from orthosae.common.model import local_model_dir
    from orthosae.common.progress import console
    from orthosae.eval.probe_data import class_texts

    cfg.run(run_name)  # a name the config does not have: one line naming the config
    run_dir = Path(cfg.train.runs_dir) / run_name
    source = (
        json.loads((run_dir / "cfg.json").read_text()).get("model_source") if (run_dir / "cfg.json").is_file() else None
    )
    model_dir = local_model_dir(source) if source else None
    if model_dir is None:
        raise SaebenchError(
            f"{run_dir / 'cfg.json'}: model_source {source!r} is not the embedded model or a local "
            "folder; run SAEBench online for a Hub model"
        )
    if probe_train % 4 or probe_test % 4:
        raise SaebenchError(
            f"--probe-train {probe_train} / --probe-test {probe_test}: must be multiples of 4 "
            "(SAEBench balances 2 genders x 2 classes)"
        )
    train, test = class_texts(
        STANDIN_TEXTS,
        probe_train // 2,
        probe_test // 2,
        42,
        cfg.harvest.heldout_fraction,
        where="pipe saebench --probe-train / --probe-test",
    )
    core_texts = sorted({t for texts in (*train.values(), *test.values()) for t in texts})
    random.Random(0).shuffle(core_texts)
    work = Path(out) if out else Path(cfg.eval.reports_dir) / cfg.eval.name / "saebench" / run_name
    with console.status(f"{run_name}: SAEBench's caches and stand-in datasets in {work}"):
        plan = prepare(
            run_dir,
            work,
            model_dir=model_dir,
            core_texts=core_texts,
            probe=(train, test),
            release=f"orthosae-{run_name}",
            device=device,
            core={"n_batches": n_batches, "batch_size_prompts": batch_size},
            probing={"train_size": probe_train, "test_size": probe_test, "context_length": cfg.harvest.context_length},
        )
    console.print(f"{run_name}: SAEBench core + sparse probing, offline (its own progress bars follow)")
    return launch(plan)


# ---- inside the child: SAEBench's own runners ----


def run_core(plan: dict, sae) -> None:
    from sae_bench.evals.core.main import multiple_evals

    c = plan["core"]
    multiple_evals(
        selected_saes=[(plan["release"], sae)],
        dataset=c["dataset"],
        n_eval_reconstruction_batches=c.get("n_batches", 4),
        n_eval_sparsity_variance_batches=c.get("n_batches", 4),
        eval_batch_size_prompts=c.get("batch_size_prompts", 8),
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        context_size=int(sae.cfg.context_size),
        output_folder=str(Path(plan["out"]) / "core"),
        dtype="float32",
        device=plan["device"],
        force_rerun=True,
    )


def run_sparse_probing(plan: dict, sae) -> None:
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.evals.sparse_probing.main import run_eval

    p = plan["sparse_probing"]
    config = SparseProbingEvalConfig(
        model_name=plan["model_name"],
        dataset_names=[PROBE_DATASET],
        probe_train_set_size=p["train_size"],
        probe_test_set_size=p["test_size"],
        context_length=p.get("context_length", 128),
        llm_batch_size=p.get("llm_batch_size", 16),
        llm_dtype="float32",
        k_values=p.get("k_values", [1, 2, 5]),
    )
    run_eval(
        config,
        [(plan["release"], sae)],
        plan["device"],
        str(Path(plan["out"]) / "sparse_probing"),
        force_rerun=True,
        save_activations=False,
        artifacts_path=plan["artifacts"],
    )


def main(plan_path: str) -> int:
    from orthosae.train.export import load_for_saebench

    plan = json.loads(Path(plan_path).read_text())
    sae = load_for_saebench(plan["run_dir"], plan["device"])
    for name in plan["evals"]:
        {"core": run_core, "sparse_probing": run_sparse_probing}[name](plan, sae)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
