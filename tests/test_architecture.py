"""The arrows of docs/architecture.md hold: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "aljex_sync"
EMULATE = PACKAGE / "emulate"
STORE = PACKAGE / "store"


def imported(path: Path) -> set[str]:
    """The modules ``path`` imports, relative ones resolved to ``aljex_sync.…`` names."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else ()
            module = ".".join(part for part in (*base, node.module) if part)
            names.update(f"{module}.{alias.name}" for alias in node.names)
            names.add(module)
    return names


def modules(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.py"))


def touches(names: set[str], *prefixes: str) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(f"{p}.") for p in prefixes))


@pytest.mark.parametrize("path", modules(EMULATE), ids=lambda p: p.name)
def test_only_emulate_verify_reads_the_store(path):
    found = touches(imported(path), "aljex_sync.store", "sqlalchemy")
    assert found == [] or path.name == "verify.py", found


@pytest.mark.parametrize("path", modules(EMULATE), ids=lambda p: p.name)
def test_emulate_speaks_only_the_wire_and_the_files(path):
    receiver = ("journal", "journal_process", "live", "service", "sftp", "inbox", "morning")
    receiver += ("csvfile", "config", "credentials")
    found = touches(imported(path), *(f"aljex_sync.{name}" for name in receiver))
    assert found == []


@pytest.mark.parametrize("path", modules(STORE), ids=lambda p: p.name)
def test_nothing_under_store_knows_http_or_sftp(path):
    edges = ("starlette", "uvicorn", "httptools", "asyncssh", "click", "rich")
    edges += tuple(f"aljex_sync.{name}" for name in ("live", "sftp", "inbox", "service", "cli"))
    assert touches(imported(path), *edges) == []


@pytest.mark.parametrize(
    "path",
    # The cli/ package registers `emulate`, and demo.py wires the service to the emulator.
    [p for p in modules(PACKAGE) if p.name != "demo.py"] + modules(PACKAGE / "cli"),
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_the_receiver_does_not_depend_on_the_emulator(path):
    allowed = {
        "cli/__init__.py": ["aljex_sync.emulate.commands", "aljex_sync.emulate.commands.emulate"],
        "cli/demo.py": ["aljex_sync.emulate.sender", "aljex_sync.emulate.sender.LiveReport"],
    }.get(path.relative_to(PACKAGE).as_posix(), [])
    assert touches(imported(path), "aljex_sync.emulate") == allowed


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(PACKAGE).as_posix()
)
def test_no_module_is_over_600_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(PACKAGE).as_posix()
)
def test_the_package_imports_itself_relatively(path):
    """Every module, the emulator's included, reaches the package by relative imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    absolute = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level and node.module
        if node.module.split(".")[0] == "aljex_sync"
    ]
    absolute += [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.split(".")[0] == "aljex_sync"
    ]
    assert absolute == []
