"""`pipe harvest`: run the model once up to block L and cache its residual stream in zarr."""

from orthosae.harvest.runner import HarvestResult, harvest

__all__ = ["harvest", "HarvestResult"]
