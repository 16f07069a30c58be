"""`pipe run` on the tiny model: harvest -> train -> eval writes the report; a rerun skips all three."""
import json
from pathlib import Path

from click.testing import CliRunner

from common.cli import main
from tests._configs import tiny_eval, write_tiny_pipeline


def write_config(tmp_path: Path, model_dir: Path) -> Path:
    return write_tiny_pipeline(tmp_path, model_dir, rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    [[runs]]
    name = "fixed"
    type = "fixed"
    alpha = 0.1
    [[runs]]
    name = "adaptive-a0.0"
    type = "adaptive"
    [[runs]]
    name = "adaptive-a0.2"
    type = "adaptive"
    alpha = 0.2
    """ + tiny_eval(tmp_path))


def test_pipe_run_end_to_end_then_skips(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "reports/tiny"
    for f in ("report.json", "report.md", "recon_vs_l0.png", "unlearning_vs_alpha.png",
              "condition_numbers.png", "training_curves.png"):
        assert (out / f).stat().st_size > 0, f
    report = json.loads((out / "report.json").read_text())
    assert report["store"] == str(tmp_path / "s.zarr") and report["config"] == str(path)
    assert set(report["runs"]) == {"baseline", "fixed", "adaptive-a0.0", "adaptive-a0.2"}
    for name, r in report["runs"].items():
        rec = r["reconstruction"]
        assert {"explained_variance", "explained_variance_legacy", "explained_variance_dictionary_learning",
                "mse", "cossim", "l0", "l1", "l2_ratio", "relative_reconstruction_bias", "frac_dead",
                "freq_over_10_percent"} <= rec.keys()
        assert {"ce_loss_score", "kl_div_score", "ce_loss_with_sae", "ce_loss_without_sae"} <= r["downstream"].keys()
        u = r["unlearning"]
        assert len(u["rows"]) == 2 and "loss_unlearning_score" in u and "unlearning_score" in u
        assert "best_mcq_prob_selectivity" in u and all("mcq_prob_selectivity" in row for row in u["rows"])
        assert len(r["conditioning"]["decoder"]["cond"]) == 2
    assert report["runs"]["adaptive-a0.0"]["conditioning"]["grouping"] == "learned"
    assert report["runs"]["baseline"]["conditioning"]["grouping"].startswith("post hoc")
    md = (out / "report.md").read_text()
    assert str(tmp_path / "s.zarr") in md and "Who wins" in md and "explained_variance" in md
    assert set(report["timings_s"]) >= {"reconstruction", "downstream", "unlearning_baseline",
                                              "unlearning_interventions", "conditioning"}
    # the corpora's order and composition as the store recorded them, and what frequencies counted
    groups = report["corpora"]["groups"]
    assert all(g["composition"]["order_seed"] == 0 and g["composition"]["tokens"] == g["tokens"]
               for g in groups.values()), groups
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


def test_eval_before_train_is_one_line_error(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(path), "harvest"]).exit_code == 0
    res = runner.invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 2 and "is not trained yet (run `pipe train`)" in res.output


def test_winners_name_ties_instead_of_the_first_run():
    from eval.report import comparison, winners

    def res(l0, ev, score):
        return {"reconstruction": {"l0": l0, "explained_variance": ev},
                "unlearning": {"unlearning_score": score}}

    results = {"a": res(50.0, 0.6, 0.0), "b": res(55.0, 0.7, 0.0), "c": res(200.0, 0.9, 0.0)}
    w = winners(results, list(results))
    assert w["explained_variance"] == "c"
    assert w["unlearning_score"] == "tie (all 3 runs at 0)"
    results["c"]["unlearning"]["unlearning_score"] = 0.4
    results["b"]["unlearning"]["unlearning_score"] = 0.4
    assert winners(results, list(results))["unlearning_score"] == "tie: b, c"
    comp = comparison(results)
    # a and b are within ±25 % L0 of each other, c is not
    assert [band["runs"] for band in comp["matched_l0"]] == [["a", "b"]]
    assert comp["matched_l0"][0]["winners"]["explained_variance"] == "b"
