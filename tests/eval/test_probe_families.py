"""`pipe run` with sparse probing, TPP, SCR and absorption on the tiny model: every run gets the four
families in report.json / report.md / plots / conditions, the residuals are cached once per store,
and bad [eval.*] keys are one-line errors naming the key."""

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.config import ConfigError, load_config
from tests._configs import tiny_eval, write_tiny_pipeline

WORDS = {
    "sport": ["ball", "goal", "team", "race", "match", "coach"],
    "food": ["bread", "soup", "apple", "rice", "cake", "salad"],
    "music": ["song", "drum", "piano", "band", "tune", "choir"],
}


def _dataset(tmp_path: Path) -> Path:
    rng = random.Random(0)
    path = tmp_path / "topics.jsonl"
    rows = [
        {"text": " ".join(rng.choice(ws) for _ in range(8)), "label": c} for c, ws in WORDS.items() for _ in range(14)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _config(tmp_path: Path, model_dir: Path) -> Path:
    data = _dataset(tmp_path)
    return write_tiny_pipeline(
        tmp_path,
        model_dir,
        rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    seeds = [0, 1]
    [[runs]]
    name = "adaptive"
    type = "adaptive"
    """
        + tiny_eval(tmp_path)
        + f"""
    [eval.probing]
    enabled = true
    datasets = ["file:{data}"]
    train_size = 8
    test_size = 6
    context_length = 12
    k_values = [1, 2]
    [eval.tpp]
    enabled = true
    dataset = "file:{data}"
    n_values = [1, 4, 1000]
    [eval.scr]
    enabled = true
    topic_pairs = [["People", "Geography"]]
    languages = ["en", "fr"]
    train_size = 8
    test_size = 4
    context_length = 12
    n_values = [1, 4, 1000]
    [eval.absorption]
    enabled = true
    words = 0
    icl_examples = 3
    test_fraction = 0.5
    max_k = 3
    min_probe_f1 = 0.0
    min_letters = 1
    """,
    )


def test_pipe_run_reports_the_four_families_and_caches_residuals(tmp_path, tiny_model_dir):
    path = _config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "reports/tiny"
    report = json.loads((out / "report.json").read_text())
    for r in report["runs"].values():
        p = r["probing"]
        assert 0 <= p["sae_top_1_test_accuracy"] <= 1 and 0 <= p["llm_test_accuracy"] <= 1
        ds = p["datasets"][next(iter(p["datasets"]))]
        assert set(ds["per_class"]["sae_top_2_test_accuracy"]) == set(WORDS)
        assert all(len(v) == 2 for v in ds["top_latents"].values())
        t = r["tpp"]
        assert t["tpp_headline_n"] == 4 and t["tpp_score"] == t["tpp_threshold_4_total_metric"]
        assert "tpp_threshold_1000_total_metric" in t  # n beyond d_sae: every non-zero effect ablated
        s = r["scr"]
        assert s["scr_headline_n"] == 4 and s["scr_score"] == s["scr_metric_threshold_4"]
        pair = s["pairs"]["People / Geography x en / fr"]
        assert pair["metric_direction"] in (1, 2) and "scr_dir2_threshold_1000" in s
        assert s["scr_score"] == pair[f"scr_dir{pair['metric_direction']}_threshold_4"]
        assert all(0 <= v <= 1 for v in pair["clean_accuracy"].values())
        a = r["absorption"]
        assert a["alphabetic_vocab"] == 52 and a["train_words"] + a["test_words"] + a["dropped_words"] == 52
        assert a["passing_letters"] and set(a["letters"]) <= set("abcdefghijklmnopqrstuvwxyz")
    # the LLM side does not depend on the SAE: identical across runs
    accs = {r["probing"]["llm_test_accuracy"] for r in report["runs"].values()}
    assert len(accs) == 1
    assert len({json.dumps(r["scr"]["pairs"][pair["pair"]]["clean_accuracy"]) for r in report["runs"].values()}) == 1
    assert {"probing_data", "probing", "tpp", "scr_data", "scr", "absorption_data", "absorption"} <= set(
        report["timings_s"]
    )
    md = (out / "report.md").read_text()
    assert "## Sparse probing" in md and "## TPP" in md and "## SCR" in md and "## Absorption" in md
    for f in ("sparse_probing.png", "tpp.png", "scr.png", "absorption.png"):
        assert (out / f).stat().st_size > 0
    base = report["conditions"]["conditions"]["baseline"]["metrics"]
    assert base["sae_top_1_test_accuracy"]["n"] == 2 and base["tpp_score"]["n"] == 2 and base["scr_score"]["n"] == 2
    assert "sae_top_1_test_accuracy" in md.split("## Conditions")[1] and "scr_score" in md.split("## Conditions")[1]

    cache = sorted((tmp_path / "reports/cache").glob("*.safetensors"))
    assert [c.name.split("-")[0] for c in cache] == [
        "absorption",
        "probing",
        "probing",
    ]  # the SCR cells: a probing file
    stamps = [c.stat().st_mtime_ns for c in cache]
    res = runner.invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 0, res.output
    assert (
        "residuals from the cache" in res.output
        and "SCR: People / Geography x en / fr: residuals from the cache" in res.output
    )
    assert [c.stat().st_mtime_ns for c in cache] == stamps
    again = json.loads((out / "report.json").read_text())
    assert again["runs"]["baseline-s0"]["probing"] == report["runs"]["baseline-s0"]["probing"]
    assert again["runs"]["baseline-s0"]["scr"] == report["runs"]["baseline-s0"]["scr"]
    assert (
        again["runs"]["baseline-s0"]["absorption"]["letters"] == report["runs"]["baseline-s0"]["absorption"]["letters"]
    )


@pytest.mark.parametrize(
    "table, message",
    [
        ('[eval.probing]\ndatasets = ["embedded:nope"]', "[eval.probing] datasets: unknown dataset 'embedded:nope'"),
        ('[eval.tpp]\nenabled = true\ndataset = "file:x.jsonl"', "[eval.tpp] dataset: 'file:x.jsonl' is not one of"),
        ('[eval.absorption]\nprompt_template = "has the first letter:"', "[eval.absorption] prompt_template: needs"),
        ("[eval.probing]\nk_values = [0]", "[eval.probing] k_values: expected a non-empty list"),
        ("[eval.absorption]\nmin_probe_f1 = 1.5", "[eval.absorption] min_probe_f1: must be in [0, 1]"),
        ('[eval.scr]\nlanguages = ["en", "de"]', "[eval.scr] languages: expected two different of en, fr, es"),
        ('[eval.scr]\nlanguages = ["fr", "fr"]', "[eval.scr] languages: expected two different"),
        (
            '[eval.scr]\ntopic_pairs = [["People", "Physical sciences"]]',
            "[eval.scr] topic_pairs: topic 'Physical sciences'",
        ),
        (
            '[eval.scr]\nlanguages = ["en", "es"]\ntopic_pairs = [["People", "Everyday life"]]',
            "[eval.scr] topic_pairs: topic 'Everyday life' has no counterpart in the en/es extracts",
        ),
        ('[eval.scr]\ntopic_pairs = [["People", "People"]]', "[eval.scr] topic_pairs: expected pairs of two different"),
        ("[eval.scr]\ntopic_pairs = []", "[eval.scr] topic_pairs: expected at least one"),
        ("[eval.scr]\ntrain_size = 30", "[eval.scr] train_size: must be a multiple of 4"),
        ("[eval.scr]\ntest_size = 0", "[eval.scr] test_size: must be a multiple of 4"),
        ("[eval.scr]\nn_values = [0]", "[eval.scr] n_values: expected a non-empty list"),
    ],
)
def test_bad_probe_family_keys_are_one_line_errors(tmp_path, table, message):
    base = Path(__file__).resolve().parents[2] / "pipeline.toml"
    text = base.read_text().split("\n# SAEBench's sparse probing")[0]
    path = tmp_path / "p.toml"
    path.write_text(text + "\n" + table + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value) and "\n" not in str(e.value)
