"""Layers only look down: domain/ (pure) <- infrastructure/, projections/ <- chatledger/.

Read from the source (every module's AST, function-level, TYPE_CHECKING-only and relative
imports included), not from what happens to be imported at run time."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Top-level packages each layer must not import.
FORBIDDEN: dict[str, frozenset[str]] = {
    # The model is pure: no layer above it, no storage, serialisation, network or tokenizer.
    "domain": frozenset(
        {
            "infrastructure",
            "projections",
            "chatledger",
            "tiktoken",
            "orjson",
            "sqlite3",
            "psycopg",
            "psycopg_pool",
            "httpx",
            "openai",
            "anthropic",
            "PIL",
        }
    ),
    "infrastructure": frozenset({"chatledger"}),
    "projections": frozenset({"chatledger"}),
}

_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def imported_modules(source: str, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in `source`, the source of `module`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield node.lineno, name
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in _IMPORT_FUNCTIONS:
                yield node.lineno, node.args[0].value


def violations(layer: str, path: Path, source: str) -> list[str]:
    relative = path.relative_to(ROOT)
    module = ".".join(relative.with_suffix("").parts)
    is_package = path.name == "__init__.py"
    if is_package:
        module = module.rpartition(".")[0]
    return [
        f"{relative}:{line} imports {name}"
        for line, name in imported_modules(source, module, is_package=is_package)
        if name.split(".")[0] in FORBIDDEN[layer]
    ]


def modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    found = modules(layer)
    assert found, f"no modules found under {layer}/"
    broken = [
        problem
        for path in found
        for problem in violations(layer, path, path.read_text(encoding="utf-8"))
    ]
    assert not broken, f"{layer}/ must not import {sorted(FORBIDDEN[layer])}:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    "source",
    [
        "import chatledger",
        "import chatledger.providers as p",
        "from chatledger.providers import ModelReply",
        "def f():\n    from chatledger import Ledger",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chatledger import Ledger",
        "import importlib\nimportlib.import_module('chatledger.cli')",
        "__import__('chatledger')",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    path = ROOT / "infrastructure" / "providers" / "example.py"
    assert violations("infrastructure", path, source)


def test_relative_imports_resolve_within_the_package() -> None:
    path = ROOT / "domain" / "example.py"
    assert not violations("domain", path, "from . import errors\nfrom .events import Event")
    assert imported_modules("from .port import X", "infrastructure.providers", is_package=True)
    [(_, name)] = imported_modules(
        "from ..files import x", "infrastructure.providers.common", is_package=False
    )
    assert name == "infrastructure.files"
