"""The config file ``init`` writes: every key of ``config.SCHEMA``, with its help as a comment.

The keys, their defaults and their help come from ``config.SCHEMA`` alone, so a key added
there appears in every new file. ``init`` fills in only what it decides: the database URL,
the ports, and the password hashes (the clear ``password`` keys are left commented out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..config import SCHEMA, Key

HEADER = """\
# aljex-sync configuration. Every key is described in docs/configuration.md.
# Any key can be overridden by an environment variable ALJEX_SYNC_<SECTION>_<KEY>.
"""
FOOTER = """
# Per-table settings; the shipped catalog covers Aljex's files. For example:
# [tables.invoicing]
# key = ["pro_num"]
# delete = "soft"
"""
COMMENT_COLUMN = 35  # where the help comments start, when the value leaves room
CLEAR_PASSWORD = "password"  # noqa: S105 (a key name) never written: init writes the hash


def toml_value(value: object) -> str:
    """A value as TOML: a JSON string is a valid TOML basic string, and so are its lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _line(name: str, key: Key, value: object, *, commented: bool = False) -> str:
    text = f"{'# ' if commented else ''}{name} = {toml_value(value)}"
    return f"{text.ljust(COMMENT_COLUMN - 1)} # {key.help}"


def config_text(values: Mapping[str, Mapping[str, object]]) -> str:
    """The config file: every key of SCHEMA, at its value in ``values`` or its default."""
    parts = [HEADER]
    for section, keys in SCHEMA.items():
        chosen = values.get(section, {})
        unknown = set(chosen) - set(keys)
        if unknown:
            raise KeyError(f"[{section}] has no key {sorted(unknown)[0]}")
        lines = [f"\n[{section}]"]
        for name, key in keys.items():
            value = chosen.get(name, key.default)
            lines.append(_line(name, key, value, commented=name == CLEAR_PASSWORD))
        parts.append("\n".join(lines) + "\n")
    return "".join(parts) + FOOTER
