"""`pipe inspect` on the tiny model: the JSON holds what a direct computation gives, and the pages
render in a real browser (headless Chromium, skipped where it is not installed)."""
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.cli import main
from tests._configs import write_tiny_pipeline
from common.config import load_config
from common.store import open_store_for
from eval.browser_scan import WINDOW
from eval.unlearning import select_features
from train.export import load_sae
from train.sae.grouping import assign_groups, forget_share

TOP_K = 6


def write_config(tmp: Path, model_dir: Path) -> Path:
    return write_tiny_pipeline(tmp, model_dir, retain_heldout_tokens=320, d_sae=96, tokens=3200, t0=20, regroup_every=10, rest=f"""
    [[runs]]
    name = "baseline"
    type = "baseline"
    [[runs]]
    name = "adaptive"
    type = "adaptive"
    alpha = 0.1
    [eval]
    reports_dir = "{tmp / 'reports'}"
    name = "tiny"
    [eval.unlearning]
    retain_thresholds = [0.05, 0.5]
    n_features_list = [2, 5]
    """)


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    """Harvest + train two runs, then `pipe inspect` -> (config path, inspect root, CLI output)."""
    tmp = tmp_path_factory.mktemp("inspect")
    path = write_config(tmp, tiny_model_dir)
    runner = CliRunner()
    for args in (["harvest"], ["train"]):
        res = runner.invoke(main, ["--config", str(path), *args])
        assert res.exit_code == 0, res.output + repr(res.exception)
    res = runner.invoke(main, ["--config", str(path), "inspect", "--top-k", str(TOP_K)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return path, tmp / "reports/tiny/inspect", res.output


def _direct(path: Path, run: str):
    """Every held-out row's feature activations, computed directly (no streaming, no top-k)."""
    cfg = load_config(path)
    reader = open_store_for(cfg)
    sae, _ = load_sae(Path(cfg.train.runs_dir) / run)
    out = {}
    for name, c in cfg.corpora.items():
        if c.split != "heldout":
            continue
        g = reader.corpora()[name]
        with torch.no_grad():
            f = sae.encode(reader.read_rows(name, 0, g.n_rows))
        out[name] = {"role": c.role, "f": f, "tokens": reader.read_tokens(name, 0, g.n_rows),
                     "context": reader.root[name]["context"][:], "position": reader.root[name]["position"][:]}
    return cfg, sae, out


def _feature(root: Path, run: str, i: int) -> dict:
    files = sorted((root / run / "features").glob("*.json"))
    return json.loads(files[i].read_text())


@pytest.mark.parametrize("run", ["baseline", "adaptive"])
def test_json_matches_direct_computation(site, run):
    path, root, output = site
    assert f"{root}/index.html" in output.replace("\n", "")
    cfg, sae, rows = _direct(path, run)
    index = json.loads((root / run / "index.json").read_text())
    d_sae = sae.W_dec.shape[0]
    assert len(index["features"]) == d_sae and index["meta"]["d_sae"] == d_sae
    f_all = torch.cat([r["f"] for r in rows.values()])
    rpc = cfg.harvest.context_length - 1
    ctx_max = torch.cat([r["f"].reshape(-1, rpc, d_sae).amax(1) for r in rows.values()])  # [contexts, d_sae]
    n_forget = sum(len(r["f"]) for r in rows.values() if r["role"] == "forget")
    n_retain = sum(len(r["f"]) for r in rows.values() if r["role"] == "retain")
    assert index["meta"]["rows"] == {"forget": n_forget, "retain": n_retain}
    ff = sum((r["f"] > 0).sum(0) for r in rows.values() if r["role"] == "forget").double() / n_forget
    rf = sum((r["f"] > 0).sum(0) for r in rows.values() if r["role"] == "retain").double() / n_retain
    mf = sum(r["f"].sum(0) for r in rows.values() if r["role"] == "forget").double() / n_forget
    mr = sum(r["f"].sum(0) for r in rows.values() if r["role"] == "retain").double() / n_retain
    share = forget_share(mf, mr)
    if run == "adaptive":
        groups = sae.groups
        assert index["meta"]["grouping"].startswith("learned")
    else:
        groups = assign_groups(share, torch.zeros(d_sae, dtype=torch.long), cfg.ortho.groups)
        assert index["meta"]["grouping"].startswith("post hoc")
    active = (f_all > 0).any(0)
    assert active.sum() >= 5, "the tiny SAE should have live features"
    U = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    cos = U @ U.T
    checked_tops = 0
    for i in range(d_sae):
        row = index["features"][i]
        assert row["id"] == i and row["group"] == int(groups[i]) and row["silent"] == (not bool(active[i]))
        assert row["freq_forget"] == pytest.approx(float(ff[i]), rel=1e-3, abs=1e-9)
        assert row["freq_retain"] == pytest.approx(float(rf[i]), rel=1e-3, abs=1e-9)
        if active[i]:
            assert row["forget_share"] == pytest.approx(float(share[i]), rel=1e-3)
            assert row["max_act"] == pytest.approx(float(f_all[:, i].max()), rel=1e-3)
        same = (groups == groups[i]).clone()
        same[i] = False
        if same.any():
            assert row["max_cos_in_group"] == pytest.approx(float(cos[i][same].max()), rel=1e-3, abs=1e-4)
        d = _feature(root, run, i)
        assert d["id"] == i
        # top contexts: the k held-out contexts with the largest max activation (computed directly),
        # each once, shown at a row holding that max, with its context's tokens around it
        expect = torch.sort(ctx_max[:, i], descending=True).values[:TOP_K]
        expect = expect[expect > 0]
        assert [t["act"] for t in d["top"]] == pytest.approx(expect.tolist(), rel=1e-3)
        assert len({(t["corpus"], t["context"]) for t in d["top"]}) == len(d["top"])
        for t in d["top"]:
            r = rows[t["corpus"]]
            assert float(r["f"][t["row"], i]) == pytest.approx(t["act"], rel=1e-3)
            assert float(r["f"][r["context"] == t["context"], i].max()) == pytest.approx(t["act"], rel=1e-3)
            assert t["context"] == int(r["context"][t["row"]]) and t["position"] == int(r["position"][t["row"]])
            assert len(t["tokens"]) == len(t["token_ids"]) == len(t["acts"])
            assert t["token_ids"][t["focus"]] == int(r["tokens"][t["row"]])
            assert t["acts"][t["focus"]] == pytest.approx(t["act"], rel=1e-3)
            n_bos = int(t["bos"])
            if t["bos"]:  # BOS sits at position 0, unshaded
                assert t["focus"] == t["position"] and t["acts"][0] is None
            first = t["row"] - (t["focus"] - n_bos)  # store row of the first stored token shown
            ctx_rows = np.flatnonzero(r["context"] == t["context"])
            for k, (tid, a) in enumerate(zip(t["token_ids"][n_bos:], t["acts"][n_bos:])):
                assert first + k in ctx_rows  # never crosses into another context
                assert tid == int(r["tokens"][first + k])
                assert a == pytest.approx(float(r["f"][first + k, i]), rel=1e-3, abs=1e-6)
            # the window is as wide as the context allows on both sides
            assert t["focus"] - n_bos == min(WINDOW[0], t["position"] - 1)
            assert len(t["acts"]) - 1 - t["focus"] == min(WINDOW[1], cfg.harvest.context_length - 1 - t["position"])
            checked_tops += 1
        hist = d["histogram"]
        assert sum(hist["forget"]) == d["count_forget"] == int((sum(
            (r["f"][:, i] > 0).sum() for r in rows.values() if r["role"] == "forget")))
        assert sum(hist["retain"]) == d["count_retain"]
        if d["nearest_in_group"]:
            j = d["nearest_in_group"][0]["id"]
            assert int(groups[j]) == int(groups[i]) and j != i
            assert d["nearest_in_group"][0]["cos"] == pytest.approx(float(cos[i][same].max()), rel=1e-3, abs=1e-4)
        if d["nearest_other_groups"]:
            assert all(int(groups[n["id"]]) != int(groups[i]) for n in d["nearest_other_groups"])
    assert checked_tops >= 5
    groups_json = json.loads((root / run / "groups.json").read_text())
    assert groups_json["sizes"] == torch.bincount(groups, minlength=groups_json["n_groups"]).tolist()
    for sel in groups_json["unlearning"]:
        ranked = select_features(ff, rf, sel["retain_threshold"]).tolist()
        assert [f["id"] for f in sel["features"]] == ranked[:5] and sel["n_eligible"] == len(ranked)


@pytest.mark.parametrize("max_rows", [0, 40])
def test_streaming_top_k_equals_top_k_over_all_contexts(site, monkeypatch, max_rows):
    """Small batches (2 contexts each) so the running top-k is merged many times."""
    import eval.browser_scan as browser_scan

    path, _, _ = site
    cfg, sae, rows = _direct(path, "adaptive")
    reader = open_store_for(cfg)
    monkeypatch.setattr(browser_scan, "ROW_BATCH", 2 * (cfg.harvest.context_length - 1))
    calls = []
    scan = browser_scan.scan_heldout(sae, reader, list(rows), top_k=TOP_K, window=(3, 2), max_rows=max_rows,
                                on_rows=calls.append)
    rpc = cfg.harvest.context_length - 1
    keep = {n: len(r["f"]) if not max_rows else max_rows // rpc * rpc for n, r in rows.items()}
    assert len(calls) > (4 if not max_rows else 1) and sum(calls) == sum(keep.values())
    f = torch.cat([r["f"][:keep[n]] for n, r in rows.items()])  # global row ids follow this order
    ctx_max = f.reshape(-1, rpc, f.shape[1]).amax(1)
    kk = min(TOP_K, ctx_max.shape[0])  # fewer contexts than k: the rest stay empty
    assert torch.equal(scan.top_vals[:kk], torch.topk(ctx_max, kk, dim=0).values)
    assert (scan.top_vals[kk:] == -math.inf).all() and (scan.top_ids[kk:] == -1).all()
    # ties may order contexts differently: every kept row must hold the value it claims, each
    # context at most once per feature
    assert torch.equal(f.gather(0, scan.top_ids[:kk]), scan.top_vals[:kk])
    for i in range(f.shape[1]):
        live = scan.top_ids[scan.top_vals[:, i] > 0, i]
        assert len(set((live // rpc).tolist())) == len(live)
    for j in range(kk):
        for i in range(f.shape[1]):
            g = int(scan.top_ids[j, i])
            for k, off in enumerate(range(-3, 3)):
                same_ctx = 0 <= g % rpc + off < rpc
                got = float(scan.top_win[j, i, k])
                assert (float(f[g + off, i]) == got) if same_ctx else math.isnan(got)
    for role in ("forget", "retain"):
        fr = torch.cat([r["f"][:keep[n]] for n, r in rows.items() if r["role"] == role])
        assert torch.equal(scan.count[role], (fr > 0).sum(0))
        assert torch.allclose(scan.mass[role], fr.double().sum(0))
        assert int(scan.hist[role].sum()) == int((fr > 0).sum())


def test_logit_effects_are_decoder_through_final_norm_and_unembedding(site, tiny_model_dir):
    path, root, _ = site
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # Gemma2RMSNorm scales by (1 + weight): the direction's effect on the logits, up to 1/rms
    W_U = model.get_output_embeddings().weight.detach() * (1 + model.model.norm.weight.detach())
    sae, _ = load_sae(Path(load_config(path).train.runs_dir) / "adaptive")
    for i in (0, 7, 42):
        d = _feature(root, "adaptive", i)
        eff = sae.W_dec[i].detach() @ W_U.T
        assert [t["id"] for t in d["logits"]["promoted"]][:3] == torch.topk(eff, 3).indices.tolist()
        assert [t["id"] for t in d["logits"]["suppressed"]][:3] == torch.topk(-eff, 3).indices.tolist()
        assert d["logits"]["promoted"][0]["v"] == pytest.approx(float(eff.max()), rel=1e-3)


def test_site_is_self_contained(site):
    _, root, _ = site
    assert (root / "index.html").is_file()
    for run in ("baseline", "adaptive"):
        for page in ("index.html", "feature.html", "groups.html"):
            text = (root / run / page).read_text()
            # no network at view time: nothing is loaded from anywhere but the site's own folder
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), page
            assert "@@" not in text
        js = sorted((root / run / "features").glob("*.js"))
        assert len(js) == len(list((root / run / "features").glob("*.json"))) > 0
        assert js[0].read_text().startswith("orthosaeFeature({")


def test_inspect_errors_are_one_line(site, tmp_path, tiny_model_dir):
    path, _, _ = site
    res = CliRunner().invoke(main, ["--config", str(path), "inspect", "--run", "nope"])
    assert res.exit_code == 2 and "no [[runs]] entry named 'nope'" in res.output
    fresh = write_config(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(main, ["--config", str(fresh), "inspect"])
    assert res.exit_code == 2 and "pipe harvest" in res.output


def test_browser_hint_names_the_index(site, tmp_path, tiny_model_dir):
    from eval.browser import browser_hint

    path, root, _ = site
    assert browser_hint(load_config(path)) == f"feature browser: {root / 'index.html'}"
    fresh = write_config(tmp_path, tiny_model_dir)
    assert "`pipe inspect` writes" in browser_hint(load_config(fresh))


# ---------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, url: str, *extra: str) -> str:
    res = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_pages_render_in_headless_chromium(site, tmp_path):
    _, root, _ = site
    index = json.loads((root / "adaptive/index.json").read_text())
    live = [r for r in index["features"] if not r["silent"]]

    dom = _chromium(tmp_path, (root / "adaptive/index.html").as_uri(), "--dump-dom")
    ids = [int(x) for x in re.findall(r'<tr class="feat" data-id="(\d+)"', dom)]
    assert len(ids) == len(live) > 0  # silent features hidden by default
    # default order: forget share, descending
    shares = [index["features"][i]["forget_share"] for i in ids]
    assert shares == sorted(shares, reverse=True)

    best = max(live, key=lambda r: r["max_act"])["id"]
    dom = _chromium(tmp_path, (root / "adaptive/feature.html").as_uri() + f"#{best}", "--dump-dom")
    assert f"feature #{best}" in dom
    spans = re.findall(r'<span class="tok tok-on[^"]*"[^>]*>', dom)
    alpha = [float((re.search(r'rgba?\(234, 88, 12(?:, ([0-9.]+))?\)', s).group(1) or 1)) for s in spans]
    assert len(alpha) >= 1 and max(alpha) == 1.0 and min(alpha) > 0  # tokens shaded by activation
    assert 'class="tok tok-on tok-focus"' in dom  # the top token is outlined
    assert dom.count('class="ctx"') == len(_feature(root, "adaptive", best)["top"])
    assert 'class="hbar"' in dom  # histogram bars
    assert "promoted tokens" in dom and "nearest features in its group" in dom

    dom = _chromium(tmp_path, (root / "adaptive/groups.html").as_uri(), "--dump-dom")
    assert dom.count('<tr class="group">') == 2 and "forget-leaning" in dom and 'class="selection"' in dom

    shot = tmp_path / "feature.png"
    _chromium(tmp_path, (root / "adaptive/feature.html").as_uri() + f"#{best}", f"--screenshot={shot}",
              "--window-size=1200,900")
    assert shot.stat().st_size > 10_000
