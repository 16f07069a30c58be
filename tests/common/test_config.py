"""Every bad config gets a one-line error naming the file and the key."""

from pathlib import Path

import pytest

from orthosae.common.config import ConfigError, check_model_fits, load_config

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[model]
id = "tiny"
[harvest]
layer = 1
store = "s.zarr"
[corpora.a]
source = "file:a.jsonl"
role = "retain"
tokens = 1000
"""


def write(tmp_path, text):
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def error_of(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg and "p.toml" in msg
    return msg


def test_shipped_configs_load():
    default = load_config(ROOT / "pipeline.toml")
    assert default.model.id == "embedded:gemma-3-270m" and default.harvest.layer == 12
    assert {r.type for r in default.runs} == {"baseline", "fixed", "adaptive"}
    ref = load_config(ROOT / "configs/gemma-2-2b.toml")
    assert (ref.model.id, ref.harvest.layer, ref.model.d_model, ref.model.dtype) == (
        "google/gemma-2-2b",
        19,
        2304,
        "bfloat16",
    )
    assert ref.corpora["forget"].source == "hf:cais/wmdp-bio-forget-corpus"
    # docs/design.md, "The cost of L_ortho": bf16 Grams at Gemma-2-2B scale; float32 (exact, machine-independent)
    # for the embedded default and the experiment RESULTS.md reports
    assert {r.ortho.gram_dtype for r in ref.runs} == {"bfloat16"}
    assert {r.ortho.gram_dtype for r in default.runs} == {"float32"}
    for name, store, gram_dtype in (
        ("experiment.toml", default.harvest.store, "float32"),
        ("experiment-gemma-2-2b.toml", ref.harvest.store, "bfloat16"),
    ):
        exp = load_config(ROOT / "configs" / name)
        assert {r.ortho.gram_dtype for r in exp.runs} == {gram_dtype}
        assert exp.harvest.store == store  # the experiment reuses the harvest of its model's config
        by_type: dict[str, set] = {}
        for r in exp.runs:  # every condition has ≥ 3 seeds, and TopK holds every run at the same L0
            by_type.setdefault(r.name.rsplit("-s", 1)[0], set()).add(r.train.seed)
            assert (r.train.activation, r.train.k) == ("topk", 64)
        assert len(by_type) >= 5 and all(len(seeds) >= 3 for seeds in by_type.values())


def test_spread_config_scores_the_experiments_own_runs():
    """configs/experiment-spread.toml measures the experiment's spread on the experiment's baseline:
    same store, corpora, runs_dir and data order, and each of its runs is an experiment run with the
    same training settings (the same fingerprint: `pipe run` reuses it rather than training another),
    scored with the experiment's unlearning settings."""
    exp = load_config(ROOT / "configs/experiment.toml")
    spread = load_config(ROOT / "configs/experiment-spread.toml")
    assert (spread.harvest, spread.corpora, spread.train) == (exp.harvest, exp.corpora, exp.train)
    runs = {r.name: r for r in exp.runs}
    assert len(spread.runs) >= 6
    for r in spread.runs:
        assert r.name in runs and (r.type, r.train) == (runs[r.name].type, runs[r.name].train), r.name
    assert {r.condition for r in spread.runs} == {spread.eval.spread.condition}
    assert spread.eval.spread.condition == exp.eval.unlearning.forget_share_condition
    a, b = spread.eval.unlearning, exp.eval.unlearning
    assert (a.retain_thresholds, a.n_features_list, a.multipliers, a.loss_contexts, a.retain_budgets) == (
        b.retain_thresholds,
        b.n_features_list,
        b.multipliers,
        b.loss_contexts,
        b.retain_budgets,
    )
    assert (spread.eval.rows, spread.eval.frequency_rows, spread.eval.frequency_seed) == (
        exp.eval.rows,
        exp.eval.frequency_rows,
        exp.eval.frequency_seed,
    )
    assert not exp.eval.spread.condition  # measured once, outside the experiment's 90 minutes


def test_minimal_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.harvest.context_length == 128 and cfg.corpora["a"].split == "train"
    assert (cfg.log.progress_seconds, cfg.log.progress_percent) == (30.0, 25)
    assert [r.name for r in cfg.runs] == ["baseline"]
    assert (cfg.harvest.order_seed, cfg.corpora["a"].label_field) == (0, None)
    assert (cfg.eval.frequency_rows, cfg.eval.frequency_seed) == (0, 0)  # every training row


@pytest.mark.parametrize(
    "edit, needle",
    [
        (("layer = 1", 'layer = "one"'), "[harvest] layer: expected int"),
        (("layer = 1", "layer = -1"), "[harvest] layer: must be >= 0"),
        (('id = "tiny"', 'id = "tiny"\ncolour = "red"'), "[model] colour: unknown key"),
        (("tokens = 1000", "tokens = 0"), "[corpora.a] tokens: must be > 0"),
        (('role = "retain"', 'role = "keep"'), "[corpora.a] role: must be one of retain, forget"),
        (('store = "s.zarr"', ""), "[harvest] store: required key is missing"),
        (("[harvest]", "[harvst]"), "[harvst]: unknown section"),
        (('id = "tiny"', 'id = "tiny"\ndtype = "int8"'), "[model] dtype: must be one of"),
        (("tokens = 1000", "tokens = 1000\n[train.ortho]\nevery = 0"), "[train.ortho] every: must be > 0"),
        (("tokens = 1000", "tokens = 1000\n[log]\nprogress_percent = 0"), "[log] progress_percent: must be in 1..100"),
        (("tokens = 1000", "tokens = 1000\n[log]\nprogress_seconds = -1"), "[log] progress_seconds: must be >= 0"),
        (("tokens = 1000", "tokens = 1000\n[log]\nevery = 5"), "[log] every: unknown key"),
        (
            ('source = "file:a.jsonl"', 'source = "embedded:wiki"\nsubset = "retain"\nlabel_field = "topic"'),
            "[corpora.a] label_field: embedded:wiki has no record fields",
        ),
        (
            ('source = "file:a.jsonl"', 'source = "file:a.txt"\nlabel_field = "topic"'),
            "[corpora.a] label_field: file:a.txt has no record fields",
        ),
        (("layer = 1", "layer = 1\norder_seed = -1"), "[harvest] order_seed: must be >= 0"),
        (("tokens = 1000", "tokens = 1000\n[eval]\nfrequency_rows = -5"), "[eval] frequency_rows: must be >= 0"),
        (
            ("tokens = 1000", 'tokens = 1000\n[eval]\nprimary_figure = "F_0.2"'),
            "[eval] primary_figure: 'F_0.2' is not F(b) of a retain budget (have: F_0.03, F_0.1)",
        ),
        (("tokens = 1000", 'tokens = 1000\n[eval]\nprimary_quality = "mse"'), "[eval] primary_quality: must be one of"),
        (
            (
                "tokens = 1000",
                'tokens = 1000\n[[runs]]\nname = "b"\ntype = "baseline"\n[eval]\nprimary_pairs = [["b", "x"]]',
            ),
            "[eval] primary_pairs: expected pairs of two different conditions of [[runs]], got ['b', 'x'] (have: b)",
        ),
    ],
)
def test_bad_keys_are_named(tmp_path, edit, needle):
    assert needle in error_of(tmp_path, MINIMAL.replace(*edit))


def test_bad_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, MINIMAL + "\n[[[")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_runs_validated(tmp_path):
    assert "[[runs]] x type: must be one of" in error_of(tmp_path, MINIMAL + '[[runs]]\nname = "x"\ntype = "magic"\n')
    assert "[[runs]] x batch_size: shared by all runs" in error_of(
        tmp_path, MINIMAL + '[[runs]]\nname = "x"\ntype = "baseline"\nbatch_size = 3\n'
    )
    assert "[[runs]] x alpha: expected float" in error_of(
        tmp_path, MINIMAL + '[[runs]]\nname = "x"\ntype = "fixed"\nalpha = "lots"\n'
    )
    assert "duplicate run name" in error_of(
        tmp_path, MINIMAL + '[[runs]]\nname = "x"\ntype = "baseline"\n[[runs]]\nname = "x"\ntype = "fixed"\n'
    )
    cfg = load_config(write(tmp_path, MINIMAL + '[[runs]]\nname = "x"\ntype = "fixed"\nalpha = 0.2\nlr = 1e-3\n'))
    run = cfg.run("x")
    assert (run.ortho.alpha, run.train.lr, cfg.ortho.alpha, cfg.train.lr) == (0.2, 1e-3, 0.0, 4e-4)
    assert run.overrides == {"alpha": 0.2, "lr": 1e-3} and run.to_dict()["ortho"]["alpha"] == 0.2


def test_mix_must_name_train_corpora(tmp_path):
    assert "[train] mix.b: not a corpus" in error_of(tmp_path, MINIMAL + "[train]\nmix = { b = 1.0 }\n")


def test_layer_beyond_model_and_d_model_mismatch(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL.replace("layer = 1", "layer = 5")))
    with pytest.raises(ConfigError, match=r"\[harvest\] layer: 5 is beyond the model's 2 blocks"):
        check_model_fits(cfg, n_layers=2, d_model=64)
    cfg = load_config(write(tmp_path, MINIMAL.replace('id = "tiny"', 'id = "tiny"\nd_model = 32')))
    with pytest.raises(ConfigError, match=r"\[model\] d_model: config says 32, model tiny has 64"):
        check_model_fits(cfg, n_layers=2, d_model=64)


def test_readme_config_reference_is_current():
    """Every documented key, default and meaning appears in the README exactly as the code has it."""
    from orthosae.common.config import config_reference

    readme = (ROOT / "README.md").read_text()
    assert config_reference() in readme, "README config reference is stale: paste common.config.config_reference()"


def test_adaptive_run_needs_forget_and_retain_training_corpora(tmp_path):
    text = MINIMAL + '[[runs]]\nname = "g"\ntype = "adaptive"\n'
    assert '[[runs]] g type: "adaptive" groups features by their forget vs retain' in error_of(tmp_path, text)


TWO_ROLES = MINIMAL + '[corpora.b]\nsource = "file:b.jsonl"\nrole = "forget"\ntokens = 1000\n'


def test_seeds_and_grids_expand_into_named_runs(tmp_path):
    """List values and `seeds` expand into one run per combination (first key slowest, seeds fastest),
    named <name>-<key><value>...-s<seed>; each run carries its init seed, the stream seed stays [train]'s."""
    cfg = load_config(
        write(
            tmp_path,
            TWO_ROLES
            + """
[train]
seed = 7
[[runs]]
name = "base"
type = "baseline"
activation = "topk"
k = [8, 16]
l1_coefficient = 0.0
seeds = [0, 1]
[[runs]]
name = "adaptive"
type = "adaptive"
lambda2_max = [50, 100.0]
alpha = [0.0, 0.04]
seeds = [3]
[[runs]]
name = "plain"
type = "fixed"
""",
        )
    )
    assert [r.name for r in cfg.runs] == [
        "base-k8-s0",
        "base-k8-s1",
        "base-k16-s0",
        "base-k16-s1",
        "adaptive-lambda2_max50-alpha0-s3",
        "adaptive-lambda2_max50-alpha0.04-s3",
        "adaptive-lambda2_max100-alpha0-s3",
        "adaptive-lambda2_max100-alpha0.04-s3",
        "plain",
    ]
    r = cfg.run("base-k16-s1")
    assert (r.train.k, r.train.seed, r.train.activation, r.train.l1_coefficient) == (16, 1, "topk", 0.0)
    assert r.overrides == {"activation": "topk", "k": 16, "l1_coefficient": 0.0, "seed": 1}
    r = cfg.run("adaptive-lambda2_max100-alpha0.04-s3")
    assert (r.ortho.lambda2_max, r.ortho.alpha, r.train.seed) == (100.0, 0.04, 3)
    assert cfg.train.seed == 7 and cfg.run("plain").train.seed == 7  # no seeds: init seed = [train] seed
    with pytest.raises(ConfigError, match="no \\[\\[runs\\]\\] entry named 'base'.*base-k8-s0"):
        cfg.run("base")


@pytest.mark.parametrize(
    "runs, needle",
    [
        ("alpha = []", "[[runs]] x alpha: empty list"),
        ("alpha = [0.1, 0.1]", "[[runs]] x alpha: value 0.1 listed twice"),
        ('alpha = [0.1, "a"]', "[[runs]] x-alphaa alpha: expected float, got str 'a'"),
        ("alpha = [0.1, -1.0]", "[[runs]] x-alpha-1 alpha: must be >= 0"),
        ("seeds = []", "[[runs]] x seeds: expected a non-empty list"),
        ("seeds = 3", "[[runs]] x seeds: expected a non-empty list"),
        ("seeds = [0, 0]", "[[runs]] x seeds: seed 0 listed twice"),
        ("seeds = [0, -1]", "[[runs]] x seeds: every seed must be an int >= 0"),
        ("seed = 3", "[[runs]] x seed: shared by all runs (one data stream); a run's SAE init seed is `seeds"),
        ("batch_size = [1, 2]", "[[runs]] x batch_size: shared by all runs"),
        (
            "adam_betas = [[0.9, 0.99], [0.5, 0.9]]",
            "[[runs]] x adam_betas: expected two numbers in [0, 1) (a list key: not swept)",
        ),
        ('activation = "topk"', "[[runs]] x k: activation 'topk' needs k >= 1"),
        ('activation = "batchtopk"\nk = 5000', "[[runs]] x k: 5000 is more than d_sae 2048"),
        ("k = [4, 8]", '[[runs]] x-k4 k: only used with activation "topk" or "batchtopk"'),
        ('activation = "topk"\nk = 8\ntarget_l0 = 8', '[[runs]] x target_l0: only for activation "relu"'),
        ('activation = ["relu", "gelu"]', "[[runs]] x-activationgelu activation: must be one of relu, topk, batchtopk"),
        (
            'alpha_mode = "hinge"\ngram_dtype = "bfloat16"',
            "[[runs]] x gram_dtype: only for alpha_mode \"rms\" (this run is 'hinge')",
        ),
        ("sketch = 8", "[[runs]] x sketch: unknown key (removed in issue 25: the sketched L_ortho trained badly"),
        ('gram_dtype = "float16"', "[[runs]] x gram_dtype: must be one of float32, bfloat16"),
    ],
)
def test_sweep_errors_name_the_key(tmp_path, runs, needle):
    msg = error_of(tmp_path, TWO_ROLES + f'[[runs]]\nname = "x"\ntype = "fixed"\n{runs}\n')
    assert needle in msg, msg


def test_a_removed_key_fails_naming_it_and_why(tmp_path):
    """[train.ortho] sketch left the product (issue 25): setting it is the unknown-key error, saying so."""
    msg = error_of(tmp_path, TWO_ROLES + '[train.ortho]\nsketch = 0\n[[runs]]\nname = "x"\ntype = "fixed"\n')
    assert "[train.ortho] sketch: unknown key (removed in issue 25" in msg, msg


def test_expanded_names_must_not_collide(tmp_path):
    text = TWO_ROLES + (
        '[[runs]]\nname = "a-s0"\ntype = "fixed"\n[[runs]]\nname = "a"\ntype = "fixed"\nseeds = [0, 1]\n'
    )
    assert "[[runs]] a name: expanded run 'a-s0' collides with the run of the same name from [[runs]] a-s0" in error_of(
        tmp_path, text
    )
    assert "[[runs]] #1 name: cannot be a list" in error_of(
        tmp_path, TWO_ROLES + '[[runs]]\nname = ["a", "b"]\ntype = "fixed"\n'
    )


def test_the_cpu_tests_pin_cpu(tmp_path):
    """Configs the CPU tests write name the CPU for the model and for training: left at "auto" they
    would run on CUDA on a GPU box (bitwise resume, the 2-rank harvest asking for cuda:1). The GPU
    paths have their own tests (tests/test_gpu_smoke.py)."""
    from tests._configs import write_harvest_config, write_tiny_pipeline
    from tests._synthetic import write_config as write_train_config

    for i, write in enumerate(
        [
            lambda d: write_tiny_pipeline(d, Path("model")),
            lambda d: write_harvest_config(d, Path("model")),
            lambda d: write_train_config(d),
        ]
    ):
        (tmp_path / str(i)).mkdir()
        cfg = load_config(write(tmp_path / str(i)))
        assert (cfg.model.device, cfg.train.device) == ("cpu", "cpu"), write
