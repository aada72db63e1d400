"""The ``lorebook`` stage: World Info from the card's ``character_book`` and lorebook files.

It only *records* what activated (``turn.slots``, ``turn.depth_injections``,
``turn.lore``); the prompt builders place it. Defaults follow SillyTavern 1.12
with its fresh-install settings; ``semantics: spec`` follows the Character Card
spec instead (see ``docs/lorebook.md``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from companion_engine import hookimpl
from companion_engine.cards.model import CharacterBook
from companion_engine.lorebook import (
    CompiledLore,
    CompileSettings,
    Lorebook,
    LorebookFiles,
    LoreCache,
    ScanOptions,
    Source,
    chat_for_scan,
    compile_lore,
    from_character_book,
    place,
    scan,
)
from companion_engine.lorebook.timed import STATE_KEY as TIMED_STATE
from companion_engine.lorebook.timed import TimedEffects
from companion_engine.prompting import expand
from companion_engine.stages import LorebookInjector, StageOptions
from companion_engine.tokens import get_counter
from companion_engine.turn import LoreActivation, LorebookInfo, LoreDrop, Turn

#: Books with more entries than this compile in a thread (off the event loop).
THREAD_COMPILE_ENTRIES = 300
#: A big book scans on the event loop while the median time of its recent scans is
#: at most this (a thread hop costs more than such a scan: 0.3-0.6 ms a turn, and a
#: preview or a turn's own work is of the same order); a slower book scans in a thread.
#: The loop is then held about that long per turn; an inline scan that turns out slow
#: is still capped by the regex timeouts and ``scan.REGEX_SCAN_BUDGET_S``, and moves
#: the book's next scans to a thread (``THREAD_SCAN_MAX_S``).
THREAD_SCAN_S = 0.003
#: ...and while its last scan took at most this: one scan that blew up (a regex on
#: this chat) sends the next to a thread at once, one noisy one does not move the median.
THREAD_SCAN_MAX_S = 0.015
#: Recent scans per book that the median is taken over.
SCAN_WINDOW = 8


class LorebookStage(LorebookInjector):
    """Activates lorebook entries for the turn, SillyTavern-style."""

    name: ClassVar[str] = "lorebook"
    description: ClassVar[str] = ("World Info: the card's character_book and lorebook files, "
                                  "activated as SillyTavern 1.12 does")

    class Options(StageOptions):
        #: Newest messages scanned for keys (SillyTavern ``world_info_depth``).
        scan_depth: int = Field(default=2, ge=0, le=1000)
        match_whole_words: bool = True
        case_sensitive: bool = False
        #: Activated entries' contents may activate further entries.
        recursive: bool = True
        #: 0 = until nothing new activates.
        max_recursion_steps: int = Field(default=0, ge=0, le=100)
        #: Tokens of lore per turn (counted with the model's tokenizer when it has one).
        token_budget: int = Field(default=800, ge=1, le=1_000_000)
        #: Scan ``"Name: message"`` rather than the bare message.
        include_names: bool = True
        #: Widen the scan one message at a time until this many entries activated.
        min_activations: int = Field(default=0, ge=0, le=1000)
        min_activations_depth_max: int = Field(default=0, ge=0, le=1000)
        #: Scan order of the card's lore vs lorebook files.
        insertion_strategy: Literal["character_first", "global_first", "evenly"] = (
            "character_first")
        #: ``sillytavern``: behave like SillyTavern 1.12. ``spec``: honour the card's
        #: own settings (entry ``case_sensitive``, book ``scan_depth``/``token_budget``/
        #: ``recursive_scanning``, V3 ``use_regex``, ``priority`` and decorators).
        semantics: Literal["sillytavern", "spec"] = "sillytavern"
        #: Use the active card's ``character_book``.
        character_book: bool = True
        #: Standalone lorebook files (relative to the folder of ``companion.yaml``).
        files: list[str] = Field(default_factory=list)
        #: Seed for probability rolls and inclusion groups (None: random each turn).
        seed: int | None = None

    def __init__(self, options: StageOptions | None = None) -> None:
        super().__init__(options)
        self.cache = LoreCache()
        self.files = LorebookFiles()
        #: id(compiled lore) -> (the lore, seconds its recent scans took): chooses where
        #: the next scan runs. Holds the lore, so an id is never reused while listed.
        self._scan_s: dict[int, tuple[CompiledLore, deque[float]]] = {}

    @property
    def opts(self) -> LorebookStage.Options:
        assert isinstance(self.options, LorebookStage.Options)
        return self.options

    def _paths(self, turn: Turn) -> list[Path]:
        base = turn.engine.config.base_dir if turn.engine is not None else Path.cwd()
        return [p if p.is_absolute() else (base / p) for p in map(Path, self.opts.files)]

    async def compiled(self, turn: Turn) -> CompiledLore:
        """The compiled lore for this turn's character and files (cached)."""
        o = self.opts
        spec = o.semantics == "spec"
        book: CharacterBook | None = None
        if o.character_book and turn.character is not None:
            book = turn.character.character_book
        files: list[Lorebook] = []
        if o.files:
            files = await asyncio.to_thread(self.files.load, self._paths(turn), spec=spec)
        settings = CompileSettings(
            case_sensitive=o.case_sensitive, match_whole_words=o.match_whole_words, spec=spec,
            strategy=o.insertion_strategy, char_name=turn.char_name, user_name=turn.user_name)
        pins: tuple[Any, ...] = (book, *files)
        lore = self.cache.get(pins, settings)
        if lore is not None:
            return lore

        def build() -> CompiledLore:
            sources = [Source(b, character=False) for b in files]
            if book is not None:
                char_name = turn.character.name if turn.character else "character"
                sources.insert(0, Source(from_character_book(book, char_name, spec=spec)))
            return compile_lore(sources, settings)

        size = (len(book.entries) if book else 0) + sum(len(b.entries) for b in files)
        lore = await asyncio.to_thread(build) if size > THREAD_COMPILE_ENTRIES else build()
        self.cache.put(pins, settings, lore)
        return lore

    def scan_options(self, lore: CompiledLore) -> ScanOptions:
        o = self.opts
        spec = o.semantics == "spec"
        budget, recursive = o.token_budget, o.recursive
        depth = o.scan_depth
        if spec:
            budget = lore.token_budget or budget
            recursive = lore.recursive_scanning if lore.recursive_scanning is not None \
                else recursive
        return ScanOptions(scan_depth=depth, recursive=recursive,
                           max_recursion_steps=o.max_recursion_steps, token_budget=budget,
                           min_activations=o.min_activations,
                           min_activations_depth_max=o.min_activations_depth_max, spec=spec)

    async def inject(self, turn: Turn) -> None:
        lore = await self.compiled(turn)
        counter = await get_counter(turn.model or turn.profile.llm.model)
        opts = self.scan_options(lore)
        messages = scan_messages(turn, self.opts.include_names)
        chat = chat_for_scan(messages)
        rng = random.Random(self.opts.seed) if self.opts.seed is not None else None
        timed = None
        if lore.timed:  # the chat's length counts: every message, the new one included
            timed = TimedEffects(len(messages), lore.entries, await _timed_state(turn)).check()
        run = functools.partial(self._measured_scan, lore, chat, opts, count=counter.count,
                                char=turn.char_name, user=turn.user_name, rng=rng,
                                expand=functools.partial(expand, turn), timed=timed)
        result = await asyncio.to_thread(run) if self._scans_slowly(lore) else run()
        placement = place(result.activated)
        for position, contents in placement.slots.items():
            turn.slots.setdefault(position, []).extend(contents)
        for depth, role, text in placement.depth_injections:
            turn.depth_injections.append((depth, role, text))  # type: ignore[arg-type]
        for act in placement.ordered:
            e = act.entry
            at_depth = e.position == "at_depth"
            turn.lore.append(LoreActivation(
                id=e.uid, comment=e.comment, position=e.position, order=e.order,
                source=e.source, depth=e.depth if at_depth else None,
                role=e.role if at_depth else None, matched=act.matched, tokens=act.tokens))
        info = turn.lorebook_info or LorebookInfo(tokenizer=counter.name)
        info.entries += len(lore.entries)
        info.activated += len(result.activated)
        info.tokens += result.tokens
        info.dropped.extend(LoreDrop(id=c.entry.uid, comment=c.entry.comment,
                                     position=c.entry.position, order=c.entry.order,
                                     source=c.entry.source, tokens=c.tokens, reason=c.reason)
                            for c in result.cut)
        info.token_budget = opts.token_budget
        info.overflowed = info.overflowed or result.overflowed
        info.passes = max(info.passes, result.passes)
        info.warnings.extend(lore.warnings)
        if timed is not None:
            timed.record(a.entry for a in result.activated)
            if timed.changed:
                info.timed_state = timed.state
        turn.lorebook_info = info

    def _scans_slowly(self, lore: CompiledLore) -> bool:
        """Whether this book's next scan goes to a thread: a big book's first scan (its
        regex keys may take a while), and later ones while its scans are slow.

        The median of the last ``SCAN_WINDOW`` scans decides, so one scan the machine
        preempted does not move a book; the last one alone decides when it took over
        ``THREAD_SCAN_MAX_S``. (Wall time: ``time.thread_time()`` is a system call.)
        """
        if len(lore.entries) <= THREAD_COMPILE_ENTRIES:
            return False
        known = self._scan_s.get(id(lore))
        if known is None or known[0] is not lore:
            return True
        times = known[1]
        return times[-1] > THREAD_SCAN_MAX_S or statistics.median(times) > THREAD_SCAN_S

    def _measured_scan(self, lore: CompiledLore, *args: Any, **kwargs: Any) -> Any:
        """``scan``, remembering how long a big book's took (where the next one runs)."""
        started = time.perf_counter()
        result = scan(lore, *args, **kwargs)
        if len(lore.entries) > THREAD_COMPILE_ENTRIES:
            spent = time.perf_counter() - started
            known = self._scan_s.get(id(lore))
            if known is None or known[0] is not lore:
                if len(self._scan_s) > 64:
                    self._scan_s.clear()  # books come and go with cards; keep it small
                known = self._scan_s[id(lore)] = (lore, deque(maxlen=SCAN_WINDOW))
            known[1].append(spent)
        return result


async def _timed_state(turn: Turn) -> Any:
    if turn.engine is None or not turn.conversation_id:
        return None
    return (await turn.engine.store.get_state(turn.conversation_id)).get(TIMED_STATE)


@hookimpl
async def turn_completed(engine: Any, turn: Turn) -> None:
    """Keep the timed effects the turn started (a preview never gets here: it stores nothing)."""
    info = turn.lorebook_info
    if info is None or info.timed_state is None or not turn.conversation_id:
        return
    await engine.store.update_state(turn.conversation_id, {TIMED_STATE: info.timed_state})


def scan_messages(turn: Turn, include_names: bool = True) -> list[tuple[str, str]]:
    """The chat as the scan sees it, oldest first: history, the greeting, the user message."""
    user, char = turn.user_name, turn.char_name
    names = {"user": user, "assistant": char}
    chat = [(names[m["role"]] if include_names else "", m["content"])
            for m in turn.history if m["role"] in names]
    if turn.greeting and not turn.history:
        chat.append((char if include_names else "", turn.greeting))
    chat.append((user if include_names else "", turn.user_message))
    return chat


@hookimpl
def register_lorebook_injectors() -> list[type[LorebookInjector]]:
    return [LorebookStage]
