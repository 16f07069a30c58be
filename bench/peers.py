"""The other libraries the benchmarks race against, imported the one way they install here.

sae-lens installs beside torch 2.13 as it is; dictionary_learning would pull a CUDA torch, so
`bash setup.sh --bench` installs it with `--no-deps`. Its package `__init__` imports nnsight only
for `ActivationBuffer`, which no benchmark uses: a stub stands in for it.
"""

from __future__ import annotations

import sys
import types

INSTALL = "bash setup.sh --bench"


def missing_peer(name: str, error: BaseException) -> str:
    """The line a skipped contender prints: which peer, why, and how to install it."""
    return f"skipped: {name} is not installed ({error}); install the benchmark peers with `{INSTALL}`"


def standard_trainer_class():
    """dictionary_learning's `StandardTrainer` (ImportError when the package is absent)."""
    try:
        from dictionary_learning.trainers.standard import StandardTrainer
    except ModuleNotFoundError as e:
        if e.name != "nnsight":
            raise
        sys.modules["nnsight"] = types.SimpleNamespace(LanguageModel=object)
        from dictionary_learning.trainers.standard import StandardTrainer
    return StandardTrainer
