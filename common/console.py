"""The one rich console every message goes to (stderr); `common/progress.py` draws its bars on it and
`common/events.py` warns on it, so neither imports the other for it."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line (greppable)
if not console.is_terminal:  # a log file has no width: tables (pipe status) must not cut run names to 80 columns
    console.width = 200
