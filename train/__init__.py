"""`pipe train`: stream cached activations into baseline, fixed- and adaptive-orthogonal SAEs."""

from orthosae.train.export import load_sae, save_sae
from orthosae.train.runner import train

__all__ = ["train", "load_sae", "save_sae"]
