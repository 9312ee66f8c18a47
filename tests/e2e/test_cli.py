"""End to end: the `chatledger` command line against a real workspace, on each store: the
workspace's SQLite file and, when CHATLEDGER_TEST_POSTGRES names a server, a fresh PostgreSQL
schema that the CLI is pointed at through CHATLEDGER_DATABASE_URL.

The demo runs once per module and store as a real subprocess of the installed console script,
and so do a verify and an error case; the other commands run in-process through typer's
CliRunner (same app, same store, a fraction of the start-up time). What they print is checked
against the Ledger's own answers for the same store. (The harness is in harness.py, the
fixtures in conftest.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infrastructure.postgres_store import parse_database_url
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.e2e.harness import (
    EXECUTABLE,
    UNKNOWN_ID,
    UUID_RE,
    Demo,
    chatledger,
    invoke,
)
from tests.postgres import DSN, fresh_schema, requires_postgres
from tests.stores import Store

pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason="the chatledger console script is not installed"
)

READING_COMMANDS = [
    pytest.param([name], id=name) for name in ("ls", "verify", "tree", "checkpoints", "rebuild")
]


def test_demo_prints_turns_tree_checkpoints_and_usage(demo: Demo) -> None:
    text = demo.result.text
    # the turns, the checkpoint, the rollback and the branch
    assert "user: Hi! I'm planning a three-day trip to Lisbon." in text
    assert "assistant:" in text
    assert re.search(r"checkpoint cp_[0-9a-f]{32}", text)
    assert re.search(r"rolled back to cp_[0-9a-f]{32}: \d+ messages in view", text)
    assert f"branched {demo.branch}" in text
    # the branch tree: both conversations, the branch nested under its parent
    assert "conversations" in text
    assert demo.parent in text and demo.branch in text
    assert re.search(
        r"Porto instead " + demo.branch + r" \(\d+ messages\) forked at position \d+", text
    )
    assert demo.result.out.index(demo.parent) < demo.result.out.rindex(demo.branch)
    # the checkpoints table
    for header in ("id", "type", "position", "messages", "name", "created"):
        assert header in text
    for kind in ("manual", "branch", "rollback", "auto"):
        assert f" {kind} " in text
    assert "before Sintra" in text
    # the token usage and the final verification
    usage = re.search(r"(\d+) of (\d+) tokens \((\d+\.\d+)%\) of the usable window", text)
    assert usage, text
    assert 0 < int(usage.group(1)) < int(usage.group(2))
    assert re.search(r"│ DIALOG +│ +\d+ │", demo.result.out), demo.result.out
    assert f"verify ok: {demo.events} events in 2 conversations" in text
    # the last line names the store the demo wrote to
    last_line = demo.result.out.strip().splitlines()[-1]
    if demo.store.name == "sqlite":
        assert last_line == f"workspace: {demo.workspace}"
        assert (demo.workspace / "chatledger.db").is_file()
    else:
        location = parse_database_url(demo.store.url)
        assert last_line == (
            f"store: postgresql://{location.user}@{location.host}:{location.port}/"
            f"{location.dbname} ({location.schema})"
        )
        # nothing of the store went to the workspace
        assert not (demo.workspace / "chatledger.db").exists()


def test_verify_exits_0(demo: Demo) -> None:
    result = chatledger("verify", "--workspace", demo.workspace)
    assert result.code == 0, result.text
    assert f"{demo.events} events in 2 conversations checked." in result.text
    assert "BROKEN" not in result.text

    only = invoke("verify", "--workspace", demo.workspace, demo.branch)
    assert only.code == 0, only.text
    # A branch is verified with its ancestors: its view includes the parent's prefix.
    assert "in 2 conversations checked." in only.text


def test_ls_lists_both_conversations(demo: Demo) -> None:
    result = invoke("ls", "--workspace", demo.workspace)
    assert result.code == 0, result.text
    ids = UUID_RE.findall(result.out)
    assert sorted(ids) == sorted([demo.parent, demo.branch])
    # newest first, as the Ledger lists them
    assert ids == [c["id"] for c in demo.conversations]
    assert "Porto instead" in result.text
    for conversation in demo.conversations:
        assert f" {conversation['message_count']} " in result.text

    searched = invoke("ls", "-w", demo.workspace, "--search", "porto")
    assert searched.code == 0, searched.text
    assert UUID_RE.findall(searched.out) == [demo.branch]


def test_show_prints_the_active_transcript(demo: Demo) -> None:
    with closing(demo.store.ledger()) as ledger:
        parent_history = ledger.history(demo.parent)
        branch_history = ledger.history(demo.branch)

    parent = invoke("show", demo.parent, "--workspace", demo.workspace)
    assert parent.code == 0, parent.text
    assert len(parent.out.strip().splitlines()) >= len(parent_history)
    for message in parent_history:
        assert f"{message['role']} {message['category']}: {message['content']}" in parent.text
    # rolled back to "before Sintra": the Sintra turns are not in the active view
    assert "Sintra" not in parent.text
    assert "You are a concise travel assistant." in parent.text

    branch = invoke("show", demo.branch, "-w", demo.workspace)
    assert branch.code == 0, branch.text
    for message in branch_history:
        assert message["content"] in branch.text
    # the branch sees its parent's messages up to the fork, then its own
    assert "Hi! I'm planning a three-day trip to Lisbon." in branch.text
    assert "Let's plan Porto instead." in branch.text
    assert "Sintra" not in branch.text


def test_as_of_shows_the_past(demo: Demo) -> None:
    with closing(demo.store.ledger()) as ledger:
        before_rollback = ledger.checkpoints(demo.parent, "rollback")[0].position
        expected = ledger.as_of(demo.parent, before_rollback)
        first_turn = ledger.as_of(demo.parent, 3)

    result = invoke("as-of", demo.parent, str(before_rollback), "-w", demo.workspace)
    assert result.code == 0, result.text
    # right before the rollback the Sintra turns were still in view
    assert "Actually, what about day trips to Sintra?" in result.text
    assert "And how do I get there by train?" in result.text
    for message in expected:
        assert message["content"] in result.text

    early = invoke("as-of", demo.parent, "3", "-w", demo.workspace)
    assert early.code == 0, early.text
    assert len(early.out.strip().splitlines()) == len(first_turn)
    assert "What neighbourhoods" not in early.text


def test_checkpoints_and_tree(demo: Demo) -> None:
    with closing(demo.store.ledger()) as ledger:
        manual = ledger.checkpoints(demo.parent, "manual")
        live = ledger.checkpoints(limit=50)

    result = invoke("checkpoints", "-w", demo.workspace)
    assert result.code == 0, result.text
    assert len(manual) == 1
    assert manual[0].checkpoint_id in result.text
    assert "before Sintra" in result.text
    # one row per live checkpoint (ids also appear inside "Before rollback to cp_..." names)
    assert len(re.findall(r"^│ cp_[0-9a-f]{32} ", result.out, re.MULTILINE)) == len(live)

    for_branch = invoke("checkpoints", "-w", demo.workspace, demo.branch)
    assert for_branch.code == 0, for_branch.text
    assert manual[0].checkpoint_id not in for_branch.text
    assert " branch " in for_branch.text

    tree = invoke("tree", "-w", demo.workspace)
    assert tree.code == 0, tree.text
    assert demo.parent in tree.text and demo.branch in tree.text
    assert "forked at position" in tree.text


def _projection_dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    tables = store.projections()
    assert "conversations" in tables and "checkpoints" in tables
    return tables


def test_rebuild_then_verify(demo: Demo, tmp_path: Path) -> None:
    if demo.store.name == "sqlite":
        # A copy, so that a broken rebuild cannot spoil the other tests' workspace.
        store = demo.store.at(tmp_path / "ws")
        shutil.copytree(demo.workspace, store.workspace)
    else:
        # The demo's own schema, as PostgreSQL has no cheap copy of one: a rebuild that
        # changed anything fails here, before the tests after it read the changed views.
        store = demo.store
    workspace = store.workspace
    ls_before = invoke("ls", "-w", workspace)
    projections_before = _projection_dump(store)

    rebuilt = invoke("rebuild", "-w", workspace)
    assert rebuilt.code == 0, rebuilt.text
    assert f"Rebuilt projections from {demo.events} events." in rebuilt.text

    assert _projection_dump(store) == projections_before
    verified = invoke("verify", "-w", workspace)
    assert verified.code == 0, verified.text
    ls_after = invoke("ls", "-w", workspace)
    assert ls_after.out == ls_before.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("show", "00000000-0000-0000-0000-000000000000"),
            "error: No conversation with id 00000000-0000-0000-0000-000000000000.",
            id="show-unknown",
        ),
        pytest.param(
            ("show", "not-an-id"),
            "error: 'not-an-id' is not a conversation id.",
            id="show-malformed",
        ),
        pytest.param(
            ("verify", "0123456789abcdef0123456789abcdef"),
            "error: No conversation with id 01234567-89ab-cdef-0123-456789abcdef.",
            id="verify-unknown",
        ),
        pytest.param(
            ("as-of", "{parent}", "100000"),
            "error: Position must be between 1 and",
            id="as-of-range",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_readable_error(
    demo: Demo, args: tuple[str, ...], message: str
) -> None:
    argv = [a.format(parent=demo.parent) for a in args]
    result = invoke(*argv, "-w", demo.workspace)
    assert result.code == 2, result.text
    assert message in result.text
    assert len(result.out.strip().splitlines()) <= 3, result.out


def test_unknown_conversation_in_a_real_process_exits_2_without_traceback(demo: Demo) -> None:
    result = chatledger("show", "00000000-0000-0000-0000-000000000000", "-w", demo.workspace)
    assert result.code == 2, result.text
    assert result.text == "error: No conversation with id 00000000-0000-0000-0000-000000000000."
    assert "Traceback" not in result.out + result.err


@pytest.mark.parametrize("command", ["show", "verify", "ls"])
def test_unusable_workspace_exits_2(tmp_path: Path, command: str) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    args = ["show", "00000000-0000-0000-0000-000000000000"] if command == "show" else [command]
    result = invoke(*args, "-w", not_a_folder)
    assert result.code == 2, result.text
    assert "is a file; give a folder path instead" in result.text


@pytest.mark.parametrize("command", READING_COMMANDS)
def test_reading_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo"
    result = invoke(*command, "--workspace", missing)
    assert result.code == 2
    assert "no chatledger store" in result.text
    assert not missing.exists()


def _schema_exists(url: str) -> bool:
    assert DSN is not None
    schema = parse_database_url(url).schema
    with psycopg.connect(DSN) as connection:
        found = connection.execute(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    return found is not None


@requires_postgres
@pytest.mark.postgres
@pytest.mark.parametrize("command", READING_COMMANDS)
def test_reading_commands_never_create_a_postgres_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # fresh_schema names a schema without creating it: a typo in ?schema= is just that.
    with fresh_schema() as url:
        monkeypatch.setenv(DATABASE_URL_VARIABLE, url)
        result = invoke(*command, "--workspace", tmp_path / "ws")
        assert result.code == 2, result.text
        assert f"no chatledger store in {parse_database_url(url)}" in result.text
        assert not _schema_exists(url)
        assert not (tmp_path / "ws").exists()


# Nothing listens on port 1; the password must never be printed.
UNREACHABLE = "postgresql://postgres:s3cret@127.0.0.1:1/test"


@pytest.mark.parametrize(
    "command",
    [
        *READING_COMMANDS,
        pytest.param(["show", UNKNOWN_ID], id="show"),
        pytest.param(["demo"], id="demo"),
        pytest.param(["chat"], id="chat"),
    ],
)
def test_unreachable_postgres_exits_2_with_a_readable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv(DATABASE_URL_VARIABLE, UNREACHABLE)
    result = invoke(*command, "--workspace", tmp_path / "ws")
    assert result.code == 2, result.text
    assert result.err.startswith(
        "error: Cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/test (public)"
    ), result.err
    assert "Connection refused" in result.text
    assert "s3cret" not in result.text
    assert len(result.err.strip().splitlines()) <= 4, result.err
    assert not (tmp_path / "ws").exists()


def test_context_shows_what_the_model_was_sent(demo: Demo) -> None:
    result = invoke("context", demo.branch, "--workspace", demo.workspace)
    assert result.code == 0, result.text
    assert f"context of {demo.branch} at position" in result.text
    assert "You are a concise travel assistant." in result.text
    assert "Let's plan Porto instead." in result.text
    early = invoke("context", demo.parent, "--at", "3", "--workspace", demo.workspace)
    assert early.code == 0 and "Lisbon" in early.text and "Sintra" not in early.text
    bad = invoke("context", demo.parent, "--at", "100000", "--workspace", demo.workspace)
    assert bad.code == 2 and "Position must be between 1 and" in bad.text


def test_replay_reproduces_the_demo_and_names_a_mismatch(demo: Demo) -> None:
    result = invoke("replay", demo.branch, "--workspace", demo.workspace)
    assert result.code == 0, result.text
    assert "4 turns replayed: identical." in result.text
    missing = invoke("replay", "00000000-0000-0000-0000-000000000000", "-w", demo.workspace)
    assert missing.code == 2 and "No conversation" in missing.text


def test_chat_streams_answers_and_obeys_slash_commands(store: Store) -> None:
    assert EXECUTABLE is not None
    script = "\n".join(
        [
            "Hello there",
            "/checkpoint before",
            "Second question",
            "/usage",
            "/context",
            "/nonsense",
            "/rollback cp_missing",
            "/quit",
        ]
    )
    completed = subprocess.run(
        [EXECUTABLE, "chat", "--workspace", str(store.workspace), "--system", "Be brief."],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **store.env},
    )
    out = " ".join((completed.stdout + completed.stderr).split())
    assert completed.returncode == 0, out
    assert 'You said: "Hello there"' in out and 'You said: "Second question"' in out
    assert "checkpoint cp_" in out and "tokens (" in out and "messages sent" in out
    assert "unknown command" in out and "No checkpoint 'cp_missing'" in out
    assert "Traceback" not in out
    with closing(store.ledger()) as ledger:
        (conversation,) = ledger.list_conversations()
        texts = [m["content"] for m in ledger.history(conversation["id"])]
    assert texts[0] == "Be brief." and texts[1] == "Hello there" and len(texts) == 5

    unknown = invoke("chat", "--conversation", UNKNOWN_ID, "-w", store.workspace)
    assert unknown.code == 2 and f"error: No conversation with id {UNKNOWN_ID}." in unknown.text
