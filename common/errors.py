"""One-line error text: the CLI reports every failure on one line naming the file, key or path."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
