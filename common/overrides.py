"""`pipe --set KEY=VALUE`: command-line overrides of `pipeline.toml`, applied to the parsed TOML
before validation, so an override is checked exactly as the same line in the file would be.

KEY is the dotted path of a TOML key: ``train.lr``, ``train.ortho.alpha``, ``harvest.layer``,
``corpora.retain.tokens``, ``eval.unlearning.modes``, ``log.tracker``; ``runs.<name>.<key>`` sets a
key of the ``[[runs]]`` table named ``<name>`` (before seeds and grids expand it). VALUE is a TOML
value (``3e-4``, ``[0, 0.04]``, ``true``, ``"cpu"``); a bare word that is not TOML is taken as a
string, so ``--set train.device=cpu`` works without shell quoting.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from orthosae.common.errors import ConfigError


def parse(text: str, file: Path) -> tuple[list[str], object]:
    """``"train.ortho.alpha=[0,0.04]"`` -> (["train", "ortho", "alpha"], [0, 0.04])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{file}: --set {text}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"{file}: --set {text}: empty part in key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        if not raw.strip() or any(c in raw for c in "[]{}\"'=,"):
            raise ConfigError(
                f'{file}: --set {text}: {raw.strip()!r} is not a TOML value (numbers, true/false, "strings", [lists])'
            ) from None
        value = raw.strip()  # a bare word: a string
    return path, value


def apply(raw: dict, sets: list[str] | tuple[str, ...], file: Path) -> dict:
    """A copy of the parsed TOML ``raw`` with every ``--set`` applied, in order."""
    out = copy.deepcopy(raw)
    for text in sets:
        path, value = parse(text, file)
        if path[0] == "runs":
            if len(path) < 3:
                raise ConfigError(f"{file}: --set {text}: a run's key is runs.<name>.<key>")
            name = ".".join(path[1:-1])  # run names may hold dots (adaptive-a0.04); keys do not
            tables = [t for t in out.get("runs", []) if isinstance(t, dict) and t.get("name") == name]
            if not tables:
                names = ", ".join(str(t.get("name")) for t in out.get("runs", []) if isinstance(t, dict))
                raise ConfigError(f"{file}: --set {text}: no [[runs]] table named {name!r} (have: {names})")
            tables[0][path[-1]] = value
            continue
        table = out
        for i, part in enumerate(path[:-1]):
            node = table.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{file}: --set {text}: {'.'.join(path[: i + 1])} is a value, not a table")
            table = node
        if isinstance(table.get(path[-1]), dict):
            raise ConfigError(f"{file}: --set {text}: {key_of(path)} is a table; set one of its keys")
        table[path[-1]] = value
    return out


def key_of(path: list[str]) -> str:
    return ".".join(path)


def blames(message: str, text: str) -> bool:
    """Whether a config error ``message`` is about the key that ``--set text`` set (the error then
    says so): ``[train.ortho] alpha:`` for train.ortho.alpha, ``[[runs]] a… k:`` for runs.a.k."""
    path = text.partition("=")[0].strip().split(".")
    if path[0] == "runs" and len(path) >= 3:
        return f"[[runs]] {'.'.join(path[1:-1])}" in message and f" {path[-1]}:" in message
    if len(path) == 1:
        return f"[{path[0]}]" in message
    if f"[{'.'.join(path[:-1])}] {path[-1]}:" in message:
        return True
    # a [train] / [train.ortho] key is checked again in each run it reaches: "[[runs]] <run> <key>:"
    return path[0] == "train" and "[[runs]]" in message and f" {path[-1]}:" in message
