"""`chatledger chat`: an interactive chat that streams answers, with slash commands for
checkpoints, rollback, branches and what the model sees. A typed error on one line is
printed and the chat goes on."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from chatledger.cli_views import branch_tree, print_checkpoints, print_tree, print_usage
from chatledger.manager import ConversationManager
from chatledger.turns import TurnFailure
from domain.errors import ChatledgerError, CheckpointNotFound, InvalidInput

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


async def chat_loop(
    manager: ConversationManager, console: Console, fail: Callable[[object], None]
) -> None:
    """Reads lines until /quit, /exit or the end of input: a slash command, or a turn."""
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
            fail("that line is not valid UTF-8 text; it was skipped.")
            continue
        try:
            if line.startswith("/"):
                await _chat_command(manager, line, console)
            else:
                await _chat_turn(manager, line, console, fail)
        except ChatledgerError as error:
            fail(error)


async def _chat_turn(
    manager: ConversationManager, line: str, console: Console, fail: Callable[[object], None]
) -> None:
    """One turn, its answer streamed as it arrives; a failed call is one error line."""
    answering = False

    def show(chunk: str) -> None:
        nonlocal answering
        if not answering:
            console.print("[bold green]assistant[/]: ", end="")
            answering = True
        console.out(chunk, end="", highlight=False)

    outcome = await manager.take_turn(line, on_chunk=show)
    if answering:
        console.print()
    if isinstance(outcome, TurnFailure):
        fail(f"the model call failed ({outcome.kind}): {outcome.error}")


async def _chat_command(manager: ConversationManager, line: str, console: Console) -> None:
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
        manager.activate(ledger.rollback(args[0]))
        console.print(f"rolled back to {args[0]}; conversation {manager.get_conversation_id()}")
    elif command == "/branch":
        source = args[0] if args else _latest_checkpoint(manager)
        manager.activate(ledger.branch(source, " ".join(args[1:]) or None))
        console.print(f"branched from {source}; conversation {manager.get_conversation_id()}")
    elif command == "/tree":
        print_tree(console, branch_tree(ledger))
    elif command == "/checkpoints":
        rows = manager.list_checkpoints(manager.get_conversation_id(), limit=10)
        print_checkpoints(console, rows)
    elif command == "/usage":
        print_usage(console, manager.get_token_usage())
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
