"""One ``/api/ws`` session: the microphone, the transcriber, the turns and barge-in.

The handler's task reads the socket (``run``); everything else is a task the
session owns and cancels when it ends:

- audio frames go to the ``Listener`` (voice activity on a worker thread). An
  *onset* while the companion is speaking holds its audio (``Playout.hold``); a
  *false start* releases it; *speech_start* is a barge-in (``interrupt``);
  *speech_end* hands the utterance to the transcriber and, if it heard
  something, starts a turn. Text said while the user is still talking (a pause
  mid-sentence) waits and is joined to the next utterance.
- a turn runs through the chat runner (``TurnRunner``) with this session's
  ``emit``: its events go out as ``{"type", "data"}``, its audio through the
  turn's ``Playout``; ``done`` waits until all the audio was sent.
- a barge-in stops the playout at once (no frame after it), cancels the turn
  (the runner closes the LLM request and cancels pending synthesis), tells the
  client the last sentence index sent (``interrupted``) and has the runner store
  only the sentences up to it (``clip_interrupted``), status ``interrupted``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from loguru import logger
from pydantic import ValidationError

from companion_engine import jsoninput
from companion_engine.chat.request import ChatRequest
from companion_engine.chat.respond import prepared
from companion_engine.chat.runner import TurnRunner
from companion_engine.chat.sse import ClientGone, timestamp
from companion_engine.chat.turns import chat_turns, new_conversation_id
from companion_engine.errors import ApiError, StageError
from companion_engine.ratelimit import retry_after
from companion_engine.stages import AudioInput, VADOptions
from companion_engine.talk import protocol as p
from companion_engine.talk.listener import Listener
from companion_engine.talk.playout import Playout
from companion_engine.talk.transcription import run_stt
from companion_engine.turn import Turn

if TYPE_CHECKING:
    from companion_engine.config import WebSocketConfig
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline
    from companion_engine.speech.vad import VADEvent

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: A turn's audio events: they go out through its ``Playout``, in order, paced.
AUDIO_EVENTS = ("audio_ready", "audio_chunk", "audio_error")


class Close(Exception):
    """End the session with this WebSocket close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Reply:
    """The turn under way: its task, its audio and what the client was sent of it."""

    playout: Playout
    task: asyncio.Task[None] | None = None
    speaks: bool = False
    runner: TurnRunner | None = None
    #: Sentence index -> the sentence as shown (from ``content`` and audio events).
    sentences: dict[int, str] = field(default_factory=dict)
    _completed: int = 0
    interrupted: str | None = None
    #: The turn's ``done`` event, held until the reply is stored (then sent).
    done: dict[str, Any] | None = None
    #: ``time.perf_counter()`` of the end of speech that started it (None for text).
    speech_ended_at: float | None = None
    stt_ms: float | None = None

    def observe(self, kind: str, data: dict[str, Any]) -> None:
        """Note which text each sentence index is (its audio may come before its
        ``content`` event: synthesis can beat the next token)."""
        if kind == "content" and data.get("sentence_complete"):
            self.sentences.setdefault(self._completed, data.get("sentence") or "")
            self._completed += 1
        elif kind in AUDIO_EVENTS and isinstance(data.get("index"), int):
            display = data.get("display")
            if isinstance(display, str):
                self.sentences.setdefault(data["index"], display)

    def heard(self, full: str | None = None) -> str:
        """The reply up to the end of the last sentence whose audio was sent (all of it,
        when the reply was not spoken)."""
        text = full if full is not None else self.runner.content if self.runner else ""
        if not self.speaks:
            return text
        last = self.playout.last_index
        if last is None:
            return ""
        pos = 0
        known = [self.sentences[i] for i in range(last + 1) if self.sentences.get(i)]
        for sentence in known:
            at = text.find(sentence, pos)
            if at < 0:  # a stage rewrote the text: fall back to the sentences themselves
                return " ".join(known)
            pos = at + len(sentence)
        return text[:pos]


class TalkSession:
    """See the module docstring. ``await run()`` serves the socket until it closes."""

    def __init__(self, engine: Engine, request: web.Request, ws: web.WebSocketResponse, *,
                 client: str, authenticated: bool) -> None:
        self.engine = engine
        self.request = request
        self.ws = ws
        self.client = client
        self.authenticated = authenticated
        self.limits: WebSocketConfig = engine.config.server.websocket
        self.id = uuid.uuid4().hex[:12]
        self.settings = p.Settings()
        self.conversation_id = ""
        self.greeting: int | None = None
        self.started = False
        self.received = 0
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reply: Reply | None = None
        self._previous: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._listener_stack = AsyncExitStack()
        self._listener_pipeline: Pipeline | None = None
        self._utterance = 0
        self._utterance_start: int | None = None
        self._partial: asyncio.Task[None] | None = None
        self._partial_at_ms = 0
        #: Recognised text not answered yet, and utterances still being transcribed: an
        #: utterance followed by more speech is joined to it (a pause mid-sentence).
        self._pending_text = ""
        self._queued = 0
        self._transcribing: asyncio.Task[None] | None = None
        self._warned_no_stt = False
        self._last_message = time.monotonic()

    # --- sending ----------------------------------------------------------------------------

    async def send(self, kind: str, data: dict[str, Any]) -> None:
        """One ``{"type", "data"}`` message; ``ClientGone`` when the socket is closed."""
        payload = _dumps({"type": kind, "data": data})
        async with self._send_lock:
            if self.ws.closed:
                raise ClientGone()
            try:
                await self.ws.send_str(payload)
            except (ConnectionError, RuntimeError) as exc:
                raise ClientGone() from exc

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            if self.ws.closed:
                raise ClientGone()
            try:
                await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError) as exc:
                raise ClientGone() from exc

    async def _error(self, kind: str, message: str, **extra: Any) -> None:
        try:
            await self.send("error", {"type": kind, "error": message, **extra,
                                      "timestamp": timestamp()})
        except ClientGone:
            pass

    # --- the read loop ----------------------------------------------------------------------

    async def run(self) -> None:
        code, reason = p.CLOSE_NORMAL, ""
        self._spawn(self._watch_idle(), "ws-idle")
        try:
            while True:
                msg = await self._receive()
                if msg is None:
                    break
                await self._handle(msg)
        except Close as exc:
            code, reason = exc.code, exc.reason
        except ClientGone:
            pass
        except Exception:
            logger.exception("ws session {} failed", self.id)
            code, reason = p.CLOSE_INTERNAL, f"internal error (session {self.id})"
        finally:
            await self.aclose()
            if not self.ws.closed:
                logger.info("ws session {} closed: {} {}", self.id, code, reason)
                await self.ws.close(code=code, message=reason.encode()[:120])

    async def _receive(self) -> web.WSMessage | None:
        """The next data message; None once the client (or the idle watch) closed."""
        while True:
            msg = await self.ws.receive()  # no timeout here: a timer per frame costs
            self._last_message = time.monotonic()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.received += len(msg.data)
                if self.received > self.limits.max_session_bytes:
                    raise Close(p.CLOSE_TOO_BIG, f"the session sent over "
                                                 f"{self.limits.max_session_bytes} bytes")
                if len(msg.data) > self.limits.max_frame_bytes:
                    raise Close(p.CLOSE_TOO_BIG, f"a message of {len(msg.data)} bytes is over "
                                                 f"the {self.limits.max_frame_bytes}-byte limit")
                return msg
            if msg.type == WSMsgType.ERROR:
                logger.info("ws session {}: {}", self.id, self.ws.exception())
                return None
            return None  # CLOSE, CLOSING, CLOSED

    def _busy(self) -> bool:
        return self._reply is not None or self._transcribing is not None

    async def _watch_idle(self) -> None:
        """Close a session that sent nothing for too long (and is not being answered)."""
        while not self.ws.closed:
            limit = self.limits.idle_timeout_s if self.started else self.limits.auth_timeout_s
            left = self._last_message + limit - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
                continue
            if self.started and self._busy():
                self._last_message = time.monotonic()
                continue
            what = "no message" if self.started else "no `start` message"
            logger.info("ws session {} closed: idle", self.id)
            await self.ws.close(code=p.CLOSE_IDLE, message=f"{what} for {limit:g} s".encode())
            return

    async def _handle(self, msg: web.WSMessage) -> None:
        if msg.type == WSMsgType.BINARY:
            if not self.started:
                raise Close(p.CLOSE_POLICY, "send `start` before audio")
            await self._audio(msg.data)
            return
        try:
            raw = jsoninput.loads(msg.data)
        except jsoninput.JSONInputError as exc:
            raise Close(p.CLOSE_INVALID_DATA, exc.reason) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise Close(p.CLOSE_INVALID_DATA, "a message is a JSON object with a string `type`")
        kind = raw["type"]
        if kind not in p.CLIENT_TYPES:
            raise Close(p.CLOSE_POLICY, f"unknown message type {kind[:40]!r}; expected one of "
                                        f"{', '.join(p.CLIENT_TYPES)}")
        if not self.started and kind != "start":
            raise Close(p.CLOSE_POLICY, "the first message must be `start`")
        try:
            message = p.client_message.validate_python(raw)
        except ValidationError as exc:
            if not self.started:
                raise Close(p.CLOSE_POLICY, f"invalid `start`: {_first_error(exc)}") from None
            await self._error("bad_request", f"invalid `{kind}`: {_first_error(exc)}",
                              detail=_errors(exc))
            return
        if isinstance(message, p.Start):
            await self._start(message)
        elif isinstance(message, p.Config):
            await self._configure(message)
        elif isinstance(message, p.Text):
            await self.start_turn(message.text)
        elif isinstance(message, p.Interrupt):
            await self.interrupt("interrupt")
        elif isinstance(message, p.Ping):
            await self.send("pong", {"id": message.id})

    # --- start and config -------------------------------------------------------------------

    async def _start(self, message: p.Start) -> None:
        if self.started:
            await self._error("bad_request", "the session is already started; send `config` "
                                             "to change settings")
            return
        if not self.authenticated:
            from companion_engine.security import check_api_key

            try:
                await check_api_key(self.request, message.api_key)
            except ApiError as exc:
                code = {429: p.CLOSE_RATE_LIMITED, 503: p.CLOSE_TRY_AGAIN}.get(
                    exc.status, p.CLOSE_UNAUTHORIZED)
                raise Close(code, exc.error) from None
            self.authenticated = True
        if message.character_id is not None and \
                self.engine.characters.get(message.character_id) is None:
            raise Close(p.CLOSE_POLICY, f"character not found: {message.character_id}")
        self.started = True
        self.conversation_id = message.conversation_id or new_conversation_id()
        self.greeting = message.greeting
        self._merge(message)
        pipeline = self.engine.pipeline
        await self._new_listener()
        await self.send("ready", {
            "protocol": p.PROTOCOL_VERSION, "session_id": self.id,
            "conversation_id": self.conversation_id, "listening": pipeline.stt.listens,
            "stt": pipeline.stt.name, "vad": _vad_name(pipeline), "sample_rate":
            p.INPUT_SAMPLE_RATE, "audio": self.settings.audio or "frames",
            "speaking": self._speaks(pipeline),
            "max_frame_bytes": self.limits.max_frame_bytes,
            "idle_timeout_s": self.limits.idle_timeout_s})

    async def _configure(self, message: p.Config) -> None:
        if message.character_id is not None and \
                self.engine.characters.get(message.character_id) is None:
            await self._error("bad_request", f"character not found: {message.character_id}")
            return
        vad_changed = message.vad is not None
        self._merge(message)
        if vad_changed and (self._listener is None or not self._listener.in_speech):
            await self._new_listener()

    def _merge(self, message: p.Settings) -> None:
        given = message.model_dump(exclude_unset=True, exclude={"type", "protocol", "api_key",
                                                                "conversation_id", "greeting"})
        if "vad" in given and self.settings.vad is not None and given["vad"] is not None:
            given["vad"] = {**self.settings.vad.model_dump(exclude_none=True),
                            **{k: v for k, v in given["vad"].items() if v is not None}}
        self.settings = self.settings.model_copy(update={
            k: (p.VADSettings(**v) if k == "vad" and v is not None else v)
            for k, v in given.items()})

    def _speaks(self, pipeline: Pipeline) -> bool:
        enabled = self.settings.enable_tts
        if enabled is None:
            enabled = pipeline.profile.speech.enabled
        return bool(enabled) and pipeline.tts.speaks

    # --- the microphone ---------------------------------------------------------------------

    async def _new_listener(self) -> None:
        """A listener on the current pipeline's VAD (held by a lease until replaced)."""
        offset = self._listener.position_ms if self._listener is not None else 0
        await self._listener_stack.aclose()
        stack = AsyncExitStack()
        pipeline = await stack.enter_async_context(self.engine.lease())
        self._listener_stack = stack
        self._listener_pipeline = pipeline
        vad = pipeline.vad
        options: VADOptions = vad.options
        if self.settings.vad is not None:
            options = options.model_copy(update=self.settings.vad.model_dump(exclude_none=True))
        self._listener = Listener(vad, options, offset_ms=offset)

    async def _audio(self, pcm: bytes) -> None:
        if len(pcm) % 2:
            raise Close(p.CLOSE_INVALID_DATA, f"an audio frame of {len(pcm)} bytes: PCM16 "
                                              "frames hold whole 2-byte samples")
        listener = self._listener
        assert listener is not None
        if not listener.in_speech and self._listener_pipeline is not self.engine.pipeline:
            await self._new_listener()  # a reload swapped the pipeline: its VAD from now on
            listener = self._listener
            assert listener is not None
        # While a reply plays, an onset must hold its audio at once: small blocks.
        listener.stream.urgent = self._reply is not None
        for event in await listener.feed(pcm):
            await self._vad_event(event)
        if listener.in_speech and self._utterance_start is not None:
            await self._maybe_partial(listener)

    async def _vad_event(self, event: VADEvent) -> None:
        reply = self._reply
        if event.kind == "onset":
            self._utterance += 1
            if reply is not None:
                reply.playout.hold()
        elif event.kind == "false_start":
            if reply is not None:
                reply.playout.release()
            elif self._pending_text and not self._queued:
                text, self._pending_text = self._pending_text, ""
                await self.start_turn(text)  # the "more" was a cough: answer what was said
        elif event.kind == "speech_start":
            self._utterance_start = event.at_ms
            self._partial_at_ms = event.at_ms
            if reply is not None:
                await self.interrupt("barge_in")
        data: dict[str, Any] = {"event": event.kind, "at_ms": event.at_ms,
                                "utterance": self._utterance}
        if event.kind == "speech_end":
            data.update(start_ms=event.start_ms, forced=event.forced)
        await self.send("vad", data)
        if event.kind == "speech_end":
            self._end_of_speech(event)

    async def _maybe_partial(self, listener: Listener) -> None:
        every = self.settings.partial_transcripts_ms
        pipeline = self._listener_pipeline
        if every is None and pipeline is not None:
            every = pipeline.profile.speech.partial_transcripts_ms
        if not every or self._partial is not None or self._utterance_start is None:
            return
        if listener.position_ms - self._partial_at_ms < every:
            return
        self._partial_at_ms = listener.position_ms
        audio = listener.audio(self._utterance_start)
        self._partial = self._spawn(self._transcribe_partial(self._utterance, audio), "ws-partial")

    async def _transcribe_partial(self, utterance: int, pcm: bytes) -> None:
        try:
            transcript = await self._transcribe(pcm)
            if transcript is not None and self._utterance == utterance and transcript.text:
                await self.send("transcript_partial", {"utterance": utterance,
                                                       "text": transcript.text})
        except (StageError, ClientGone):
            pass  # a partial is a preview; the final transcription reports failures
        finally:
            self._partial = None

    def _end_of_speech(self, event: VADEvent) -> None:
        listener = self._listener
        assert listener is not None and event.start_ms is not None
        pcm = listener.audio(event.start_ms, event.at_ms)
        self._utterance_start = None
        if self._partial is not None:
            self._partial.cancel()
            self._partial = None
        previous = self._transcribing
        self._queued += 1
        self._transcribing = self._spawn(
            self._final_transcript(self._utterance, pcm, previous, time.perf_counter()),
            "ws-transcribe")

    async def _final_transcript(self, utterance: int, pcm: bytes,
                                previous: asyncio.Task[None] | None, ended_at: float) -> None:
        me = asyncio.current_task()
        text, stt_ms = "", None
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)  # in utterance order
            started = time.perf_counter()
            transcript = await self._heard(utterance, pcm)
            if transcript is not None:
                stt_ms = round((time.perf_counter() - started) * 1000, 1)
                await self.send("transcript", {"utterance": utterance, **transcript.as_dict()})
                text = transcript.text.strip()
        except ClientGone:
            return
        finally:
            self._queued -= 1
            if self._transcribing is me:
                self._transcribing = None
        self._pending_text = f"{self._pending_text} {text}".strip()
        if self._queued > 0 or (self._listener is not None and self._listener.in_speech):
            return  # the user goes on: this text is joined to what comes next
        text, self._pending_text = self._pending_text, ""
        if text:
            try:
                await self.start_turn(text, speech_ended_at=ended_at, stt_ms=stt_ms)
            except ClientGone:
                pass

    async def _heard(self, utterance: int, pcm: bytes) -> Any:
        """The utterance's transcript, or None (no recogniser, or it failed: reported)."""
        pipeline = self._listener_pipeline
        if pipeline is not None and not pipeline.stt.listens:
            if not self._warned_no_stt:
                self._warned_no_stt = True
                await self._error("stt_unavailable", f"speech is not transcribed: this "
                                  f"profile's speech.stt is {pipeline.stt.name!r}")
            return None
        try:
            return await self._transcribe(pcm)
        except StageError as exc:
            logger.warning("ws session {}: transcription failed: {}", self.id, exc)
            await self._error("stt_error", str(exc), utterance=utterance)
            return None

    async def _transcribe(self, pcm: bytes) -> Any:
        if not pcm:
            return None
        async with self.engine.lease() as pipeline:
            if not pipeline.stt.listens:
                return None
            turn = Turn(profile=pipeline.profile, user_message="", engine=self.engine,
                        user_name=self.settings.user_name or pipeline.profile.user_name)
            audio = AudioInput(pcm=pcm, sample_rate=p.INPUT_SAMPLE_RATE,
                               language=self.settings.language)
            return await run_stt(pipeline, audio, turn)

    # --- turns ------------------------------------------------------------------------------

    async def start_turn(self, text: str, *, speech_ended_at: float | None = None,
                         stt_ms: float | None = None) -> None:
        """Start a turn for ``text``; a reply still under way is interrupted first."""
        if self._reply is not None:
            await self.interrupt("text")
        if self._previous is not None:
            await asyncio.gather(self._previous, return_exceptions=True)  # it stores first
        from companion_engine.security import RATE_SCOPE

        limit = self.engine.config.rate_limit
        wait = await self.engine.shared.take(RATE_SCOPE, self.client, limit.requests,
                                             limit.window_s)
        if wait:
            await self._error("rate_limited", f"rate limit exceeded: {limit.requests} turns per "
                              f"{limit.window_s:g} s", retry_after=retry_after(wait))
            return
        playout = Playout(self.send, self.send_bytes, mode=self.settings.audio or "frames",
                          lead_ms=self.limits.audio_lead_ms)
        reply = Reply(playout, speech_ended_at=speech_ended_at, stt_ms=stt_ms)
        reply.task = self._spawn(self._run_turn(reply, text), "ws-turn")
        self._reply = reply
        self._previous = reply.task

    async def _run_turn(self, reply: Reply, text: str) -> None:
        """The turns a message makes (one, or a group chat's speakers), one after the other."""
        try:
            async with self.engine.lease() as pipeline:
                s = self.settings
                try:
                    req = ChatRequest(message=text, conversation_id=self.conversation_id,
                                      character_id=s.character_id, model=s.model,
                                      user_name=s.user_name, voice=s.voice,
                                      greeting=self.greeting)
                except ValidationError as exc:
                    await self._error("bad_request", f"invalid turn: {_first_error(exc)}")
                    return
                turns = chat_turns(self.engine, pipeline, req)
                try:
                    async for planned in turns:
                        if not await self._speak_turn(reply, pipeline, planned):
                            break
                        reply = self._next_reply(reply)
                except ApiError as exc:
                    await self._error("bad_request", exc.error)
                finally:
                    await turns.aclose()  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if reply.interrupted is None or task is None:
                raise
            task.uncancel()  # our barge-in: the runner stored what was heard
        except ClientGone:
            pass
        finally:
            await reply.playout.aclose()
            if self._reply is reply:
                self._reply = None

    def _next_reply(self, reply: Reply) -> Reply:
        """A group chat's next speaker: a reply of its own on the same task."""
        nxt = Reply(Playout(self.send, self.send_bytes, mode=reply.playout.mode,
                            lead_ms=self.limits.audio_lead_ms), task=reply.task)
        self._reply = nxt
        return nxt

    async def _speak_turn(self, reply: Reply, pipeline: Pipeline, planned: Any) -> bool:
        """Run one planned turn; True when it completed (a group chat goes on)."""
        reply.speaks = self._speaks(pipeline)
        if reply.speaks and reply.playout.mode == "frames":
            planned.turn.audio_format = "pcm16"
        runner = await prepared(self.engine, pipeline, planned, speak=reply.speaks)
        runner.clip_interrupted = reply.heard
        reply.runner = runner
        if self._reply is None and reply.interrupted is None:
            self._reply = reply
        result = await runner.run(lambda kind, data: self._emit(reply, kind, data))
        await reply.playout.aclose()
        if reply.done is not None and reply.interrupted is None:
            await self.send("done", reply.done)  # stored: now it is done
        return result.status == "complete"

    async def _emit(self, reply: Reply, kind: str, data: dict[str, Any]) -> None:
        """The turn's events: audio through the playout, the rest straight out."""
        reply.observe(kind, data)
        if kind in AUDIO_EVENTS:
            await reply.playout.put(kind, data)
            return
        if kind == "done":
            await reply.playout.drain()
            if self._reply is reply:
                self._reply = None  # all of it was sent: nothing left to interrupt
            timings = data.get("timings")
            if isinstance(timings, dict):
                timings["stt_ms"] = reply.stt_ms
                first = reply.playout.first_sent_at
                timings["speech_to_audio_ms"] = (
                    round((first - reply.speech_ended_at) * 1000, 1)
                    if first is not None and reply.speech_ended_at is not None else None)
            reply.done = data
            return
        await self.send(kind, data)

    async def interrupt(self, reason: str) -> bool:
        """Stop the reply under way now; False when there was none."""
        reply = self._reply
        if reply is None or reply.interrupted is not None:
            return False
        reply.interrupted = reason
        reply.playout.stop()  # not one more frame
        if reply.task is not None:
            reply.task.cancel()  # the runner closes the LLM request and pending synthesis
        self._reply = None
        await self.send("interrupted", {
            "reason": reason, "last_index": reply.playout.last_index,
            "content": reply.heard(), "conversation_id": self.conversation_id,
            "timestamp": timestamp()})
        return True

    # --- tasks and the end ------------------------------------------------------------------

    async def shutdown(self) -> None:
        """The server is stopping: close with 1001 (``run`` then ends and cleans up)."""
        if not self.ws.closed:
            await self.ws.close(code=p.CLOSE_GOING_AWAY, message=b"the server is shutting down")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("ws session {}: {} failed", self.id,
                                                         task.get_name())

    async def aclose(self) -> None:
        """Cancel every task of the session (a reply under way ends as interrupted)."""
        reply = self._reply
        if reply is not None:
            reply.interrupted = "disconnect"
            reply.playout.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._listener_stack.aclose()


def _vad_name(pipeline: Pipeline) -> str:
    backend = getattr(pipeline.vad, "backend", None)
    return backend if isinstance(backend, str) else pipeline.vad.name


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ".".join(str(x) for x in e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)]


def _first_error(exc: ValidationError) -> str:
    first = _errors(exc)[0]
    return f"{first['loc'] or 'message'}: {first['msg']}" if first["loc"] else first["msg"]
