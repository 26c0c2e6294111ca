"""Request documents for the ``agentio`` command: JSON or TOML files, ``KEY=VALUE`` settings.

Layer: tools (the ``agentio`` command). A file's format follows its name: ``.toml`` is TOML,
anything else JSON (``-`` reads JSON from stdin). Files are bounded in size: a command line
tool should not be made to swallow a multi-gigabyte file by accident.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

MAX_DOCUMENT = 16 << 20
"""Largest request file read (bytes)."""


def load_document(path: str) -> dict[str, Any]:
    """The mapping in the JSON or TOML file at ``path`` (``-``: JSON on stdin)."""
    try:
        if path == "-":
            text = sys.stdin.read(MAX_DOCUMENT + 1)
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(text) > MAX_DOCUMENT:
        raise ConfigError(f"{path} is larger than {MAX_DOCUMENT} bytes")
    try:
        value: Any = (tomllib.loads(text) if Path(path).suffix == ".toml"
                      else json.loads(text))
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid {_kind(path)}: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold an object, not {type(value).__name__}")
    return value


def _kind(path: str) -> str:
    return "TOML" if Path(path).suffix == ".toml" else "JSON"


def parse_settings(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a mapping; a value that parses as JSON is taken as such.

    ``call_timeout=5`` gives the number 5, ``wait_ready=false`` the boolean, anything that is
    not JSON (``tty_address=unix:///x``) the string as written.
    """
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"setting {pair!r} is not KEY=VALUE")
        try:
            settings[key] = json.loads(text)
        except ValueError:
            settings[key] = text
    return settings


def merged(base: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict[str, Any] | None:
    """``base`` updated with ``extra``; ``None`` when both are empty."""
    result = {**(base or {}), **extra}
    return result or None
