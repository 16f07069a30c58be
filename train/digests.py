"""sha256 digests of a folder's files, recorded beside them in ``digests.json`` (written last).

A run's final export and each of its checkpoints record the digest and size of every file they hold
(``record``), so ``pipe verify`` can tell an intact file from a truncated, damaged or swapped one
(``check``) and ``pipe status`` can spot a truncated one from sizes alone (``check_sizes``). The
digest file is the folder's commit mark: written atomically after every file it lists.

Which files: every plain file of the folder except the digest file itself, hidden files (temporary
writes) and ``EXCLUDED`` ones, so a file an export gains later is covered with no change here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from orthosae.common.wheels import sha256_file

DIGESTS = "digests.json"
# summary.json carries the export's digests (it is written after them). log.jsonl is covered: the
# final export records it, each checkpoint holds a copy of it, so a repair restores it from there.
EXCLUDED = frozenset({DIGESTS, "summary.json"})


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a hidden temporary file beside ``path``, fsync, then rename over ``path``:
    a reader sees the old file or the new one, never half of one; a failed write leaves no temporary."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:  # name the file being written, not its temporary (the CLI prints one line)
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def covered_files(folder: Path) -> list[str]:
    """The names ``record`` covers: plain, non-hidden files of ``folder`` outside ``EXCLUDED``."""
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in EXCLUDED
    )


def record(folder: Path) -> dict[str, dict]:
    """Write ``folder/digests.json`` for its files (atomically, last); returns ``{name: {sha256, bytes}}``."""
    files = {
        name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
        for name in covered_files(folder)
    }
    text = json.dumps({"algorithm": "sha256", "files": files}, indent=2) + "\n"
    write_atomic(folder / DIGESTS, lambda p: p.write_text(text))
    return files


def read(folder: Path) -> dict[str, dict] | None:
    """The recorded ``{name: {sha256, bytes}}``, None when there is no digest file; raises ``ValueError``
    when the digest file itself does not read."""
    path = folder / DIGESTS
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        if not all(isinstance(v, dict) and "sha256" in v and "bytes" in v for v in files.values()):
            raise ValueError("an entry lacks sha256 or bytes")
        return files
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__})") from None


def check(folder: Path, files: dict[str, dict], *, full: bool = True) -> list[tuple[str, str]]:
    """``(path, what is wrong)`` for each recorded file that is missing, of another size or (``full``)
    of another sha256."""
    out = []
    for name, want in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            out.append((str(path), "missing"))
        elif path.stat().st_size != want["bytes"]:
            out.append((str(path), f"{path.stat().st_size} bytes, {want['bytes']} recorded (truncated or replaced)"))
        elif full and sha256_file(path) != want["sha256"]:
            out.append((str(path), "sha256 differs from the recorded one (damaged or replaced)"))
    return out
