"""GPU smoke tests: harvest, the stream, one training step of each SAE type, and eval on CUDA.

They run only where CUDA is present (skipped with the reason elsewhere) and compare each CUDA
result with the same computation on CPU, so the CUDA-only paths (pinned copies the writer thread
waits for, batches widened on the device, SAEs and held-out rows on the model's device, the
LM-head slice sized by free memory) are exercised at least once before a real run.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from orthosae.common.config import RunConfig, load_config
from orthosae.common.store import StoreReader
from tests._configs import tiny_eval, write_tiny_pipeline
from tests._configs import write_harvest_config as harvest_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def on_cuda(path: Path) -> Path:
    """The same config with every device set to cuda."""
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cuda"'))
    return path


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_harvest_on_cuda_matches_cpu(tmp_path, tiny_model_dir, storage):
    from orthosae.harvest import harvest

    cpu = load_config(harvest_config(tmp_path, tiny_model_dir, store="cpu.zarr", storage=storage, name="cpu.toml"))
    cuda = load_config(
        on_cuda(harvest_config(tmp_path, tiny_model_dir, store="cuda.zarr", storage=storage, name="cuda.toml"))
    )
    assert cuda.model.device == "cuda"
    harvest(cpu, show_progress=False)
    harvest(cuda, show_progress=False)
    a, b = StoreReader(cpu.harvest.store), StoreReader(cuda.harvest.store)
    assert b.complete and b.check() == []
    for name, info in a.corpora().items():
        assert np.array_equal(a.read_tokens(name, 0, info.n_rows), b.read_tokens(name, 0, info.n_rows))
        tol = 1e-2 if storage == "bfloat16" else 1e-4  # one bf16 rounding step apart at most
        torch.testing.assert_close(
            b.read_rows(name, 0, info.n_rows), a.read_rows(name, 0, info.n_rows), rtol=tol, atol=tol
        )


def test_stream_on_cuda_serves_the_cpu_batches(tmp_path):
    from orthosae.train.stream import ActivationStream
    from tests._stores import make_id_store as make_store

    reader, _ = make_store(tmp_path, storage="bfloat16")
    kw = dict(batch_size=10, buffer_rows=32, seed=2, scale=0.37, total_batches=30, mix={"retain": 1.0, "forget": 1.0})
    cpu = list(ActivationStream(reader, ["retain", "forget"], device="cpu", **kw))
    gpu = list(ActivationStream(reader, ["retain", "forget"], device="cuda", **kw))
    assert len(cpu) == len(gpu) == 30
    for (x, f), (gx, gf) in zip(cpu, gpu):
        assert gx.device.type == "cuda" and gx.dtype == torch.float32
        assert torch.equal(gx.cpu(), x) and torch.equal(gf.cpu(), f)  # widening and scale are exact


@pytest.mark.parametrize(
    "kind, keys",
    [
        ("baseline", {}),
        ("baseline", {"activation": "topk", "k": 8}),
        ("baseline", {"activation": "batchtopk", "k": 8}),
        ("fixed", {"alpha": 0.1}),
        ("adaptive", {}),
        ("adaptive", {"activation": "topk", "k": 8}),
    ],
)
def test_one_training_step_of_each_sae_type_on_cuda(kind, keys):
    from orthosae.train.sae import make_sae
    from orthosae.train.trainer import Trainer

    d, batch = 64, 256
    g = torch.Generator().manual_seed(0)
    x, is_forget = torch.randn(batch, d, generator=g), torch.rand(batch, generator=g) < 0.5
    records = {}
    for device in ("cpu", "cuda"):
        run = RunConfig.of(kind, d_sae=256, batch_size=batch, log_every=1, lambda2_max=1.0, t0=1, **keys)
        sae = make_sae(run, d, device=device)
        trainer = Trainer(run, sae, total_steps=10)
        records[device] = [trainer.train_step(x.to(device), is_forget.to(device)) for _ in range(2)][-1]
        assert trainer.running, trainer.message
        assert all(p.device.type == device for p in sae.parameters())
    for key in ("recon", "total", "l0"):
        assert records["cuda"][key] == pytest.approx(records["cpu"][key], rel=2e-2, abs=1e-3), key


def test_pipeline_on_cuda_evaluates_on_the_models_device(tmp_path, tiny_model_dir, monkeypatch):
    from click.testing import CliRunner

    import orthosae.eval.runner
    from orthosae.cli import main
    from orthosae.eval import downstream

    path = on_cuda(
        write_tiny_pipeline(
            tmp_path,
            tiny_model_dir,
            tokens=1280,
            rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    [[runs]]
    name = "adaptive"
    type = "adaptive"
    """
            + tiny_eval(tmp_path, (2,)),
        )
    )
    devices, real_load = [], orthosae.eval.runner.load_sae

    def recorded(run_dir, device="cpu"):
        sae, cfg = real_load(run_dir, device=device)
        devices.append(sae.W_dec.device.type)
        return sae, cfg

    monkeypatch.setattr(orthosae.eval.runner, "load_sae", recorded)
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert devices == ["cuda", "cuda"]
    report = json.loads((tmp_path / "reports/tiny/report.json").read_text())
    for run in ("baseline", "adaptive"):
        assert np.isfinite(report["runs"][run]["reconstruction"]["explained_variance"])
        assert np.isfinite(report["runs"][run]["downstream"]["ce_loss_with_sae"])
    assert downstream.logit_budget(torch.device("cuda")) > downstream.LOGIT_BUDGET
