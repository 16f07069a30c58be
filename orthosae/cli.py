"""`pipe`: the one command line. Stages are imported inside their commands (one-way data flow).

Exit codes (docs/operations.md, "Batch jobs"): 0 done; 1 a run failed in training (or `verify` found damage, or
an unexpected error); 2 bad input (config, store, corpus, model, export or run folder: one line
naming it) or a write the disk refused (full, read-only, permission); 75 preempted by SIGTERM /
SIGINT after saving the work in hand (rerun the same command to resume).
"""

from __future__ import annotations

import json
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from orthosae.common import events, preempt, tracker
from orthosae.common.config import ConfigError, load_config
from orthosae.common.errors import WRITE_ERRNOS, UserError, first_line, one_line, os_error_line
from orthosae.common.progress import configure, console, hms

DEFAULT_CONFIG = "pipeline.toml"
EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_PREEMPTED = 1, 2, preempt.EXIT_PREEMPTED


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    console.print(Text.assemble(("error: ", "bold red"), message))  # Text: no markup in paths/keys
    events.finish("failed", code, reason=message)
    sys.exit(code)


def _preempted(ctx: click.Context, e: preempt.Preempted) -> None:
    preempt.acknowledge()
    resume = shlex.join(["pipe", *ctx.meta.get("argv", [])])
    console.print(
        Text.assemble(
            (f"preempted ({e.signal_name})", "bold yellow"),
            f": {e.saved}; resume with `{resume}` (exit {EXIT_PREEMPTED})",
        )
    )
    events.finish("preempted", EXIT_PREEMPTED, signal=e.signal_name, saved=e.saved, resume=resume)
    sys.exit(EXIT_PREEMPTED)


class _Cli(click.Group):
    """Turns the project's expected errors into one red line instead of a traceback, a signal into
    exit 75, and closes the invocation's event log with the outcome. This is the one place errors
    become exit codes: every error type of the project derives from ``common.errors.UserError``."""

    def parse_args(self, ctx, args):
        ctx.meta["argv"] = list(args)  # for the resume hint and the event log
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
        except UserError as e:
            _fail(one_line(e))
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                events.finish("failed", 1, reason=f"{type(e).__name__}: {first_line(e)}")
                raise
            _fail(os_error_line(e))
        except preempt.Preempted as e:
            _preempted(ctx, e)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            events.finish("done" if code == 0 else "failed", code)
            raise
        except Exception as e:
            events.finish("failed", 1, reason=f"{type(e).__name__}: {first_line(e)}")
            raise
        events.finish("done", 0)
        return result


@contextmanager
def _job(ctx: click.Context, command: str):
    """A command that does work: its config, its event log, and SIGTERM / SIGINT handled."""
    cfg = _config(ctx)
    with preempt.handle_signals():
        events.start(cfg, command, ctx.meta.get("argv", []))
        tracker.attach(cfg)  # [log] tracker: mirrors this job's events to wandb / trackio
        yield cfg


@click.group(cls=_Cli)
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="pipeline config (TOML)",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config key, e.g. --set train.lr=3e-4 --set train.ortho.alpha=[0,0.04] "
    "(repeatable; checked as the file is; docs/tools.md)",
)
@click.pass_context
def main(ctx: click.Context, config_path: str, sets: tuple[str, ...]) -> None:
    """orthosae: harvest activations, train orthogonal grouped SAEs, evaluate unlearning."""
    ctx.obj = {"config_path": config_path, "sets": sets}


def _config(ctx: click.Context):
    cfg = load_config(ctx.obj["config_path"], ctx.obj.get("sets", ()))
    configure(cfg.log.progress_seconds, cfg.log.progress_percent)
    return cfg


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return ""


@main.command()
@click.option("--force", is_flag=True, help="delete a complete store and harvest again")
@click.option("--repair", is_flag=True, help="verify the store, then re-harvest only the chunks that fail")
@click.pass_context
def harvest(ctx: click.Context, force: bool, repair: bool) -> None:
    """Run the model once up to [harvest] layer and cache its residual stream (resumable)."""
    from orthosae.harvest import harvest as run_harvest

    with _job(ctx, "harvest") as cfg:
        result = run_harvest(cfg, force=force, repair=repair)
    from accelerate import PartialState

    if PartialState().is_main_process and not result.skipped:
        rate = result.rows_written / max(result.seconds, 1e-9)
        console.print(
            f"[green]harvest done[/]: {result.rows_written:,} rows in {result.seconds:.0f} s "
            f"({rate:,.0f} tok/s, model load included) -> [bold]{result.store}[/]"
        )


@main.command()
@click.option(
    "--run", "run_names", multiple=True, help="train only this run (repeatable); lets a scheduler spread runs over GPUs"
)
@click.option(
    "--force",
    is_flag=True,
    help="train the runs again from step 0, whatever their folders hold (complete, checkpointed or damaged)",
)
@click.pass_context
def train(ctx: click.Context, run_names: tuple[str, ...], force: bool) -> None:
    """Stream the store into every [[runs]] SAE (one pass over the data for all of them)."""
    from orthosae.train import train as run_train

    with _job(ctx, "train") as cfg:
        summaries = run_train(cfg, run_names=list(run_names) or None, force=force)
    console.print(f"[green]train done[/]: {len(summaries)} run(s) in [bold]{cfg.train.runs_dir}/[/]")
    _exit_if_a_run_failed(cfg, summaries, "")


def _exit_if_a_run_failed(cfg, summaries: list[dict], then: str) -> None:
    failed = [s for s in summaries if s["status"] == "failed"]
    if failed:
        _fail(
            "; ".join(f"run {s['run']} failed: {s['message']}" for s in failed)
            + f" (see {cfg.train.runs_dir}/<run>/summary.json){then}",
            EXIT_RUN_FAILED,
        )


@main.command("eval")
@click.option("--run", "run_names", multiple=True, help="evaluate only this run (repeatable)")
@click.pass_context
def eval_(ctx: click.Context, run_names: tuple[str, ...]) -> None:
    """Reconstruction, downstream CE/KL, conditioning and unlearning reports across runs."""
    from orthosae.eval import evaluate

    with _job(ctx, "eval") as cfg:
        out = evaluate(cfg, run_names=list(run_names) or None)
    console.print(f"[green]eval done[/]: report in [bold]{out}/report.md[/] (+ report.json, plots)")


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """harvest -> train -> eval, skipping each stage (or run) that is already complete."""
    from orthosae.eval import evaluate, report_is_current
    from orthosae.harvest import harvest as run_harvest
    from orthosae.train import train as run_train

    with _job(ctx, "run") as cfg:
        console.rule("1/3 harvest")
        run_harvest(cfg)
        _stop_between_stages("the store is complete; train not started")
        console.rule("2/3 train")
        summaries = run_train(cfg)
        _exit_if_a_run_failed(cfg, summaries, "; eval not started")
        _stop_between_stages("every run is trained; eval not started")
        console.rule("3/3 eval")
        if report_is_current(cfg):
            out = Path(cfg.eval.reports_dir) / cfg.eval.name
            console.print(f"[green]{out}: report is current, left alone[/]")
        else:
            out = evaluate(cfg)
    console.print(
        f"[green]pipeline done[/]: store [bold]{', '.join(_store_urls(cfg, ()))}[/], runs "
        f"[bold]{cfg.train.runs_dir}/[/], report [bold]{out}/report.md[/]"
    )
    from orthosae.eval.browser import browser_hint

    for view in cfg.layer_views():
        console.print(browser_hint(view))


def _stop_between_stages(state: str) -> None:
    """A signal during a stage's last chunk or step lets the stage finish: stop before the next."""
    if preempt.requested():
        raise preempt.Preempted(state)


def _int_option(name: str, default: int, low: int, help: str, high: int | None = None):
    """An integer option of at least ``low`` (and at most ``high``), its default shown in --help."""
    return click.option(name, default=default, show_default=True, type=click.IntRange(low, high), help=help)


@main.command("inspect")
@click.option("--run", "run_names", multiple=True, help="only this run (repeatable; default: every trained run)")
@_int_option("--top-k", 20, 1, "top-activating held-out rows kept per feature", high=500)
@_int_option("--max-rows", 0, 0, "rows read per held-out corpus, whole contexts (0 = all)")
@click.pass_context
def inspect_(ctx: click.Context, run_names: tuple[str, ...], top_k: int, max_rows: int) -> None:
    """Static HTML feature browser per run (top contexts, histograms, neighbours, logit effects)."""
    from orthosae.eval.browser import build_browser

    with _job(ctx, "inspect") as cfg:
        for name in run_names:
            cfg.run(name)
        roots = []
        for view in cfg.layer_views():  # several layers: a browser per layer, beside its report
            names = [n for n in run_names if n in {r.name for r in view.runs}]
            if view.runs and not (run_names and not names):
                roots.append(build_browser(view, run_names=names or None, top_k=top_k, max_rows=max_rows))
    for root in roots:
        console.print(f"[green]inspect done[/]: feature browser in [bold]{root}/index.html[/] (open it from disk)")


@main.command()
@click.argument("run_names", nargs=-1, required=True, metavar="RUN...")
@click.option("--repo", required=True, metavar="OWNER/NAME", help="Hugging Face model repo (created if absent)")
@click.option("--private", is_flag=True, help="create the repo private")
@click.option("--dry-run", is_flag=True, help="stage the repo's files and the model card only; upload nothing")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["saelens", "sparsify"]),
    default="saelens",
    show_default=True,
    help="saelens: one SAELens folder per run; sparsify: <run>/layers.<L>/ in EleutherAI sparsify's layout",
)
@click.pass_context
def push(ctx: click.Context, run_names: tuple[str, ...], repo: str, private: bool, dry_run: bool, fmt: str) -> None:
    """Upload trained runs to the Hugging Face Hub in SAELens' (or sparsify's) layout, with a model card."""
    from orthosae.train.push import PushError, check_repo, stage, upload

    with _job(ctx, "push") as cfg:
        check_repo(cfg, repo)
        staged = stage(cfg, list(run_names), repo, fmt=fmt)
        console.print(f"staged {len(run_names)} run(s) + model card in [bold]{staged}/[/]")
        if dry_run:
            return
        try:
            url = upload(staged, repo, private=private)
        except PushError as e:
            _fail(str(e), EXIT_RUN_FAILED)
    console.print(f"[green]push done[/]: [bold]{url}[/]")


@main.command("saebench")
@click.argument("run_name", metavar="RUN")
@click.option(
    "--out",
    default=None,
    help="work folder: caches, stand-in datasets, SAEBench's JSON (default: reports/<eval name>/saebench/RUN)",
)
@click.option("--device", default="cpu", show_default=True, help="torch device SAEBench runs on")
@_int_option("--batches", 4, 1, "core: reconstruction and sparsity/variance batches")
@_int_option("--batch-size", 8, 1, "core: contexts per batch")
@_int_option("--probe-train", 120, 4, "sparse probing: probe_train_set_size (SAEBench: 4000)")
@_int_option("--probe-test", 40, 4, "sparse probing: probe_test_set_size (SAEBench: 1000)")
@click.pass_context
def saebench(
    ctx: click.Context,
    run_name: str,
    out: str | None,
    device: str,
    batches: int,
    batch_size: int,
    probe_train: int,
    probe_test: int,
) -> None:
    """Run SAEBench's own core and sparse probing runners on one trained run, offline (docs/tools.md)."""
    from orthosae.eval.saebench_runner import run_for_config

    with _job(ctx, "saebench") as cfg:
        paths = run_for_config(
            cfg,
            run_name,
            out=out,
            device=device,
            n_batches=batches,
            batch_size=batch_size,
            probe_train=probe_train,
            probe_test=probe_test,
        )
    for name, path in paths.items():
        console.print(f"[green]SAEBench {name}[/]: [bold]{path}[/]")


@main.command("export-cache")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["saelens"]),
    default="saelens",
    show_default=True,
    help="saelens: the Hugging Face datasets folder SAELens' cached-activation path reads",
)
@click.option("--out", default=None, help="output folder (default: the store's path + '-saelens')")
@click.option(
    "--corpus",
    "corpora",
    multiple=True,
    help="store corpus to export (repeatable; default: the config's training corpora)",
)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option(
    "--layer",
    "layer",
    type=int,
    default=None,
    help="the harvested layer to export (needed when [harvest] layers lists several)",
)
@click.pass_context
def export_cache(
    ctx: click.Context, fmt: str, out: str | None, corpora: tuple[str, ...], dtype: str, layer: int | None
) -> None:
    """Write the store's training rows as another tool's activation cache (SAELens)."""
    from orthosae.common.progress import progress
    from orthosae.common.store import open_store_for
    from orthosae.harvest.export_cache import export_saelens, saelens_snippet

    with _job(ctx, "export-cache") as cfg:
        if layer is None and len(cfg.layers) > 1:
            raise ConfigError(
                f"{cfg.path}: [harvest] layers: {', '.join(map(str, cfg.layers))} are harvested; pick one with --layer"
            )
        if layer is not None and layer not in cfg.layers:
            raise ConfigError(
                f"{cfg.path}: --layer {layer}: not harvested ([harvest] layers: {', '.join(map(str, cfg.layers))})"
            )
        cfg = cfg.at_layer(cfg.layers[0] if layer is None else layer)
        reader = open_store_for(cfg)
        names = list(corpora) or [n for n, c in cfg.corpora.items() if c.split == "train"]
        if out is None:
            if "://" in cfg.harvest.store:
                raise ConfigError(f"{cfg.path}: [harvest] store: {cfg.harvest.store} is remote; give --out")
            out = str(Path(cfg.harvest.store.rstrip("/")).with_suffix("")) + f"-{fmt}"
        info = reader.corpora()
        with progress("chunk") as bar:
            task = bar.add_task("export-cache", total=sum(info[n].n_chunks for n in names if n in info))
            result = export_saelens(reader, names, Path(out), dtype=dtype, progress=lambda k: bar.advance(task, k))
    console.print(
        f"[green]export-cache done[/]: {result.contexts:,} contexts ({result.rows:,} rows, "
        f"{', '.join(result.corpora)}) -> [bold]{result.path}[/]"
    )
    console.print(Text("SAELens:\n" + saelens_snippet(result, cfg.model.id)))


def _store_urls(cfg, paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    return [cfg.harvest.store_for(layer) for layer in cfg.layers]  # one store per harvested layer


def _store_status(url: str) -> dict:
    from orthosae.common.store import StoreReader, store_exists

    if not store_exists(url):
        return {"url": url, "state": "missing"}
    reader = StoreReader(url)
    return {
        "url": url,
        "state": "complete" if reader.complete else "incomplete",
        "size_bytes": reader.size_on_disk(),
        "meta": dict(reader.meta),
        "corpora": [{"name": name, **g.summary()} for name, g in reader.corpora().items()],
    }


def _print_store(s: dict) -> None:
    url = s["url"]
    if s["state"] == "missing":
        console.print(f"[yellow]{url}[/]: not harvested yet")
        return
    m = s["meta"]
    state = "[green]complete[/]" if s["state"] == "complete" else "[yellow]incomplete[/]"
    console.print(f"[bold]{url}[/]  {state}  {_human_bytes(s['size_bytes'])} on disk")
    console.print(
        f"  model {m['model_id']} (rev {m.get('revision')}, sha256 {str(m.get('file_sha256'))[:12]}) "
        f"layer {m['layer']} {m['hook']}  d_model {m['d_model']}  {m['storage_dtype']}  "
        f"T={m['context_length']}  created {m.get('created')}",
        highlight=False,
    )
    table = Table("corpus", "role", "split", "tokens", "contexts", "chunks", "state")
    for g in s["corpora"]:
        table.add_row(
            g["name"],
            g["role"],
            g["split"],
            f"{g['tokens']:,}",
            f"{g['contexts']:,}",
            f"{g['chunks_done']}/{g['chunks']}",
            "complete" if g["complete"] else "incomplete",
        )
    console.print(table)
    from orthosae.common.corpora import composition_text

    for g in s["corpora"]:  # the document order and what each corpus holds (documents, tokens per label)
        console.print(Text(f"  {g['name']}: {composition_text(g['composition'])}"))


def _pipeline_status(cfg) -> dict:
    """Runs, report and the last job of a config, beside its store."""
    from orthosae.common.store import StoreReader, store_exists
    from orthosae.eval import report_is_current
    from orthosae.status import run_status

    runs = []
    for view in cfg.layer_views():  # each run beside its layer's store
        reader = StoreReader(view.harvest.store) if store_exists(view.harvest.store) else None
        runs += [run_status(view, run, reader) for run in view.runs]
    report = Path(cfg.eval.reports_dir) / cfg.eval.name / "report.md"
    # current: made from the runs on disk (what `pipe run` checks), and those are the config's
    trained = all(r["status"] in ("complete", "early_stopped") for r in runs)
    problem = _report_problem(report.with_suffix(".json"))
    state = (
        "missing"
        if not report.with_suffix(".json").exists()
        else "unreadable"
        if problem
        else "current"
        if trained and report_is_current(cfg)
        else "stale"
    )
    return {
        "runs_dir": cfg.train.runs_dir,
        "runs": runs,
        "report": {"path": str(report), "state": state, **({"problem": problem} if problem else {})},
        "last_job": events.last_job(cfg),
    }


def _report_problem(path: Path) -> str | None:
    """What is wrong with a report.json that exists but does not read (cut short, not JSON, no
    permission): a damaged report is not the same as one made from other runs."""
    from orthosae.common.report_json import ReportUnreadable, read_report

    if not path.exists():
        return None
    try:
        read_report(path)
    except ReportUnreadable as e:
        return str(e)
    return None


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_pipeline(p: dict) -> None:
    table = Table(
        "run",
        "type",
        "status",
        "step",
        "L0",
        "EV (batch)",
        "elapsed",
        "checkpoint",
        title=f"runs in {p['runs_dir']}/",
        title_justify="left",
    )
    colours = {
        "complete": "green",
        "early_stopped": "yellow",
        "failed": "red",
        "damaged": "red",
        "partial": "yellow",
        "stale": "yellow",
    }
    for r in p["runs"]:
        status = r["status"] + (f" ({r['message']})" if r["message"] else "")
        table.add_row(
            r["run"],
            r["type"],
            Text(status, style=colours.get(r["status"], "")),
            f"{r['step']}/{r['total_steps']}",
            _fmt(r["l0"], ".1f"),
            _fmt(r["ev"], ".3f"),
            "-" if r["seconds"] is None else hms(r["seconds"]),
            _fmt(r["checkpoint_step"], "d"),
        )
    console.print(table)
    report = p["report"]
    colour = {"current": "green", "stale": "yellow", "missing": "yellow", "unreadable": "red"}[report["state"]]
    why = {
        "stale": " (the runs changed since: `pipe eval` writes it again)",
        "unreadable": f" ({report.get('problem')}; `pipe eval` writes it again)",
    }.get(report["state"], "")
    console.print(Text.assemble("report ", (report["path"], "bold"), ": ", (report["state"], colour), why))
    job = p["last_job"]
    if job:
        console.print(
            Text(
                f"last job: {job['command']} started {job['started']}: {job['state']}"
                + (f" (exit {job['exit_code']})" if job["exit_code"] is not None else "")
                + (f": {job['detail']}" if job.get("detail") else "")
                + f"; events in {job['events']}"
            )
        )


@main.command()
@click.argument("stores", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document to stdout (for scripts)")
@click.pass_context
def status(ctx: click.Context, stores: tuple[str, ...], as_json: bool) -> None:
    """Where the pipeline stands: the store (metadata, tokens, completion, size on disk), each run
    (status, step, last L0 / EV, elapsed, checkpoint) and whether the report is current. With
    STORE arguments: those stores only."""
    cfg = None if stores else _config(ctx)
    doc = {
        "config": None if cfg is None else str(cfg.path),
        "stores": [_store_status(url) for url in _store_urls(cfg, stores)],
    }
    if cfg is not None:
        doc.update(_pipeline_status(cfg))
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    for s in doc["stores"]:
        _print_store(s)
    if cfg is not None:
        _print_pipeline(doc)


@main.command()
@click.argument("stores", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document to stdout (for scripts)")
@click.option("--repair", is_flag=True, help="rewrite each damaged run export from its final checkpoint")
@click.pass_context
def verify(ctx: click.Context, stores: tuple[str, ...], as_json: bool, repair: bool) -> None:
    """Re-check the store (shapes, metadata, completion, every chunk) and the config's runs (export
    files against their sha256, cfg, shapes, checkpoints); names every damaged file, exits 1 on damage.
    With STORE arguments: those stores only."""
    from orthosae.common.progress import progress
    from orthosae.common.store import StoreReader, store_exists

    cfg = None if stores else _config(ctx)
    doc: dict = {"config": None if cfg is None else str(cfg.path), "stores": []}
    for url in _store_urls(cfg, stores):
        if cfg is not None and not store_exists(url):  # the run folders are checked all the same
            doc["stores"].append(
                {
                    "url": url,
                    "chunks": 0,
                    "ok": False,
                    "problems": [
                        {
                            "text": f"{url}: no zarr store here (`pipe harvest` makes it); run folders checked without "
                            "their data fingerprint",
                            "kind": "missing",
                            "corpus": None,
                            "chunk": None,
                        }
                    ],
                }
            )
            continue
        reader = StoreReader(url)
        total = sum(g.n_chunks for g in reader.corpora().values())
        with progress("chunk") as bar:
            task = bar.add_task(f"verify {url}", total=total)
            problems = reader.check(progress=lambda *_: bar.advance(task))
        doc["stores"].append(
            {
                "url": url,
                "chunks": total,
                "ok": not problems,
                "problems": [{"text": p.text, "kind": p.kind, "corpus": p.corpus, "chunk": p.chunk} for p in problems],
            }
        )
    if cfg is not None:
        from orthosae.train.runner import repair_run
        from orthosae.train.verify import check_run

        doc["runs"] = []
        for run in cfg.runs:
            view = cfg.view_of(run.name)  # the run beside its layer's store
            reader = StoreReader(view.harvest.store) if store_exists(view.harvest.store) else None
            result = check_run(view, run, reader)
            if repair and result["repair"]:
                from orthosae.common.locks import FolderLock

                with FolderLock(Path(result["dir"]), result["dir"]):  # not while `pipe train` writes it
                    result["repaired"] = repair_run(view, run, reader)
                result["problems_before"] = result["problems"]
                result = {
                    **check_run(view, run, reader),
                    "repaired": result["repaired"],
                    "problems_before": result["problems_before"],
                }
            result["ok"] = not result["problems"]
            doc["runs"].append(result)
    doc["ok"] = all(x["ok"] for x in doc["stores"] + doc.get("runs", []))
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        _print_verify(doc)
    if not doc["ok"]:
        sys.exit(1)


def _print_verify(doc: dict) -> None:
    for s in doc["stores"]:
        for p in s["problems"]:
            console.print(Text(p["text"], style="red"))
        if s["ok"]:
            console.print(f"[green]{s['url']}: ok[/] ({s['chunks']} chunks checked, complete)")
    if any(p["kind"] == "damaged" for s in doc["stores"] for p in s["problems"]):
        console.print("`pipe harvest --repair` re-harvests exactly the damaged chunks", highlight=False)
    for r in doc.get("runs", []):
        if r.get("repaired"):
            console.print(Text(f"{r['run']}: repaired: {r['repaired']}", style="green"))
        for p in r["problems"]:
            console.print(Text(f"{p['file']}: {p['problem']}", style="red"))
        if r["problems"]:
            console.print(
                Text(
                    f"{r['run']}: "
                    + (f"`pipe verify --repair` will {r['repair']}" if r["repair"] else r.get("advice", ""))
                )
            )
        elif r["state"] != "not started":
            console.print(Text(f"{r['run']}: ok ({r['state']}, {r['dir']})", style="green"))


if __name__ == "__main__":
    main()
