"""One-line error text: the CLI reports every failure on one line naming the file, key or path.

``UserError`` is the base of the project's own error types (config, store, corpus, model, export,
run folder): the CLI catches it in one place and prints its message on one line with exit 2.
A write the disk refuses (full, read-only, no permission) is an ``OSError`` with one of
``WRITE_ERRNOS``: the CLI reports it the same way, through ``os_error_line``.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager

# The OS saying "this write cannot complete": disk full, quota, read-only file system, permission.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class UserError(Exception):
    """An error the user can act on; its message is one line naming the file, key or path."""


class ConfigError(UserError, ValueError):
    """A config problem; the message is one line naming the file and key (``common/config.py``,
    ``common/overrides.py``)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException) -> str:
    """The whole message of ``e`` on one line (line breaks become spaces)."""
    return " ".join(str(e).split()) or type(e).__name__


def os_error_line(e: OSError, doing: str = "cannot write") -> str:
    """``cannot write PATH: No space left on device [ENOSPC]``: the path the OS refused, and why."""
    path = e.filename if e.filename is not None else "?"
    code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "?"
    return f"{doing} {path}: {e.strerror or one_line(e)} [{code}]"


class RunError(UserError):
    """A run folder that cannot be used as it is (damaged export or checkpoints, a write refused):
    one line naming the file and the command that mends it."""


def write_tensors(tensors: dict, path, save=None) -> None:
    """``save(tensors, path)`` (``safetensors.torch.save_file``), with the OS's refusal as an
    ``OSError`` naming ``path``: safetensors reports a full disk as its own ``SafetensorError``
    ("Error while serializing: I/O error: No space left on device (os error 28)"), which no caller
    would take for a full disk."""
    if save is None:
        from safetensors.torch import save_file as save
    try:
        save(tensors, str(path))
    except OSError as e:
        raise OSError(e.errno, e.strerror, e.filename or str(path)) from None
    except Exception as e:  # noqa: BLE001 - SafetensorError is no OSError; its text holds the errno
        code = re.search(r"(?:os error |code: )(\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


@contextmanager
def naming(path):
    """An ``OSError`` raised inside without a file name (a refused ``write()``) gets ``path``, so the
    one line says where the disk said no."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or one_line(e), str(path)) from None
