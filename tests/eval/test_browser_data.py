"""eval.browser_data: the site's JSON holds what a direct computation gives (features, groups, top
contexts, neighbours, unlearning selection, logit effects)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from orthosae.common.config import load_config
from orthosae.eval.browser_scan import WINDOW
from orthosae.eval.unlearning import select_features
from orthosae.train.export import load_sae
from orthosae.train.sae.grouping import assign_groups, forget_share
from tests._browser_site import TOP_K, direct, feature


@pytest.mark.parametrize("run", ["baseline", "adaptive"])
def test_json_matches_direct_computation(site, run):
    path, root, output = site
    assert f"{root}/index.html" in output.replace("\n", "")
    cfg, sae, rows = direct(path, run)
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
        d = feature(root, run, i)
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
        assert (
            sum(hist["forget"])
            == d["count_forget"]
            == int((sum((r["f"][:, i] > 0).sum() for r in rows.values() if r["role"] == "forget")))
        )
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
    assert groups_json["overlap"] and groups_json["random_rms_cross_cos"] == pytest.approx(U.shape[1] ** -0.5, rel=1e-3)
    for o in groups_json["overlap"]:  # the RMS cosine between a feature of g and one of h, over all pairs
        g, h = o["groups"]
        rms = cos[groups == g][:, groups == h].double().pow(2).mean().sqrt()
        assert o["rms_cross_cos"] == pytest.approx(float(rms), rel=1e-3)
    for sel in groups_json["unlearning"]:
        ranked = select_features(ff, rf, sel["retain_threshold"]).tolist()
        assert [f["id"] for f in sel["features"]] == ranked[:5] and sel["n_eligible"] == len(ranked)


def test_logit_effects_are_decoder_through_final_norm_and_unembedding(site, tiny_model_dir):
    path, root, _ = site
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # Gemma2RMSNorm scales by (1 + weight): the direction's effect on the logits, up to 1/rms
    W_U = model.get_output_embeddings().weight.detach() * (1 + model.model.norm.weight.detach())
    sae, _ = load_sae(Path(load_config(path).train.runs_dir) / "adaptive")
    for i in (0, 7, 42):
        d = feature(root, "adaptive", i)
        eff = sae.W_dec[i].detach() @ W_U.T
        assert [t["id"] for t in d["logits"]["promoted"]][:3] == torch.topk(eff, 3).indices.tolist()
        assert [t["id"] for t in d["logits"]["suppressed"]][:3] == torch.topk(-eff, 3).indices.tolist()
        assert d["logits"]["promoted"][0]["v"] == pytest.approx(float(eff.max()), rel=1e-3)
