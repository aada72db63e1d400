"""The running summary: what fell out of the history budget, rewritten by the LLM.

After a turn whose history dropped messages the summary does not cover yet, a
background task (never on the path to first token, never before ``done``) asks
the LLM to fold them into the summary and stores it in the conversation's state
under ``"summary"``::

    {"text": "...", "covers": 40, "last": "<fingerprint of message 40>",
     "updated_at": 1733085000.0, "model": "ollama_chat/llama3.2"}

``covers`` counts history messages from the start; ``last`` fingerprints the last
one covered, so a summary whose messages were edited away or deleted (or a branch
cut before them) is recognised as stale and rewritten, never shown. Summaries
of one conversation are written one at a time; the tasks belong to the
``Summarizer`` of the engine, which waits for them (briefly) at shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.cards.macros import MacroContext, evaluate
from companion_engine.chat.turns import stored_history
from companion_engine.tokens import get_counter
from companion_engine.turn import Message, Turn

if TYPE_CHECKING:
    from companion_engine.config import Profile
    from companion_engine.engine import Engine

STATE_KEY = "summary"
DEFAULT_PROMPT = """\
You keep the memory of a long conversation between {{char}} and {{user}}.

Summary so far:
{{summary}}

Messages to add:
{{messages}}

Rewrite the summary so it also covers these messages. Keep what matters later: facts about \
{{user}} and {{char}}, names, events, decisions, promises, feelings. Leave out small talk. \
Write at most {{words}} words, in the third person, past tense. Answer with the summary only."""
#: Tokens of new messages per summarising call (a long backlog takes several calls).
CHUNK_TOKENS = 3000


def fingerprint(message: Message) -> str:
    return hashlib.sha1(f"{message['role']}\0{message['content']}".encode()).hexdigest()[:16]


def covered(summary: Any, history: Sequence[Message]) -> int:
    """How many of ``history``'s first messages ``summary`` (the stored state) covers;
    0 when there is none or it no longer matches the conversation."""
    if not isinstance(summary, dict) or not summary.get("text"):
        return 0
    n = summary.get("covers")
    if not isinstance(n, int) or not 0 < n <= len(history):
        return 0
    return n if fingerprint(history[n - 1]) == summary.get("last") else 0


@dataclass(frozen=True, slots=True)
class SummaryJob:
    """Bring one conversation's summary up to its first ``target`` history messages."""

    conversation_id: str
    target: int
    profile: Profile
    model: str
    prompt: str
    max_words: int
    temperature: float
    char: str
    user: str
    #: Seconds the conversation must stay quiet first (a newer turn's job replaces this one).
    delay_s: float = 0.0


class Summarizer:
    """The engine's background summary writer (one per engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        #: Jobs still waiting out their ``delay_s``, by conversation.
        self._waiting: dict[str, asyncio.Task[None]] = {}

    def schedule(self, job: SummaryJob) -> asyncio.Task[None]:
        """Run ``job`` once its conversation has been quiet ``delay_s``; a job of the same
        conversation still waiting is replaced (the newer one covers as much or more)."""
        waiting = self._waiting.pop(job.conversation_id, None)
        if waiting is not None:
            waiting.cancel()
        task = asyncio.get_running_loop().create_task(self._run(job),
                                                      name=f"summary:{job.conversation_id}")
        if job.delay_s > 0:
            self._waiting[job.conversation_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def busy(self) -> bool:
        """A summary is being written."""
        return bool(self._tasks)

    async def idle(self) -> None:
        """Wait until no summary is being written (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let running summaries finish for a moment, then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            logger.info("memory: {} summary update(s) cancelled at shutdown", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self, job: SummaryJob) -> None:
        if job.delay_s > 0:
            try:
                await asyncio.sleep(job.delay_s)
            finally:
                if self._waiting.get(job.conversation_id) is asyncio.current_task():
                    del self._waiting[job.conversation_id]
        lock = self._locks.setdefault(job.conversation_id, asyncio.Lock())
        try:
            async with lock:
                await self.update(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("memory: summarising conversation {} failed: {}: {}",
                           job.conversation_id, type(exc).__name__, exc)
        finally:
            if not lock.locked():
                self._locks.pop(job.conversation_id, None)

    async def update(self, job: SummaryJob) -> bool:
        """Summarise what is due, chunk by chunk, storing after each; True if it wrote."""
        store = self.engine.store
        conversation = await store.get_conversation(job.conversation_id)
        if conversation is None:
            return False
        history = stored_history(conversation)
        current = (await store.get_state(job.conversation_id)).get(STATE_KEY)
        done = covered(current, history)
        text = current["text"] if done else ""
        target = min(job.target, len(history))
        if target <= done:
            return False
        counter = await get_counter(job.model)
        wrote = False
        while done < target:
            chunk: list[Message] = []
            tokens = 0
            for message in history[done:target]:
                cost = counter.count_message(message["content"])
                if chunk and tokens + cost > CHUNK_TOKENS:
                    break
                chunk.append(message)
                tokens += cost
            began = time.perf_counter()
            text = await self.summarise(job, text, chunk)
            done += len(chunk)
            await store.update_state(job.conversation_id, {STATE_KEY: {
                "text": text, "covers": done, "last": fingerprint(history[done - 1]),
                "updated_at": time.time(), "model": job.model}})
            wrote = True
            logger.info("memory: summary of {} now covers {} messages ({:.0f} ms)",
                        job.conversation_id, done, (time.perf_counter() - began) * 1000)
        return wrote

    async def summarise(self, job: SummaryJob, previous: str, messages: list[Message]) -> str:
        """One LLM call: ``previous`` summary + ``messages`` -> the new summary."""
        names = {"user": job.user, "assistant": job.char}
        lines = "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}"
                          for m in messages)
        prompt = evaluate(job.prompt, MacroContext(char=job.char, user=job.user))
        for placeholder, value in (("{{summary}}", previous or "(nothing yet)"),
                                   ("{{words}}", str(job.max_words)),
                                   ("{{messages}}", lines)):
            prompt = prompt.replace(placeholder, value)
        turn = Turn(profile=job.profile, user_message="", model=job.model,
                    engine=self.engine,
                    llm_params={"max_tokens": max(64, job.max_words * 2),
                                "temperature": job.temperature})
        turn.messages = [{"role": "user", "content": prompt}]
        stream = self.engine.llm.stream(turn)
        parts: list[str] = []
        try:
            await stream.open()
            async for piece in stream.deltas():
                parts.append(piece)
        finally:
            await stream.aclose()
        summary = "".join(parts).strip()
        if not summary:
            raise ValueError("the model answered with an empty summary")
        return summary


def summarizer(engine: Engine) -> Summarizer:
    """The engine's ``Summarizer`` (created on first use)."""
    found = engine.stash.get("memory.summarizer")
    if not isinstance(found, Summarizer):
        found = engine.stash["memory.summarizer"] = Summarizer(engine)
    return found
