"""eval.curves: the training log read back as per-step series."""

import json

from orthosae.eval.curves import training_curves


def test_training_curves(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [
        {"step": 0, "recon": 1.0, "cond": [1.0, 2.0], "group_sizes": [3, 5]},
        {"step": 10, "recon": 0.5, "lr": 1e-3},
        {"step": 20, "recon": 0.25, "cond": [1.5, float("inf")], "l0": 4},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 3')  # truncated tail
    c = training_curves(log)
    assert c["step"] == [0, 10, 20] and c["recon"] == [1.0, 0.5, 0.25]
    assert c["lr"] == [None, 1e-3, None] and c["l0"] == [None, None, 4]
    assert c["cond_1"] == [2.0, None, float("inf")] and c["group_sizes_0"] == [3, None, None]
