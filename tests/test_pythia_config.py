"""configs/pythia-70m.toml: everything before the hub download, without a network.

`pipe --config configs/pythia-70m.toml harvest` reads and validates the config, then loads the
tokenizer from the hub first (corpora are planned with it before the model loads): offline, that
is where it must stop, with one line naming the model and exit 2, having written no store.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.pythia_cost import PYTHIA_70M
from orthosae.common.config import check_model_fits, load_config
from orthosae.common.model import decoder_layers, decoder_layers_path, final_norm
from orthosae.train.sae_lens_names import sae_lens_metadata

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/pythia-70m.toml"


def test_config_validates_and_fits_pythia_70m():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = load_config(CONFIG)
    assert (cfg.model.id, cfg.harvest.layer, cfg.harvest.hook) == ("EleutherAI/pythia-70m-deduped", 3, "resid_post")
    assert {c.role for c in cfg.corpora.values()} == {"retain", "forget"}
    assert {c.source for c in cfg.corpora.values()} == {"hf:Salesforce/wikitext", "hf:cais/wmdp-bio-forget-corpus"}
    assert cfg.eval.unlearning.forget_questions == cfg.eval.unlearning.retain_questions == "hf:cais/mmlu"
    assert [r.type for r in cfg.runs] == ["baseline", "fixed", "adaptive", "adaptive"]
    with torch.device("meta"):  # Pythia-70M's shape, no weights, no download
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_70M))
    check_model_fits(cfg, len(decoder_layers(model)), model.config.hidden_size)
    assert decoder_layers_path(model) == "gpt_neox.layers" and final_norm(model) is model.gpt_neox.final_layer_norm
    meta = sae_lens_metadata(cfg.model.id, cfg.harvest.layer, cfg.harvest.hook)
    assert (meta["model_name"], meta["hook_name"]) == ("pythia-70m-deduped", "blocks.3.hook_resid_post")


def test_layer_is_one_of_saebench_pythia_70m_hooks():
    directory = pytest.importorskip("sae_lens.loading.pretrained_saes_directory")
    cfg = load_config(CONFIG)
    meta = sae_lens_metadata(cfg.model.id, cfg.harvest.layer, cfg.harvest.hook)
    release = directory.get_pretrained_saes_directory()["sae_bench_pythia70m_sweep_standard_ctx128_0712"]
    assert release.model == meta["model_name"]
    assert any(sae_id.startswith(meta["hook_name"] + "__") for sae_id in release.saes_map)


def test_harvest_offline_stops_at_the_hub_download_with_one_line(tmp_path):
    """HF_HUB_OFFLINE and an empty HF_HOME: the same message as with no network at all (there,
    huggingface_hub first retries for ~1 min and logs each retry)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "orthosae.cli", "--config", str(CONFIG), "harvest"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "error: model 'EleutherAI/pythia-70m-deduped': loading the tokenizer "
        "failed: We couldn't connect to 'https://huggingface.co'"
    ), lines[0]
    assert not (tmp_path / "stores").exists()  # nothing written but the event log
    [log] = (tmp_path / "reports/pythia-70m/events").glob("harvest-*.jsonl")
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["event"], last["exit_code"]) == ("failed", 2)
