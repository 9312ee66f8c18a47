"""The `chatledger` command line (typer + rich).

A little over 400 lines: one typer function per command, each a few lines over the Ledger;
what a command prints lives in cli_views, the chat loop in cli_chat, the demo in cli_demo."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chatledger.cli_chat import CHAT_HELP, SLASH_COMMANDS, chat_loop
from chatledger.cli_demo import run_demo
from chatledger.cli_views import (
    branch_tree,
    preview,
    print_checkpoints,
    print_context,
    print_conversations,
    print_messages,
    print_tree,
)
from chatledger.ledger import Ledger
from chatledger.manager import ConversationManager
from chatledger.provider_selection import PROVIDERS, select_provider
from chatledger.providers import Provider
from chatledger.replay import ReplayMismatch, replay
from domain.errors import ChatledgerError, ConversationNotFound, FileInputError

app = typer.Typer(help="chatledger: an append-only, event-sourced conversation ledger.")
console = Console()
# Errors and progress go to stderr, so that stdout holds only the answer (and --json stays
# parseable); an error is one line, however long.
err_console = Console(stderr=True, soft_wrap=True)
#: Columns of output going to a pipe or a file, where nothing should be cut or wrapped.
PIPED_WIDTH = 1 << 15

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: ./.chatledger)."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the same data as JSON, for programs.")
]


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"chatledger {version('chatledger')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if not console.is_terminal:
        # Without a terminal rich assumes 80 columns, which cuts ids and titles out of the
        # tables that scripts and pagers read.
        console.width = PIPED_WIDTH
        console.soft_wrap = True


def _workspace(workspace: Path | None) -> Path:
    return workspace or Path.cwd() / ".chatledger"


def _fail(message: object) -> None:
    """One error line on stderr (the message may quote user input: never markup)."""
    err_console.print(f"error: {message}", style="red", markup=False, highlight=False)


@contextmanager
def _refusing() -> Iterator[None]:
    """A typed error ends the command with one readable line and exit status 2."""
    try:
        yield
    except ChatledgerError as error:
        _fail(error)
        raise typer.Exit(2) from None


@contextmanager
def _opened(
    workspace: Path | None, *, writing: bool = False, creating: bool = False
) -> Iterator[Ledger]:
    """The existing store, for one command: never created where there is none, and opened
    read-only (writing nothing, readable where it may not be written) unless the command
    writes; a typed error, opening it or in the command, is refused (_refusing). A command
    `creating` one (import) opens it for writing, created where there is none."""
    with _refusing():
        ledger = Ledger(
            _workspace(workspace), read_only=not (writing or creating), must_exist=not creating
        )
        # On PostgreSQL a Ledger holds connections and a pool's threads until closed;
        # in-process callers (tests, scripts) run many commands.
        try:
            yield ledger
        finally:
            ledger.close()


def _emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    """A read command's answer: the data as JSON for programs (--json), else rendered."""
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        render()


@app.command()
def demo(workspace: WorkspaceOption = None) -> None:
    """Run a scripted conversation on the offline model: turns, a checkpoint, a rollback and
    a branch; then print the branch tree, the checkpoints and the token usage."""
    with _refusing():
        asyncio.run(run_demo(_workspace(workspace), console))


@app.command()
def verify(
    workspace: WorkspaceOption = None,
    conversation: Annotated[str | None, typer.Argument(help="Only this conversation.")] = None,
    anchor: Annotated[
        Path | None,
        typer.Option(
            "--anchor", help="Also check the heads pinned by this anchor file are still there."
        ),
    ] = None,
    export_anchor: Annotated[
        Path | None,
        typer.Option(
            "--export-anchor", help="If intact, write an anchor of the current heads to FILE."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check every hash chain; exit 0 when intact, 1 naming the first broken position.
    Deleting a stream's last events or forging its newest event only shows against an anchor
    exported earlier (--export-anchor, then --anchor); 2 for an unusable anchor file."""
    # Imported here to keep this command's changes in one place.
    from infrastructure.verification import write_anchor

    with _opened(workspace) as ledger:
        report = ledger.verify(conversation, anchor)
    exported = export_anchor if export_anchor is not None and report.ok else None
    if exported is not None:
        with _refusing():
            write_anchor(exported, report.anchor())
    data = {
        "ok": report.ok,
        "events": report.events,
        "conversations": report.conversations,
        "breaks": [
            {
                "conversation_id": str(b.conversation_id),
                "position": b.position,
                "problem": b.problem,
            }
            for b in report.breaks
        ],
        "anchor": str(anchor) if anchor is not None else None,
        "exported_anchor": str(exported) if exported is not None else None,
        "heads": len(report.heads),
    }

    def render() -> None:
        for chain_break in report.breaks:
            console.print(f"[red]BROKEN[/red] {escape(str(chain_break))}")
        console.print(f"{report.events} events in {report.conversations} conversations checked.")
        if anchor is not None and report.ok:
            console.print(
                f"Every head anchored in {escape(str(anchor))} is still stored unchanged."
            )
        if exported is not None:
            console.print(
                f"Anchor of {len(report.heads)} heads written to {escape(str(exported))}."
            )

    _emit(as_json, data, render)
    if export_anchor is not None and exported is None:
        _fail(f"anchor not exported: the store is broken ({export_anchor}).")
    raise typer.Exit(0 if report.ok else 1)


@app.command("ls")
def list_conversations(
    workspace: WorkspaceOption = None,
    search: Annotated[
        str | None, typer.Option("--search", "-s", help="Words in a title or a message.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many conversations.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List conversations, newest first."""
    with _opened(workspace) as ledger:
        rows = ledger.list_conversations(limit, 0, search)

    _emit(as_json, rows, lambda: print_conversations(console, rows))


@app.command()
def show(conversation: str, workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """Print a conversation's active transcript."""
    with _opened(workspace) as ledger:
        messages = ledger.history(conversation)
    _emit(as_json, messages, lambda: print_messages(console, conversation, messages))


@app.command("as-of")
def as_of(
    conversation: str, position: int, workspace: WorkspaceOption = None, as_json: JsonOption = False
) -> None:
    """Print the transcript exactly as it was right after event POSITION."""
    with _opened(workspace) as ledger:
        messages = ledger.as_of(conversation, position)
    _emit(as_json, messages, lambda: print_messages(console, conversation, messages))


@app.command()
def context(
    conversation: str,
    at: Annotated[int | None, typer.Option("--at", help="Event position (default: now).")] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """What the model was (or would be) sent at a position, and what was left out and why.
    On a branch, a message it shares with an ancestor shows the ancestor's id (from)."""
    with _opened(workspace) as ledger:
        manifest = ledger.context_at(conversation, at)
    _emit(as_json, manifest, lambda: print_context(console, manifest))


@app.command()
def checkpoints(
    workspace: WorkspaceOption = None,
    conversation: Annotated[str | None, typer.Argument()] = None,
    limit: Annotated[int, typer.Option(help="At most this many checkpoints.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List live checkpoints, newest first."""
    with _opened(workspace) as ledger:
        rows = [row.as_dict() for row in ledger.checkpoints(conversation, None, limit)]
    _emit(as_json, rows, lambda: print_checkpoints(console, rows))


@app.command()
def tree(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """Print the branch tree of all conversations."""
    with _opened(workspace) as ledger:
        roots = branch_tree(ledger)
    _emit(as_json, roots, lambda: print_tree(console, roots))


@app.command(help=CHAT_HELP)
def chat(
    workspace: WorkspaceOption = None,
    provider: Annotated[str, typer.Option(help="offline, openai or anthropic.")] = "offline",
    model: Annotated[str | None, typer.Option(help="The provider's model name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Continue this conversation.")] = None,
    system_prompt: Annotated[str, typer.Option("--system", help="System prompt.")] = "",
) -> None:
    with _refusing():
        manager = ConversationManager(
            workspace_path=_workspace(workspace),
            system_prompt=system_prompt,
            model_config={"provider": provider, "model": model, "base_url": base_url},
        )
    try:
        with _refusing():
            if conversation and not manager.load(conversation):
                raise ConversationNotFound(f"No conversation with id {conversation}.")
            console.print(f"conversation {manager.get_conversation_id()}")
        commands = " ".join(command.split()[0] for command, _ in SLASH_COMMANDS)
        console.print(f"[dim]{commands} (chat --help explains them)[/]")
        if isinstance(sys.stdin, io.TextIOWrapper):
            # Bytes that are not text arrive as lone surrogates, so one such line is refused
            # on its own instead of ending the chat and losing the lines read with it.
            sys.stdin.reconfigure(errors="surrogateescape")
        asyncio.run(chat_loop(manager, console, _fail))
    except KeyboardInterrupt:
        # An answer cut short is already on record as a cancelled call (with its partial
        # text); Ctrl-C ends the chat like a shell's 128 + SIGINT, not with a traceback.
        err_console.print("interrupted: anything cut short is recorded as cancelled.")
        raise typer.Exit(130) from None
    finally:
        manager.close()


@app.command("replay")
def replay_command(
    conversation: str,
    workspace: WorkspaceOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Re-run against provider:model (openai:gpt-4o, anthropic:claude-sonnet-4, a "
            "bare OpenAI model name, or offline) instead of the record."
        ),
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
) -> None:
    """Re-run a recorded conversation. From the record it must reproduce every answer and
    context exactly (exit 0, or 1 naming the first difference); against a model it reports
    per turn where answers and contexts diverge. Progress goes to stderr."""
    with _opened(workspace) as ledger:
        provider = _provider(model, base_url) if model else None
        progress = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            # Refreshed at each turn instead of by a thread of its own, which could outlive
            # the command (CliRunner, scripts).
            auto_refresh=False,
        )
        try:
            with progress:
                task = progress.add_task("replay", total=None)
                report = asyncio.run(
                    replay(
                        ledger,
                        conversation,
                        provider=provider,
                        on_turn=lambda done, total: progress.update(
                            task, completed=done, total=total, refresh=True
                        ),
                    )
                )
        except ReplayMismatch as mismatch:
            console.print(f"[red]MISMATCH[/red] {escape(str(mismatch))}")
            raise typer.Exit(1) from None
    table = Table("turn", "context", "answer", "answer now")
    for turn in report.turns:
        table.add_row(
            str(turn.turn),
            "same" if turn.request_matches else "[yellow]differs[/]",
            "same" if turn.answer_matches else "[yellow]differs[/]",
            escape(preview(turn.answer, 50)),
        )
    console.print(table)
    console.print(
        f"{len(report.turns)} turns replayed: "
        + ("identical." if report.identical else "[yellow]diverged.[/]")
    )
    raise typer.Exit(0 if report.identical or model else 1)


def _provider(spec: str, base_url: str | None) -> Provider:
    name, _, model = spec.partition(":")
    if not model and name.lower() not in PROVIDERS:
        # A bare model name (gpt-4o-mini) is an OpenAI model.
        name, model = "openai", name
    return select_provider({"provider": name, "model": model or None, "base_url": base_url}, None)


@app.command()
def rebuild(workspace: WorkspaceOption = None) -> None:
    """Drop every projection and rebuild it from the log."""
    with _opened(workspace, writing=True) as ledger:
        applied = ledger.rebuild_projections()
    console.print(f"Rebuilt projections from {applied} events.")


@app.command("export")
def export_bundle(
    conversation: str,
    workspace: WorkspaceOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
) -> None:
    """Write a conversation's bundle (its stored events with their hashes, its ancestors'
    up to their forks first) as JSON Lines, to stdout or FILE; see docs/hash-chain.md §5."""
    with _opened(workspace) as ledger:
        if output is None:
            buffer = io.BytesIO()
            count = ledger.export_bundle(conversation, buffer)
            sys.stdout.buffer.write(buffer.getvalue())
            sys.stdout.buffer.flush()
        else:
            with _refusing():
                ledger.queries.existing(conversation)  # an unknown one leaves no file behind
                try:
                    with output.expanduser().open("wb") as file:
                        count = ledger.export_bundle(conversation, file)
                except OSError as error:
                    raise FileInputError(
                        f"Cannot write bundle {output}: {error.strerror or error}."
                    ) from None
    err_console.print(f"{count} events exported.", markup=False, highlight=False)


@app.command("import")
def import_bundle(
    bundle: Annotated[Path, typer.Argument(help="A bundle file, as `export` writes one.")],
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import a bundle: every hash and chain is checked, and what the store already holds of
    it must be the same, before anything is written; then the events the store lacks are
    written as they were stored. Importing it again writes nothing. Exit 2 when refused."""
    with _opened(workspace, creating=True) as ledger:
        report = ledger.import_bundle(bundle)
    data = {
        "conversation_id": str(report.conversation_id),
        "conversations": [str(c) for c in report.conversations],
        "events": report.events,
        "written": report.written,
    }

    def render() -> None:
        console.print(
            f"Imported conversation {report.conversation_id}: {report.written} of "
            f"{report.events} events written ({report.events - report.written} already stored)."
        )

    _emit(as_json, data, render)
