"""What two or more stages share: config, model and corpus loading, the store schema, progress."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("orthosae")
except PackageNotFoundError:  # running from a checkout without `pip install -e .`
    __version__ = "0.0.0+checkout"
