"""The store contract every backend implements, and the editing rules they share.

A backend provides a handful of primitives: append (creating the conversation
when new), read, list, delete, per-conversation state, and ``_transact`` — read
one conversation, check its ``version``, apply a ``Change`` and bump the version,
all in one transaction. Every editing operation (edit, delete from N, swipes,
continue, title, branch) is written once here on top of them, as a pure function
of the conversation it read, so SQLite and Redis cannot disagree about what an
edit means.

Versions: a conversation's ``version`` is 1 when it is created and grows by one
with every change to it (appends included). An editing call given
``expected_version`` raises ``VersionConflict`` when the conversation has moved
on since the caller read it: two clients editing at once never interleave, the
later one learns it was stale (HTTP 409). The per-conversation *state* (memory
summary, lorebook timed effects, ...) is not part of the version: each owner
merges its own top-level key, so a background summary never makes a user's
edit stale.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

MessageStatus = Literal["complete", "interrupted", "error"]
ReplyOrder = Literal["natural", "list", "manual"]
REPLY_ORDERS: tuple[ReplyOrder, ...] = ("natural", "list", "manual")


def new_message_id() -> str:
    """A message id: random, unique in practice across conversations."""
    return uuid.uuid4().hex[:16]


# --- errors -------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of the errors an editing call raises (the routes map each to an HTTP status)."""


class ConversationNotFound(StoreError, LookupError):
    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation not found: {conversation_id}")
        self.conversation_id = conversation_id


class ConversationExists(StoreError):
    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation already exists: {conversation_id}")
        self.conversation_id = conversation_id


class MessageNotFound(StoreError, LookupError):
    """No message at that index (or with that id) in the conversation."""


class VersionConflict(StoreError):
    """The conversation changed since the caller read it."""

    def __init__(self, conversation_id: str, expected: int, actual: int) -> None:
        super().__init__(f"conversation {conversation_id} is at version {actual}, "
                         f"not {expected}: reload it and try again")
        self.conversation_id = conversation_id
        self.expected = expected
        self.actual = actual


class InvalidEdit(StoreError, ValueError):
    """An edit that makes no sense for this conversation (e.g. a swipe of a user message)."""


# --- records ------------------------------------------------------------------------------


@dataclass(slots=True)
class Swipe:
    """One alternative of an assistant message (a regenerated reply, an alternate greeting)."""

    content: str
    status: MessageStatus = "complete"
    created_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"content": self.content, "status": self.status, "created_at": self.created_at,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Swipe:
        return cls(d["content"], d.get("status", "complete"), d.get("created_at", 0.0),
                   d.get("meta") or {})


@dataclass(slots=True)
class StoredMessage:
    """One stored message. ``id`` is assigned by the store when empty.

    An assistant message with alternatives keeps all of them in ``swipes`` (the
    chosen one included, at ``swipe_index``); ``content``, ``status``, ``meta``
    and ``created_at`` are always those of the chosen one. A message never
    regenerated has no ``swipes``.
    """

    role: str
    content: str
    status: MessageStatus = "complete"
    created_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    swipes: list[Swipe] = field(default_factory=list)
    swipe_index: int = 0

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "role": self.role, "content": self.content,
                             "status": self.status, "created_at": self.created_at}
        if self.meta:
            d["meta"] = self.meta
        if self.role == "assistant":
            d["swipes"] = [s.content for s in self.swipes] or [self.content]
            d["swipe_index"] = self.swipe_index if self.swipes else 0
        return d

    def as_swipe(self) -> Swipe:
        return Swipe(self.content, self.status, self.created_at, dict(self.meta))

    def choose(self, swipes: list[Swipe], index: int) -> StoredMessage:
        """This message with ``swipes`` and ``swipes[index]`` as its content."""
        chosen = swipes[index]
        return replace(self, content=chosen.content, status=chosen.status,
                       created_at=chosen.created_at, meta=dict(chosen.meta),
                       swipes=swipes, swipe_index=index)

    def revised(self, **changes: Any) -> StoredMessage:
        """This message with new text, status or meta — its chosen swipe too, if it has
        swipes (an edit or a continuation changes the alternative shown, not the others)."""
        new = replace(self, **changes)
        if not self.swipes:
            return new
        swipes = list(self.swipes)
        swipes[self.swipe_index] = new.as_swipe()
        return new.choose(swipes, self.swipe_index)

    def to_json(self) -> dict[str, Any]:
        """The stored form (Redis keeps it as JSON; SQLite in columns)."""
        d: dict[str, Any] = {"id": self.id, "role": self.role, "content": self.content,
                             "status": self.status, "created_at": self.created_at,
                             "meta": self.meta}
        if self.swipes:
            d["swipes"] = [s.as_dict() for s in self.swipes]
            d["swipe_index"] = self.swipe_index
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredMessage:
        return cls(d["role"], d["content"], d["status"], d["created_at"], d.get("meta") or {},
                   d.get("id") or "", [Swipe.from_dict(s) for s in d.get("swipes") or ()],
                   int(d.get("swipe_index") or 0))


@dataclass(slots=True)
class Conversation:
    id: str
    character_id: str | None
    created_at: float
    updated_at: float
    messages: list[StoredMessage]
    version: int = 1
    #: Every character of a group chat, in list order; ``[character_id]`` otherwise.
    character_ids: list[str] = field(default_factory=list)
    reply_order: ReplyOrder = "natural"
    title: str | None = None
    #: ``{"conversation_id", "at"}`` when this conversation is a branch of another.
    branched_from: dict[str, Any] | None = None

    @property
    def is_group(self) -> bool:
        return len(self.character_ids) > 1


@dataclass(slots=True)
class ConversationSummary:
    """One row of ``list_conversations``."""

    id: str
    character_id: str | None
    character_ids: list[str]
    title: str | None
    created_at: float
    updated_at: float
    version: int
    message_count: int
    last_message: StoredMessage | None


@dataclass(slots=True)
class Change:
    """What one editing transaction does to a conversation, in this order:
    replace messages by index, drop every message from ``truncate`` on, append,
    set head fields (``title``, ``reply_order``, ``character_ids``, ``character_id``).
    The version is bumped once."""

    replace: dict[int, StoredMessage] = field(default_factory=dict)
    truncate: int | None = None
    append: list[StoredMessage] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)

    def apply(self, conv: Conversation, now: float) -> Conversation:
        """The conversation as it is after this change (what the backend wrote)."""
        messages = list(conv.messages)
        for index, message in self.replace.items():
            messages[index] = message
        if self.truncate is not None:
            del messages[self.truncate:]
        messages.extend(self.append)
        out = replace(conv, messages=messages, version=conv.version + 1, updated_at=now)
        for key, value in self.head.items():
            setattr(out, key, value)
        return out


def stamp(messages: Sequence[StoredMessage], now: float) -> list[StoredMessage]:
    """Messages ready to write: an id and a creation time each (given ones kept)."""
    return [m if m.id and m.created_at else
            replace(m, id=m.id or new_message_id(), created_at=m.created_at or now)
            for m in messages]


Edit = Callable[[Conversation], Change]


#: Parsed conversations kept in memory (``Store.get_conversation``): at most this many,
#: holding at most this many messages between them.
CACHE_SIZE = 256
CACHE_MESSAGES = 100_000


def snapshot(conv: Conversation) -> Conversation:
    """A copy whose lists a caller may change without touching the cached one."""
    return replace(conv, messages=list(conv.messages), character_ids=list(conv.character_ids))


class Store(ABC):
    """Conversations, their per-conversation state, and a tiny key/value area for server
    state (e.g. the active character)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, Conversation] = OrderedDict()
        self._cached_messages = 0
        #: ``store.cache_messages``: 0 keeps nothing (every read is a full one).
        self.cache_messages = CACHE_MESSAGES

    # --- settings -------------------------------------------------------------------------

    @abstractmethod
    async def get_setting(self, key: str) -> Any | None: ...

    async def get_settings(self, keys: Iterable[str]) -> dict[str, Any]:
        """Several settings at once (absent ones left out); backends make it one read."""
        out = {}
        for key in keys:
            value = await self.get_setting(key)
            if value is not None:
                out[key] = value
        return out

    @abstractmethod
    async def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value; ``None`` deletes the key."""

    # --- conversations ----------------------------------------------------------------------

    async def append_messages(
        self, conversation_id: str, messages: list[StoredMessage], *,
        character_id: str | None, opening: Sequence[StoredMessage] = (),
    ) -> int:
        """Append messages in one transaction, creating the conversation if new, and
        return its new version. ``opening`` (a greeting) is written before ``messages``
        only while the conversation has no messages (new, or emptied by an edit): of
        concurrent first turns, exactly one stores it."""
        now = time.time()
        written, opened = stamp(messages, now), stamp(opening, now)
        version, with_opening = await self._append(conversation_id, written,
                                                   character_id=character_id,
                                                   opening=opened, now=now)
        cached = self._cache.get(conversation_id)
        if cached is not None and cached.version == version - 1:
            added = [*opened, *written] if with_opening else written
            self._remember(replace(cached, messages=[*cached.messages, *added],
                                   version=version, updated_at=now))
        else:
            self._cache.pop(conversation_id, None)
        return version

    async def create_conversation(
        self, conversation: Conversation, *, state: dict[str, Any] | None = None,
    ) -> Conversation:
        """Create ``conversation`` with its messages (and ``state``) in one transaction;
        ``ConversationExists`` if the id is taken. Returns it as stored (ids, version 1)."""
        conv = fresh(conversation, time.time())
        await self._create(conv, state or {})
        self._remember(conv)
        return snapshot(conv)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        """The conversation as stored, or None. The result is a snapshot to read: do not
        change its messages in place (they may be shared with the store's cache).

        Recently used conversations are kept parsed in memory and read again only when
        their ``version`` moved (another process or instance wrote): a turn on a long
        conversation reads one number, not every message."""
        cached = self._cache.get(conversation_id)
        if cached is not None:
            version = await self._version(conversation_id)
            if version == cached.version:
                self._cache.move_to_end(conversation_id)
                return snapshot(cached)
        conv = await self._load(conversation_id)
        if conv is None:
            self._cache.pop(conversation_id, None)
            return None
        # Kept only if nothing was written while it was read (a read in two steps may see
        # messages newer than its version; versions only grow, so this catches it).
        if await self._version(conversation_id) == conv.version:
            self._remember(conv)
        return snapshot(conv)

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation with its state; False when there was none."""
        self._cache.pop(conversation_id, None)
        return await self._delete(conversation_id)

    def _cached(self, conversation_id: str, version: int | None) -> Conversation | None:
        """The cached conversation if it is at ``version`` (for a transaction that read the
        version under its lock: then the cache is the conversation as stored)."""
        cached = self._cache.get(conversation_id)
        return cached if cached is not None and cached.version == version else None

    def _remember(self, conv: Conversation) -> None:
        cache = self._cache
        old = cache.pop(conv.id, None)
        self._cached_messages += len(conv.messages) - (len(old.messages) if old else 0)
        cache[conv.id] = conv
        while cache and (self._cached_messages > self.cache_messages
                         or len(cache) > CACHE_SIZE):
            _, dropped = cache.popitem(last=False)
            self._cached_messages -= len(dropped.messages)

    # --- the backend primitives --------------------------------------------------------

    @abstractmethod
    async def _append(self, conversation_id: str, messages: list[StoredMessage], *,
                      character_id: str | None, opening: list[StoredMessage], now: float
                      ) -> tuple[int, bool]:
        """Write ``append_messages`` (messages stamped); return the new version and
        whether the opening was written."""

    @abstractmethod
    async def _create(self, conversation: Conversation, state: dict[str, Any]) -> None:
        """Write a whole new conversation (``ConversationExists`` if the id is taken)."""

    @abstractmethod
    async def _load(self, conversation_id: str) -> Conversation | None:
        """Read a conversation with all its messages."""

    @abstractmethod
    async def _version(self, conversation_id: str) -> int | None:
        """A conversation's version (None: no such conversation); one small read."""

    @abstractmethod
    async def _delete(self, conversation_id: str) -> bool: ...

    @abstractmethod
    async def list_conversations(
        self, *, character_id: str | None = None, limit: int = 50, offset: int = 0,
    ) -> list[ConversationSummary]:
        """Newest first (``updated_at``); ``character_id`` keeps those it takes part in."""

    @abstractmethod
    async def get_state(self, conversation_id: str) -> dict[str, Any]:
        """The conversation's JSON state (``{}`` when none): each owner reads its own
        top-level key (``"summary"``, ``"lorebook_timed"``, ``"authors_note"``)."""

    @abstractmethod
    async def update_state(self, conversation_id: str, changes: dict[str, Any]) -> None:
        """Shallow-merge ``changes`` into the state in one transaction; a ``None`` value
        deletes that key. State may be kept for a conversation whose messages are not
        stored (client-managed history); deleting the conversation deletes it."""

    @abstractmethod
    async def _transact(self, conversation_id: str, edit: Edit,
                        expected_version: int | None) -> Conversation:
        """Read the conversation, check ``expected_version`` (``VersionConflict``), run
        ``edit`` on it (it may raise a ``StoreError``), write the ``Change`` and bump the
        version, in one transaction. ``ConversationNotFound`` when it does not exist.
        Returns the conversation as written."""

    @abstractmethod
    async def _branch(self, conversation_id: str, new_id: str, at: int,
                      expected_version: int | None) -> Conversation:
        """Copy messages ``0..at`` and the state into a new conversation, in one
        transaction (``ConversationExists`` if ``new_id`` is taken)."""

    @abstractmethod
    async def close(self) -> None: ...

    # --- editing, written once for every backend -------------------------------------------

    async def edit_message(self, conversation_id: str, index: int, content: str, *,
                           expected_version: int | None) -> Conversation:
        """Replace a message's text (the chosen swipe's, for an assistant message)."""

        def edit(conv: Conversation) -> Change:
            m = _at(conv, index)
            return Change(replace={index: m.revised(
                content=content, status="complete" if m.status == "error" else m.status,
                meta={**m.meta, "edited": True})})

        return await self._edited(conversation_id, edit, expected_version)

    async def add_message(self, conversation_id: str, message: StoredMessage, *,
                          expected_version: int | None) -> Conversation:
        """Append one message to an existing conversation (``ConversationNotFound`` else)."""
        return await self._edited(conversation_id, lambda conv: Change(append=[message]),
                                  expected_version)

    async def delete_messages(self, conversation_id: str, start: int, *,
                              expected_version: int | None) -> Conversation:
        """Delete the message at ``start`` and every one after it."""

        def edit(conv: Conversation) -> Change:
            _at(conv, start)
            return Change(truncate=start)

        return await self._edited(conversation_id, edit, expected_version)

    async def choose_swipe(self, conversation_id: str, index: int, swipe_index: int, *,
                           expected_version: int | None) -> Conversation:
        """Make ``swipes[swipe_index]`` the content of the assistant message at ``index``."""

        def edit(conv: Conversation) -> Change:
            m = _at(conv, index)
            if m.role != "assistant":
                raise InvalidEdit(f"message {index} is a {m.role} message: only assistant "
                                  "messages have swipes")
            swipes = m.swipes or [m.as_swipe()]
            if not 0 <= swipe_index < len(swipes):
                raise MessageNotFound(f"message {index} has {len(swipes)} swipe(s): no "
                                      f"swipe {swipe_index}")
            return Change(replace={index: m.choose(swipes, swipe_index)})

        return await self._edited(conversation_id, edit, expected_version)

    async def add_swipe(self, conversation_id: str, message_id: str, reply: StoredMessage, *,
                        expected_version: int | None = None) -> Conversation:
        """A regenerated reply becomes the chosen swipe of message ``message_id``. A
        failed or empty previous reply is replaced rather than kept as an alternative."""

        def edit(conv: Conversation) -> Change:
            index, m = _by_id(conv, message_id)
            swipes = [s for s in (m.swipes or [m.as_swipe()])
                      if s.status != "error" and s.content]
            swipes.append(Swipe(reply.content, reply.status, reply.created_at or conv.updated_at,
                                dict(reply.meta)))
            return Change(replace={index: m.choose(swipes, len(swipes) - 1)})

        return await self._edited(conversation_id, edit, expected_version)

    async def extend_message(self, conversation_id: str, message_id: str, text: str, *,
                             status: MessageStatus, meta: dict[str, Any] | None = None,
                             expected_version: int | None = None) -> Conversation:
        """Append ``text`` to an (interrupted) assistant message: what ``continue`` wrote."""

        def edit(conv: Conversation) -> Change:
            index, m = _by_id(conv, message_id)
            return Change(replace={index: m.revised(
                content=m.content + text, status=status, meta={**m.meta, **(meta or {})})})

        return await self._edited(conversation_id, edit, expected_version)

    async def update_conversation(self, conversation_id: str, *,
                                  expected_version: int | None,
                                  **head: Any) -> Conversation:
        """Set head fields: ``title``, ``reply_order``, ``character_ids``."""
        unknown = set(head) - {"title", "reply_order", "character_ids"}
        if unknown:
            raise TypeError(f"not a conversation field: {sorted(unknown)}")
        if "character_ids" in head and not head["character_ids"]:
            raise InvalidEdit("a conversation needs at least one character")

        def edit(conv: Conversation) -> Change:
            change = Change(head=dict(head))
            if "character_ids" in head:
                change.head["character_id"] = head["character_ids"][0]
            return change

        return await self._edited(conversation_id, edit, expected_version)

    async def branch(self, conversation_id: str, at: int, *, new_id: str | None = None,
                     expected_version: int | None = None) -> Conversation:
        """A new conversation holding messages ``0..at`` (inclusive, as SillyTavern's
        "branch here") and a copy of the state (lorebook timed effects included)."""
        if at < 0:
            raise MessageNotFound(f"no message {at}")
        made = await self._branch(conversation_id, new_id or uuid.uuid4().hex, at,
                                  expected_version)
        self._remember(made)
        return snapshot(made)

    async def _edited(self, conversation_id: str, edit: Edit,
                      expected_version: int | None) -> Conversation:
        """``_transact``, and the cache keeps what it wrote."""
        try:
            after = await self._transact(conversation_id, edit, expected_version)
        except ConversationNotFound:
            self._cache.pop(conversation_id, None)
            raise
        self._remember(after)
        return snapshot(after)


def _at(conv: Conversation, index: int) -> StoredMessage:
    if not 0 <= index < len(conv.messages):
        raise MessageNotFound(f"conversation {conv.id} has {len(conv.messages)} message(s): "
                              f"no message {index}")
    return conv.messages[index]


def _by_id(conv: Conversation, message_id: str) -> tuple[int, StoredMessage]:
    for index, m in enumerate(conv.messages):
        if m.id == message_id:
            return index, m
    raise MessageNotFound(f"message {message_id} is no longer in conversation {conv.id}")


def check_version(conv: Conversation, expected: int | None) -> None:
    if expected is not None and expected != conv.version:
        raise VersionConflict(conv.id, expected, conv.version)


def fresh(conversation: Conversation, now: float) -> Conversation:
    """A conversation as ``create_conversation`` writes it: version 1, stamped messages."""
    ids = conversation.character_ids or (
        [conversation.character_id] if conversation.character_id else [])
    return replace(conversation, created_at=conversation.created_at or now, updated_at=now,
                   version=1, character_ids=list(ids),
                   character_id=conversation.character_id or (ids[0] if ids else None),
                   messages=stamp(conversation.messages, now))


def branch_of(source: Conversation, new_id: str, at: int, now: float) -> Conversation:
    """The branch ``Store.branch`` creates: fresh message ids, version 1."""
    _at(source, at)
    messages = [replace(m, id=new_message_id(), meta=dict(m.meta))
                for m in source.messages[:at + 1]]
    return replace(source, id=new_id, created_at=now, updated_at=now, messages=messages,
                   version=1, branched_from={"conversation_id": source.id, "at": at})
