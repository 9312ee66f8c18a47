"""End to end: the command line on stores it must not change, and on files it must not trust.

The reading commands (ls, show, as-of, context, checkpoints, tree, verify, replay) write
nothing: not to a store of chatledger's, not to another program's SQLite file (which every
command refuses, naming it), not even a lock file. A store nobody may write is read all the
same, and a command that would write to it says it is read-only. A file damaged in its
middle ends any command that meets the damage with one error line naming the file, exit 2,
never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from chatledger.ledger import Ledger
from infrastructure.sqlite_store import DB_FILE, WRITER_LOCK_FILE
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.damaged_stores import another_eventsourcing_application, damage_pages_of, files
from tests.e2e.harness import EXECUTABLE, UNKNOWN_ID, Result, chatledger, invoke

pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason="the chatledger console script is not installed"
)


def reading_commands(conversation: str) -> list[list[str]]:
    return [
        ["ls"],
        ["ls", "--search", "hello"],
        ["show", conversation],
        ["as-of", conversation, "2"],
        ["context", conversation],
        ["checkpoints"],
        ["tree"],
        ["verify"],
    ]


def one_error_line(result: Result, *fragments: str) -> str:
    """A refused command: exit 2 and a single `error:` line (on stderr), no traceback."""
    assert result.code == 2, result.text
    lines = [line for line in (result.out + result.err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def filled_store(workspace: Path) -> str:
    ledger = Ledger(workspace, database_url="")
    conversation = ledger.start_conversation(title="read me")
    for index in range(30):  # over several pages, past a snapshot
        ledger.append_message(conversation, "user", f"hello {index} " + "words " * 300)
    ledger.create_checkpoint(conversation, name="here")
    ledger.close()
    return str(conversation)


# -- reading writes nothing --------------------------------------------------------------------
def test_reading_commands_leave_the_store_and_its_folder_as_they_were(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    conversation = filled_store(workspace)
    (workspace / WRITER_LOCK_FILE).unlink()
    before = files(workspace)

    for command in reading_commands(conversation):
        result = invoke(*command, "-w", workspace)
        assert result.code == 0, f"{command}: {result.text}"

    assert files(workspace) == before


def test_another_eventsourcing_applications_file_is_refused_by_every_command(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    path = another_eventsourcing_application(workspace)
    before = files(workspace)

    for command in [*reading_commands(UNKNOWN_ID), ["rebuild"], ["demo"]]:
        result = invoke(*command, "-w", workspace)
        one_error_line(result, str(path), "another program")

    assert files(workspace) == before
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall() == [
            ("stored_events",)
        ]


# -- damage in the middle of the file ----------------------------------------------------------
@pytest.mark.parametrize("table", ["stored_events", "conversations", "checkpoints"])
def test_damage_in_the_middle_of_the_file_is_one_error_line_naming_it(
    tmp_path: Path, table: str
) -> None:
    workspace = tmp_path / "ws"
    conversation = filled_store(workspace)
    path = workspace / DB_FILE
    damage_pages_of(path, table, seed=11)

    refused = []
    for command in [*reading_commands(conversation), ["rebuild"]]:
        result = invoke(*command, "-w", workspace)
        if result.code != 0:
            one_error_line(result, str(path))
            refused.append(command[0])
    assert refused, f"no command met the damaged pages of {table}"


def test_damage_in_a_real_process_is_one_error_line_on_stderr(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    conversation = filled_store(workspace)
    path = workspace / DB_FILE
    damage_pages_of(path, "stored_events", seed=11)

    result = chatledger("show", conversation, "-w", workspace, env={DATABASE_URL_VARIABLE: ""})

    line = one_error_line(result, str(path))
    assert result.err.strip() == line


# -- a store nobody may write ------------------------------------------------------------------
def _without_permission_overrides() -> list[str]:
    """The prefix that runs a process for which file permissions hold: as root, the same
    user without the capabilities that override them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to hold")
    dropped = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--bounding-set={dropped}", f"--inh-caps={dropped}"]
    if subprocess.run([*prefix, "true"], check=False).returncode != 0:
        pytest.skip("setpriv cannot drop the capabilities here")
    return prefix


#: Runs each command line of argv[1] (JSON) through the CLI in this one process, and prints
#: what each gave: one process start for all of them.
RUN_COMMANDS = """
import json, sys
from typer.testing import CliRunner
from chatledger import cli
results = []
for args in json.loads(sys.argv[1]):
    run = CliRunner().invoke(cli.app, args)
    crashed = run.exception is not None and not isinstance(run.exception, SystemExit)
    results.append([run.exit_code, run.stdout, run.stderr + ("Traceback" if crashed else "")])
print(json.dumps(results))
"""


def unprivileged(*commands: list[str | Path]) -> list[Result]:
    """The commands' results in a process for which file permissions hold."""
    completed = subprocess.run(
        [
            *_without_permission_overrides(),
            sys.executable,
            "-c",
            RUN_COMMANDS,
            json.dumps([[str(a) for a in command] for command in commands]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, DATABASE_URL_VARIABLE: "", "COLUMNS": "250", "NO_COLOR": "1"},
        check=True,
    )
    results = [Result(*result) for result in json.loads(completed.stdout)]
    for result in results:
        assert "Traceback" not in result.text, result.text
    return results


@contextmanager
def read_only(path: Path, mode: int) -> Iterator[None]:
    original = path.stat().st_mode
    path.chmod(mode)
    try:
        yield
    finally:
        path.chmod(original)


@pytest.mark.parametrize("what", ["file-444", "folder-555"])
def test_a_store_nobody_may_write_is_read_and_writing_says_read_only(
    tmp_path: Path, what: str
) -> None:
    workspace = tmp_path / "ws"
    conversation = filled_store(workspace)
    tmp_path.chmod(0o755)  # pytest makes it the owner's alone
    target, mode = (workspace / DB_FILE, 0o444) if what == "file-444" else (workspace, 0o555)
    before = files(workspace)

    reading = reading_commands(conversation)
    with read_only(target, mode):
        *read, rebuilt, demo = unprivileged(
            *[[*command, "-w", workspace] for command in [*reading, ["rebuild"], ["demo"]]]
        )
    for command, result in zip(reading, read, strict=True):
        assert result.code == 0, f"{command}: {result.text}"
    assert "read me" in read[0].out
    assert "hello 29" in read[2].out
    for refused in (rebuilt, demo):
        assert "corrupt" not in one_error_line(refused, "read-only")

    assert files(workspace) == before
