"""`pipe train`: stream cached activations into baseline, fixed- and adaptive-orthogonal SAEs."""
from train.export import load_sae, save_sae
from train.runner import train

__all__ = ["train", "load_sae", "save_sae"]
