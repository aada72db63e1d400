"""The World Info scan: which entries activate this turn, within the token budget.

Follows SillyTavern 1.12's ``checkWorldInfo`` pass by pass (see
``docs/lorebook.md``): a buffer of the newest messages (``"name: text"``,
newest first, joined by ``"\\n\\x01"``), entries visited in scan order, primary
keys then ``selectiveLogic`` over secondary keys, probability and inclusion
groups per pass, the budget checked entry by entry (the first overflow stops
everything), then recursion over the activated contents.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from loguru import logger

from companion_engine.cards.macros import substitute
from companion_engine.lorebook.compile import CompiledLore
from companion_engine.lorebook.entry import Entry
from companion_engine.lorebook.index import Found
from companion_engine.lorebook.timed import TimedEffects

MATCHER = "\x01"
JOINER = "\n" + MATCHER
MAX_SCAN_DEPTH = 1000
#: Safety net for unlimited recursion (each pass must activate something new anyway).
HARD_PASS_LIMIT = 100
#: Seconds of regex matching one scan may spend; past it, remaining regex keys miss.
REGEX_SCAN_BUDGET_S = 0.25
#: Inline regex tries between two reads of the clock (``_Scanner.run_regexes``).
_TRY_BATCH = 32
#: The rolls of scans given no ``rng`` (seeding a new ``Random`` costs ~10 us a scan).
_RNG = random.Random()


class ScanState(Enum):
    NONE = 0
    INITIAL = 1
    RECURSION = 2
    MIN_ACTIVATIONS = 3


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """How a scan runs (the ``lorebook`` stage options, resolved)."""

    scan_depth: int = 2
    recursive: bool = True
    max_recursion_steps: int = 0
    token_budget: int = 800
    min_activations: int = 0
    min_activations_depth_max: int = 0
    #: ``spec`` semantics: budget drops the lowest ``priority`` first, keeps going.
    spec: bool = False


@dataclass(slots=True)
class Activation:
    """An entry that made it into the prompt."""

    entry: Entry
    content: str
    matched: str
    tokens: int
    scan_pass: int


@dataclass(frozen=True, slots=True)
class Cut:
    """An entry the token budget left out."""

    entry: Entry
    #: Tokens it would have taken (None: not counted, the scan had stopped before it).
    tokens: int | None
    #: ``over_budget``: it did not fit; ``scan_stopped``: not tried after the first overflow.
    reason: str


@dataclass(slots=True)
class ScanResult:
    activated: list[Activation] = field(default_factory=list)
    passes: int = 0
    tokens: int = 0
    overflowed: bool = False
    #: Entries cut by the budget (spec semantics) or left out after an overflow.
    cut: list[Cut] = field(default_factory=list)

    @property
    def dropped(self) -> list[Entry]:
        return [c.entry for c in self.cut]


def chat_for_scan(messages: list[tuple[str, str]]) -> list[str]:
    """``(name, text)`` pairs, oldest first -> trimmed scan lines, newest first."""
    return [f"{name}: {text}".strip() if name else text.strip()
            for name, text in reversed(messages)]


class _Scanner:
    def __init__(self, lore: CompiledLore, chat: list[str], opts: ScanOptions,
                 count: Callable[[str], int], rng: random.Random, char: str, user: str) -> None:
        self.lore, self.chat, self.opts = lore, chat[:MAX_SCAN_DEPTH], opts
        self.count, self.rng, self.char, self.user = count, rng, char, user
        self._chat_found: dict[tuple[int | None, int], Found] = {}
        self._segment_found: dict[tuple[int | None, int], Found] = {}
        self.segments: list[str] = []
        self.regex_seconds = 0.0

    def run_regex(self, kid: int, text: str, starts: list[int] | None) -> bool:
        """One regex key on ``text``, within the scan's regex time budget."""
        if self.regex_seconds > REGEX_SCAN_BUDGET_S:
            return False
        began = time.perf_counter()
        try:
            return self.lore.keys[kid].search(text, starts)
        finally:
            self.regex_seconds += time.perf_counter() - began
            if self.regex_seconds > REGEX_SCAN_BUDGET_S:
                logger.warning("lorebook: regex keys took over {} s this turn; the rest are "
                               "skipped (last: {!r})", REGEX_SCAN_BUDGET_S,
                               self.lore.keys[kid].raw)

    def run_regexes(self, regexes: dict[int, list[int] | None], text: str) -> list[int]:
        """The keys of ``regexes`` that match ``text``, within the scan's regex time budget.

        A key with a stdlib ``tries`` (linear: no timeout needed) and one place to try,
        as most anchored keys have, is tried right here and the clock read once per
        ``_TRY_BATCH`` tries; the others go one by one through ``run_regex``.
        """
        keys = self.lore.keys
        matched: list[int] = []
        slow: list[tuple[int, list[int] | None]] = []
        began = time.perf_counter()
        tried = 0
        for kid, starts in regexes.items():
            tries = keys[kid].tries
            if tries is None or starts is None or len(starts) != 1:
                slow.append((kid, starts))
                continue
            if tried % _TRY_BATCH == 0:
                now = time.perf_counter()
                self.regex_seconds, began = self.regex_seconds + now - began, now
                if self.regex_seconds > REGEX_SCAN_BUDGET_S:
                    logger.warning("lorebook: regex keys took over {} s this turn; the rest "
                                   "are skipped", REGEX_SCAN_BUDGET_S)
                    return matched
            tried += 1
            if tries(text, starts[0]) is not None:
                matched.append(kid)
        self.regex_seconds += time.perf_counter() - began
        matched.extend(kid for kid, starts in slow if self.run_regex(kid, text, starts))
        return matched

    def chat_text(self, depth: int) -> str:
        if depth <= 0:
            return ""
        return MATCHER + JOINER.join(self.chat[:depth])

    def keys_found(self, state: ScanState, skew: int) -> tuple[set[int], set[int]]:
        """(key ids that match, ranks with a primary match) for this pass."""
        hits: set[int] = set()
        for depth_key, index in self.lore.indexes.items():
            depth = depth_key if depth_key is not None else self.opts.scan_depth + skew
            depth = min(depth, MAX_SCAN_DEPTH)
            if depth <= 0:
                continue  # SillyTavern: an empty buffer, not even recursion text
            cache_key = (depth_key, depth)
            chat = self._chat_found.get(cache_key)
            text = self.chat_text(depth)
            if chat is None:
                chat = self._chat_found[cache_key] = index.find(text)
            segments = [] if state is ScanState.MIN_ACTIVATIONS else self.segments
            if segments:
                found = Found()
                found.update(chat)
            else:  # the cached chat's candidates are only read; its hits get added to
                found = Found(set(chat.hits), chat.regex_candidates)
            offset = len(text)
            for i, segment in enumerate(segments):
                seg_key = (depth_key, i)
                seg = self._segment_found.get(seg_key)
                if seg is None:
                    seg = self._segment_found[seg_key] = index.find(segment)
                found.update(seg, offset + len(JOINER))
                offset += len(JOINER) + len(segment)
            regexes = {k: v for k, v in found.regex_candidates.items() if k not in found.hits}
            if regexes:
                full = text + JOINER + JOINER.join(segments) if segments else text
                found.hits.update(self.run_regexes(regexes, full))
            hits |= found.hits
        owner, is_primary = self.lore.owner, self.lore.is_primary
        ranks = {owner[k] for k in hits if is_primary[k]}
        return hits, ranks

    def first_key(self, kids: list[int], hits: set[int]) -> str | None:
        for kid in kids:
            if kid in hits:
                return self.lore.keys[kid].raw
        return None

    def secondary_ok(self, rank: int, hits: set[int]) -> bool:
        lore = self.lore
        entry = lore.entries[rank]
        kids = lore.secondary[rank]
        if entry.selective and kids:
            matched = sum(1 for k in kids if k in hits)
            logic = entry.logic
            if logic == "and_any" and matched == 0:
                return False
            if logic == "not_all" and matched == len(kids):
                return False
            if logic == "not_any" and matched > 0:
                return False
            if logic == "and_all" and matched < len(kids):
                return False
        for group in lore.additional[rank]:
            if group and not any(k in hits for k in group):
                return False
        return not any(k in hits for k in lore.exclude[rank])

    def group_filter(self, new: list[tuple[int, str]], won: set[str],
                     sticky: set[int] = frozenset()) -> list[tuple[int, str]]:  # type: ignore[assignment]
        """Inclusion groups: one winner per group (override first, else weighted random);
        a group with active sticky entries keeps those and only those."""
        entries = self.lore.entries
        grouped: dict[str, list[int]] = {}
        for rank, _ in new:
            for name in entries[rank].group:
                grouped.setdefault(name, []).append(rank)
        if not grouped:
            return new
        removed: set[int] = set()
        for name, ranks in grouped.items():
            stuck = [r for r in ranks if r in sticky]
            if stuck:
                removed.update(r for r in ranks if r not in sticky)
                continue
            if name in won:
                removed.update(ranks)
                continue
            if len(ranks) < 2:
                continue
            overrides = [r for r in ranks if entries[r].group_override]
            if overrides:
                winner = max(overrides, key=lambda r: entries[r].order)
            else:
                total = sum(entries[r].group_weight for r in ranks)
                roll = self.rng.random() * total
                winner, acc = ranks[-1], 0.0
                for r in ranks:
                    acc += entries[r].group_weight
                    if roll <= acc:
                        winner = r
                        break
            removed.update(r for r in ranks if r != winner)
        return [(r, m) for r, m in new if r not in removed]


def scan(lore: CompiledLore, chat: list[str], opts: ScanOptions, *,
         count: Callable[[str], int], char: str = "", user: str = "",
         rng: random.Random | None = None,
         expand: Callable[[str], str] | None = None,
         timed: TimedEffects | None = None) -> ScanResult:
    """Run the World Info passes over ``chat`` (scan lines, newest first).

    ``expand`` expands the macros of an activated entry's content (default: only
    ``{{char}}``/``{{user}}``), as SillyTavern does before counting its tokens.
    ``timed`` (already ``check()``-ed) applies ``sticky``/``cooldown``/``delay``; the
    caller records the activations in it.
    """
    s = _Scanner(lore, chat, opts, count, rng or _RNG, char, user)
    if expand is None:
        def expand(text: str) -> str:
            return substitute(text, char, user)
    result = ScanResult()
    entries = lore.entries
    activated: dict[int, Activation] = {}
    failed: set[int] = set()
    won_groups: set[str] = set()
    levels = list(lore.delay_levels)
    level = levels.pop(0) if levels else 0
    prev_tokens = 0  # SillyTavern counts earlier recursion text against the budget
    skew = 0
    state = ScanState.INITIAL
    always = set(lore.always)
    sticky: set[int] = set()
    if timed is not None:
        sticky = {r for r in lore.timed if timed.active("sticky", entries[r])}
    while state is not ScanState.NONE:
        result.passes += 1
        if opts.max_recursion_steps and result.passes > opts.max_recursion_steps:
            break
        if result.passes > HARD_PASS_LIMIT:
            break
        hits, ranks = s.keys_found(state, skew)
        new: list[tuple[int, str]] = []
        for rank in sorted(ranks.union(always, sticky)):
            if rank in activated or rank in failed:
                continue
            entry = entries[rank]
            is_sticky = rank in sticky
            if timed is not None and (timed.active("delay", entry) or (
                    timed.active("cooldown", entry) and not is_sticky)):
                continue
            if entry.delay_until_recursion and not is_sticky and (
                    state is not ScanState.RECURSION or entry.delay_until_recursion > level):
                continue
            if (state is ScanState.RECURSION and opts.recursive and entry.exclude_recursion
                    and not is_sticky):
                continue
            if rank in always:  # constant or @@activate
                if entry.decorators.has("activate"):
                    new.append((rank, "@@activate"))
                    continue
                if entry.constant:
                    new.append((rank, "constant"))
                    continue
            if is_sticky:
                new.append((rank, "sticky"))
                continue
            key = s.first_key(lore.primary[rank], hits)
            if key is None:
                continue
            if ((entry.selective and lore.secondary[rank]) or lore.additional[rank]
                    or lore.exclude[rank]) and not s.secondary_ok(rank, hits):
                continue
            new.append((rank, key))
        if sticky:  # active sticky entries first, then scan order
            new.sort(key=lambda item: item[0] not in sticky)
        new = s.group_filter(new, won_groups, sticky)
        recursable: list[str] = []
        running = 0
        for i, (rank, matched) in enumerate(new):
            entry = entries[rank]
            if entry.use_probability and entry.probability != 100 and rank not in sticky:
                if s.rng.random() * 100 > entry.probability:
                    failed.add(rank)
                    continue
            content = expand(entry.content)
            tokens = count(content + "\n")
            if not opts.spec and prev_tokens + running + tokens >= opts.token_budget:
                result.overflowed = True
                result.cut.append(Cut(entry, tokens, "over_budget"))
                result.cut.extend(Cut(entries[r], None, "scan_stopped") for r, _ in new[i + 1:])
                break
            running += tokens
            activated[rank] = Activation(entry, content, matched, tokens, result.passes)
            won_groups.update(entry.group)
            if not entry.prevent_recursion:
                recursable.append(entry.content)
        next_state = ScanState.NONE
        if opts.recursive and not result.overflowed:
            if recursable:
                next_state = ScanState.RECURSION
            elif levels:
                next_state = ScanState.RECURSION
                level = levels.pop(0)
        if (next_state is ScanState.NONE and opts.min_activations
                and len(activated) < opts.min_activations and not result.overflowed):
            depth = opts.scan_depth + skew  # SillyTavern's check, before widening
            limit = opts.min_activations_depth_max
            if not ((limit and depth > limit) or depth > len(s.chat)):
                skew += 1
                next_state = ScanState.MIN_ACTIVATIONS
        if next_state is not ScanState.NONE and recursable:
            text = "\n".join(recursable)
            s.segments.append(text)
            prev_tokens += count(text)
        state = next_state
    result.activated = list(activated.values())
    if opts.spec:
        _spec_budget(result, opts.token_budget)
    result.tokens = sum(a.tokens for a in result.activated)
    return result


def _spec_budget(result: ScanResult, budget: int) -> None:
    """Character Card spec: over budget, the lowest ``priority`` entries go first."""
    def priority(a: Activation) -> int:
        return a.entry.priority if a.entry.priority is not None else a.entry.order

    kept: set[int] = set()
    used = 0
    for a in sorted(result.activated, key=priority, reverse=True):
        if used + a.tokens <= budget:
            used += a.tokens
            kept.add(id(a))
        else:
            result.cut.append(Cut(a.entry, a.tokens, "over_budget"))
            result.overflowed = True
    result.activated = [a for a in result.activated if id(a) in kept]
