"""eval.probe_report: the probing, TPP, SCR and absorption tables of report.md, and their plots."""

import math

from orthosae.eval.probe_report import (
    absorption_markdown,
    absorption_plot,
    probing_markdown,
    probing_plot,
    scr_markdown,
    scr_plot,
    tpp_markdown,
    tpp_plot,
)


def probe_markdown(results: dict, forget: set[str] = frozenset()) -> str:
    """The four families' sections, in the families' order (eval/families.py)."""
    return (
        probing_markdown(results, forget)
        + tpp_markdown(results, forget)
        + scr_markdown(results)
        + absorption_markdown(results)
    )


def probe_plots(out_dir, results: dict) -> list[str]:
    return (
        probing_plot(out_dir, results)
        + tpp_plot(out_dir, results)
        + scr_plot(out_dir, results)
        + absorption_plot(out_dir, results)
    )


def _run(top1, tpp, absorption, scr=0.4):
    return {
        "probing": {
            "sae_top_1_test_accuracy": top1,
            "sae_top_2_test_accuracy": top1 + 0.01,
            "llm_top_1_test_accuracy": 0.7,
            "llm_top_2_test_accuracy": 0.75,
            "llm_test_accuracy": 0.9,
            "datasets": {"embedded:wiki_topics": {"llm_top_1_test_accuracy": 0.7, "llm_test_accuracy": 0.9}},
            "trained_on": {"embedded:wiki_topics": "no"},
            "sizes": {"train_per_class": 20, "test_per_class": 10, "context_length": 32},
        },
        "tpp": {
            "tpp_threshold_1_total_metric": tpp,
            "tpp_threshold_4_total_metric": 2 * tpp,
            "tpp_headline_n": 4,
            "tpp_intended": 0.3,
            "tpp_unintended": 0.1,
            "dataset": "d",
            "clean_accuracy": {"a": 0.95},
        },
        "scr": {
            "scr_metric_threshold_2": scr,
            "scr_metric_threshold_20": scr + 0.2,
            "scr_score": scr + 0.2,
            "scr_headline_n": 20,
            "sizes": {"train_per_set": 64, "test_per_set": 32, "context_length": 64},
            "pairs": {
                "People / Geography x en / fr": {
                    "metric_direction": 1,
                    "biased_accuracy_dir1": 0.6,
                    "oracle_accuracy_dir1": 0.9,
                    "biased_accuracy_dir2": 0.95,
                    "oracle_accuracy_dir2": 1.0,
                }
            },
        },
        "absorption": {
            "mean_absorption_fraction_score": absorption,
            "mean_full_absorption_score": math.nan,
            "mean_num_split_features": 1.5,
            "probe_f1": {"a": 0.8},
            "train_words": 30,
            "test_words": 10,
            "alphabetic_vocab": 52,
            "dropped_words": 12,
            "min_probe_f1": 0.6,
            "passing_letters": "a",
            "min_letters": 1,
        },
    }


def test_each_run_is_a_row_of_each_family_and_missing_values_say_n_a(tmp_path):
    results = {"baseline": _run(0.61, 0.05, 0.125), "adaptive": _run(0.72, 0.07, 0.25), "reference": {}}
    md = probe_markdown(results)
    assert md.index("## Sparse probing") < md.index("## TPP") < md.index("## SCR") < md.index("## Absorption")
    assert (
        "| baseline | 0.400 | 0.600 |" in md
        and "| People / Geography x en / fr | 1 | 0.600 | 0.900 | 0.950 | 1.000 |" in md
    )
    assert "| baseline | 0.610 | 0.620 |" in md and "| adaptive | 0.720 | 0.730 |" in md
    assert "| LLM residual (same texts) | 0.700 | 0.750 |" in md
    assert "| baseline | 0.050 | 0.100 | 0.300 | 0.100 |" in md
    assert "| adaptive | 0.250 | n/a | 1.500 |" in md  # full absorption not measured
    assert "reference" not in md  # a run without any of the families has no row
    assert probe_markdown({"baseline": {}}) == ""
    assert probe_plots(tmp_path, results) == ["sparse_probing.png", "tpp.png", "scr.png", "absorption.png"]
    assert all(
        (tmp_path / f).stat().st_size > 0 for f in ("sparse_probing.png", "tpp.png", "scr.png", "absorption.png")
    )


def test_per_class_tables_show_the_forget_topic_apart_by_hand():
    """A TPP or probing gain on the forget topic may come from the labels that trained the grouping:
    the per-class tables bold those classes and give the mean without them."""

    def run(tpp_bio, tpp_geo, tpp_people, acc_bio, acc_geo):
        r = _run(0.6, 0.05, 0.1)
        r["tpp"]["per_class"] = {
            "Biology": {"tpp_threshold_4_total_metric": tpp_bio},
            "Geography": {"tpp_threshold_4_total_metric": tpp_geo},
            "People": {"tpp_threshold_4_total_metric": tpp_people},
        }
        r["probing"]["datasets"]["embedded:wiki_topics"]["per_class"] = {
            "llm_test_accuracy": {"Biology": 0.9, "Geography": 0.9},
            "sae_top_1_test_accuracy": {"Biology": acc_bio, "Geography": acc_geo},
            "sae_top_2_test_accuracy": {"Biology": 0.0, "Geography": 0.0},
        }
        return r

    results = {"baseline": run(0.1, 0.2, 0.4, 0.7, 0.6), "adaptive": run(0.9, 0.2, 0.4, 0.95, 0.6)}
    md = probe_markdown(results, {"Biology"})
    # columns: the other classes first, then the forget class, then the mean without it
    assert "| run | Geography | People | **Biology** | without forget classes |" in md
    assert "| adaptive | 0.200 | 0.400 | 0.900 | 0.300 |" in md  # (0.2 + 0.4) / 2: the gain is Biology's alone
    assert "| baseline | 0.200 | 0.400 | 0.100 | 0.300 |" in md
    assert "Sparse probing per class (embedded:wiki_topics, SAE top-1" in md
    assert "| adaptive | 0.600 | 0.950 | 0.600 |" in md
    assert "TPP per class" not in probe_markdown(results)  # no forget topic named: no per-class section


def test_forget_topics_of_a_config():
    from types import SimpleNamespace

    from orthosae.eval.probe_report import forget_topics

    def corpus(role, subset, source="embedded:wiki"):
        return SimpleNamespace(role=role, subset=subset, source=source)

    cfg = SimpleNamespace(
        corpora={
            "a": corpus("forget", "forget"),
            "b": corpus("retain", "retain"),
            "c": corpus("forget", "forget:Physical sciences"),
            "d": corpus("forget", None, source="file:x.jsonl"),
        }
    )
    assert forget_topics(cfg) == {"Biology and health sciences", "Physical sciences"}
