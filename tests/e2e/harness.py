"""The harness of the command line's end-to-end tests: two ways to run it, a real process of
the installed console script (`chatledger`), or the same app in-process through typer's
CliRunner (`invoke`). The fixtures are in conftest.py; the stores the CLI is pointed at (the
workspace's SQLite file, or a fresh PostgreSQL schema through CHATLEDGER_DATABASE_URL) are
tests/stores.py's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from chatledger import cli
from tests.stores import Store

UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EXECUTABLE = shutil.which("chatledger")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr with runs of whitespace collapsed (rich wraps long lines)."""
        return " ".join((self.out + self.err).split())


def chatledger(
    *args: str | Path, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> Result:
    assert EXECUTABLE is not None
    completed = subprocess.run(
        [EXECUTABLE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {}), "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"},
        check=False,
    )
    result = Result(completed.returncode, completed.stdout, completed.stderr)
    assert "Traceback" not in result.out + result.err, result.out + result.err
    return result


def invoke(*args: str | Path) -> Result:
    """The same app in-process (typer's CliRunner); an unexpected exception fails the test,
    and so does a thread left running (on PostgreSQL an unclosed Ledger keeps its pool's)."""
    threads = set(threading.enumerate())
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.stdout + result.stderr
    left_running = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
    assert not left_running, f"chatledger {' '.join(map(str, args))} left {left_running}"
    return Result(result.exit_code, result.stdout, result.stderr)


@dataclass(frozen=True)
class Demo:
    store: Store
    workspace: Path
    result: Result
    parent: str
    branch: str
    conversations: list[dict[str, Any]]
    events: int
