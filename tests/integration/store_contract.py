"""The behaviours every store must show, written once. Each store's test module subclasses
StoreContract and names its backend (see test_sqlite_store.py); the store is tests/stores.py's,
opened empty for each test as the `store` fixture opens it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image

from chatledger import CheckpointConfig, CheckpointType, ConversationManager, InvalidInput
from chatledger.replay import recorded_calls
from tests.stores import Store, open_store


class PenguinClient:
    """Shaped like Penguin's API client; answers with a counter so turns are distinguishable."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []

    async def get_response(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        stream: bool | None = None,
        stream_callback: Callable[[str], Any] | None = None,
    ) -> str:
        self.requests.append(messages)
        text = f"answer {len(self.requests)}"
        if stream and stream_callback:
            for chunk in ("ans", "wer ", str(len(self.requests))):
                result = stream_callback(chunk)
                if asyncio.iscoroutine(result):
                    await result
        return text


class FailingClient:
    async def get_response(self, messages: Any, **_: Any) -> str:
        raise TimeoutError("model timed out")


class StoreContract:
    """Subclasses set `backend` ("sqlite" or "postgres")."""

    backend: str
    store: Store

    @pytest.fixture(autouse=True)
    def _store(self, tmp_path: Path) -> Iterator[Store]:
        with open_store(self.backend, tmp_path / "ws") as self.store:
            yield self.store

    def manager(self, workspace: Path, **kwargs: Any) -> ConversationManager:
        """A manager on the test's store, closed when the test ends."""
        return self.store.at(workspace).manager(**kwargs)

    @pytest.fixture
    def workspace(self) -> Path:
        return self.store.workspace

    # -- identity and durability -------------------------------------------------------
    async def test_ids_survive_a_restart(self, workspace: Path) -> None:
        first = self.manager(workspace, system_prompt="Be brief.")
        await first.process_message("Remember the number 42.")
        conversation_id = first.get_conversation_id()
        checkpoint = await first.create_manual_checkpoint("kept")
        history = first.get_history()
        first.close()

        second = self.manager(workspace)
        assert second.load(conversation_id)
        assert second.get_conversation_id() == conversation_id
        assert second.get_history() == history
        assert checkpoint in [c["id"] for c in second.list_checkpoints()]
        assert await second.rollback_to_checkpoint(checkpoint)

    async def test_system_prompt_is_first_and_sent_once(self, workspace: Path) -> None:
        client = PenguinClient()
        manager = self.manager(workspace, system_prompt="Be brief.", api_client=client)
        await manager.process_message("one")
        await manager.process_message("two")
        sent = client.requests[-1]
        assert sent[0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in sent].count("system") == 1
        assert sent[-1] == {"role": "user", "content": "two"}
        assert [m["content"] for m in sent[1:]] == ["one", "answer 1", "two"]

    async def test_add_message_returns_what_history_shows(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        message = manager.add_message("tool", "42 rows", metadata={"tool": "sql"})
        assert message.to_dict() == manager.get_history()[-1]
        assert (message.role, message.category, message.metadata) == (
            "tool",
            "SYSTEM_OUTPUT",
            {"tool": "sql"},
        )
        assert message.tokens > 0 and message.conversation_id == manager.get_conversation_id()

    # -- checkpoints, rollback, branches -------------------------------------------------
    async def test_checkpoint_is_visible_the_moment_the_call_returns(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        manager.add_message("user", "hello")
        checkpoint = await manager.create_manual_checkpoint("now", "described")
        listed = manager.list_checkpoints(limit=1)
        assert listed[0]["id"] == checkpoint
        assert {k: listed[0][k] for k in ("type", "name", "description", "auto")} == {
            "type": "manual",
            "name": "now",
            "description": "described",
            "auto": False,
        }
        assert set(listed[0]) >= {"id", "type", "created_at", "session_id", "message_count"}

    async def test_auto_checkpoints_follow_frequency_and_count_the_view(
        self, workspace: Path
    ) -> None:
        manager = self.manager(
            workspace, system_prompt="S", checkpoint_config=CheckpointConfig(frequency=2)
        )
        for text in ("a", "b", "c", "d", "e"):
            manager.add_message("user", text)
        manager.add_context("not eligible", source="notes.md")
        autos = manager.list_checkpoints(checkpoint_type="auto")
        # Eligible messages are dialog and tool ones; the system prompt and context are not.
        assert [c["message_count"] for c in autos] == [5, 3]

    async def test_rollback_restores_exactly_and_can_be_undone(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        await manager.process_message("first")
        checkpoint = await manager.create_manual_checkpoint()
        at_checkpoint = manager.get_history()
        usage_at_checkpoint = manager.get_token_usage()["current_total_tokens"]
        await manager.process_message("second")
        after = manager.get_history()
        conversation_id = manager.get_conversation_id()

        assert await manager.rollback_to_checkpoint(checkpoint)
        assert manager.get_conversation_id() == conversation_id
        assert manager.get_history() == at_checkpoint
        assert manager.get_token_usage()["current_total_tokens"] == usage_at_checkpoint

        undo = manager.list_checkpoints(checkpoint_type="rollback")[0]["id"]
        assert await manager.rollback_to_checkpoint(undo)
        assert manager.get_history() == after

    async def test_branches_never_leak_into_each_other(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        await manager.process_message("shared")
        checkpoint = await manager.create_manual_checkpoint()
        parent = manager.get_conversation_id()
        await manager.process_message("only in parent")
        parent_history = manager.get_history()

        branch = await manager.branch_from_checkpoint(checkpoint, name="alt", description="why")
        assert branch is not None and branch != parent
        (marker,) = manager.list_checkpoints(session_id=branch, checkpoint_type="branch")
        assert (marker["name"], marker["description"]) == ("alt", "why")
        assert manager.get_conversation_id() == branch
        await manager.process_message("only in branch")
        branch_texts = [m["content"] for m in manager.get_history()]
        assert "only in parent" not in branch_texts and "only in branch" in branch_texts

        assert manager.load(parent)
        assert manager.get_history() == parent_history
        titles = {c["id"]: c["title"] for c in manager.list_conversations()}
        assert titles[branch] == "alt"

    async def test_snapshots_restore_and_branch(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        manager.add_message("user", "before")
        snapshot = manager.create_snapshot(meta={"name": "snap", "tag": 1})
        assert snapshot
        at_snapshot = manager.get_history()
        manager.add_message("user", "after")
        assert manager.restore_snapshot(snapshot)
        assert manager.get_history() == at_snapshot
        branch = manager.branch_from_snapshot(snapshot, meta={"name": "from snap"})
        assert branch == manager.get_conversation_id()
        assert [m["content"] for m in manager.get_history()] == ["before"]

    async def test_retention_runs_by_itself_and_caps_auto_checkpoints(
        self, workspace: Path
    ) -> None:
        manager = self.manager(
            workspace, checkpoint_config=CheckpointConfig(max_auto_checkpoints=3)
        )
        manager.add_message("user", "m0")
        manual = await manager.create_manual_checkpoint("keep me")
        for index in range(1, 6):
            manager.add_message("user", f"m{index}")
        autos = manager.list_checkpoints(checkpoint_type=CheckpointType.AUTO)
        assert [c["message_count"] for c in autos] == [6, 5, 4]
        assert manual in [c["id"] for c in manager.list_checkpoints()]

    # -- listing and search ------------------------------------------------------------
    async def test_pagination_and_search_across_all_conversations(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        for index in range(5):
            manager.reset()
            manager.add_message("user", f"Topic {index}: the Quokka count is {index * 7}")
            manager.add_message("assistant", "A very long reply " * 5)
        listed = manager.list_conversations(limit=100)
        assert len(listed) == 5
        assert listed[0]["title"] == "Topic 4: the Quokka count is 28"
        pages = manager.list_conversations(limit=2) + manager.list_conversations(limit=2, offset=2)
        pages += manager.list_conversations(limit=2, offset=4)
        assert [c["id"] for c in pages] == [c["id"] for c in listed]
        assert {c["title"] for c in manager.list_conversations(search_term="quokka")} == {
            c["title"] for c in listed
        }
        assert len(manager.list_conversations(search_term="COUNT IS 14")) == 1
        assert manager.list_conversations(search_term="wombat") == []
        for row in listed:
            assert set(row) == {
                "id",
                "title",
                "created_at",
                "last_active",
                "message_count",
                "token_count",
            }

    async def test_search_finds_words_and_prefixes_in_any_message_of_a_conversation(
        self, workspace: Path
    ) -> None:
        manager = self.manager(workspace)
        manager.add_message("user", "Morning question")
        manager.add_message("assistant", "Le café est prêt, and the deployment finished.")
        wanted = manager.get_conversation_id()
        manager.reset()
        manager.add_message("user", "Something unrelated entirely")

        def found(term: str) -> list[str]:
            return [c["id"] for c in manager.list_conversations(search_term=term)]

        assert found("CAFE") == [wanted]  # case and diacritics do not matter
        assert found("deploy") == [wanted]  # a word prefix matches
        assert found("pret deploy") == [wanted]  # every word must appear
        assert found("deploy wombat") == []
        # Search syntax of either engine in user input is taken literally, never an error.
        for hostile in ['"', "a OR b", "cafe & !x", "(", "'", "\\", ":*", "NEAR(a b)", "-x", "*"]:
            assert isinstance(found(hostile), list)

    # -- sessions, cache, usage --------------------------------------------------------
    async def test_sessions_roll_over_with_one_marker_and_carried_pins(
        self, workspace: Path
    ) -> None:
        client = PenguinClient()
        manager = self.manager(
            workspace, system_prompt="Sys", max_messages_per_session=4, api_client=client
        )
        manager.add_context("facts", source="facts.md")
        for index in range(6):
            await manager.process_message(f"turn {index}")
        usage = manager.get_token_usage()
        assert len(usage["sessions"]) >= 3
        sent = client.requests[-1]
        markers = [m for m in sent if "continues this conversation" in str(m["content"])]
        assert len(markers) == 1
        # SYSTEM first (the prompt, then the one marker), then CONTEXT with its source.
        assert sent[0] == {"role": "system", "content": "Sys"}
        assert sent[1] == markers[0]
        assert sent[2] == {"role": "system", "content": "[Context from facts.md]\nfacts"}
        assert sent[-1] == {"role": "user", "content": "turn 5"}
        history = manager.get_history()
        assert (
            sum(1 for m in history if m["metadata"].get("session_transition"))
            == len(usage["sessions"]) - 1
        )
        assert usage["chain_total"] == sum(m["tokens"] for m in manager.get_history_rows())
        assert sum(usage["categories"].values()) == usage["current_total_tokens"]

    async def test_in_memory_cache_stays_bounded(self, workspace: Path) -> None:
        manager = self.manager(workspace, max_sessions_in_memory=2)
        for _ in range(5):
            manager.reset()
            manager.add_message("user", "hi")
        cache = manager.ledger.store.repository.cache
        assert cache is not None and len(cache.cache) <= 2

    async def test_token_usage_reflects_the_active_view(self, workspace: Path) -> None:
        manager = self.manager(workspace, model_config={"context_window": 1000})
        manager.add_message("user", "hello world")
        usage = manager.get_token_usage()
        assert usage["max_context_window_tokens"] == 850
        assert usage["current_total_tokens"] == sum(usage["categories"].values()) > 0
        assert usage["available_tokens"] == 850 - usage["current_total_tokens"]
        assert 0 < usage["percentage"] <= 100
        manager.reset()
        assert manager.get_token_usage()["current_total_tokens"] == 0

    # -- model calls -------------------------------------------------------------------
    async def test_streaming_with_plain_and_coroutine_callbacks(self, workspace: Path) -> None:
        manager = self.manager(workspace, api_client=PenguinClient())
        plain: list[str] = []
        assert await manager.process_message("a", streaming=True, stream_callback=plain.append) == (
            "answer 1"
        )
        awaited: list[str] = []

        async def collect(chunk: str) -> None:
            awaited.append(chunk)

        await manager.process_message("b", streaming=True, stream_callback=collect)
        assert "".join(plain) == "answer 1" and "".join(awaited) == "answer 2"
        answers = [m["content"] for m in manager.get_history() if m["role"] == "assistant"]
        assert answers == ["answer 1", "answer 2"]

    async def test_streaming_generator_records_the_whole_answer_once(self, workspace: Path) -> None:
        manager = self.manager(workspace)
        stream = await manager.process_message("stream me", streaming=True)
        assert not isinstance(stream, str)
        chunks = [chunk async for chunk in stream]
        assert len(chunks) > 1
        assistant = [m for m in manager.get_history() if m["role"] == "assistant"]
        assert [m["content"] for m in assistant] == ["".join(chunks)]

    async def test_failed_model_call_keeps_the_turn_and_takes_emergency_checkpoint(
        self, workspace: Path
    ) -> None:
        manager = self.manager(workspace, api_client=FailingClient())
        answer = await manager.process_message("are you there?")
        assert isinstance(answer, str) and answer.startswith("Error processing message:")
        assert [m["content"] for m in manager.get_history()] == ["are you there?"]
        emergency = manager.list_checkpoints(checkpoint_type="emergency")
        assert len(emergency) == 1

    async def test_context_files_and_images_reach_the_model(
        self, workspace: Path, tmp_path: Path
    ) -> None:
        client = PenguinClient()
        manager = self.manager(workspace, api_client=client)
        (workspace / "context").mkdir(parents=True, exist_ok=True)
        (workspace / "context" / "notes.md").write_text("The launch is on Friday.")
        image = tmp_path / "dot.png"
        Image.new("RGB", (4, 4), "red").save(image)
        await manager.process_message(
            "When is the launch?", image_path=str(image), context_files=["notes.md"]
        )
        sent = client.requests[-1]
        assert sent[0]["role"] == "system" and "The launch is on Friday." in sent[0]["content"]
        assert "notes.md" in sent[0]["content"]
        parts = sent[-1]["content"]
        assert parts[0] == {"type": "text", "text": "When is the launch?"}
        assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
        files = manager.list_context_files()
        assert [(f["path"], f["name"], f["location"]) for f in files] == [
            ("notes.md", "notes.md", "workspace")
        ]
        assert set(files[0]) == {"path", "name", "location", "size", "modified"}
        assert manager.load_context_file("missing.md") is False

    # -- the log and its projections ---------------------------------------------------
    async def test_rebuilt_projections_equal_incremental_ones(self, workspace: Path) -> None:
        manager = self.manager(workspace, max_messages_per_session=3)
        await manager.process_message("a")
        checkpoint = await manager.create_manual_checkpoint()
        await manager.process_message("b")
        await manager.rollback_to_checkpoint(checkpoint)
        await manager.branch_from_checkpoint(checkpoint)
        manager.create_snapshot(meta={"k": "v"})
        await manager.process_message("c")
        tables = manager.ledger.projections.readable_tables()
        assert {"conversations", "conversation_views", "checkpoints", "token_usage"} <= set(tables)
        before = manager.ledger.read.table_dump(tables)
        search_before = manager.list_conversations(search_term="a")
        assert manager.ledger.rebuild_projections() > 0
        assert manager.ledger.read.table_dump(tables) == before
        assert manager.list_conversations(search_term="a") == search_before
        assert manager.ledger.verify().ok

    # -- the context window (what the model is sent) ------------------------------------
    async def test_trims_leave_the_context_but_not_the_history(self, workspace: Path) -> None:
        client = PenguinClient()
        manager = self.manager(
            workspace, system_prompt="Sys", api_client=client, model_config={"context_window": 400}
        )
        for index in range(12):
            await manager.process_message(f"question {index}: " + "word " * 20)
        sent = client.requests[-1]
        history = manager.get_history()
        # The model saw the system prompt first and the newest question last, and less than
        # everything; the transcript still has every message.
        assert sent[0] == {"role": "system", "content": "Sys"}
        assert sent[-1]["content"].startswith("question 11:")
        assert len(sent) < len(history)
        assert len([m for m in history if m["role"] == "user"]) == 12
        usage = manager.get_token_usage()
        truncations = usage["truncations"]
        assert truncations["messages_removed"] > 0 and truncations["tokens_freed"] > 0
        assert truncations["total_truncations"] >= 1
        assert sum(truncations["by_category"].values()) == truncations["messages_removed"]
        assert usage["current_total_tokens"] <= usage["max_context_window_tokens"]
        calls = usage["model_calls"]
        assert len(calls) == 12 and all(c["prompt_tokens"] <= 340 for c in calls)
        assert calls[-1]["messages"] == len(sent)
        context = manager.ledger.context_at(manager.get_conversation_id())
        assert context["sent"][0]["id"] == history[0]["id"]
        assert context["left_out"] and all(m["reason"] for m in context["left_out"])
        assert {m["id"] for m in context["left_out"]}.isdisjoint(m["id"] for m in context["sent"])

    async def test_replaying_the_log_reproduces_every_recorded_context(
        self, workspace: Path
    ) -> None:
        manager = self.manager(
            workspace,
            system_prompt="Sys",
            model_config={"context_window": 500},
            max_messages_per_session=9,
        )
        manager.add_context("reference notes " * 10, source="notes.md")
        for index in range(10):
            await manager.process_message(f"turn {index} " + "text " * 15)
            if index == 4:
                checkpoint = await manager.create_manual_checkpoint()
        await manager.branch_from_checkpoint(checkpoint)
        for index in range(3):
            await manager.process_message(f"branch turn {index} " + "text " * 15)
        ledger = manager.ledger
        calls = 0
        for conversation in manager.list_conversations():
            for call in recorded_calls(ledger, conversation["id"]):
                replayed = ledger.context_at(call.stream_id, call.position)
                assert tuple(m["id"] for m in replayed["sent"]) == call.message_ids
                assert replayed["request_hash"] == call.request_hash
                calls += 1
        # 10 parent turns + 3 branch turns, the branch also seeing the parent's first 5.
        assert calls == 18

    async def test_a_message_larger_than_the_window_is_refused_before_anything_is_written(
        self, workspace: Path
    ) -> None:
        client = PenguinClient()
        manager = self.manager(workspace, api_client=client, model_config={"context_window": 200})
        await manager.process_message("small")
        before = manager.get_history()
        head = manager.ledger.store.conversation(UUID(manager.get_conversation_id())).version
        with pytest.raises(InvalidInput, match="cannot fit the model's usable window of 170"):
            await manager.process_message("huge " * 500)
        assert manager.get_history() == before
        assert (
            manager.ledger.store.conversation(
                UUID(manager.get_conversation_id()), fresh=True
            ).version
            == head
        )
        assert len(client.requests) == 1

    async def test_older_images_beyond_the_limit_become_placeholders(
        self, workspace: Path, tmp_path: Path
    ) -> None:
        client = PenguinClient()
        manager = self.manager(workspace, api_client=client, model_config={"model": "gpt-4o"})
        for index in range(7):
            image = tmp_path / f"shot{index}.png"
            Image.new("RGB", (64 + index, 64), "blue").save(image)
            await manager.process_message(f"look at {index}", image_path=str(image))
        sent = client.requests[-1]
        users = [m for m in sent if m["role"] == "user"]
        inlined = [p for m in users for p in m["content"] if p.get("type") == "image_url"]
        placeholders = [
            p["text"] for m in users for p in m["content"] if "image omitted" in p.get("text", "")
        ]
        assert len(inlined) == 5
        assert placeholders == [
            "[image omitted to save context: shot0.png]",
            "[image omitted to save context: shot1.png]",
        ]
        # The transcript keeps every image; the image's tokens follow OpenAI's tile formula.
        images = [
            p
            for m in manager.get_history()
            if isinstance(m["content"], list)
            for p in m["content"]
            if p["type"] == "image"
        ]
        assert len(images) == 7 and images[0]["tokens"] == 255 and images[0]["width"] == 64

    def test_a_window_too_small_for_the_system_prompt_is_refused(self, workspace: Path) -> None:
        with pytest.raises(InvalidInput, match="SYSTEM"):
            self.manager(
                workspace, system_prompt="rules " * 200, model_config={"context_window": 100}
            )
