"""The ``memory`` prompt stage: the running summary and recalled past messages.

It runs after ``history`` (it needs to know what the history kept and dropped):

- *summary*: the stored running summary of the messages that fell out of the
  history budget, placed when some did; brought up to date after the turn, in
  the background (``companion_engine.memory.summary``);
- *recall*: past messages of the same character (all its conversations, or this
  one) that share words with the new message, found by the SQLite store's
  full-text index (FTS5, BM25), within a token budget, never one the prompt
  already holds.

What it placed, and why not more, is ``turn.memory_info`` (shown by
``/api/prompt/preview``). See ``docs/memory.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from loguru import logger
from pydantic import Field, field_validator, model_validator

from companion_engine import hookimpl
from companion_engine.memory import MessageIndex, RecallHit, open_index, query_terms
from companion_engine.memory.summary import DEFAULT_PROMPT, STATE_KEY, SummaryJob, covered
from companion_engine.memory.summary import summarizer as engine_summarizer
from companion_engine.memory.vectors import SemanticUnavailable, VectorIndex
from companion_engine.prompting import expand
from companion_engine.stages import PromptBuilder, StageOptions
from companion_engine.tokens import get_counter
from companion_engine.turn import MemoryInfo, Message, Recollection, Role, Turn

Position = Literal["before_main", "after_main", "at_depth"]


class Placement(StageOptions):
    #: ``after_main``: right after the main system prompt (SillyTavern's "after main
    #: prompt / story string"); ``before_main``; ``at_depth``: in the chat, ``depth``
    #: messages from its end, as ``role``.
    position: Position = "after_main"
    depth: int = Field(default=4, ge=0, le=1000)
    role: Role = "system"


class SummaryOptions(Placement):
    enabled: bool = True
    #: The model that writes the summary (LiteLLM string); None: the turn's model.
    model: str | None = None
    #: ``api_base`` for ``model`` (None: the profile's).
    api_base: str | None = None
    #: The instruction; ``{{summary}}`` (so far), ``{{messages}}`` (to add), ``{{words}}``
    #: and the usual macros are filled in.
    prompt: str = DEFAULT_PROMPT
    max_words: int = Field(default=200, ge=10, le=5000)
    temperature: float = Field(default=0.3, ge=0, le=2)
    #: Update once this many messages out of the history are not summarised yet.
    batch: int = Field(default=2, ge=1, le=1000)
    #: ...and the conversation has been quiet this long (seconds): a turn that comes
    #: sooner replaces the pending update, so rapid messages cost one summary.
    delay_s: float = Field(default=3.0, ge=0, le=3600)
    #: How the summary is put in the prompt.
    template: str = "[Summary of the conversation so far: {{summary}}]"


class RecallOptions(Placement):
    enabled: bool = True
    #: ``character``: every conversation with this character; ``conversation``: this one.
    scope: Literal["character", "conversation"] = "character"
    #: Tokens the recalled messages may take (template included).
    max_tokens: int = Field(default=300, ge=1, le=100_000)
    #: Messages at most.
    limit: int = Field(default=5, ge=1, le=100)
    #: The newest messages the search words come from (1: the user's message only).
    query_messages: int = Field(default=2, ge=1, le=20)
    template: str = "[{{char}} remembers from earlier conversations:\n{{memories}}]"
    #: One recalled message; ``{{name}}``, ``{{text}}``, ``{{when}}`` (its date).
    line: str = "{{name}}: {{text}}"
    #: ``fts``: full-text (BM25); ``semantic``: embeddings (``embedding_model``);
    #: ``hybrid``: both, merged by reciprocal rank.
    mode: Literal["fts", "semantic", "hybrid"] = "fts"
    #: A LiteLLM embedding model (``openai/text-embedding-3-small``,
    #: ``ollama/nomic-embed-text``, ...), for ``semantic`` and ``hybrid``.
    embedding_model: str | None = None
    embedding_api_base: str | None = None
    embedding_api_key: str | None = None

    @model_validator(mode="after")
    def _needs_model(self) -> RecallOptions:
        if self.mode != "fts" and not self.embedding_model:
            raise ValueError(f"recall mode {self.mode!r} needs embedding_model")
        return self


def _enabled_shorthand(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


class MemoryStage(PromptBuilder):
    """Long-term memory: the running summary and recalled past messages."""

    name: ClassVar[str] = "memory"
    description: ClassVar[str] = ("running summary of what fell out of the history, and "
                                  "past messages recalled by full-text search")

    class Options(StageOptions):
        summary: SummaryOptions = Field(default_factory=SummaryOptions)
        recall: RecallOptions = Field(default_factory=RecallOptions)

        _shorthand = field_validator("summary", "recall", mode="before")(_enabled_shorthand)

    def __init__(self, options: StageOptions | None = None) -> None:
        super().__init__(options)
        self.index: MessageIndex | None = None
        self.vectors: VectorIndex | None = None
        self.vector_note = ""
        self.store_kind = ""
        self._engine: Any = None

    @property
    def opts(self) -> MemoryStage.Options:
        assert isinstance(self.options, MemoryStage.Options)
        return self.options

    async def setup(self, engine: Any) -> None:
        store = engine.store
        self.store_kind = type(store).__name__
        if self.opts.recall.enabled:
            self.index = open_index(store)
            if self.index is None:
                logger.warning("memory: the {} has no message index: recall is off (summary "
                               "works); use the SQLite store for recall", self.store_kind)
            else:
                await self.index.ensure()
                await self.index.open()
        r = self.opts.recall
        if r.enabled and r.mode != "fts":
            await self._open_vectors(engine)

    async def _open_vectors(self, engine: Any) -> None:
        r = self.opts.recall
        assert r.embedding_model is not None
        if self.index is None:
            self.vector_note = f"recall: the {self.store_kind} keeps no vectors"
            return
        vectors = VectorIndex(self.index.store, r.embedding_model, r.embedding_api_base,
                              r.embedding_api_key)
        try:
            await vectors.open()
        except SemanticUnavailable as exc:
            self.vector_note = f"recall: semantic recall is off: {exc}"
            logger.warning("memory: {}", self.vector_note)
            return
        self.vectors = vectors
        self._engine = engine
        engine.stash.setdefault("memory.vectors", set()).add(vectors)
        vectors.fill_later()

    async def aclose(self) -> None:
        if self.index is not None:
            await self.index.aclose()
        if self.vectors is not None:
            if self._engine is not None:
                self._engine.stash.get("memory.vectors", set()).discard(self.vectors)
            await self.vectors.aclose()
            self.vectors = None

    async def build(self, turn: Turn) -> None:
        info = turn.memory_info = MemoryInfo()
        history = turn.history_info
        if history is None:
            info.notes.append("memory: no history builder ran before it; place `memory` "
                              "after `history` in the profile")
        chat = history.chat if history is not None else [turn.user_entry]
        dropped = history.dropped if history is not None else 0
        placed: list[tuple[Placement, str]] = []
        if self.opts.summary.enabled:
            text = await self._summary(turn, info, dropped)
            if text:
                placed.append((self.opts.summary, text))
        if self.opts.recall.enabled:
            text = await self._recall(turn, info, chat)
            if text:
                placed.append((self.opts.recall, text))
        for where, text in placed:
            place(turn, chat, where, text)

    # --- summary ----------------------------------------------------------------------------

    async def _summary(self, turn: Turn, info: MemoryInfo, dropped: int) -> str | None:
        o = self.opts.summary
        if turn.engine is None or not turn.conversation_id:
            info.notes.append("summary: no conversation id, nothing stored to summarise")
            return None
        state = await turn.engine.store.get_state(turn.conversation_id)
        stored = state.get(STATE_KEY)
        covers = covered(stored, turn.history)
        info.summary_covers = covers
        info.summary_pending = max(0, dropped - covers)
        if stored and not covers:
            info.notes.append("summary: the stored summary no longer matches the conversation "
                              "(edited or cut); it is rewritten after the turn")
        if not covers:
            return None
        if dropped == 0:
            info.notes.append("summary: every message fits the history; summary not placed")
            return None
        assert isinstance(stored, dict)
        info.summary = stored["text"]
        return expand(turn, o.template.replace("{{summary}}", stored["text"]))

    # --- recall -----------------------------------------------------------------------------

    async def _recall(self, turn: Turn, info: MemoryInfo, chat: list[Message]) -> str | None:
        o = self.opts.recall
        info.recall_budget = o.max_tokens
        if self.index is None:
            info.notes.append(f"recall: the {self.store_kind or 'store'} has no message index"
                              if self.store_kind else "recall: no store")
            return None
        recent = [m["content"] for m in chat[-o.query_messages:]]
        info.query = query_terms(" ".join(reversed(recent)))
        if not info.query:
            info.notes.append("recall: the message has no words to search for")
            return None
        character_id = turn.character.id if turn.character is not None else None
        hits = await self._search(turn, info, " ".join(reversed(recent)), character_id)
        info.found = len(hits)
        in_prompt = {_norm(m["content"]) for m in chat}
        if turn.greeting:
            in_prompt.add(_norm(turn.greeting))
        counter = await get_counter(turn.model or turn.profile.llm.model)
        frame = counter.count_message(expand(turn, o.template.replace("{{memories}}", "")))
        used = frame
        chosen: list[tuple[Any, str, int]] = []
        for hit in hits:
            key = _norm(hit.content)
            if key in in_prompt:
                info.skipped_in_prompt += 1
                continue
            line = self._line(turn, hit)
            cost = counter.count(line) + 1
            if used + cost > o.max_tokens:
                continue
            in_prompt.add(key)  # the same text twice is recalled once
            used += cost
            chosen.append((hit, line, cost))
            if len(chosen) >= o.limit:
                break
        if not chosen:
            if hits:
                info.notes.append("recall: every match is already in the prompt or over "
                                  "the budget")
            return None
        chosen.sort(key=lambda c: (c[0].created_at, c[0].rowid))
        info.recall_tokens = used
        info.recalled = [Recollection(h.conversation_id, h.message_id, h.role, h.content,
                                      h.created_at, h.source, h.score, cost)
                         for h, _, cost in chosen]
        return expand(turn, o.template.replace("{{memories}}",
                                               "\n".join(line for _, line, _ in chosen)))

    async def _search(self, turn: Turn, info: MemoryInfo, text: str,
                      character_id: str | None) -> list[RecallHit]:
        o = self.opts.recall
        assert self.index is not None
        where = {"scope": o.scope, "character_id": character_id,
                 "conversation_id": turn.conversation_id, "limit": o.limit * 4}
        fts = await self.index.search(info.query, **where) if o.mode != "semantic" else []
        if o.mode == "fts":
            return fts
        if self.vectors is None:
            info.notes.append(self.vector_note or "recall: semantic recall is not ready")
            return fts
        try:
            semantic = await self.vectors.search(text, **where)
        except Exception as exc:  # an embedding server that is down never fails the turn
            info.notes.append(f"recall: embedding the message failed: {exc}")
            return fts
        if o.mode == "semantic":
            return semantic
        # hybrid: reciprocal rank fusion of the two rankings
        score: dict[int, float] = {}
        first: dict[int, RecallHit] = {}
        for ranking in (fts, semantic):
            for rank, hit in enumerate(ranking):
                score[hit.rowid] = score.get(hit.rowid, 0.0) + 1.0 / (60 + rank)
                first.setdefault(hit.rowid, hit)
        return [first[r] for r in sorted(score, key=lambda r: -score[r])]

    def _line(self, turn: Turn, hit: Any) -> str:
        import datetime as dt

        name = turn.char_name if hit.role == "assistant" else str(
            hit.meta.get("user_name") or turn.user_name)
        when = dt.datetime.fromtimestamp(hit.created_at).strftime("%Y-%m-%d")
        return (self.opts.recall.line.replace("{{name}}", name).replace("{{when}}", when)
                .replace("{{text}}", hit.content.strip()))


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def place(turn: Turn, chat: list[Message], where: Placement, text: str) -> None:
    """Insert ``text`` as its own message: around the main prompt, or in the chat at a depth
    (just before the message ``depth`` from the end; 0: right after the user's message)."""
    message: Message = {"role": where.role, "content": text}
    messages = turn.messages
    if where.position == "at_depth":
        ids = {id(m) for m in chat}
        at_chat = [i for i, m in enumerate(messages) if id(m) in ids]
        if not at_chat:
            messages.append(message)
        elif where.depth == 0:
            messages.insert(at_chat[-1] + 1, message)
        else:
            messages.insert(at_chat[max(0, len(at_chat) - where.depth)], message)
        return
    anchor = next((i for i, m in enumerate(messages) if m is turn.main_prompt), None)
    if anchor is None:
        messages.insert(0, message)
    else:
        messages.insert(anchor + (1 if where.position == "after_main" else 0), message)


@hookimpl
def register_prompt_builders() -> list[type[PromptBuilder]]:
    return [MemoryStage]


def memory_options(turn: Turn) -> MemoryStage.Options | None:
    """The ``memory`` options of the profile the turn ran on (None: no memory stage)."""
    for ref in turn.profile.prompt:
        if ref.name == MemoryStage.name:
            return MemoryStage.Options.model_validate(ref.options)
    return None


@hookimpl
def turn_completed(engine: Any, turn: Turn) -> None:
    """Embed the turn's messages (semantic recall) and queue a summary update when the
    turn's history left messages unsummarised; both in the background."""
    for vectors in engine.stash.get("memory.vectors", ()):
        vectors.fill_later()
    info = turn.memory_info
    if info is None or not turn.conversation_id or info.summary_pending <= 0:
        return
    if turn.result is not None and turn.result.status == "error":
        return
    options = memory_options(turn)
    if options is None or not options.summary.enabled:
        return
    o = options.summary
    if info.summary_pending < o.batch:
        return
    profile = turn.profile
    if o.api_base:
        profile = profile.model_copy(update={"llm": profile.llm.model_copy(
            update={"api_base": o.api_base})})
    history = turn.history_info
    target = info.summary_covers + info.summary_pending if history is None else history.dropped
    engine_summarizer(engine).schedule(SummaryJob(
        conversation_id=turn.conversation_id, target=target, profile=profile,
        model=o.model or turn.model or profile.llm.model, prompt=o.prompt,
        max_words=o.max_words, temperature=o.temperature, char=turn.char_name,
        user=turn.user_name, delay_s=o.delay_s))


@hookimpl
async def shutdown(engine: Any) -> None:
    found = engine.stash.get("memory.summarizer")
    if found is not None:
        await found.aclose()
