"""`pipe`: the one command line. Stages are imported inside their commands (one-way data flow).

Exit codes (README, "Batch jobs"): 0 done; 1 a run failed in training (or `verify` found a damaged
chunk, or an unexpected error); 2 bad input (config, store, corpus or model: one line naming it);
75 preempted by SIGTERM / SIGINT after saving the work in hand (rerun the same command to resume).
"""
from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from common import events, preempt
from common.config import ConfigError, load_config
from common.errors import first_line
from common.progress import configure, console
from common.store import StoreError

DEFAULT_CONFIG = "pipeline.toml"
EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_PREEMPTED = 1, 2, preempt.EXIT_PREEMPTED


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    console.print(Text.assemble(("error: ", "bold red"), message))  # Text: no markup in paths/keys
    events.finish("failed", code, reason=message)
    sys.exit(code)


def _preempted(ctx: click.Context, e: preempt.Preempted) -> None:
    resume = shlex.join(["pipe", *ctx.meta.get("argv", [])])
    console.print(Text.assemble((f"preempted ({e.signal_name})", "bold yellow"), f": {e.saved}; "
                                f"resume with `{resume}` (exit {EXIT_PREEMPTED})"))
    events.finish("preempted", EXIT_PREEMPTED, signal=e.signal_name, saved=e.saved, resume=resume)
    sys.exit(EXIT_PREEMPTED)


class _Cli(click.Group):
    """Turns the project's expected errors into one red line instead of a traceback, a signal into
    exit 75, and closes the invocation's event log with the outcome."""

    def parse_args(self, ctx, args):
        ctx.meta["argv"] = list(args)  # for the resume hint and the event log
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        from common.corpora import CorpusError
        from common.model import ModelError
        try:
            result = super().invoke(ctx)
        except (ConfigError, StoreError, CorpusError, ModelError) as e:
            _fail(str(e))
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
        yield cfg


@click.group(cls=_Cli)
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="pipeline config (TOML)")
@click.pass_context
def main(ctx: click.Context, config_path: str) -> None:
    """orthosae: harvest activations, train orthogonal grouped SAEs, evaluate unlearning."""
    ctx.obj = {"config_path": config_path}


def _config(ctx: click.Context):
    cfg = load_config(ctx.obj["config_path"])
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
@click.option("--repair", is_flag=True, help="verify the store, then re-harvest only the chunks "
              "that fail")
@click.pass_context
def harvest(ctx: click.Context, force: bool, repair: bool) -> None:
    """Run the model once up to [harvest] layer and cache its residual stream (resumable)."""
    from harvest import harvest as run_harvest
    with _job(ctx, "harvest") as cfg:
        result = run_harvest(cfg, force=force, repair=repair)
    from accelerate import PartialState
    if PartialState().is_main_process and not result.skipped:
        rate = result.rows_written / max(result.seconds, 1e-9)
        console.print(f"[green]harvest done[/]: {result.rows_written:,} rows in {result.seconds:.0f} s "
                      f"({rate:,.0f} tok/s, model load included) -> [bold]{result.store}[/]")


@main.command()
@click.option("--run", "run_names", multiple=True, help="train only this run (repeatable); "
              "lets a scheduler spread runs over GPUs")
@click.option("--force", is_flag=True, help="retrain runs that are already complete")
@click.pass_context
def train(ctx: click.Context, run_names: tuple[str, ...], force: bool) -> None:
    """Stream the store into every [[runs]] SAE (one pass over the data for all of them)."""
    from train import train as run_train
    with _job(ctx, "train") as cfg:
        summaries = run_train(cfg, run_names=list(run_names) or None, force=force)
    console.print(f"[green]train done[/]: {len(summaries)} run(s) in [bold]{cfg.train.runs_dir}/[/]")
    _exit_if_a_run_failed(cfg, summaries, "")


def _exit_if_a_run_failed(cfg, summaries: list[dict], then: str) -> None:
    failed = [s for s in summaries if s["status"] == "failed"]
    if failed:
        _fail("; ".join(f"run {s['run']} failed: {s['message']}" for s in failed)
              + f" (see {cfg.train.runs_dir}/<run>/summary.json){then}", EXIT_RUN_FAILED)


@main.command("eval")
@click.option("--run", "run_names", multiple=True, help="evaluate only this run (repeatable)")
@click.pass_context
def eval_(ctx: click.Context, run_names: tuple[str, ...]) -> None:
    """Reconstruction, downstream CE/KL, conditioning and unlearning reports across runs."""
    from eval import evaluate
    with _job(ctx, "eval") as cfg:
        out = evaluate(cfg, run_names=list(run_names) or None)
    console.print(f"[green]eval done[/]: report in [bold]{out}/report.md[/] (+ report.json, plots)")


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """harvest -> train -> eval, skipping each stage (or run) that is already complete."""
    from eval import evaluate, report_is_current
    from harvest import harvest as run_harvest
    from train import train as run_train
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
    console.print(f"[green]pipeline done[/]: store [bold]{cfg.harvest.store}[/], runs "
                  f"[bold]{cfg.train.runs_dir}/[/], report [bold]{out}/report.md[/]")
    from eval.browser import browser_hint
    console.print(browser_hint(cfg))


def _stop_between_stages(state: str) -> None:
    """A signal during a stage's last chunk or step lets the stage finish: stop before the next."""
    if preempt.requested():
        raise preempt.Preempted(state)


@main.command("inspect")
@click.option("--run", "run_names", multiple=True, help="only this run (repeatable; default: every trained run)")
@click.option("--top-k", default=20, show_default=True, type=click.IntRange(1, 500),
              help="top-activating held-out rows kept per feature")
@click.option("--max-rows", default=0, show_default=True, type=click.IntRange(0),
              help="rows read per held-out corpus, whole contexts (0 = all)")
@click.pass_context
def inspect_(ctx: click.Context, run_names: tuple[str, ...], top_k: int, max_rows: int) -> None:
    """Static HTML feature browser per run (top contexts, histograms, neighbours, logit effects)."""
    from eval.browser import build_browser
    with _job(ctx, "inspect") as cfg:
        root = build_browser(cfg, run_names=list(run_names) or None, top_k=top_k, max_rows=max_rows)
    console.print(f"[green]inspect done[/]: feature browser in [bold]{root}/index.html[/] (open it from disk)")


def _store_urls(cfg, paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    return [cfg.harvest.store]


@main.command()
@click.argument("stores", nargs=-1)
@click.pass_context
def status(ctx: click.Context, stores: tuple[str, ...]) -> None:
    """List stores (default: the config's) with metadata, tokens, completion and size on disk."""
    from common.store import StoreReader, store_exists
    cfg = None if stores else _config(ctx)
    for url in _store_urls(cfg, stores):
        if not store_exists(url):
            console.print(f"[yellow]{url}[/]: not harvested yet")
            continue
        reader = StoreReader(url)
        m = reader.meta
        state = "[green]complete[/]" if reader.complete else "[yellow]incomplete[/]"
        console.print(f"[bold]{url}[/]  {state}  {_human_bytes(reader.size_on_disk())} on disk")
        console.print(f"  model {m['model_id']} (rev {m.get('revision')}, sha256 {str(m.get('file_sha256'))[:12]}) "
                      f"layer {m['layer']} {m['hook']}  d_model {m['d_model']}  {m['storage_dtype']}  "
                      f"T={m['context_length']}  created {m.get('created')}", highlight=False)
        table = Table("corpus", "role", "split", "tokens", "contexts", "chunks", "state")
        for name, g in reader.corpora().items():
            table.add_row(name, g.role, g.split, f"{g.n_rows:,}", f"{g.n_contexts:,}",
                          f"{g.chunks_done}/{g.n_chunks}", "complete" if g.complete else "incomplete")
        console.print(table)


@main.command()
@click.argument("stores", nargs=-1)
@click.pass_context
def verify(ctx: click.Context, stores: tuple[str, ...]) -> None:
    """Re-check shapes, metadata, completion and every chunk; names any corrupted chunk."""
    from common.progress import progress
    from common.store import StoreReader
    cfg = None if stores else _config(ctx)
    bad = damaged = False
    for url in _store_urls(cfg, stores):
        reader = StoreReader(url)
        total = sum(g.n_chunks for g in reader.corpora().values())
        with progress("chunk") as bar:
            task = bar.add_task(f"verify {url}", total=total)
            problems = reader.check(progress=lambda *_: bar.advance(task))
        for p in problems:
            console.print(Text(p.text, style="red"))
        bad = bad or bool(problems)
        damaged = damaged or any(p.kind == "damaged" for p in problems)
        if not problems:
            console.print(f"[green]{url}: ok[/] ({total} chunks checked, complete)")
    if damaged:
        console.print("`pipe harvest --repair` re-harvests exactly the damaged chunks", highlight=False)
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
