"""End to end: `chatledger export` and `chatledger import`, a conversation's bundle carried
from one store to another (docs/hash-chain.md §5), on every pair of stores (the demo's store,
the source, and a fresh one of the test's, the target; SQLite to PostgreSQL among them).

An import checks the whole bundle before it writes anything: a bundle with an edited payload,
a forged hash, a missing or a reordered event is refused with one error line, exit 2, and the
target's log is left as it was; so is a bundle that conflicts with what the target holds.
An import writes the events as they were stored, projected once; importing again, or into the
store the bundle came from, writes nothing."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest

from domain.hashing import GENESIS_HASH, event_hash
from tests.e2e.harness import EXECUTABLE, Demo, Result, chatledger, invoke
from tests.stores import Store

pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason="the chatledger console script is not installed"
)


def one_error_line(result: Result, *fragments: str) -> str:
    assert result.code == 2, result.text
    lines = [line for line in (result.out + result.err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def log_of(store: Store) -> list[tuple[str, int, str, bytes]]:
    """The log's events in the store's order, comparable across stores."""
    return [(_uuid(i), int(v), str(t), bytes(s)) for _, i, v, t, s in store.log_rows()]


def _uuid(stored: Any) -> str:
    return str(UUID(bytes=stored) if isinstance(stored, bytes) else UUID(str(stored)))


def export(demo: Demo, path: Path) -> list[dict[str, Any]]:
    """The branch's bundle, exported by a real process to `path` (its stdout); its lines."""
    result = chatledger("export", demo.branch, "--workspace", demo.workspace, env=demo.store.env)
    assert result.code == 0, result.text
    path.write_text(result.out)
    return [json.loads(line) for line in result.out.splitlines()]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def rechain(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines with every prev_hash and hash computed anew: a bundle whose chains hold."""
    hashes: dict[tuple[str, int], str] = {}
    for line in lines:
        document = line["document"]
        stream, position = document["originator_id"], document["originator_version"]
        parent = document.get("parent")
        if position > 1:
            document["prev_hash"] = hashes[(stream, position - 1)]
        elif parent:
            document["prev_hash"] = hashes[(parent["conversation_id"], parent["position"])]
        else:
            document["prev_hash"] = GENESIS_HASH
        line["hash"] = hashes[(stream, position)] = event_hash(document)
    return lines


def message_line(lines: list[dict[str, Any]], nth: int = 0) -> int:
    """The index of the nth MessageAppended line that is not the last of its stream."""
    found = [
        k
        for k, line in enumerate(lines[:-1])
        if line["document"]["topic"] == "chatledger:MessageAppended"
        and lines[k + 1]["document"]["originator_id"] == line["document"]["originator_id"]
    ]
    return found[nth]


def test_export_then_import_into_a_fresh_store(demo: Demo, store: Store, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.jsonl"
    lines = export(demo, bundle)
    assert lines[-1]["document"]["originator_id"] == demo.branch
    assert lines[0]["document"]["originator_id"] == demo.parent

    result = chatledger("import", bundle, "--json", "--workspace", store.workspace, env=store.env)
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report == {
        "conversation_id": demo.branch,
        "conversations": [demo.parent, demo.branch],
        "events": len(lines),
        "written": len(lines),
    }
    # Stored as they were: same streams, positions, topics, payloads.
    source = {(i, v): (t, s) for i, v, t, s in log_of(demo.store)}
    target = log_of(store)
    assert len(target) == len(lines)
    assert all(source[(i, v)] == (t, s) for i, v, t, s in target)

    def both(*args: str) -> tuple[Result, Result]:
        return (
            chatledger(*args, "--workspace", demo.workspace, env=demo.store.env),
            chatledger(*args, "--workspace", store.workspace, env=store.env),
        )

    verified = chatledger("verify", "--json", "--workspace", store.workspace, env=store.env)
    assert verified.code == 0 and json.loads(verified.out)["ok"], verified.text
    shown, imported = both("show", demo.branch, "--json")
    assert shown.code == 0 and json.loads(shown.out) == json.loads(imported.out)
    for position in (
        1,
        3,
        len([x for x in lines if x["document"]["originator_id"] == demo.branch]),
    ):
        before, after = both("as-of", demo.branch, str(position), "--json")
        assert before.code == 0 and json.loads(before.out) == json.loads(after.out)
    listed = chatledger("ls", "--json", "--workspace", store.workspace, env=store.env)
    assert demo.branch in {row["id"] for row in json.loads(listed.out)}
    with closing(store.spec.ledger()) as ledger:
        assert ledger.projections.position() == len(lines)  # caught up, each event once
        assert ledger.history(demo.branch) == json.loads(shown.out)

    # Idempotent: again into the target, and into the store it came from, writes nothing.
    log, projections = store.log_rows(), store.projections()
    again = chatledger("import", bundle, "--json", "--workspace", store.workspace, env=store.env)
    assert again.code == 0 and json.loads(again.out)["written"] == 0, again.text
    assert store.log_rows() == log and store.projections() == projections
    source_log = demo.store.log_rows()
    home = chatledger("import", bundle, "--json", "--workspace", demo.workspace, env=demo.store.env)
    assert home.code == 0 and json.loads(home.out)["written"] == 0, home.text
    assert demo.store.log_rows() == source_log


def test_import_completes_a_conversation_stored_in_part(
    demo: Demo, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = export(demo, tmp_path / "bundle.jsonl")
    root = [line for line in lines if line["document"]["originator_id"] == demo.parent]
    monkeypatch.setenv("CHATLEDGER_DATABASE_URL", store.url)
    first = invoke("import", write_lines(tmp_path / "root.jsonl", root[:5]), "-w", store.workspace)
    assert first.code == 0, first.text
    whole = invoke("import", "--json", tmp_path / "bundle.jsonl", "-w", store.workspace)
    assert whole.code == 0 and json.loads(whole.out)["written"] == len(lines) - 5, whole.text
    assert invoke("verify", "-w", store.workspace).code == 0


def tampered(lines: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    k = message_line(lines)
    if how == "edited payload":
        lines[k]["document"]["parts"][0]["text"] += " (edited)"
    elif how == "forged hash":
        lines[k]["document"]["parts"][0]["text"] += " (edited)"
        lines[k]["hash"] = event_hash(lines[k]["document"])
    elif how == "missing event":
        del lines[k]
    elif how == "reordered":
        lines[k], lines[k + 1] = lines[k + 1], lines[k]
    elif how == "missing ancestor":
        branch = lines[-1]["document"]["originator_id"]
        lines = [x for x in lines if x["document"]["originator_id"] == branch]
    elif how == "unknown topic":
        lines[k]["document"]["topic"] = "chatledger:NoSuchEvent"
        lines = rechain(lines)
    return lines


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("edited payload", "hash does not match the payload"),
        ("forged hash", "prev_hash does not match"),
        ("missing event", "event missing"),
        ("reordered", "event missing"),
        ("missing ancestor", "bundle is broken"),
        ("unknown topic", "not a chatledger event"),
    ],
)
def test_a_tampered_bundle_is_refused_and_nothing_written(
    demo: Demo,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    says: str,
) -> None:
    lines = export(demo, tmp_path / "bundle.jsonl")
    with closing(store.spec.ledger()) as ledger:
        ledger.start_conversation(title="already here")
    log, projections = store.log_rows(), store.projections()
    bad = write_lines(tmp_path / "bad.jsonl", tampered(lines, how))
    monkeypatch.setenv("CHATLEDGER_DATABASE_URL", store.url)
    one_error_line(invoke("import", bad, "-w", store.workspace), says)
    assert store.log_rows() == log and store.projections() == projections


def test_a_bundle_that_conflicts_with_the_store_is_refused(
    demo: Demo, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = export(demo, tmp_path / "bundle.jsonl")
    monkeypatch.setenv("CHATLEDGER_DATABASE_URL", store.url)
    assert invoke("import", tmp_path / "bundle.jsonl", "-w", store.workspace).code == 0
    # Another history under the same ids: intact chains, different content.
    other = lines[: message_line(lines) + 1]
    other[-1]["document"]["parts"][0]["text"] += " (rewritten)"
    rewritten = write_lines(tmp_path / "other.jsonl", rechain(other))
    log = store.log_rows()
    one_error_line(invoke("import", rewritten, "-w", store.workspace), "conflicts")
    assert store.log_rows() == log


@pytest.mark.parametrize("what", ["directory", "device", "not json", "empty", "missing"])
def test_an_unreadable_bundle_is_refused(store: Store, tmp_path: Path, what: str) -> None:
    path = {
        "directory": tmp_path,
        "device": Path("/dev/zero"),
        "not json": tmp_path / "x.jsonl",
        "empty": tmp_path / "empty.jsonl",
        "missing": tmp_path / "nowhere.jsonl",
    }[what]
    (tmp_path / "x.jsonl").write_text('{"hash": "00", "document": [1, 2]}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    with closing(store.spec.ledger()) as ledger:
        ledger.start_conversation(title="already here")
    log = store.log_rows()
    one_error_line(invoke("import", path, "-w", store.workspace))
    assert store.log_rows() == log


def test_export_of_an_unknown_conversation_writes_nothing(demo: Demo, tmp_path: Path) -> None:
    result = invoke("export", "00000000-0000-4000-8000-000000000000", "-w", demo.workspace)
    one_error_line(result, "No conversation")
    output = tmp_path / "out.jsonl"
    result = invoke(
        "export", "00000000-0000-4000-8000-000000000000", "-o", output, "-w", demo.workspace
    )
    one_error_line(result, "No conversation")
    assert not output.exists()
