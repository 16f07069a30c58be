"""Torch dispatch recorders the SAE / Trainer tests share: sizes, dtypes, precisions and host reads
of the ops a block runs."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


class MatmulDtypes(TorchDispatchMode):
    """The input dtypes of each matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in ("aten::mm", "aten::addmm", "aten::bmm"):
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


class HostReads(TorchDispatchMode):
    """Records the ops that read a device value back to the host (a GPU sync): scalar reads
    (``item``, ``bool``, ``float``), ``nonzero``, ``masked_select`` and boolean-mask indexing, whose
    output size depends on the data. ``exempt``: tensors allowed to be read (Adam's step counters,
    which live on the host even on a GPU)."""

    def __init__(self, exempt=()):
        super().__init__()
        self.exempt, self.reads = {id(t) for t in exempt}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == "aten::_local_scalar_dense" and id(args[0]) not in self.exempt:
            self.reads.append(name)
        elif name in ("aten::nonzero", "aten::masked_select"):
            self.reads.append(name)
        elif name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            self.reads.append("boolean-mask index")
        return func(*args, **(kwargs or {}))


class MatmulPrecisions(TorchDispatchMode):
    """The float32 matmul precision in force at each matrix product, by op name."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
            self.seen.append(torch.get_float32_matmul_precision())
        return func(*args, **(kwargs or {}))
