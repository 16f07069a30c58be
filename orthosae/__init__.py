"""orthosae: harvest a language model's residual stream into zarr, train grouped adaptive-orthogonal
SAEs on it, and evaluate whether their features unlearn selectively.

One package, four stages that live at the top of the repository and install under this name:
``orthosae.common`` (config, model, corpora, store: shared), ``orthosae.harvest``, ``orthosae.train``,
``orthosae.eval``; the CLI (``orthosae.cli``, the ``pipe`` command) and ``pipe status``
(``orthosae.status``) sit here.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("orthosae")
except PackageNotFoundError:  # a checkout without `pip install -e .`
    __version__ = "0.0.0+checkout"
