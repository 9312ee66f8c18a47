"""`chatledger demo`: a scripted conversation on the offline model through Penguin's API
(turns, a checkpoint, a rollback, a branch), then the branch tree, the checkpoints, the token
usage and a verification of the log."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from chatledger.cli_views import branch_tree, print_checkpoints, print_tree, print_usage
from chatledger.ledger import Ledger
from chatledger.manager import ConversationManager
from infrastructure.postgres_store import PostgresDatabase


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


async def run_demo(workspace: Path, console: Console) -> None:
    manager = ConversationManager(
        workspace_path=workspace, system_prompt="You are a concise travel assistant."
    )
    try:
        await _script(manager, console)
    finally:
        manager.close()


async def _script(manager: ConversationManager, console: Console) -> None:
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
    print_tree(console, branch_tree(manager.ledger))
    print_checkpoints(console, manager.list_checkpoints(limit=10))
    print_usage(console, manager.get_token_usage())
    report = manager.ledger.verify()
    console.print(
        f"[bold]verify[/] {'ok' if report.ok else 'BROKEN'}: "
        f"{report.events} events in {report.conversations} conversations"
    )
    console.print(escape(_store_name(manager.ledger)))
