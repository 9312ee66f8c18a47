"""End to end: the command line where people and programs lean on it. Errors are one line on
stderr with exit 2; every number and search term is checked the same way; piped output is
never cut to 80 columns; read commands speak JSON with --json; `chat` survives bad lines,
says which conversation it is on and explains its slash commands; `replay` shows its progress
and runs on the offline model without a key."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from contextlib import closing
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from chatledger.ledger import DEFAULT_MAX_MESSAGE_BYTES, MAX_COUNT, MAX_SEARCH_CHARS
from domain.checkpoints import CheckpointType
from tests.e2e.harness import EXECUTABLE, UUID_RE, Demo, Result, chatledger, invoke
from tests.stores import Store

pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason="the chatledger console script is not installed"
)

TOO_BIG = "99999999999999999999"


def only_error_line(result: Result, fragment: str) -> None:
    """A refused command: exit 2, nothing on stdout, one `error:` line on stderr."""
    assert result.code == 2, result.text
    assert result.out == "", result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert fragment in lines[0], lines[0]


# -- case 8: every number and search term checked alike -------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("ls", "--limit", TOO_BIG), id="ls-limit-past-64-bits"),
        pytest.param(("ls", "--limit", "-1"), id="ls-limit-negative"),
        pytest.param(("checkpoints", "--limit", "-5"), id="checkpoints-limit-negative"),
        pytest.param(("checkpoints", "--limit", TOO_BIG), id="checkpoints-limit-past-64-bits"),
    ],
)
def test_every_limit_is_refused_alike_past_its_range(demo: Demo, args: tuple[str, ...]) -> None:
    result = invoke(*args, "-w", demo.workspace)
    only_error_line(result, f"limit must be a non-negative integer of at most {MAX_COUNT}")


def test_a_huge_search_term_is_refused_naming_the_limit(demo: Demo) -> None:
    result = invoke("ls", "-w", demo.workspace, "--search", "lisbon " * 20_000)
    only_error_line(result, f"the limit is {MAX_SEARCH_CHARS} characters")

    at_the_limit = invoke("ls", "-w", demo.workspace, "--search", "porto".ljust(MAX_SEARCH_CHARS))
    assert at_the_limit.code == 0, at_the_limit.text
    assert UUID_RE.findall(at_the_limit.out) == [demo.branch]


# -- case 9: errors, width, version ------------------------------------------------------------
def test_errors_are_one_line_on_stderr_in_a_real_process(demo: Demo) -> None:
    # Longer than 80 columns: a pipe must not wrap it onto a second line.
    result = chatledger("ls", "--search", "lisbon " * 2000, "-w", demo.workspace)
    only_error_line(result, "A search term is 14000 characters")
    assert len(result.err.strip()) > 80

    missing = invoke("show", "00000000-0000-0000-0000-000000000000", "-w", demo.workspace)
    only_error_line(missing, "No conversation with id 00000000-0000-0000-0000-000000000000.")


def piped(*args: str | Path) -> Result:
    """A real process whose stdout is a pipe and whose environment names no width."""
    assert EXECUTABLE is not None
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    completed = subprocess.run(
        [EXECUTABLE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "NO_COLOR": "1"},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def test_piped_tables_keep_each_row_on_one_full_line(demo: Demo) -> None:
    result = piped("ls", "-w", demo.workspace)
    assert result.code == 0, result.text
    for conversation in demo.conversations:
        (row,) = [line for line in result.out.splitlines() if conversation["id"] in line]
        assert conversation["title"] in row
        assert conversation["last_active"][:19] in row


def test_version_comes_from_the_package_metadata() -> None:
    result = invoke("--version")
    assert result.code == 0
    assert result.out.strip() == f"chatledger {version('chatledger')}"


def test_user_text_is_printed_literally_never_as_markup(store: Store) -> None:
    workspace = store.workspace
    with closing(store.ledger()) as ledger:
        conversation = ledger.start_conversation(title="[bold]plans[/] [/oops]")
        ledger.append_message(conversation, "user", "[red]not red[/red] and [/stray]")

    listed = invoke("ls", "-w", workspace)
    assert listed.code == 0 and "[bold]plans[/] [/oops]" in listed.out
    shown = invoke("show", str(conversation), "-w", workspace)
    assert shown.code == 0 and "[red]not red[/red] and [/stray]" in shown.out


# -- --json on every read command ------------------------------------------------------------
def as_json(data: Any) -> Any:
    return json.loads(json.dumps(data))


def test_every_read_command_prints_json_with_the_tables_data(demo: Demo) -> None:
    with closing(demo.store.ledger()) as ledger:
        expected = {
            "ls": ledger.list_conversations(limit=20),
            "show": ledger.history(demo.branch),
            "as-of": ledger.as_of(demo.parent, 3),
            "context": ledger.context_at(demo.branch),
            "checkpoints": [row.as_dict() for row in ledger.checkpoints(limit=50)],
        }
        (fork,) = ledger.branch_tree()
    commands = {
        "ls": ["ls"],
        "show": ["show", demo.branch],
        "as-of": ["as-of", demo.parent, "3"],
        "context": ["context", demo.branch],
        "checkpoints": ["checkpoints"],
    }
    for name, args in commands.items():
        result = invoke(*args, "--json", "-w", demo.workspace)
        assert result.code == 0, result.text
        assert json.loads(result.out) == as_json(expected[name]), name

    tree = invoke("tree", "--json", "-w", demo.workspace)
    assert tree.code == 0, tree.text
    (root,) = json.loads(tree.out)
    assert root["id"] == demo.parent and root["forked_at"] is None
    (branch,) = root["branches"]
    assert branch["id"] == demo.branch and branch["title"] == "Porto instead"
    assert branch["forked_at"] == fork["position"] and branch["branches"] == []

    verified = invoke("verify", "--json", "-w", demo.workspace)
    assert verified.code == 0, verified.text
    report = json.loads(verified.out)
    assert report["ok"] is True and report["breaks"] == []
    assert (report["events"], report["conversations"]) == (demo.events, 2)


# -- show and context on a branch ---------------------------------------------------------------
def test_show_and_context_mark_the_positions_that_are_the_parents(demo: Demo) -> None:
    shown = invoke("show", demo.branch, "-w", demo.workspace)
    assert shown.code == 0, shown.text
    lines = shown.out.splitlines()
    (inherited,) = [line for line in lines if "DIALOG: Hi! I'm planning a three-day" in line]
    (own,) = [line for line in lines if "DIALOG: Let's plan Porto instead." in line]
    assert f"from {demo.parent}" in inherited
    assert demo.parent not in own

    context = invoke("context", demo.branch, "-w", demo.workspace)
    assert context.code == 0, context.text
    rows = [line for line in context.out.splitlines() if " user " in line]
    (inherited,) = [line for line in rows if "three-day trip to Lisbon" in line]
    (own,) = [line for line in rows if "Let's plan Porto instead." in line]
    assert demo.parent in inherited and demo.parent not in own


# -- replay ------------------------------------------------------------------------------------
def test_replay_shows_its_progress_on_stderr(demo: Demo) -> None:
    result = invoke("replay", demo.branch, "-w", demo.workspace)
    assert result.code == 0, result.text
    assert "4 turns replayed: identical." in result.out
    assert re.search(r"replaying .*4/4", result.err), result.err
    assert "4/4" not in result.out


def test_replay_on_the_offline_model_needs_no_key(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = invoke("replay", demo.branch, "--model", "offline", "-w", demo.workspace)
    assert result.code == 0, result.text
    assert "4 turns replayed: identical." in result.out


# -- chat --------------------------------------------------------------------------------------
def test_chat_help_lists_the_slash_commands() -> None:
    result = invoke("chat", "--help")
    assert result.code == 0
    for command in (
        "/checkpoint [name]",
        "/rollback <checkpoint>",
        "/branch [checkpoint] [name]",
        "/checkpoints",
        "/tree",
        "/usage",
        "/context",
        "/quit",
    ):
        assert command in result.out, command


def test_chat_survives_bad_lines_and_names_its_conversation(store: Store) -> None:
    assert EXECUTABLE is not None
    workspace = store.workspace
    with closing(store.ledger()) as ledger:
        parent = ledger.start_conversation(system_prompt="Be brief.")
        ledger.append_message(parent, "user", "Earlier question")
        start = ledger.create_checkpoint(parent, CheckpointType.MANUAL, "start")
    script = b"\n".join(
        [
            b"Hello there",
            b"x" * (DEFAULT_MAX_MESSAGE_BYTES + 10),
            b"caf\xe9 is latin-1, not UTF-8",
            b"After the bad lines",
            b"[/oops] markup stays text",
            b"/usage",
            b"/rollback",
            b"/branch",
            b"On the branch",
            f"/rollback {start}".encode(),
            b"/quit",
        ]
    )
    completed = subprocess.run(
        [EXECUTABLE, "chat", "-w", str(workspace), "--conversation", str(parent)],
        input=script,
        capture_output=True,
        timeout=60,
        env={**os.environ, **store.env, "COLUMNS": "250", "NO_COLOR": "1"},
        check=False,
    )
    out = completed.stdout.decode()
    err = completed.stderr.decode()
    assert completed.returncode == 0, out + err
    assert "Traceback" not in out + err

    # Bad lines are refused one by one, on stderr, and the chat goes on.
    assert f"the limit is {DEFAULT_MAX_MESSAGE_BYTES}" in err
    assert "not valid UTF-8" in err
    assert 'You said: "After the bad lines"' in out
    assert "[/oops] markup stays text" in out
    assert "/rollback needs a checkpoint id" in err

    # /usage is a table, not a dict.
    assert re.search(r"category\s.*tokens", out) and "DIALOG" in out
    assert "{'" not in out

    with closing(store.ledger()) as ledger:
        (fork,) = ledger.branch_tree()
        latest = ledger.checkpoint(fork["source_id"])
        texts = [m["content"] for m in ledger.history(parent)]
        branch_texts = [m["content"] for m in ledger.history(fork["branch_id"])]
    # The conversation is named when the chat starts, after /branch and after /rollback (which
    # returned to the parent, the checkpoint's conversation).
    named = re.findall(r"conversation (" + UUID_RE.pattern + ")", out)
    assert named == [str(parent), fork["branch_id"], str(parent)], out
    # /branch with no argument branched from the conversation's latest checkpoint.
    assert fork["parent_id"] == str(parent) and latest.conversation_id == parent
    assert "On the branch" in branch_texts and "On the branch" not in texts
    assert texts[:2] == ["Be brief.", "Earlier question"]


def test_ctrl_c_ends_a_chat_without_a_traceback(store: Store) -> None:
    assert EXECUTABLE is not None
    chat = subprocess.Popen(
        [EXECUTABLE, "chat", "-w", str(store.workspace)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **store.env, "NO_COLOR": "1"},
    )
    try:
        assert chat.stdout is not None and chat.stdin is not None
        conversation = chat.stdout.readline().split()[-1].decode()
        chat.stdin.write(b"Hello there\n")
        chat.stdin.flush()
        with closing(store.ledger()) as ledger:
            deadline = time.monotonic() + 30
            while len(ledger.history(conversation)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        # Answered, the chat waits for the next line. asyncio's runner takes a first Ctrl-C
        # as "cancel the main task" and a second as KeyboardInterrupt.
        for _ in range(2):
            time.sleep(0.3)
            chat.send_signal(signal.SIGINT)
        _, err = chat.communicate(timeout=30)
    finally:
        chat.kill()
    assert chat.returncode == 130, err
    assert b"Traceback" not in err
    assert b"interrupted" in err
