"""Stored-event mapping: pydantic turns events into JSON-ready dicts and back, orjson
encodes them (after the eventsourcing library's 'aggregate 7' example).

The stream id and position are stored in their own columns, so they are left out of the
payload and put back on read; the hash still covers them (see domain.hashing)."""

from __future__ import annotations

from typing import Any, cast

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import TopicError, get_topic, resolve_topic
from pydantic import BaseModel

from domain.errors import StoreError
from domain.events import ConversationEvent


class OrjsonTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        return orjson.loads(data)


def event_document(state: bytes, originator_id: Any, originator_version: int) -> dict[str, Any]:
    """The JSON document of a stored event, as it was hashed and as pydantic reads it."""
    document: dict[str, Any] = orjson.loads(state)
    document["originator_id"] = str(originator_id)
    document["originator_version"] = originator_version
    return document


class PydanticMapper(Mapper[Any]):
    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        model = cast(BaseModel, domain_event)
        if isinstance(model, ConversationEvent):
            state = model.document()
            state["hash"] = model.hash
        else:
            state = model.model_dump(mode="json")
        del state["originator_id"], state["originator_version"]
        class_version = getattr(type(model), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=self.transcoder.encode(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        try:
            cls = resolve_topic(stored_event.topic)
            document = event_document(
                stored_event.state, stored_event.originator_id, stored_event.originator_version
            )
            from_version = document.pop("class_version", 1)
            while from_version < getattr(cls, "class_version", 1):
                getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(document)
                from_version += 1
            return cast(DomainEventProtocol[Any], cls.model_validate(document))
        except (TopicError, ValueError, AttributeError) as error:
            # ValidationError and orjson's JSONDecodeError are ValueErrors.
            raise StoreError(
                f"The stored event at position {stored_event.originator_version} of "
                f"conversation {stored_event.originator_id} cannot be read ({error}). "
                "The store may have been altered: run `chatledger verify`."
            ) from error
