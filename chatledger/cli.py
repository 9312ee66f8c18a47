"""The `chatledger` command line (typer + rich)."""

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
from rich.table import Column, Table
from rich.tree import Tree

from chatledger.ledger import Ledger, parse_conversation_id
from chatledger.manager import ConversationManager
from chatledger.provider_selection import PROVIDERS, select_provider
from chatledger.providers import Provider
from chatledger.replay import ReplayMismatch, replay
from domain.errors import ChatledgerError, CheckpointNotFound, ConversationNotFound, InvalidInput
from infrastructure.postgres_store import PostgresDatabase


def id_column() -> Column:
    # Ids are copied into other commands: never wrap or cut them.
    return Column("id", no_wrap=True, min_width=36)


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
def _opened(workspace: Path | None, *, writing: bool = False) -> Iterator[Ledger]:
    """The existing store, for one command: never created where there is none, and opened
    read-only (writing nothing, readable where it may not be written) unless the command
    writes; a typed error, opening it or in the command, is refused (_refusing)."""
    with _refusing():
        ledger = Ledger(_workspace(workspace), read_only=not writing, must_exist=True)
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


def _store_name(ledger: Ledger) -> str:
    """Which store a ledger uses, with no password in it."""
    if isinstance(ledger.db, PostgresDatabase):
        return f"store: {ledger.db.location}"
    return f"workspace: {ledger.workspace}"


DEMO_TURNS = (
    "Hi! I'm planning a three-day trip to Lisbon.",
    "What neighbourhoods should I stay in?",
    "I prefer somewhere quiet but walkable.",
)
DEMO_MORE = ("Actually, what about day trips to Sintra?", "And how do I get there by train?")
DEMO_BRANCH = ("Let's plan Porto instead.",)


async def _demo(workspace: Path) -> None:
    manager = ConversationManager(
        workspace_path=workspace, system_prompt="You are a concise travel assistant."
    )
    try:
        await _demo_script(manager)
    finally:
        manager.close()


async def _demo_script(manager: ConversationManager) -> None:
    for turn in DEMO_TURNS:
        console.print(f"[bold cyan]user[/]: {turn}")
        console.print(f"[bold green]assistant[/]: {await manager.process_message(turn)}")
    checkpoint = await manager.create_manual_checkpoint("before Sintra", "after choosing a stay")
    assert checkpoint is not None
    console.print(f"[yellow]checkpoint[/] {checkpoint}")
    for turn in DEMO_MORE:
        console.print(f"[bold cyan]user[/]: {turn}")
        console.print(f"[bold green]assistant[/]: {await manager.process_message(turn)}")
    await manager.rollback_to_checkpoint(checkpoint)
    console.print(
        f"[yellow]rolled back[/] to {checkpoint}: {len(manager.get_history())} messages in view"
    )
    branch = await manager.branch_from_checkpoint(checkpoint, "Porto instead")
    console.print(f"[yellow]branched[/] {branch}")
    for turn in DEMO_BRANCH:
        console.print(f"[bold cyan]user[/]: {turn}")
        console.print(f"[bold green]assistant[/]: {await manager.process_message(turn)}")
    _print_tree(_branch_tree(manager.ledger))
    _print_checkpoints(manager.list_checkpoints(limit=10))
    _print_usage(manager.get_token_usage())
    report = manager.ledger.verify()
    console.print(
        f"[bold]verify[/] {'ok' if report.ok else 'BROKEN'}: "
        f"{report.events} events in {report.conversations} conversations"
    )
    console.print(escape(_store_name(manager.ledger)))


@app.command()
def demo(workspace: WorkspaceOption = None) -> None:
    """Run a scripted conversation on the offline model: turns, a checkpoint, a rollback and
    a branch; then print the branch tree, the checkpoints and the token usage."""
    with _refusing():
        asyncio.run(_demo(_workspace(workspace)))


def _branch_tree(ledger: Ledger) -> list[dict[str, Any]]:
    """Every conversation as a node of the branch tree (id, title, message_count, parent_id,
    forked_at, branches), newest first; a branch nests under its parent."""
    forks = {fork["branch_id"]: fork for fork in ledger.branch_tree()}
    nodes = {
        row["id"]: {
            "id": row["id"],
            "title": row["title"],
            "message_count": row["message_count"],
            "parent_id": forks[row["id"]]["parent_id"] if row["id"] in forks else None,
            "forked_at": forks[row["id"]]["position"] if row["id"] in forks else None,
            "branches": [],
        }
        for row in ledger.list_conversations(limit=10_000)
    }
    roots: list[dict[str, Any]] = []
    for node in nodes.values():
        parent = nodes.get(node["parent_id"])
        (parent["branches"] if parent else roots).append(node)
    return roots


def _print_tree(roots: list[dict[str, Any]]) -> None:
    tree = Tree("[bold]conversations[/]")

    def add(under: Tree, node: dict[str, Any]) -> None:
        label = f"{escape(node['title'])} [dim]{node['id']}[/] ({node['message_count']} messages)"
        if node["forked_at"] is not None:
            label += f" [dim]forked at position {node['forked_at']}[/]"
        branch = under.add(label)
        for child in node["branches"]:
            add(branch, child)

    for root in roots:
        add(tree, root)
    console.print(tree)


def _print_checkpoints(rows: list[dict[str, Any]]) -> None:
    table = Table(id_column(), "type", "position", "messages", "name", "created")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["type"]),
            str(row["position"]),
            str(row["message_count"]),
            escape(row["name"] or ""),
            str(row["created_at"])[:19],
        )
    console.print(table)


def _print_usage(usage: dict[str, Any]) -> None:
    table = Table(
        "category",
        Column("tokens", justify="right"),
        title=(
            f"{usage['current_total_tokens']} of {usage['max_context_window_tokens']} tokens "
            f"({usage['percentage']:.1f}%) of the usable window"
        ),
    )
    for category, tokens in usage["categories"].items():
        table.add_row(category, str(tokens))
    console.print(table)
    trims = usage["truncations"]
    console.print(
        f"trimmed {trims['total_truncations']} times: {trims['messages_removed']} messages, "
        f"{trims['tokens_freed']} tokens left out of the model's context"
    )


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

    def render() -> None:
        table = Table(id_column(), "title", "messages", "tokens", "last active")
        for row in rows:
            table.add_row(
                row["id"],
                escape(row["title"]),
                str(row["message_count"]),
                str(row["token_count"]),
                row["last_active"][:19],
            )
        console.print(table)

    _emit(as_json, rows, render)


def _print_messages(conversation: str, messages: list[dict[str, Any]]) -> None:
    """A transcript, one message a line; on a branch, the messages it shares with an ancestor
    are marked with the ancestor's id (positions count in the stream that holds them)."""
    own = str(parse_conversation_id(conversation))
    for message in messages:
        origin = message["conversation_id"]
        marker = "" if origin == own else f"[magenta]from {origin}[/] "
        console.print(
            f"[dim]{message['position']:>5}[/] {marker}[bold]{message['role']}[/] "
            f"[dim]{message['category']}[/]: {escape(str(message['content']))}"
        )


@app.command()
def show(conversation: str, workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """Print a conversation's active transcript."""
    with _opened(workspace) as ledger:
        messages = ledger.history(conversation)
    _emit(as_json, messages, lambda: _print_messages(conversation, messages))


@app.command("as-of")
def as_of(
    conversation: str, position: int, workspace: WorkspaceOption = None, as_json: JsonOption = False
) -> None:
    """Print the transcript exactly as it was right after event POSITION."""
    with _opened(workspace) as ledger:
        messages = ledger.as_of(conversation, position)
    _emit(as_json, messages, lambda: _print_messages(conversation, messages))


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
    _emit(as_json, manifest, lambda: _print_context(manifest))


def _print_context(manifest: dict[str, Any]) -> None:
    console.print(
        f"[bold]context[/] of {manifest['conversation_id']} at position {manifest['position']}: "
        f"{manifest['tokens']} of {manifest['usable_window']} tokens, "
        f"request {manifest['request_hash'][:16]}"
    )
    own = manifest["conversation_id"]
    rows = [(True, row) for row in manifest["sent"]] + [
        (False, row) for row in manifest["left_out"]
    ]
    inherited = any(row["conversation_id"] != own for _, row in rows)
    origin = [Column("from", no_wrap=True)] if inherited else []
    table = Table("sent", "position", *origin, "role", "category", "tokens", "content / reason")
    for sent, row in rows:
        if sent:
            note = " [dim](image replaced)[/]" if row["image_replaced"] else ""
            status, content = "yes", escape(_preview(row["content"])) + note
        else:
            status = "[red]no[/]"
            content = f"[red]{escape(row['reason'])}[/]: {escape(_preview(row['content']))}"
        cells = [status, str(row["position"])]
        if inherited:
            cells.append("" if row["conversation_id"] == own else row["conversation_id"])
        table.add_row(*cells, row["role"], row["category"], str(row["tokens"]), content)
    console.print(table)


def _preview(content: object, width: int = 60) -> str:
    text = content if isinstance(content, str) else str(content)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


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
    _emit(as_json, rows, lambda: _print_checkpoints(rows))


@app.command()
def tree(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """Print the branch tree of all conversations."""
    with _opened(workspace) as ledger:
        roots = _branch_tree(ledger)
    _emit(as_json, roots, lambda: _print_tree(roots))


SLASH_COMMANDS = (
    ("/checkpoint [name]", "take a checkpoint of the conversation as it is now"),
    ("/rollback <checkpoint>", "return the checkpoint's conversation to it"),
    (
        "/branch [checkpoint] [name]",
        "go on in a new branch from a checkpoint (default: this conversation's latest)",
    ),
    ("/checkpoints", "this conversation's latest checkpoints"),
    ("/tree", "the branch tree of all conversations"),
    ("/usage", "token usage of the context window, by category"),
    ("/context", "what the model is sent now, and what is left out"),
    ("/quit", "leave (so do /exit and the end of input)"),
)
CHAT_HELP = (
    "An interactive chat that streams answers; slash commands manage the history.\n\n"
    # Typer reads help as rich markup, where [name] would be a style.
    + "\n".join(f"{escape(command)}: {what}." for command, what in SLASH_COMMANDS)
)


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
        asyncio.run(_chat_loop(manager))
    finally:
        manager.close()


async def _chat_loop(manager: ConversationManager) -> None:
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return
        if line in ("/quit", "/exit"):
            return
        if not line:
            continue
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            _fail("that line is not valid UTF-8 text; it was skipped.")
            continue
        try:
            if line.startswith("/"):
                await _chat_command(manager, line)
            else:
                await _chat_turn(manager, line)
        except ChatledgerError as error:
            _fail(error)


async def _chat_turn(manager: ConversationManager, line: str) -> None:
    answering = False

    def show(chunk: str) -> None:
        nonlocal answering
        if not answering:
            console.print("[bold green]assistant[/]: ", end="")
            answering = True
        console.out(chunk, end="", highlight=False)

    answer = await manager.process_message(line, streaming=True, stream_callback=show)
    if answering:
        console.print()
    if isinstance(answer, str) and answer.startswith("Error processing message:"):
        _fail(answer)


async def _chat_command(manager: ConversationManager, line: str) -> None:
    command, *args = line.split()
    ledger = manager.ledger
    if command == "/checkpoint":
        checkpoint = ledger.create_checkpoint(
            manager.get_conversation_id(), name=" ".join(args) or None
        )
        console.print(f"checkpoint {checkpoint}")
    elif command == "/rollback":
        if not args:
            raise InvalidInput(
                "/rollback needs a checkpoint id: /rollback <checkpoint> (/checkpoints lists them)."
            )
        manager._active = ledger.rollback(args[0])
        console.print(f"rolled back to {args[0]}; conversation {manager.get_conversation_id()}")
    elif command == "/branch":
        source = args[0] if args else _latest_checkpoint(manager)
        manager._active = ledger.branch(source, " ".join(args[1:]) or None)
        console.print(f"branched from {source}; conversation {manager.get_conversation_id()}")
    elif command == "/tree":
        _print_tree(_branch_tree(ledger))
    elif command == "/checkpoints":
        _print_checkpoints(manager.list_checkpoints(manager.get_conversation_id(), limit=10))
    elif command == "/usage":
        _print_usage(manager.get_token_usage())
    elif command == "/context":
        context = ledger.context_at(manager.get_conversation_id())
        console.print(
            f"{len(context['sent'])} messages sent ({context['tokens']} tokens), "
            f"{len(context['left_out'])} left out"
        )
    else:
        known = ", ".join(command.split()[0] for command, _ in SLASH_COMMANDS)
        raise InvalidInput(f"unknown command {command!r}; use one of {known}.")


def _latest_checkpoint(manager: ConversationManager) -> str:
    latest = manager.ledger.checkpoints(manager.get_conversation_id(), None, 1)
    if not latest:
        raise CheckpointNotFound(
            "This conversation has no checkpoint to branch from yet: take one with /checkpoint, "
            "or name one: /branch <checkpoint> [name]."
        )
    return latest[0].checkpoint_id


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
            escape(_preview(turn.answer, 50)),
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
