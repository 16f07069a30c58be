"""float32 matmul precision (``[train] matmul_precision``), set for a block and restored after.

"highest" keeps every float32 matmul in full fp32. "high" lets CUDA use TF32 (inputs rounded to a
10-bit mantissa, fp32 accumulation; about 3× the fp32 matmul rate on A100/H100): each encoder and
decoder product then carries a relative error near 1e-3, well below the SAE's reconstruction error.
L_ortho is always computed at "highest" (``train/sae/ortho.py``): the seed form's Gram rewrite
subtracts nearly equal large terms (tr(G_gG_h) − 2α·Σa_i·b_i + α²·m), whose difference TF32's
rounding would swamp; every form follows the one rule, so L_ortho never depends on the setting.
The rms form's Grams have their own, explicit precision, ``[train.ortho] gram_dtype``: that form
is a sum of squares with nothing to cancel, so bfloat16 inputs cost accuracy only in proportion.
On CPU, "high" leaves fp32 matmuls as they are (measured bit-identical with torch 2.13).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

PRECISIONS = ("highest", "high")


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision`` inside the block only (it is process-global)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
