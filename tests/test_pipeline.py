"""`pipe run` on the tiny model: harvest -> train -> eval writes the report; a rerun skips all three."""

import json
import math
from pathlib import Path

from click.testing import CliRunner

from orthosae.cli import main
from tests._configs import BASELINE_AND_FIXED, tiny_eval, write_tiny_pipeline


def write_config(tmp_path: Path, model_dir: Path) -> Path:
    return write_tiny_pipeline(
        tmp_path,
        model_dir,
        rest=BASELINE_AND_FIXED
        + """
    [[runs]]
    name = "adaptive-a0.0"
    type = "adaptive"
    [[runs]]
    name = "adaptive-a0.2"
    type = "adaptive"
    alpha = 0.2
    """
        + tiny_eval(tmp_path),
    )


def test_pipe_run_end_to_end_then_skips(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "reports/tiny"
    for f in (
        "report.json",
        "report.md",
        "recon_vs_l0.png",
        "unlearning_vs_alpha.png",
        "condition_numbers.png",
        "training_curves.png",
        "frontier.png",
    ):
        assert (out / f).stat().st_size > 0, f
    report = json.loads((out / "report.json").read_text())
    assert report["store"] == str(tmp_path / "s.zarr") and report["config"] == str(path)
    assert set(report["runs"]) == {"baseline", "fixed", "adaptive-a0.0", "adaptive-a0.2"}
    for r in report["runs"].values():
        rec = r["reconstruction"]
        assert {
            "explained_variance",
            "explained_variance_legacy",
            "explained_variance_dictionary_learning",
            "mse",
            "cossim",
            "l0",
            "l1",
            "l2_ratio",
            "relative_reconstruction_bias",
            "frac_dead",
            "freq_over_10_percent",
        } <= rec.keys()
        assert {"ce_loss_score", "kl_div_score", "ce_loss_with_sae", "ce_loss_without_sae"} <= r["downstream"].keys()
        u = r["unlearning"]
        assert len(u["rows"]) == 2 and "loss_unlearning_score" in u and "unlearning_score" in u
        assert "best_mcq_prob_selectivity" in u and all("mcq_prob_selectivity" in row for row in u["rows"])
        assert len(r["conditioning"]["decoder"]["cond"]) == 2
    assert report["runs"]["adaptive-a0.0"]["conditioning"]["grouping"] == "learned"
    assert report["runs"]["baseline"]["conditioning"]["grouping"].startswith("post hoc")
    for r in report["runs"].values():  # F(b) at each default budget, with its document-bootstrap interval
        assert {"F_0.03", "F_0.1", "best_selectivity_crossfit"} <= r["unlearning"].keys()
        assert "F_0.03" in r["unlearning"]["intervals"]["ci95"]
    # the references beside the runs: the baseline's features by forget share, and the SAE-free edit
    assert set(report["references"]) == {"baseline+forget-share", "diff-of-means"}
    assert "diff-of-means" in report["conditions"]["conditions"]
    md = (out / "report.md").read_text()
    assert str(tmp_path / "s.zarr") in md and md.count("## Who wins") == 1 and "explained_variance" in md
    assert "F(0.03): forget ΔCE at retain ΔCE 0.03" in md and "![frontier.png](frontier.png)" in md
    assert set(report["timings_s"]) >= {
        "reconstruction",
        "downstream",
        "unlearning_baseline",
        "unlearning_interventions",
        "conditioning",
    }
    # the corpora's order and composition as the store recorded them, and what frequencies counted
    groups = report["corpora"]["groups"]
    assert all(
        g["composition"]["order_seed"] == 0 and g["composition"]["tokens"] == g["tokens"] for g in groups.values()
    ), groups
    freq = report["corpora"]["feature_frequencies"]
    assert freq["frequency_rows"] == 0 and freq["sample"] == "every row of the training corpora"
    train_rows = {g["role"]: g["tokens"] for g in groups.values() if g["split"] == "train"}
    assert set(freq["rows_counted"]) == {"forget", "retain"}
    assert all(0.8 * train_rows[k] < v <= train_rows[k] for k, v in freq["rows_counted"].items())  # EOS rows out
    assert "## Corpora" in md and "(seed 0)" in md and "every row of the training corpora" in md

    before = (out / "report.json").stat().st_mtime_ns
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0
    assert "complete, left alone" in res.output and "report is current" in res.output
    assert (out / "report.json").stat().st_mtime_ns == before
    # another [eval] setting makes the report stale: the next run evaluates again
    path.write_text(path.read_text().replace("ce_contexts = 4", "ce_contexts = 3"))
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0 and "report is current" not in res.output
    assert json.loads((out / "report.json").read_text())["eval_settings"]["ce_contexts"] == 3


def test_eval_before_train_is_one_line_error(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(path), "harvest"]).exit_code == 0
    res = runner.invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 2 and "is not trained yet (run `pipe train`)" in res.output


def test_eval_refuses_a_failed_run_naming_it(tmp_path, tiny_model_dir, monkeypatch):
    """A run that failed in training stops `pipe eval` (exit 2, one line naming it): left out, its
    condition's other seeds would be paired around the missing one."""
    import orthosae.eval.runner as eval_runner

    path = write_config(tmp_path, tiny_model_dir)
    for name in ("baseline", "fixed", "adaptive-a0.0", "adaptive-a0.2"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text("{}")
    monkeypatch.setattr(
        eval_runner,
        "read_summary",
        lambda d: {"status": "failed", "message": "nan at step 7"} if d.name == "fixed" else {"status": "complete"},
    )
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(path), "harvest"]).exit_code == 0
    res = runner.invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 2, res.output
    line = [ln for ln in res.output.splitlines() if "failed in training" in ln]
    assert line and "run 'fixed' failed in training (nan at step 7)" in line[0]
    assert not (tmp_path / "reports/tiny/report.json").exists()


def test_who_wins_names_ties_instead_of_the_first_condition():
    from orthosae.eval.aggregate import aggregate

    def res(kind, seed, ev, score):
        return {
            "cfg": {"orthosae": {"type": kind, "train": {"seed": seed}, "ortho": {"alpha": 0.0}}},
            "reconstruction": {"l0": 50.0, "explained_variance": ev},
            "unlearning": {"unlearning_score": score},
        }

    results = {
        f"{k}-s{s}": res(k, s, ev, 0.0)
        for s in range(5)
        for k, ev in (("baseline", 0.6 + 0.01 * s), ("fixed", 0.7 + 0.01 * s))
    }
    w = aggregate(results)["who_wins"]
    assert w["explained_variance"] == "fixed"  # +0.1 on every seed
    assert w["unlearning_score"] == "tie: baseline, fixed"  # equal everywhere: no first-listed winner


def test_spread_decomposition_and_no_pi_ablation(tmp_path, tiny_model_dir):
    """`[eval.spread]` reruns a condition's unlearning on bootstrap draws of the selection rows and
    reports the three parts; `pi_ablation = false` skips the grouped runs' π ablation."""
    path = write_tiny_pipeline(
        tmp_path,
        tiny_model_dir,
        rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    seeds = [0, 1, 2]
    [[runs]]
    name = "baseline-wide"
    type = "baseline"
    d_sae = 48
    [[runs]]
    name = "adaptive"
    type = "adaptive"
    """
        + tiny_eval(tmp_path)
        + """
    modes = ["loss"]
    retain_budgets = [0.005, 0.1]
    pi_ablation = false
    references = ["forget_share"]
    forget_share_condition = "baseline"
    forget_share_runs = 2
    [eval.spread]
    condition = "baseline"
    runs = 2
    selection_draws = 2
    """,
    )
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "reports/tiny"
    report = json.loads((out / "report.json").read_text())
    assert "ablation_pi_from_clamped" not in report["runs"]["adaptive"]["unlearning"]
    # the reference on the named condition's first forget_share_runs seeds only
    assert set(report["references"]) == {f"baseline+forget-share-s{s}" for s in range(2)}
    spread = report["spread"]
    assert spread["condition"] == "baseline" and spread["runs"] == 2 and spread["selection_draws"] == 2
    assert set(spread["figures"]) == {"F_0.005", "F_0.1", "best_selectivity_crossfit"}
    sel = spread["figures"]["best_selectivity_crossfit"]
    assert set(sel["values"]) == {"baseline-s0", "baseline-s1", "baseline-s2"}  # every seed's spread
    assert set(sel["draws"]) == {"baseline-s0", "baseline-s1"} and all(len(v) == 2 for v in sel["draws"].values())
    for key, fig in spread["figures"].items():  # the seed values are the runs' own figures
        for run, value in fig["values"].items():
            same = report["runs"][run]["unlearning"][key]
            assert value == same or (math.isnan(value) and math.isnan(same)), (key, run)
    # tiny's held-out text is one document per corpus: no half to score on, so every cross-fitted
    # figure (F(b) included) is n/a, and the decomposition counts no seed for it
    assert report["runs"]["baseline-s0"]["unlearning"]["documents"] == {
        "forget": 1,
        "retain": 1,
        "draws": report["runs"]["baseline-s0"]["unlearning"]["documents"]["draws"],
    }
    for f in spread["figures"].values():
        assert f["n_seeds"] == sum(math.isfinite(v) for v in f["values"].values()) == 0
    assert "unlearning_spread" in report["timings_s"]
    assert "## Where the spread comes from" in (out / "report.md").read_text()


def test_spread_condition_must_be_a_condition(tmp_path, tiny_model_dir):
    path = write_tiny_pipeline(
        tmp_path,
        tiny_model_dir,
        rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    seeds = [0, 1]
    """
        + tiny_eval(tmp_path)
        + """
    [eval.spread]
    condition = "baseline-s0"
    """,
    )
    res = CliRunner().invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 2
    assert "[eval.spread] condition: 'baseline-s0' is not a condition of [[runs]] (have: baseline)" in res.output
    path.write_text(
        path.read_text()
        .replace('condition = "baseline-s0"', 'condition = "baseline"')
        .replace("[eval.spread]", 'forget_share_condition = "fixed"\n    [eval.spread]')
    )
    res = CliRunner().invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 2
    assert "[eval.unlearning] forget_share_condition: 'fixed' is not a baseline condition" in res.output
