"""`pipe inspect`'s one streaming pass over the held-out rows (eval/browser.py has the overview).

In batches of whole contexts, per feature: activation counts and mass per role (forget / retain),
the max, a log-binned histogram per role, and the **top-k contexts** by the feature's max
activation in the context (``torch.topk`` over the batch's contexts merged with the running
top-k; a batch holds whole contexts, so each context appears once), each with the feature's
activations on a window of tokens around its max token (``WINDOW`` before / after, never crossing
the context). Memory is k·d_sae·window floats, whatever the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from orthosae.common.store import StoreReader
from orthosae.train.sae.grouping import forget_share

TOP_K = 20
WINDOW = (16, 4)  # tokens shown before / after each top-activating token
ROW_BATCH = 4096  # rows per encode, rounded down to whole contexts
HIST_LOG10 = (-4.0, 4.0)  # histogram of log10(activation); values outside land in the end bins
HIST_PER_DECADE = 10
ROLES = ("forget", "retain")


@dataclass(frozen=True)
class ScanRange:
    """The rows of one corpus the scan reads (whole contexts from its front), and where they sit
    among all scanned rows; the store's ``CorpusInfo`` describes the whole corpus."""

    name: str
    role: str
    n_rows: int  # rows scanned (whole contexts)
    rows_per_context: int
    offset: int  # global row id of its first row: ids are offset + row


@dataclass
class Scan:
    """What one pass over the held-out rows keeps per feature (tensors on the CPU)."""

    ranges: list[ScanRange]
    n_rows: dict[str, int]  # role -> rows
    count: dict[str, Tensor]  # role -> [d_sae] int64 rows with f > 0
    mass: dict[str, Tensor]  # role -> [d_sae] float64 Σ f
    hist: dict[str, Tensor]  # role -> [d_sae, n_bins] int64
    max_act: Tensor  # [d_sae]
    top_vals: Tensor  # [k, d_sae] max activation in each of the top-k contexts, descending (-inf: none)
    top_ids: Tensor  # [k, d_sae] int64 global row id of that max (-1: none)
    top_win: Tensor  # [k, d_sae, before + 1 + after] activations around it (nan: outside the context)
    window: tuple[int, int]

    def range_of(self, gid: int) -> tuple[ScanRange, int]:
        """The range holding global row id ``gid``, and the row's index in its corpus."""
        for c in self.ranges:
            if c.offset <= gid < c.offset + c.n_rows:
                return c, gid - c.offset
        raise IndexError(gid)


def n_hist_bins() -> int:
    return int(round((HIST_LOG10[1] - HIST_LOG10[0]) * HIST_PER_DECADE))


def _hist_bins(v: Tensor) -> Tensor:
    b = torch.floor((torch.log10(v) - HIST_LOG10[0]) * HIST_PER_DECADE)
    return b.clamp_(0, n_hist_bins() - 1).long()


def _windows(f: Tensor, idx: Tensor, rpc: int, before: int, after: int) -> Tensor:
    """f's values around rows ``idx [k, d_sae]`` (same feature), within each row's context.

    The batch holds whole contexts, so row r is at row r % rpc of its context."""
    offs = torch.arange(-before, after + 1, device=f.device)
    rows = idx[..., None] + offs  # [k, d_sae, W]
    inner = (idx % rpc)[..., None] + offs
    valid = (inner >= 0) & (inner < rpc)
    feat = torch.arange(f.shape[1], device=f.device)[None, :, None]
    vals = f[rows.clamp(0, f.shape[0] - 1), feat.expand_as(rows)]
    return torch.where(valid, vals, torch.full_like(vals, math.nan))


def scan_ranges(info: dict, names: list[str], max_rows: int = 0) -> list[ScanRange]:
    """The rows to scan of each corpus: all, or the first ``max_rows`` in whole contexts (≥ 1)."""
    ranges, offset = [], 0
    for name in names:
        g = info[name]
        rpc = g.rows_per_context
        n = g.n_rows if max_rows <= 0 else min(g.n_rows, max(1, max_rows // rpc) * rpc)
        ranges.append(ScanRange(name, g.role, n, rpc, offset))
        offset += n
    return ranges


class _Running:
    """What the pass keeps as it goes, on its device: per role the rows, active counts, activation
    mass and a flat histogram; per feature the running top-k contexts."""

    def __init__(self, d_sae: int, top_k: int, window: tuple[int, int], dev: torch.device):
        self.d_sae, self.nb, self.top_k, self.window = d_sae, n_hist_bins(), top_k, window
        self.count = {r: torch.zeros(d_sae, dtype=torch.int64, device=dev) for r in ROLES}
        self.mass = {r: torch.zeros(d_sae, dtype=torch.float64, device=dev) for r in ROLES}
        self.hist = {r: torch.zeros(d_sae * self.nb, dtype=torch.int64, device=dev) for r in ROLES}
        self.n_rows = {r: 0 for r in ROLES}
        before, after = window
        self.top_vals = torch.full((top_k, d_sae), -math.inf, device=dev)
        self.top_ids = torch.full((top_k, d_sae), -1, dtype=torch.int64, device=dev)
        self.top_win = torch.full((top_k, d_sae, before + 1 + after), math.nan, device=dev)

    def add(self, f: Tensor, c: ScanRange, start: int) -> None:
        """One batch's activations ``f [rows, d_sae]``: whole contexts of ``c`` from its row ``start``."""
        d_sae, nb = self.d_sae, self.nb
        active = f > 0
        self.count[c.role] += active.sum(dim=0)
        self.mass[c.role] += f.sum(dim=0, dtype=torch.float64)
        self.n_rows[c.role] += f.shape[0]
        rows, feats = active.nonzero(as_tuple=True)
        self.hist[c.role] += torch.bincount(feats * nb + _hist_bins(f[rows, feats]), minlength=d_sae * nb)
        self._merge_top(f, c, start)

    def _merge_top(self, f: Tensor, c: ScanRange, start: int) -> None:
        # top-k contexts: each context's max row per feature (a batch holds whole contexts, so
        # no context is seen twice), this batch's best contexts merged with the running best
        rpc, (before, after) = c.rows_per_context, self.window
        cmax, carg = f.reshape(-1, rpc, self.d_sae).max(dim=1)  # [contexts, d_sae]
        vals, cidx = torch.topk(cmax, min(self.top_k, cmax.shape[0]), dim=0)
        idx = cidx * rpc + carg.gather(0, cidx)  # the max row of each chosen context
        win = _windows(f, idx, rpc, before, after)
        all_vals = torch.cat([self.top_vals, vals])
        all_ids = torch.cat([self.top_ids, idx + c.offset + start])
        all_win = torch.cat([self.top_win, win])
        self.top_vals, sel = torch.topk(all_vals, self.top_k, dim=0)
        self.top_ids = all_ids.gather(0, sel)
        self.top_win = all_win.gather(0, sel[..., None].expand(-1, -1, all_win.shape[-1]))

    def scan(self, ranges: list[ScanRange]) -> Scan:
        """What was kept, on the CPU."""
        return Scan(
            ranges=ranges,
            n_rows=self.n_rows,
            count={r: v.cpu() for r, v in self.count.items()},
            mass={r: v.cpu() for r, v in self.mass.items()},
            hist={r: v.cpu().reshape(self.d_sae, self.nb) for r, v in self.hist.items()},
            max_act=self.top_vals[0].cpu().clamp_min(0),
            top_vals=self.top_vals.cpu(),
            top_ids=self.top_ids.cpu(),
            top_win=self.top_win.cpu(),
            window=self.window,
        )


@torch.no_grad()
def scan_heldout(
    sae: nn.Module,
    reader: StoreReader,
    names: list[str],
    *,
    top_k: int = TOP_K,
    window: tuple[int, int] = WINDOW,
    max_rows: int = 0,
    device: torch.device | str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> Scan:
    """One pass over the rows of corpora ``names`` (all rows, or the first ``max_rows`` of each,
    rounded down to whole contexts), keeping per-feature statistics and the top-k contexts (each
    context once, at its max-activating row)."""
    dev = torch.device(device)
    ranges = scan_ranges(reader.corpora(), names, max_rows)
    running = _Running(sae.W_dec.shape[0], top_k, window, dev)
    for c in ranges:
        step = max(1, ROW_BATCH // c.rows_per_context) * c.rows_per_context
        for start in range(0, c.n_rows, step):
            stop = min(start + step, c.n_rows)
            x = reader.read_rows(c.name, start, stop).to(device=dev, dtype=sae.W_dec.dtype)
            f = sae.encode(x).float()
            running.add(f, c, start)
            if on_rows:
                on_rows(f.shape[0])
    return running.scan(ranges)


def heldout_frequencies(scan: Scan) -> dict[str, Tensor]:
    """Per-feature frequency (forget, retain, all), forget share of activation mass and mean
    activation when active."""
    n_f, n_r = scan.n_rows["forget"], scan.n_rows["retain"]
    count = scan.count["forget"] + scan.count["retain"]
    share = forget_share(scan.mass["forget"] / max(n_f, 1), scan.mass["retain"] / max(n_r, 1))
    if not (n_f and n_r):
        share = torch.full_like(share, math.nan)
    return {
        "freq_forget": scan.count["forget"].double() / max(n_f, 1),
        "freq_retain": scan.count["retain"].double() / max(n_r, 1),
        "freq": count.double() / max(n_f + n_r, 1),
        "forget_share": share,
        "mean_act": (scan.mass["forget"] + scan.mass["retain"]) / count.clamp_min(1),
        "silent": count == 0,
    }
