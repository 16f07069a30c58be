"""eval.probe_report: the probing, TPP, SCR and absorption tables of report.md, and their plots."""
import math

from orthosae.eval.probe_report import probe_markdown, probe_plots


def _run(top1, tpp, absorption, scr=0.4):
    return {"probing": {"sae_top_1_test_accuracy": top1, "sae_top_2_test_accuracy": top1 + 0.01,
                        "llm_top_1_test_accuracy": 0.7, "llm_top_2_test_accuracy": 0.75, "llm_test_accuracy": 0.9,
                        "datasets": {"embedded:wiki_topics": {"llm_top_1_test_accuracy": 0.7, "llm_test_accuracy": 0.9}},
                        "trained_on": {"embedded:wiki_topics": "no"},
                        "sizes": {"train_per_class": 20, "test_per_class": 10, "context_length": 32}},
            "tpp": {"tpp_threshold_1_total_metric": tpp, "tpp_threshold_4_total_metric": 2 * tpp,
                    "tpp_headline_n": 4, "tpp_intended": 0.3, "tpp_unintended": 0.1, "dataset": "d",
                    "clean_accuracy": {"a": 0.95}},
            "scr": {"scr_metric_threshold_2": scr, "scr_metric_threshold_20": scr + 0.2, "scr_score": scr + 0.2,
                    "scr_headline_n": 20, "sizes": {"train_per_set": 64, "test_per_set": 32, "context_length": 64},
                    "pairs": {"People / Geography x en / fr": {"metric_direction": 1, "biased_accuracy_dir1": 0.6,
                                                               "oracle_accuracy_dir1": 0.9, "biased_accuracy_dir2": 0.95,
                                                               "oracle_accuracy_dir2": 1.0}}},
            "absorption": {"mean_absorption_fraction_score": absorption, "mean_full_absorption_score": math.nan,
                           "mean_num_split_features": 1.5, "probe_f1": {"a": 0.8}, "train_words": 30,
                           "test_words": 10, "alphabetic_vocab": 52, "dropped_words": 12, "min_probe_f1": 0.6,
                           "passing_letters": "a", "min_letters": 1}}


def test_each_run_is_a_row_of_each_family_and_missing_values_say_n_a(tmp_path):
    results = {"baseline": _run(0.61, 0.05, 0.125), "adaptive": _run(0.72, 0.07, 0.25), "reference": {}}
    md = probe_markdown(results)
    assert md.index("## Sparse probing") < md.index("## TPP") < md.index("## SCR") < md.index("## Absorption")
    assert "| baseline | 0.400 | 0.600 |" in md and "| People / Geography x en / fr | 1 | 0.600 | 0.900 | 0.950 | 1.000 |" in md
    assert "| baseline | 0.610 | 0.620 |" in md and "| adaptive | 0.720 | 0.730 |" in md
    assert "| LLM residual (same texts) | 0.700 | 0.750 |" in md
    assert "| baseline | 0.050 | 0.100 | 0.300 | 0.100 |" in md
    assert "| adaptive | 0.250 | n/a | 1.500 |" in md  # full absorption not measured
    assert "reference" not in md  # a run without any of the families has no row
    assert probe_markdown({"baseline": {}}) == ""
    assert probe_plots(tmp_path, results) == ["sparse_probing.png", "tpp.png", "scr.png", "absorption.png"]
    assert all((tmp_path / f).stat().st_size > 0 for f in ("sparse_probing.png", "tpp.png", "scr.png", "absorption.png"))
