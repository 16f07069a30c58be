"""`pipe eval`'s sparse probing, TPP, SCR and absorption: four families (eval/families.py), each
with its ``measure(ctx, runs)``. The model's residuals on the probing texts and the first-letter
prompts are computed once per store (cached under ``<reports_dir>/cache``), the LLM probes once per
eval (sparse probing and TPP share them: ``EvalContext.once``), and each SAE then costs encodes and
small probe fits. Each family's time goes to report.json ``timings_s``."""

from __future__ import annotations

from pathlib import Path

from orthosae.common.progress import console
from orthosae.eval.absorption import letter_probe, prompt_sets, run_absorption
from orthosae.eval.family import EvalContext, LoadedRun
from orthosae.eval.probe_data import TRAINED_ON, dataset_activations, topic_language_dataset
from orthosae.eval.probing import llm_probes, pooled_latents, sae_probing, summarize
from orthosae.eval.scr import run_scr, scr_llm
from orthosae.eval.tpp import run_tpp
from orthosae.eval.unlearning import fold_decoder_norms


def _cache_dir(cfg) -> Path:
    return Path(cfg.eval.reports_dir) / "cache"


def _saes(ctx: EvalContext, runs: list[LoadedRun]) -> dict:
    """Each run's SAE with unit-norm decoder rows, as SAEBench's SAEs have (once per eval)."""
    return ctx.once("probe_saes", lambda: {r.name: fold_decoder_norms(r.sae) for r in runs})


def _common(ctx: EvalContext) -> dict:
    """The arguments every family's residuals take: the model, and forwards of about max(2048, the
    eval's own batch) tokens (short texts batch wider)."""
    cfg = ctx.cfg
    return dict(
        model=ctx.lm.model,
        tokenizer=ctx.lm.tokenizer,
        layer=cfg.harvest.layer,
        batch_tokens=max(2048, cfg.eval.batch_size * cfg.harvest.context_length),
        cache_dir=_cache_dir(cfg),
        store_meta=ctx.reader.meta,
    )


def _probe_data(ctx: EvalContext, runs: list[LoadedRun]) -> tuple[list[str], dict, dict]:
    """The probing datasets' names, LLM probes and each run's pooled latents (train, test), once for
    sparse probing and TPP: ``[eval.probing] datasets``, or TPP's one dataset with probing off."""
    pr, tp = ctx.cfg.eval.probing, ctx.cfg.eval.tpp

    def make():
        with ctx.timed("probing_data"):
            names = list(pr.datasets) if pr.enabled else [tp.dataset]
            advance, saes = ctx.task("probing texts (once per store)", None), _saes(ctx, runs)
            llm, latents = {}, {}
            for name in names:
                train, test, hit = dataset_activations(
                    name,
                    train_size=pr.train_size,
                    test_size=pr.test_size,
                    context_length=pr.context_length,
                    seed=pr.seed,
                    heldout_fraction=ctx.cfg.harvest.heldout_fraction,
                    progress=advance,
                    **_common(ctx),
                )
                llm[name] = llm_probes(name, train, test, pr.k_values, pr.seed)
                latents[name] = {
                    r.name: (pooled_latents(saes[r.name], train), pooled_latents(saes[r.name], test)) for r in runs
                }
                if hit:
                    console.print(f"probing: {name}: residuals from the cache")
            return names, llm, latents

    return ctx.once("probe_data", make)


def _sizes(section, per: str) -> dict:
    """The sizes a probe family ran at (report.json ``sizes``): texts per class or set, and length."""
    return {
        f"train_per_{per}": section.train_size,
        f"test_per_{per}": section.test_size,
        "context_length": section.context_length,
    }


def measure_probing(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its report.json ``probing`` (the family is on: ``[eval.probing] enabled``)."""
    pr = ctx.cfg.eval.probing
    names, llm, latents = _probe_data(ctx, runs)
    out = {}
    with ctx.timed("probing"):
        for r in runs:
            probing = summarize({n: sae_probing(llm[n], *latents[n][r.name], pr.k_values, pr.seed) for n in names})
            probing["trained_on"] = {n: TRAINED_ON.get(n, "unknown: a user dataset") for n in names}
            probing["sizes"] = _sizes(pr, "class")
            out[r.name] = {"probing": probing}
    return out


def measure_tpp(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its report.json ``tpp`` (the family is on: ``[eval.tpp] enabled``)."""
    tp = ctx.cfg.eval.tpp
    _, llm, latents = _probe_data(ctx, runs)
    saes = _saes(ctx, runs)
    with ctx.timed("tpp"):
        return {
            r.name: {"tpp": run_tpp(llm[tp.dataset], *latents[tp.dataset][r.name], saes[r.name].W_dec, tp.n_values)}
            for r in runs
        }


def _scr_data(ctx: EvalContext, runs: list[LoadedRun]) -> tuple[list, dict]:
    """Each topic pair's LLM probes, and each run's pooled latents per pair (train, test)."""
    sc, saes = ctx.cfg.eval.scr, _saes(ctx, runs)
    advance = ctx.task("SCR texts (once per store)", None)
    pairs, latents = [], {r.name: [] for r in runs}
    for topics in sc.topic_pairs:  # cells of size/2 texts: the biased set takes 2 quarters of two of them
        train, test, hit = dataset_activations(
            topic_language_dataset(topics, sc.languages),
            train_size=sc.train_size // 2,
            test_size=sc.test_size // 2,
            context_length=sc.context_length,
            seed=sc.seed,
            heldout_fraction=ctx.cfg.harvest.heldout_fraction,
            progress=advance,
            where="[eval.scr]",
            **_common(ctx),
        )
        pairs.append(scr_llm(topics, sc.languages, train, test, sc.train_size, sc.test_size, sc.seed))
        for r in runs:
            latents[r.name].append((pooled_latents(saes[r.name], train), pooled_latents(saes[r.name], test)))
        if hit:
            console.print(f"SCR: {pairs[-1].name}: residuals from the cache")
    return pairs, latents


def measure_scr(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its report.json ``scr`` (the family is on: ``[eval.scr] enabled``)."""
    sc = ctx.cfg.eval.scr
    with ctx.timed("scr_data"):
        pairs, latents = _scr_data(ctx, runs)
    saes, out = _saes(ctx, runs), {}
    with ctx.timed("scr"):
        for r in runs:
            scr = run_scr(pairs, latents[r.name], saes[r.name].W_dec, sc.n_values)
            scr["sizes"] = _sizes(sc, "set")
            scr["trained_on"] = "no: English held-out extracts; French and Spanish never reach a training corpus"
            out[r.name] = {"scr": scr}
    return out


def measure_absorption(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its report.json ``absorption`` (the family is on: ``[eval.absorption] enabled``)."""
    ab = ctx.cfg.eval.absorption
    saes = _saes(ctx, runs)
    with ctx.timed("absorption_data"):
        train, test, stats, _ = prompt_sets(
            words=ab.words,
            test_fraction=ab.test_fraction,
            icl_examples=ab.icl_examples,
            template=ab.prompt_template,
            seed=ab.seed,
            progress=ctx.task("first-letter prompts (once per store)", None),
            **_common(ctx),
        )
        probe = letter_probe(train, test, ab.seed)
    out = {}
    with ctx.timed("absorption"):
        for r in runs:
            absorption = run_absorption(
                saes[r.name],
                train,
                test,
                probe,
                max_k=ab.max_k,
                f1_jump=ab.f1_jump,
                min_probe_f1=ab.min_probe_f1,
                min_letters=ab.min_letters,
                seed=ab.seed,
            )
            absorption.update(stats)
            absorption["probe_f1"] = probe.f1
            out[r.name] = {"absorption": absorption}
    return out
