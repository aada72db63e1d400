"""The store interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

MessageStatus = Literal["complete", "interrupted", "error"]


@dataclass(slots=True)
class StoredMessage:
    role: str
    content: str
    status: MessageStatus = "complete"
    created_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content, "status": self.status,
                             "created_at": self.created_at}
        if self.meta:
            d["meta"] = self.meta
        return d


@dataclass(slots=True)
class Conversation:
    id: str
    character_id: str | None
    created_at: float
    updated_at: float
    messages: list[StoredMessage]


class Store(ABC):
    """Conversations plus a tiny key/value area for server state (e.g. the active character)."""

    @abstractmethod
    async def get_setting(self, key: str) -> Any | None: ...

    @abstractmethod
    async def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value; ``None`` deletes the key."""

    @abstractmethod
    async def append_messages(
        self, conversation_id: str, messages: list[StoredMessage], *, character_id: str | None
    ) -> None:
        """Append messages in one transaction, creating the conversation if new."""

    @abstractmethod
    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    @abstractmethod
    async def delete_conversation(self, conversation_id: str) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...
