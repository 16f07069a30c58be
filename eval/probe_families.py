"""`pipe eval`'s sparse probing, TPP, SCR and absorption for every run: the model's residuals on the
probing texts and the first-letter prompts are computed once per store (cached under
``<reports_dir>/cache``), the LLM probes once per eval, and each SAE then costs encodes and small
probe fits. Each family's time goes to report.json ``timings_s``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from orthosae.common.progress import console
from orthosae.eval.absorption import letter_probe, prompt_sets, run_absorption
from orthosae.eval.probe_data import TRAINED_ON, dataset_activations, topic_language_dataset
from orthosae.eval.probing import llm_probes, pooled_latents, sae_probing, summarize
from orthosae.eval.scr import run_scr, scr_llm
from orthosae.eval.tpp import run_tpp
from orthosae.eval.unlearning import fold_decoder_norms


def _cache_dir(cfg) -> Path:
    return Path(cfg.eval.reports_dir) / "cache"


@dataclass
class ProbeResults:
    """One run's report.json ``probing``, ``tpp``, ``scr`` and ``absorption`` (empty: the family is off)."""

    probing: dict = field(default_factory=dict)
    tpp: dict = field(default_factory=dict)
    scr: dict = field(default_factory=dict)
    absorption: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in ("probing", "tpp", "scr", "absorption") if getattr(self, name)}


def measure_probe_families(cfg, reader, lm, runs, bar, timings: dict) -> dict[str, ProbeResults]:
    """Run -> its ``ProbeResults`` (eval/runner.py ``LoadedRun`` list in)."""
    pr, tp, sc, ab = cfg.eval.probing, cfg.eval.tpp, cfg.eval.scr, cfg.eval.absorption
    out = {r.name: ProbeResults() for r in runs}
    if not (pr.enabled or tp.enabled or sc.enabled or ab.enabled):
        return out
    saes = {r.name: fold_decoder_norms(r.sae) for r in runs}  # SAEBench's SAEs have unit-norm decoders
    # forwards of about max(2048, the eval's own batch) tokens: short texts batch wider
    tokens = max(2048, cfg.eval.batch_size * cfg.harvest.context_length)
    common = dict(
        model=lm.model,
        tokenizer=lm.tokenizer,
        layer=cfg.harvest.layer,
        batch_tokens=tokens,
        cache_dir=_cache_dir(cfg),
        store_meta=reader.meta,
    )
    if pr.enabled or tp.enabled:
        t = time.perf_counter()
        names = list(pr.datasets) if pr.enabled else [tp.dataset]
        task = bar.add_task("probing texts (once per store)", total=None)
        llm, latents = {}, {}
        for name in names:
            train, test, hit = dataset_activations(
                name,
                train_size=pr.train_size,
                test_size=pr.test_size,
                context_length=pr.context_length,
                seed=pr.seed,
                heldout_fraction=cfg.harvest.heldout_fraction,
                progress=lambda k: bar.advance(task, k),
                **common,
            )
            llm[name] = llm_probes(name, train, test, pr.k_values, pr.seed)
            latents[name] = {
                r.name: (pooled_latents(saes[r.name], train), pooled_latents(saes[r.name], test)) for r in runs
            }
            if hit:
                console.print(f"probing: {name}: residuals from the cache")
        timings["probing_data"] = time.perf_counter() - t
        if pr.enabled:
            t = time.perf_counter()
            for r in runs:
                probing = out[r.name].probing = summarize(
                    {n: sae_probing(llm[n], *latents[n][r.name], pr.k_values, pr.seed) for n in names}
                )
                probing["trained_on"] = {n: TRAINED_ON.get(n, "unknown: a user dataset") for n in names}
                probing["sizes"] = {
                    "train_per_class": pr.train_size,
                    "test_per_class": pr.test_size,
                    "context_length": pr.context_length,
                }
            timings["probing"] = time.perf_counter() - t
        if tp.enabled:
            t = time.perf_counter()
            for r in runs:
                out[r.name].tpp = run_tpp(
                    llm[tp.dataset], *latents[tp.dataset][r.name], saes[r.name].W_dec, tp.n_values
                )
            timings["tpp"] = time.perf_counter() - t
    if sc.enabled:
        t = time.perf_counter()
        task = bar.add_task("SCR texts (once per store)", total=None)
        pairs, latents = [], {r.name: [] for r in runs}
        for topics in sc.topic_pairs:  # cells of size/2 texts: the biased set takes 2 quarters of two of them
            train, test, hit = dataset_activations(
                topic_language_dataset(topics, sc.languages),
                train_size=sc.train_size // 2,
                test_size=sc.test_size // 2,
                context_length=sc.context_length,
                seed=sc.seed,
                heldout_fraction=cfg.harvest.heldout_fraction,
                progress=lambda k: bar.advance(task, k),
                where="[eval.scr]",
                **common,
            )
            pairs.append(scr_llm(topics, sc.languages, train, test, sc.train_size, sc.test_size, sc.seed))
            for r in runs:
                latents[r.name].append((pooled_latents(saes[r.name], train), pooled_latents(saes[r.name], test)))
            if hit:
                console.print(f"SCR: {pairs[-1].name}: residuals from the cache")
        timings["scr_data"] = time.perf_counter() - t
        t = time.perf_counter()
        for r in runs:
            scr = out[r.name].scr = run_scr(pairs, latents[r.name], saes[r.name].W_dec, sc.n_values)
            scr["sizes"] = {
                "train_per_set": sc.train_size,
                "test_per_set": sc.test_size,
                "context_length": sc.context_length,
            }
            scr["trained_on"] = "no: English held-out extracts; French and Spanish never reach a training corpus"
        timings["scr"] = time.perf_counter() - t
    if ab.enabled:
        t = time.perf_counter()
        task = bar.add_task("first-letter prompts (once per store)", total=None)
        train, test, stats, hit = prompt_sets(
            words=ab.words,
            test_fraction=ab.test_fraction,
            icl_examples=ab.icl_examples,
            template=ab.prompt_template,
            seed=ab.seed,
            progress=lambda k: bar.advance(task, k),
            **common,
        )
        probe = letter_probe(train, test, ab.seed)
        timings["absorption_data"] = time.perf_counter() - t
        t = time.perf_counter()
        for r in runs:
            absorption = out[r.name].absorption = run_absorption(
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
        timings["absorption"] = time.perf_counter() - t
    return out
