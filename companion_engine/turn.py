"""The per-turn context object every stage receives, and what a finished turn produced.

Everything one stage tells another travels in a typed field of ``Turn``:
``user_entry`` (the user's message, placed once), ``greeting``, ``history_info``,
``lorebook_info``, ``expressions``, ``voice``, ``llm_params``, ``stop()`` and
``result``. ``stash`` is a plugin's private scratch space, never a contract.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.config import Profile
    from companion_engine.engine import Engine

Role = Literal["system", "user", "assistant"]
TurnStatus = Literal["complete", "interrupted", "error"]


class Message(TypedDict):
    """One chat message as LiteLLM and the API see it."""

    role: Role
    content: str


@dataclass(slots=True)
class LoreActivation:
    """One lorebook entry that fired this turn (shown by ``/api/prompt/preview``)."""

    id: int | str | None
    comment: str
    position: str
    order: int
    source: str = "character"
    depth: int | None = None
    role: str | None = None
    #: The key that activated it (or ``constant`` / ``@@activate``).
    matched: str | None = None
    tokens: int = 0


@dataclass(slots=True)
class LoreDrop:
    """A lorebook entry that would have fired but the token budget left out (preview)."""

    id: int | str | None
    comment: str
    position: str
    order: int
    source: str = "character"
    #: Tokens it would have taken (None when the scan stopped before counting it).
    tokens: int | None = None
    #: ``over_budget`` (it did not fit) or ``scan_stopped`` (not tried after an overflow).
    reason: str = "over_budget"


@dataclass(slots=True)
class HistoryInfo:
    """What the history builder kept of the conversation (``/api/prompt/preview``)."""

    kept: int
    dropped: int
    tokens: int
    max_tokens: int
    #: The conversation as placed: the kept messages and the user's, the same objects
    #: as in ``turn.messages`` (stages after ``history`` find the chat by identity).
    chat: list[Message] = field(default_factory=list)
    #: Example dialogue messages left out so the history had room.
    examples_dropped: int = 0


@dataclass(slots=True)
class LorebookInfo:
    """Totals of one turn's lorebook scan (``/api/prompt/preview``)."""

    entries: int = 0
    activated: int = 0
    tokens: int = 0
    token_budget: int | None = None
    overflowed: bool = False
    #: What the budget left out, in the order the scan met it.
    dropped: list[LoreDrop] = field(default_factory=list)
    passes: int = 0
    tokenizer: str = ""
    warnings: list[str] = field(default_factory=list)
    #: The conversation's timed effects after this turn (sticky / cooldown), when they
    #: changed; stored once the turn completes (``lorebook_timed`` in its state).
    timed_state: dict[str, Any] | None = None


@dataclass(slots=True)
class Recollection:
    """A past message the ``memory`` stage put in the prompt (``/api/prompt/preview``)."""

    conversation_id: str
    message_id: str
    role: str
    content: str
    created_at: float
    #: ``fts`` (full-text, BM25) or ``semantic`` (embedding similarity).
    source: str
    #: BM25 (lower is better) or cosine distance (lower is closer).
    score: float
    tokens: int = 0


@dataclass(slots=True)
class MemoryInfo:
    """What the ``memory`` stage contributed to this turn's prompt, and why."""

    #: The running summary placed in the prompt (None: none placed; ``notes`` says why).
    summary: str | None = None
    #: How many of the oldest history messages the stored summary covers.
    summary_covers: int = 0
    #: History messages outside the prompt that the summary does not cover yet; the
    #: summary is brought up to date after the turn once they reach the ``batch`` size.
    summary_pending: int = 0
    #: Past messages recalled for this turn, in the order placed.
    recalled: list[Recollection] = field(default_factory=list)
    #: The words the recall searched for.
    query: list[str] = field(default_factory=list)
    #: Messages found, and of them those left out because the prompt already holds them.
    found: int = 0
    skipped_in_prompt: int = 0
    recall_tokens: int = 0
    recall_budget: int = 0
    #: Why something did not happen (``recall: the Redis store has no message index``).
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Span:
    """One timed step of a turn (``time.perf_counter()`` seconds), for observers.

    ``name``: ``prompt`` (all prompt stages), ``prompt_stage`` (one; attributes
    ``stage``, ``kind``), ``llm`` (open to last delta; ``model``) or ``synthesis``
    (one sentence; ``backend``, ``index``, ``chars``). Metrics and tracing read them
    in ``turn_completed``; nothing on the token path waits for an observer.
    """

    name: str
    start: float
    end: float
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class TurnResult:
    """How a turn ended; ``turn.result`` once the runner is done (``turn_completed`` sees it)."""

    status: TurnStatus = "complete"
    content: str = ""
    usage: dict[str, Any] | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    #: ``{type, provider, error}`` when ``status`` is ``error``.
    error: dict[str, Any] | None = None
    #: ``stop``, ``length``, a stage's ``turn.stop(reason)``, ... (None if unknown).
    finish_reason: str | None = None
    #: Text pieces the client received as ``content`` events.
    chunk_count: int = 0


@dataclass
class Turn:
    """Everything one chat turn knows, passed to every stage.

    One stage instance serves many turns at once: per-turn state belongs here
    (or in a generator's local variables), never on the stage.
    """

    profile: Profile
    user_message: str
    character: Character | None = None
    user_name: str = "User"
    #: Earlier messages of the conversation, oldest first (the new message not included).
    history: list[Message] = field(default_factory=list)
    #: The prompt being built by the ``prompt:`` stages.
    messages: list[Message] = field(default_factory=list)
    conversation_id: str | None = None
    model: str = ""
    engine: Engine | None = None
    #: Entries the lorebook injectors activated, in prompt order.
    lore: list[LoreActivation] = field(default_factory=list)
    #: Text a prompt builder wants placed at a named position (``before_char``,
    #: ``after_char``, ``before_examples``, ...); filled by lorebook injectors.
    slots: dict[str, list[str]] = field(default_factory=dict)
    #: Messages to insert into the history at a depth: (depth, role, content).
    depth_injections: list[tuple[int, Role, str]] = field(default_factory=list)
    #: The greeting that opens this conversation, when the turn starts one.
    greeting: str | None = None
    #: Which greeting a new conversation opens with: 0 = ``first_mes``, n = alternate n.
    greeting_index: int = 0
    #: Set by the history builder.
    history_info: HistoryInfo | None = None
    #: Set by the lorebook injector.
    lorebook_info: LorebookInfo | None = None
    #: Set by the ``memory`` stage.
    memory_info: MemoryInfo | None = None
    #: The main system prompt message, once ``system_prompt`` placed it (an anchor for
    #: what goes before or after it: memory, the Author's Note).
    main_prompt: Message | None = None
    #: Example dialogue blocks placed in ``messages`` that may give up their room to the
    #: history (the same objects), in prompt order.
    examples: list[list[Message]] = field(default_factory=list)
    #: The voice the client asked for (None: the backend's configured voice).
    voice: str | None = None
    #: Audio format the client asked for (``wav``, ``pcm16``, ``opus``, ``mp3``; None:
    #: the profile's ``speech.audio_format``).
    audio_format: str | None = None
    #: Whether the client wants audio in parts within a sentence (None: the profile's).
    chunked_audio: bool | None = None
    #: Speaking-rate multiplier the client asked for (1.0 = the voice's own pace; None:
    #: the profile's); backends that can honour it do.
    speed: float | None = None
    #: Per-turn overrides of the profile's ``llm`` settings (temperature, max_tokens, ...).
    llm_params: dict[str, Any] = field(default_factory=dict)
    #: Expression tags per sentence index (``[joy]`` -> ``"joy"``), found by the cleaners.
    expressions: dict[int, list[str]] = field(default_factory=dict)
    #: Why the reply ended early, once a stage called ``stop()``.
    finish_reason: str | None = None
    #: How the turn ended; set before ``turn_completed`` runs.
    result: TurnResult | None = None
    #: A plugin's private per-turn scratch space (use a key named after your stage).
    stash: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.perf_counter)
    #: Timed steps of this turn (prompt stages, LLM, each synthesis), in the order they ended.
    spans: list[Span] = field(default_factory=list)
    #: When the user wrote the message before this one (epoch seconds), for
    #: ``{{idle_duration}}``; None when unknown (client-managed history).
    last_user_at: float | None = None
    #: Random numbers of this turn's prompt (``{{random}}``, ``{{roll}}``); created on
    #: first use, seeded when the turn's LLM settings carry a ``seed``.
    rng: random.Random | None = None
    #: ``{{pick}}``'s seed; None: the hash of ``conversation_id`` (a branch keeps its
    #: origin's).
    chat_id_hash: int | None = None
    #: The user's message of this turn as one message object: a history builder places
    #: exactly this object; if no stage does, it is appended last.
    user_entry: Message = field(init=False)

    def __post_init__(self) -> None:
        self.user_entry = {"role": "user", "content": self.user_message}

    @property
    def char_name(self) -> str:
        """The name ``{{char}}`` expands to."""
        if self.character is None:
            return "Assistant"
        return self.character.display_name

    @property
    def user_index(self) -> int | None:
        """Where ``user_entry`` sits in ``messages`` (None until a stage placed it)."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i] is self.user_entry:
                return i
        return None

    def record(self, name: str, start: float, **attributes: Any) -> None:
        """Note a step that began at ``start`` (``perf_counter``) and ends now."""
        self.spans.append(Span(name, start, time.perf_counter(), attributes))

    def stop(self, reason: str) -> None:
        """End the reply after the current piece: the LLM request is closed and
        ``done.finish_reason`` is ``reason``. The first call wins."""
        if self.finish_reason is None:
            self.finish_reason = reason

    @property
    def stopped(self) -> bool:
        return self.finish_reason is not None
