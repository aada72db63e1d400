"""Compile lorebooks once: entries in scan order, every key classified and indexed.

The result (``CompiledLore``) is reused for every turn until a lorebook
changes; compiling is the expensive step, scanning the cheap one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import regex
from loguru import logger

from companion_engine.cards.macros import substitute
from companion_engine.lorebook.entry import Entry, Lorebook, Warnings
from companion_engine.lorebook.index import KeyIndex
from companion_engine.lorebook.keys import Key, parse_js_regex, plain_key, regex_key

Strategy = Literal["character_first", "global_first", "evenly"]


@dataclass(frozen=True, slots=True)
class CompileSettings:
    """The options that change how keys compile (part of the cache key)."""

    case_sensitive: bool = False
    match_whole_words: bool = True
    #: Honour the cards' own settings (V2 ``case_sensitive``, book-level scan depth,
    #: V3 ``use_regex`` and decorators) instead of SillyTavern's behaviour.
    spec: bool = False
    strategy: Strategy = "character_first"
    char_name: str = ""
    user_name: str = ""


@dataclass(slots=True)
class Source:
    """A lorebook taking part in a scan; character lore and global lore sort separately."""

    book: Lorebook
    character: bool = True


@dataclass
class CompiledLore:
    """Entries of one or more lorebooks in scan order (rank), with their keys indexed."""

    entries: list[Entry]
    keys: list[Key]
    #: key id -> rank of the entry owning it
    owner: list[int]
    primary: list[list[int]]
    secondary: list[list[int]]
    #: ``spec`` semantics: ``@@additional_keys`` groups and ``@@exclude_keys`` per rank.
    additional: list[list[list[int]]]
    exclude: list[list[int]]
    #: Ranks of entries that activate without keys (constant, ``@@activate``).
    always: list[int]
    #: Entry scan depth (None: the stage's) -> index of the keys of those entries.
    indexes: dict[int | None, KeyIndex]
    is_primary: list[bool]
    settings: CompileSettings
    #: Distinct ``delay_until_recursion`` levels, ascending.
    delay_levels: list[int] = field(default_factory=list)
    #: Ranks of entries with a timed effect (``sticky``, ``cooldown``, ``delay``).
    timed: list[int] = field(default_factory=list)
    books: list[Lorebook] = field(default_factory=list)
    warnings: Warnings = field(default_factory=Warnings)

    @property
    def token_budget(self) -> int | None:
        return next((b.token_budget for b in self.books if b.token_budget is not None), None)

    @property
    def recursive_scanning(self) -> bool | None:
        return next((b.recursive_scanning for b in self.books
                     if b.recursive_scanning is not None), None)

    @property
    def scan_depth(self) -> int | None:
        return next((b.scan_depth for b in self.books if b.scan_depth is not None), None)


def _scan_order(sources: list[Source], strategy: Strategy) -> list[tuple[Entry, Lorebook]]:
    """SillyTavern's order: ``order`` descending, file order kept for ties (stable sort)."""

    def by_order(items: list[tuple[Entry, Lorebook]]) -> list[tuple[Entry, Lorebook]]:
        return sorted(items, key=lambda pair: -pair[0].order)

    char = [(e, s.book) for s in sources if s.character for e in s.book.entries]
    glob = [(e, s.book) for s in sources if not s.character for e in s.book.entries]
    if strategy == "evenly":
        return by_order(glob + char)
    if strategy == "global_first":
        return by_order(glob) + by_order(char)
    return by_order(char) + by_order(glob)


class _Compiler:
    def __init__(self, settings: CompileSettings, warnings: Warnings) -> None:
        self.settings = settings
        self.warnings = warnings
        self.keys: list[Key] = []
        self.owner: list[int] = []
        self.is_primary: list[bool] = []

    def compile_keys(self, entry: Entry, raws: tuple[str, ...] | list[str], rank: int,
                     index: KeyIndex, *, primary: bool) -> list[int]:
        s = self.settings
        case_sensitive = entry.case_sensitive
        if s.spec and case_sensitive is None:
            case_sensitive = entry.card_case_sensitive
        if case_sensitive is None:
            case_sensitive = s.case_sensitive
        whole = entry.match_whole_words
        if whole is None:
            whole = s.match_whole_words
        kids: list[int] = []
        for raw in raws:
            text = substitute(raw, s.char_name, s.user_name).strip()
            if not text:
                continue
            kid = len(self.keys)
            key = self._compile_one(entry, kid, text, case_sensitive, whole)
            if key is None:
                continue
            self.keys.append(key)
            self.owner.append(rank)
            self.is_primary.append(primary)
            index.add(key)
            kids.append(kid)
        return kids

    def _compile_one(self, entry: Entry, kid: int, text: str, case_sensitive: bool,
                     whole: bool) -> Key | None:
        spec_regex = self.settings.spec and entry.use_regex
        parsed = parse_js_regex(text)
        if spec_regex and parsed is None:
            parsed = (text, "" if case_sensitive else "i")
        if parsed is not None and (spec_regex or not self.settings.spec):
            try:
                return regex_key(kid, text, *parsed)
            except (regex.error, ValueError, OverflowError) as exc:
                if spec_regex:
                    self.warnings.add(entry.label, f"invalid regex key {text!r} ({exc}); the "
                                                   "key never matches")
                    return None
                self.warnings.add(entry.label, f"invalid regex key {text!r} ({exc}); matched "
                                               "as plain text, as SillyTavern does")
        return plain_key(kid, text, case_sensitive=case_sensitive, whole_words=whole)


def compile_lore(sources: list[Source], settings: CompileSettings) -> CompiledLore:
    """Compile lorebooks for scanning; problems become ``warnings``, never exceptions."""
    warnings = Warnings()
    for source in sources:
        warnings.extend(source.book.warnings)
    compiler = _Compiler(settings, warnings)
    entries: list[Entry] = []
    primary: list[list[int]] = []
    secondary: list[list[int]] = []
    additional: list[list[list[int]]] = []
    exclude: list[list[int]] = []
    always: list[int] = []
    indexes: dict[int | None, KeyIndex] = {}
    for entry, book in _scan_order(sources, settings.strategy):
        d = entry.decorators
        if entry.disabled or (d.has("dont_activate") and not d.has("activate")):
            continue
        rank = len(entries)
        entries.append(entry)
        depth = entry.scan_depth
        if settings.spec and depth is None:
            depth = book.scan_depth
        if depth is not None:
            depth = max(0, min(depth, 1000))
        index = indexes.setdefault(depth, KeyIndex())
        primary.append(compiler.compile_keys(entry, entry.keys, rank, index, primary=True))
        use_secondary = not (settings.spec and entry.use_regex)
        secondary.append(compiler.compile_keys(entry, entry.secondary_keys, rank, index,
                                               primary=False) if use_secondary else [])
        if settings.spec:
            additional.append([compiler.compile_keys(entry, group, rank, index, primary=False)
                               for group in d.additional_keys])
            exclude.append(compiler.compile_keys(entry, d.exclude_keys, rank, index,
                                                 primary=False))
        else:
            additional.append([])
            exclude.append([])
        if entry.constant or d.has("activate"):
            always.append(rank)
    for index in indexes.values():
        index.freeze()
    for message in warnings:
        logger.warning("lorebook: {}", message)
    return CompiledLore(entries=entries, keys=compiler.keys, owner=compiler.owner,
                        primary=primary, secondary=secondary, additional=additional,
                        exclude=exclude, always=always, indexes=indexes,
                        is_primary=compiler.is_primary, settings=settings,
                        delay_levels=sorted({e.delay_until_recursion for e in entries
                                             if e.delay_until_recursion}),
                        timed=[r for r, e in enumerate(entries)
                               if e.sticky or e.cooldown or e.delay],
                        books=[s.book for s in sources], warnings=warnings)
