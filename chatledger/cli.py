"""The `chatledger` command line (typer + rich)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.tree import Tree

from chatledger.ledger import Ledger
from chatledger.manager import ConversationManager
from chatledger.provider_selection import select_provider
from chatledger.providers import Provider
from chatledger.replay import ReplayMismatch, replay
from domain.errors import ChatledgerError, ConversationNotFound
from infrastructure.postgres_store import PostgresDatabase, is_postgres_url, parse_database_url
from infrastructure.sqlite_store import DB_FILE
from infrastructure.stores import database_url_from


def id_column() -> Column:
    # Ids are copied into other commands: never wrap or cut them.
    return Column("id", no_wrap=True, min_width=36)


app = typer.Typer(help="chatledger: an append-only, event-sourced conversation ledger.")
console = Console()

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: ./.chatledger)."),
]


def _workspace(workspace: Path | None) -> Path:
    return workspace or Path.cwd() / ".chatledger"


def _missing_store(path: Path) -> str | None:
    """Where the store should be, if there is none there; None if there is one (or the URL
    is one that opening the store will refuse with its own message)."""
    url = database_url_from(None)
    if url is None:
        return None if path.is_file() or (path / DB_FILE).exists() else str(path)
    if not is_postgres_url(url):
        return None
    # Opening the store would create the schema and its tables: a typo in ?schema= would
    # leave an empty store behind and list nothing instead of saying so.
    location = parse_database_url(url)
    database = PostgresDatabase(location)
    try:
        found = database.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = ? AND tablename = ?",
            (location.schema, database.dialect.events_table),
        ).fetchone()
    finally:
        database.close()
    return None if found else str(location)


@contextmanager
def _refusing() -> Iterator[None]:
    """A typed error ends the command with one readable line and exit status 2."""
    try:
        yield
    except ChatledgerError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


@contextmanager
def _opened(workspace: Path | None) -> Iterator[Ledger]:
    """The existing store, for one command (reading commands never create a store where
    there is none); a typed error, opening it or in the command, is refused (_refusing)."""
    path = _workspace(workspace)
    with _refusing():
        missing = _missing_store(path)
        if missing is not None:
            console.print(
                f"[red]error:[/red] no chatledger store in {missing} (run a chat there first)."
            )
            raise typer.Exit(2)
        ledger = Ledger(path)
        # On PostgreSQL a Ledger holds connections and a pool's threads until closed;
        # in-process callers (tests, scripts) run many commands.
        try:
            yield ledger
        finally:
            ledger.close()


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
    _print_tree(manager.ledger)
    _print_checkpoints(manager.list_checkpoints(limit=10))
    usage = manager.get_token_usage()
    console.print(
        f"[bold]token usage[/] {usage['current_total_tokens']} of "
        f"{usage['max_context_window_tokens']} ({usage['percentage']:.2f}%) "
        f"categories={usage['categories']}"
    )
    report = manager.ledger.verify()
    console.print(
        f"[bold]verify[/] {'ok' if report.ok else 'BROKEN'}: "
        f"{report.events} events in {report.conversations} conversations"
    )
    console.print(_store_name(manager.ledger))


@app.command()
def demo(workspace: WorkspaceOption = None) -> None:
    """Run a scripted conversation on the offline model: turns, a checkpoint, a rollback and
    a branch; then print the branch tree, the checkpoints and the token usage."""
    with _refusing():
        asyncio.run(_demo(_workspace(workspace)))


def _print_tree(ledger: Ledger) -> None:
    conversations = {c["id"]: c for c in ledger.list_conversations(limit=10_000)}
    children: dict[str, list[dict[str, object]]] = {}
    for branch in ledger.branch_tree():
        children.setdefault(str(branch["parent_id"]), []).append(branch)
    branched = {str(b["branch_id"]) for bs in children.values() for b in bs}
    tree = Tree("[bold]conversations[/]")

    def add(node: Tree, conversation_id: str, label_suffix: str = "") -> None:
        info = conversations.get(conversation_id, {"title": "?", "message_count": "?"})
        child = node.add(
            f"{info['title']} [dim]{conversation_id}[/] "
            f"({info['message_count']} messages){label_suffix}"
        )
        for branch in children.get(conversation_id, []):
            add(
                child, str(branch["branch_id"]), f" [dim]forked at position {branch['position']}[/]"
            )

    for conversation_id in conversations:
        if conversation_id not in branched:
            add(tree, conversation_id)
    console.print(tree)


def _print_checkpoints(rows: list[dict[str, object]]) -> None:
    table = Table(id_column(), "type", "position", "messages", "name", "created")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["type"]),
            str(row["position"]),
            str(row["message_count"]),
            str(row["name"] or ""),
            str(row["created_at"])[:19],
        )
    console.print(table)


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
) -> None:
    """Check every hash chain; exit 0 when intact, 1 naming the first broken position.
    Deleting a stream's last events or forging its newest event only shows against an anchor
    exported earlier (--export-anchor, then --anchor); 2 for an unusable anchor file."""
    # Imported here to keep this command's changes in one place.
    from infrastructure.verification import write_anchor

    with _opened(workspace) as ledger:
        report = ledger.verify(conversation, anchor)
    for chain_break in report.breaks:
        console.print(f"[red]BROKEN[/red] {chain_break}")
    console.print(f"{report.events} events in {report.conversations} conversations checked.")
    if anchor is not None and report.ok:
        console.print(f"Every head anchored in {anchor} is still stored unchanged.")
    if export_anchor is not None:
        if not report.ok:
            console.print(f"[red]anchor not exported:[/red] the store is broken ({export_anchor}).")
            raise typer.Exit(1)
        with _refusing():
            write_anchor(export_anchor, report.anchor())
        console.print(f"Anchor of {len(report.heads)} heads written to {export_anchor}.")
    raise typer.Exit(0 if report.ok else 1)


@app.command("ls")
def list_conversations(
    workspace: WorkspaceOption = None,
    search: Annotated[str | None, typer.Option("--search", "-s")] = None,
    limit: int = 20,
) -> None:
    """List conversations, newest first."""
    table = Table(id_column(), "title", "messages", "tokens", "last active")
    with _opened(workspace) as ledger:
        rows = ledger.list_conversations(limit, 0, search)
    for row in rows:
        table.add_row(
            row["id"],
            row["title"],
            str(row["message_count"]),
            str(row["token_count"]),
            row["last_active"][:19],
        )
    console.print(table)


def _print_messages(messages: list[dict[str, object]]) -> None:
    for message in messages:
        console.print(
            f"[dim]{message['position']:>5}[/] [bold]{message['role']}[/] "
            f"[dim]{message['category']}[/]: {message['content']}"
        )


@app.command()
def show(conversation: str, workspace: WorkspaceOption = None) -> None:
    """Print a conversation's active transcript."""
    with _opened(workspace) as ledger:
        _print_messages(ledger.history(conversation))


@app.command("as-of")
def as_of(conversation: str, position: int, workspace: WorkspaceOption = None) -> None:
    """Print the transcript exactly as it was right after event POSITION."""
    with _opened(workspace) as ledger:
        _print_messages(ledger.as_of(conversation, position))


@app.command()
def context(
    conversation: str,
    at: Annotated[int | None, typer.Option("--at", help="Event position (default: now).")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """What the model was (or would be) sent at a position, and what was left out and why."""
    with _opened(workspace) as ledger:
        manifest = ledger.context_at(conversation, at)
    console.print(
        f"[bold]context[/] of {manifest['conversation_id']} at position {manifest['position']}: "
        f"{manifest['tokens']} of {manifest['usable_window']} tokens, "
        f"request {manifest['request_hash'][:16]}"
    )
    table = Table("sent", "position", "role", "category", "tokens", "content / reason")
    for row in manifest["sent"]:
        note = " [dim](image replaced)[/]" if row["image_replaced"] else ""
        table.add_row(
            "yes",
            str(row["position"]),
            row["role"],
            row["category"],
            str(row["tokens"]),
            _preview(row["content"]) + note,
        )
    for row in manifest["left_out"]:
        table.add_row(
            "[red]no[/]",
            str(row["position"]),
            row["role"],
            row["category"],
            str(row["tokens"]),
            f"[red]{row['reason']}[/]: {_preview(row['content'])}",
        )
    console.print(table)


def _preview(content: object, width: int = 60) -> str:
    text = content if isinstance(content, str) else str(content)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@app.command()
def checkpoints(
    workspace: WorkspaceOption = None,
    conversation: Annotated[str | None, typer.Argument()] = None,
    limit: int = 50,
) -> None:
    """List live checkpoints, newest first."""
    with _opened(workspace) as ledger:
        rows = ledger.checkpoints(conversation, None, limit)
    _print_checkpoints([row.as_dict() for row in rows])


@app.command()
def tree(workspace: WorkspaceOption = None) -> None:
    """Print the branch tree of all conversations."""
    with _opened(workspace) as ledger:
        _print_tree(ledger)


CHAT_HELP = (
    "/checkpoint [name]  /rollback <checkpoint>  /branch <checkpoint> [name]  /tree  "
    "/usage  /context  /checkpoints  /quit"
)


@app.command()
def chat(
    workspace: WorkspaceOption = None,
    provider: Annotated[str, typer.Option(help="offline, openai or anthropic.")] = "offline",
    model: Annotated[str | None, typer.Option(help="The provider's model name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Continue this conversation.")] = None,
    system_prompt: Annotated[str, typer.Option("--system", help="System prompt.")] = "",
) -> None:
    """An interactive chat that streams answers; slash commands manage the history."""
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
        console.print(f"[dim]{CHAT_HELP}[/]")
        asyncio.run(_chat_loop(manager))
    finally:
        manager.close()


async def _chat_loop(manager: ConversationManager) -> None:
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return
        if not line:
            continue
        if line.startswith("/"):
            if line in ("/quit", "/exit"):
                return
            try:
                await _chat_command(manager, line)
            except ChatledgerError as error:
                console.print(f"[red]error:[/red] {error}")
            continue
        console.print("[bold green]assistant[/]: ", end="")
        answer = await manager.process_message(
            line, streaming=True, stream_callback=lambda chunk: console.print(chunk, end="")
        )
        console.print()
        if isinstance(answer, str) and answer.startswith("Error processing message:"):
            console.print(f"[red]{answer}[/]")


async def _chat_command(manager: ConversationManager, line: str) -> None:
    command, *args = line.split()
    ledger = manager.ledger
    if command == "/checkpoint":
        checkpoint = ledger.create_checkpoint(
            manager.get_conversation_id(), name=" ".join(args) or None
        )
        console.print(f"checkpoint {checkpoint}")
    elif command == "/rollback" and args:
        manager._active = ledger.rollback(args[0])
        console.print(f"rolled back to {args[0]}")
    elif command == "/branch" and args:
        manager._active = ledger.branch(args[0], " ".join(args[1:]) or None)
        console.print(f"now on branch {manager.get_conversation_id()}")
    elif command == "/tree":
        _print_tree(ledger)
    elif command == "/checkpoints":
        _print_checkpoints(manager.list_checkpoints(manager.get_conversation_id(), limit=10))
    elif command == "/usage":
        usage = manager.get_token_usage()
        console.print(
            f"{usage['current_total_tokens']} of {usage['max_context_window_tokens']} tokens "
            f"({usage['percentage']:.1f}%), truncations {usage['truncations']}"
        )
    elif command == "/context":
        context = ledger.context_at(manager.get_conversation_id())
        console.print(
            f"{len(context['sent'])} messages sent ({context['tokens']} tokens), "
            f"{len(context['left_out'])} left out"
        )
    else:
        console.print(f"[yellow]unknown command[/] {line!r}: {CHAT_HELP}")


@app.command("replay")
def replay_command(
    conversation: str,
    workspace: WorkspaceOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Re-run against provider:model (e.g. openai:gpt-4o) instead of the record."
        ),
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
) -> None:
    """Re-run a recorded conversation. From the record it must reproduce every answer and
    context exactly (exit 0, or 1 naming the first difference); against a model it reports
    per turn where answers and contexts diverge."""
    with _opened(workspace) as ledger:
        try:
            provider = _provider(model, base_url) if model else None
            report = asyncio.run(replay(ledger, conversation, provider=provider))
        except ReplayMismatch as mismatch:
            console.print(f"[red]MISMATCH[/red] {mismatch}")
            raise typer.Exit(1) from None
    table = Table("turn", "context", "answer", "answer now")
    for turn in report.turns:
        table.add_row(
            str(turn.turn),
            "same" if turn.request_matches else "[yellow]differs[/]",
            "same" if turn.answer_matches else "[yellow]differs[/]",
            _preview(turn.answer, 50),
        )
    console.print(table)
    console.print(
        f"{len(report.turns)} turns replayed: "
        + ("identical." if report.identical else "[yellow]diverged.[/]")
    )
    raise typer.Exit(0 if report.identical or model else 1)


def _provider(spec: str, base_url: str | None) -> Provider:
    name, _, model = spec.partition(":")
    if not model:
        name, model = "openai", name
    return select_provider({"provider": name, "model": model, "base_url": base_url}, None)


@app.command()
def rebuild(workspace: WorkspaceOption = None) -> None:
    """Drop every projection and rebuild it from the log."""
    with _opened(workspace) as ledger:
        applied = ledger.rebuild_projections()
    console.print(f"Rebuilt projections from {applied} events.")
