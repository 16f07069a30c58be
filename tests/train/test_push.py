"""`pipe push`: the staged repo file by file, sae_lens loading it from disk (and through its Hub
loader, pointed at the staged files), and the upload receiving that folder and repo; only the
network calls (create_repo, create_commit) are replaced."""

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from orthosae.cli import main
from orthosae.common.config import load_config
from orthosae.common.store import StoreReader
from orthosae.train.export import load_sae
from orthosae.train.sparsity import feature_density, sparsity_rows
from tests._configs import BASELINE_AND_ADAPTIVE, tiny_eval, write_tiny_pipeline


@pytest.fixture(scope="module")
def piped(tmp_path_factory, tiny_model_dir):
    """harvest -> train -> eval on the tiny model: two runs and their report."""
    tmp = tmp_path_factory.mktemp("push")
    path = write_tiny_pipeline(tmp, tiny_model_dir, tokens=3200, rest=BASELINE_AND_ADAPTIVE + tiny_eval(tmp))
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp, path


def test_every_export_writes_sparsity(piped):
    tmp, path = piped
    cfg = load_config(path)
    reader = StoreReader(cfg.harvest.store)
    for name in ("baseline", "adaptive"):
        log10 = load_file(str(tmp / "runs" / name / "sparsity.safetensors"))["sparsity"]
        sae, _ = load_sae(tmp / "runs" / name)  # raw-activation weights: density on raw rows
        density = feature_density(sae, sparsity_rows(reader, ["retain", "forget"]), 1.0)
        assert log10.shape == (128,) and torch.allclose(log10, torch.log10(density + 1e-10), atol=1e-4)
        assert (log10 > -10).any() and log10.max() <= 0 and log10.std() > 0  # real densities, not a constant


def test_staged_repo_file_by_file(piped):
    tmp, path = piped
    res = CliRunner().invoke(
        main, ["--config", str(path), "push", "baseline", "adaptive", "--repo", "me/tiny-saes", "--dry-run"]
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    staged = tmp / "reports/tiny/hub/me--tiny-saes"
    assert str(staged) in res.output.replace("\n", "")
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == [
        "README.md",
        *[
            f"{r}/{f}"
            for r in ("adaptive", "baseline")
            for f in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")
        ],
    ]
    for run in ("baseline", "adaptive"):
        for f in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
            assert (staged / run / f).read_bytes() == (tmp / "runs" / run / f).read_bytes(), (run, f)

    card = (staged / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: saelens" in front and "- saelens" in front
    cfg_json = json.loads((tmp / "runs/adaptive/cfg.json").read_text())
    assert f"**{cfg_json['model_name']}**, layer **0**" in card and "hook `blocks.0.hook_resid_post`" in card
    assert re.search(
        r"\| `adaptive` \| `blocks.0.hook_resid_post` \| adaptive \| orthosae_grouped \| 64 \| 128 \| 50 \| complete \|",
        card,
    )
    assert "register_with_sae_lens()" in card and 'SAE.from_pretrained("me/tiny-saes", "adaptive")' in card
    assert "base_model" not in front  # the tiny model is a local folder, not a Hub id
    assert "- `adaptive` (adaptive): d_sae = 128, tokens = 3200" in card and "alpha = 0.04" in card
    assert "lambda2_max" not in card.split("- `baseline`")[1].split("\n")[0]  # no L_ortho settings for a baseline
    report = json.loads((tmp / "reports/tiny/report.json").read_text())["runs"]
    for run in ("baseline", "adaptive"):
        row = next(ln for ln in card.splitlines() if ln.startswith(f"| `{run}` | ") and ln.count("|") > 9)
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        want = [
            report[run]["reconstruction"]["l0"],
            report[run]["reconstruction"]["explained_variance"],
            report[run]["reconstruction"]["mse"],
        ]
        assert [float(c) for c in cells[:3]] == pytest.approx(want, rel=1e-3)


def test_sae_lens_loads_the_staged_saes(piped, monkeypatch):
    from sae_lens import SAE

    from orthosae.train.export import register_with_sae_lens

    tmp, path = piped
    res = CliRunner().invoke(
        main, ["--config", str(path), "push", "baseline", "adaptive", "--repo", "me/tiny-saes", "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    staged = tmp / "reports/tiny/hub/me--tiny-saes"
    reader = StoreReader(str(tmp / "s.zarr"))
    x = reader.read_rows("retain_heldout", 0, 64)
    register_with_sae_lens()  # the grouped SAE needs orthosae's registration
    for run in ("baseline", "adaptive"):
        ours, _ = load_sae(tmp / "runs" / run)
        theirs = SAE.load_from_disk(staged / run)
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
        assert torch.allclose(theirs.decode(theirs.encode(x)), ours(x), atol=1e-5)

    # sae_lens' Hub loader, with hf_hub_download answering from the staged folder (the network)
    import sae_lens.loading.pretrained_sae_loaders as loaders

    asked = []

    def from_staged(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(staged / filename)

    monkeypatch.setattr(loaders, "hf_hub_download", from_staged)
    sae, _, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity("me/tiny-saes", "adaptive")
    assert ("me/tiny-saes", "adaptive/sparsity.safetensors") in asked
    assert torch.equal(log_sparsity, load_file(str(staged / "adaptive/sparsity.safetensors"))["sparsity"])
    assert torch.allclose(sae.encode(x), load_sae(tmp / "runs/adaptive")[0].encode(x), atol=1e-5)


def test_upload_sends_the_staged_folder_to_the_repo(piped, monkeypatch):
    """create_repo and upload_folder are the calls that reach the network: they record what they
    get; the files are what huggingface_hub's own folder walk (the one upload_folder runs) adds."""
    from huggingface_hub import HfApi

    tmp, path = piped
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, Path(folder_path), kw)
        calls["ops"] = self._prepare_upload_folder_additions(
            folder_path, "", allow_patterns=None, ignore_patterns=None, token=None, repo_type=kw.get("repo_type")
        )

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"

        return Info()

    def validate_yaml(self, content, **kw):  # the Hub checks the card's metadata: parse it here
        import yaml

        calls["card_meta"] = yaml.safe_load(content.split("---")[1])

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
    res = CliRunner().invoke(main, ["--config", str(path), "push", "adaptive", "--repo", "me/tiny-saes", "--private"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "https://huggingface.co/me/tiny-saes/commit/abc" in res.output
    staged = tmp / "reports/tiny/hub/me--tiny-saes"
    assert calls["create_repo"][0] == "me/tiny-saes" and calls["create_repo"][1]["private"] is True
    repo_id, folder, kw = calls["upload"]
    assert repo_id == "me/tiny-saes" and folder == staged and kw["repo_type"] == "model"
    assert calls["card_meta"]["library_name"] == "saelens" and "saelens" in calls["card_meta"]["tags"]
    sent = {op.path_in_repo: Path(op.path_or_fileobj) for op in calls["ops"]}
    assert sorted(sent) == [
        "README.md",
        "adaptive/cfg.json",
        "adaptive/sae_weights.safetensors",
        "adaptive/sparsity.safetensors",
    ]
    assert all(p == staged / name for name, p in sent.items())
    assert (staged / "adaptive/sae_weights.safetensors").read_bytes() == (
        tmp / "runs/adaptive/sae_weights.safetensors"
    ).read_bytes()


def test_push_bad_input_and_network_failure(piped, monkeypatch):
    from huggingface_hub import HfApi

    tmp, path = piped
    runner = CliRunner()
    for args, needle, code in [
        (["nope", "--repo", "me/x"], "no [[runs]] entry named 'nope'", 2),
        (["baseline", "--repo", "not a repo"], "--repo not a repo: expected OWNER/NAME", 2),
    ]:
        res = runner.invoke(main, ["--config", str(path), "push", *args])
        assert res.exit_code == code and needle in res.output and len(res.output.strip().splitlines()) == 1, res.output

    def offline(self, *a, **kw):
        import httpx

        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    res = runner.invoke(main, ["--config", str(path), "push", "baseline", "--repo", "me/x"])
    assert res.exit_code == 1 and "upload of" in res.output and "Name or service not known" in res.output, res.output
    assert (tmp / "reports/tiny/hub/me--x/baseline/cfg.json").is_file()  # staged files kept
