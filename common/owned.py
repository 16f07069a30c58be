"""Folders the tool makes and may later replace: marked when made, deleted only when marked.

Staging and temporary folders (export-cache's ``<out>.tmp`` / ``<out>.shards``, the feature
browser's pages, `pipe push`'s staging) sit beside paths the user chooses; a folder of the same name
that the tool did not make (the user's own data) is refused with one line, never deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from orthosae.common.errors import UserError

MARK = ".orthosae-made"


class NotOursError(UserError):
    """A folder the tool would replace holds something it did not make: one line naming it."""


def make(folder: Path) -> Path:
    """Create ``folder`` (it must not exist) with the mark in it; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / MARK).write_text("made by orthosae; safe to delete\n")
    return folder


def is_ours(folder: Path, *signs: str) -> bool:
    """``folder`` carries the mark, or (from releases before the mark) every file of ``signs``."""
    folder = Path(folder)
    return (folder / MARK).is_file() or bool(signs) and all((folder / s).exists() for s in signs)


def remove(folder: Path, what: str, *signs: str) -> None:
    """Delete ``folder`` if it is ours (see ``is_ours``); absent is fine; anything else: one line."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir() or not is_ours(folder, *signs):
        raise NotOursError(
            f"{folder}: exists and was not made by {what}; it is left alone: move it away or choose another path"
        )
    shutil.rmtree(folder)
