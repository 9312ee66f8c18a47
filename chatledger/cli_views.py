"""How the command line shows what it read: the branch tree, checkpoints, token usage,
transcripts and the model's context. Each printer prints on the console it is given: the
CLI's, which tests replace with one of their own."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.tree import Tree

from chatledger.inputs import parse_conversation_id
from chatledger.ledger import Ledger


def id_column() -> Column:
    # Ids are copied into other commands: never wrap or cut them.
    return Column("id", no_wrap=True, min_width=36)


def branch_tree(ledger: Ledger) -> list[dict[str, Any]]:
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


def print_tree(console: Console, roots: list[dict[str, Any]]) -> None:
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


def print_conversations(console: Console, rows: list[dict[str, Any]]) -> None:
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


def print_checkpoints(console: Console, rows: list[dict[str, Any]]) -> None:
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


def print_usage(console: Console, usage: dict[str, Any]) -> None:
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


def print_messages(console: Console, conversation: str, messages: list[dict[str, Any]]) -> None:
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


def print_context(console: Console, manifest: dict[str, Any]) -> None:
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
            status, content = "yes", escape(preview(row["content"])) + note
        else:
            status = "[red]no[/]"
            content = f"[red]{escape(row['reason'])}[/]: {escape(preview(row['content']))}"
        cells = [status, str(row["position"])]
        if inherited:
            cells.append("" if row["conversation_id"] == own else row["conversation_id"])
        table.add_row(*cells, row["role"], row["category"], str(row["tokens"]), content)
    console.print(table)


def preview(content: object, width: int = 60) -> str:
    text = content if isinstance(content, str) else str(content)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
