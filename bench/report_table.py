"""One row per run of a report.json: what the method issue's before/after table needs.

    python -m bench.report_table reports/default/report.json [--runs-dir runs]

Dead fraction, L0 and EV on held-out rows; group sizes; the RMS cross-group cosine of the
decoder (normalised overlap); SAEBench's average max decoder / encoder cosine (computed from the
exported weights when the report predates them); loss-mode selectivity and scores. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from safetensors.torch import load_file

from orthosae.eval.metrics import registry
from orthosae.train.sae import max_cosine

# read through the registry: it knows the names reports before issue 25 used
RMS, RMS_ACTIVITY = (next(m for m in registry() if m.key == k) for k in ("rms_cross_cos", "rms_cross_cos_activity"))


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--runs-dir", default=None, help="where the runs' exports are (default: the report's runs_dir)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="accepted like every bench's --quick (the smoke test passes it); it reads one report either way",
    )
    args = ap.parse_args()
    report = json.loads(Path(args.report).read_text())
    runs_dir = Path(args.runs_dir or report["runs_dir"])
    print(
        "| run | dead | L0 | EV | group sizes | RMS cross cos | activity-weighted | avg max dec cos | "
        "avg max enc cos | best selectivity | loss score |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, r in report["runs"].items():
        rec, cond, unl = r["reconstruction"], r["conditioning"], r.get("unlearning", {})
        dec, enc = cond.get("average_max_decoder_cosine_sim"), cond.get("average_max_encoder_cosine_sim")
        if dec is None:  # a report from before these metrics: compute them from the export
            w = load_file(str(runs_dir / name / "sae_weights.safetensors"))
            dec, enc = max_cosine(w["W_dec"]).mean().item(), max_cosine(w["W_enc"].T).mean().item()
        print(
            f"| {name} | {rec['frac_dead']:.1%} | {rec['l0']:.1f} | {rec['explained_variance']:.3f} | "
            f"{' / '.join(map(str, cond['group_sizes']))} | {_num(RMS.value(r), 4)} | {_num(RMS_ACTIVITY.value(r), 4)} | "
            f"{_num(dec)} | {_num(enc)} | {_num(unl.get('best_selectivity'))} | {_num(unl.get('loss_unlearning_score'))} |"
        )


if __name__ == "__main__":
    main()
