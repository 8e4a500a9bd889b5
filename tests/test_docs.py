"""The docs stay true to the code: every key, command and target a user needs is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aljex_sync.cli import main
from aljex_sync.config import SCHEMA, TABLE_SCHEMA

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, keys in SCHEMA.items() for k in keys])
def test_every_config_key_is_documented_with_its_environment_variable(section, key):
    assert f"## [{section}]" in CONFIGURATION
    assert f"| `{key}` |" in CONFIGURATION
    assert f"`ALJEX_SYNC_{section.upper()}_{key.upper()}`" in CONFIGURATION


@pytest.mark.parametrize("key", list(TABLE_SCHEMA))
def test_every_table_key_is_documented(key):
    assert f"| `{key}` |" in CONFIGURATION.split("## [tables.NAME]")[1]


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_documented(command):
    assert f"`aljex-sync {command}" in OPERATIONS


def test_readme_has_the_two_setup_commands_and_the_reply_codes():
    assert "make serve" in README and "make test" in README
    for code in ("200", "400", "401", "403", "405", "413", "415", "422", "503"):
        assert re.search(rf"^\| {code} \|", README, re.MULTILINE), code


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
