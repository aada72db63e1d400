"""One normalised lorebook entry, read from any lorebook format.

Formats: a card's ``character_book`` (``CharacterBook``, V2/V3 entries with
SillyTavern's settings in ``extensions``), SillyTavern's native World Info JSON
(``{"entries": {"0": {"uid", "key", "keysecondary", "order", ...}}}``), a V3
``lorebook_v3`` envelope and a bare V2 book object. Lorebooks are user content:
a wrong type or a missing field becomes a warning and a default, never an error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from companion_engine.cards.model import CharacterBook
from companion_engine.lorebook.decorators import Decorators, parse_decorators

#: SillyTavern's numeric positions, by name.
POSITIONS = ("before_char", "after_char", "an_top", "an_bottom", "at_depth",
             "before_examples", "after_examples", "outlet")
ROLES = ("system", "user", "assistant")
#: ``selectiveLogic``: how secondary keys combine with a primary match.
LOGIC = ("and_any", "not_all", "not_any", "and_all")
#: V3 ``@@position`` values mapped to where this engine places them.
V3_POSITIONS = {"before_desc": "before_char", "after_desc": "after_char",
                "personality": "after_char", "scenario": "after_char"}
#: Entry content longer than this is kept but flagged: it rarely fits any budget.
HUGE_CONTENT_CHARS = 20_000


@dataclass(slots=True)
class Entry:
    """A lorebook entry with every activation setting resolved to a plain value."""

    uid: int | str
    index: int
    source: str
    keys: tuple[str, ...]
    secondary_keys: tuple[str, ...] = ()
    content: str = ""
    comment: str = ""
    order: int = 100
    position: str = "after_char"
    depth: int = 4
    role: str = "system"
    constant: bool = False
    disabled: bool = False
    selective: bool = False
    logic: str = "and_any"
    #: SillyTavern's per-entry overrides (None: the stage option decides).
    case_sensitive: bool | None = None
    match_whole_words: bool | None = None
    scan_depth: int | None = None
    #: The V2 top-level ``case_sensitive`` field (honoured by ``spec`` semantics only).
    card_case_sensitive: bool | None = None
    exclude_recursion: bool = False
    prevent_recursion: bool = False
    #: 0 = off; n = may activate from recursion level n on.
    delay_until_recursion: int = 0
    probability: float = 100.0
    use_probability: bool = True
    group: tuple[str, ...] = ()
    group_override: bool = False
    group_weight: float = 100.0
    use_regex: bool = False
    priority: int | None = None
    decorators: Decorators = field(default_factory=Decorators)
    #: Timed effects, in messages (0: off): stays active / cannot reactivate / cannot
    #: activate before the chat is this long.
    sticky: int = 0
    cooldown: int = 0
    delay: int = 0
    #: Fingerprint of the entry as written: a timed effect belongs to this version of it.
    hash: str = ""

    @property
    def label(self) -> str:
        return f"{self.source} entry {self.uid}"


class Warnings(list[str]):
    """Problems found while reading or compiling a lorebook (logged, never raised)."""

    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")


@dataclass(slots=True)
class Lorebook:
    """Entries of one lorebook plus its book-level settings (used by ``spec`` semantics)."""

    name: str
    entries: list[Entry]
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive_scanning: bool | None = None
    warnings: Warnings = field(default_factory=Warnings)


# --- coercion helpers: lorebooks come from many editors --------------------------------------


def _get(raw: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in raw and raw[name] is not None:
            return raw[name]
    return None


def _as_bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return default


def _as_opt_bool(value: Any) -> bool | None:
    return None if value is None else _as_bool(value, False)


def _as_int(value: Any, default: int | None, where: str, name: str,
            warnings: Warnings) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return int(value)
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        warnings.add(where, f"{name} {value!r} is not a number; using {default}")
        return default


def _as_keys(value: Any, where: str, name: str, warnings: Warnings) -> tuple[str, ...]:
    """A key list from a list (or a comma-separated string); duplicates and blanks dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        warnings.add(where, f"{name} is {type(value).__name__}, not a list; ignored")
        return ()
    keys: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            warnings.add(where, f"{name} item {item!r} is not text; ignored")
            continue
        text = str(item)
        if text.strip() and text not in keys:
            keys.append(text)
    return tuple(keys)


def _position(value: Any, fallback: str) -> str:
    if isinstance(value, bool):
        return fallback
    if isinstance(value, (int, float)) and 0 <= int(value) < len(POSITIONS):
        return POSITIONS[int(value)]
    if isinstance(value, str):
        v = value.strip().lower()
        if v.isdigit() and int(v) < len(POSITIONS):
            return POSITIONS[int(v)]
        if v in POSITIONS:
            return v
    return fallback


def _role(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 3:
        return ROLES[int(value)]
    if isinstance(value, str) and value.strip().lower() in ROLES:
        return value.strip().lower()
    return "system"


def _logic(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 4:
        return LOGIC[int(value)]
    if isinstance(value, str) and value.strip().lower() in LOGIC:
        return value.strip().lower()
    return "and_any"


def _group(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str):
        return ()
    return tuple(g.strip() for g in value.split(",") if g.strip())


# --- one entry -------------------------------------------------------------------------------


def make_entry(raw: Mapping[str, Any], index: int, source: str, warnings: Warnings, *,
               spec: bool = False) -> Entry:
    """An ``Entry`` from a V2/V3 card entry or a SillyTavern World Info entry (dict form).

    V2 entries keep SillyTavern's settings in ``extensions`` (snake_case); native
    World Info entries carry them at the top (camelCase). Both are read.
    """
    ext = raw.get("extensions")
    ext = ext if isinstance(ext, Mapping) else {}

    def opt(snake: str, camel: str) -> Any:
        value = _get(ext, snake, camel)
        return value if value is not None else _get(raw, camel, snake)

    uid = _get(raw, "id", "uid")
    if not isinstance(uid, (int, str)) or isinstance(uid, bool):
        uid = index
    where = f"{source} entry {uid}"
    native = "key" in raw and "keys" not in raw  # SillyTavern World Info format
    keys = _as_keys(_get(raw, "keys", "key"), where, "keys", warnings)
    secondary = _as_keys(_get(raw, "secondary_keys", "keysecondary"), where, "secondary_keys",
                         warnings)
    content = raw.get("content")
    if not isinstance(content, str):
        if content is not None:
            warnings.add(where, f"content is {type(content).__name__}, not text; ignored")
        content = ""
    decorators, content = parse_decorators(content)
    if native:
        position = _position(raw.get("position"), "before_char")
        disabled = _as_bool(raw.get("disable"), False)
        order = _as_int(raw.get("order"), 100, where, "order", warnings)
    else:
        card_pos = raw.get("position")
        fallback = "before_char" if card_pos == "before_char" else "after_char"
        position = _position(ext.get("position"), fallback)
        disabled = not _as_bool(raw.get("enabled"), True)
        order = _as_int(_get(raw, "insertion_order", "order"), 100, where, "insertion_order",
                        warnings)
    delay = opt("delay_until_recursion", "delayUntilRecursion")
    delay_level = (1 if delay is True else 0 if delay in (None, False)
                   else _as_int(delay, 0, where, "delay_until_recursion", warnings) or 0)
    probability = opt("probability", "probability")
    try:
        prob = float(probability) if probability is not None else 100.0
    except (TypeError, ValueError):
        warnings.add(where, f"probability {probability!r} is not a number; using 100")
        prob = 100.0
    entry = Entry(
        uid=uid, index=index, source=source, keys=keys, secondary_keys=secondary,
        content=content,
        comment=str(raw.get("comment") or raw.get("name") or ""),
        order=order if order is not None else 100,
        position=position,
        depth=_as_int(opt("depth", "depth"), 4, where, "depth", warnings) or 0,
        role=_role(opt("role", "role")),
        constant=_as_bool(raw.get("constant"), False),
        disabled=disabled,
        selective=_as_bool(raw.get("selective"), False),
        logic=_logic(opt("selective_logic", "selectiveLogic")),
        case_sensitive=_as_opt_bool(opt("case_sensitive", "caseSensitive") if native
                                    else _get(ext, "case_sensitive", "caseSensitive")),
        match_whole_words=_as_opt_bool(opt("match_whole_words", "matchWholeWords")),
        scan_depth=_as_int(opt("scan_depth", "scanDepth"), None, where, "scan_depth", warnings),
        card_case_sensitive=None if native else _as_opt_bool(raw.get("case_sensitive")),
        exclude_recursion=_as_bool(opt("exclude_recursion", "excludeRecursion"), False),
        prevent_recursion=_as_bool(opt("prevent_recursion", "preventRecursion"), False),
        delay_until_recursion=max(0, delay_level),
        probability=prob,
        use_probability=_as_bool(opt("use_probability", "useProbability"), True),
        group=_group(opt("group", "group")),
        group_override=_as_bool(opt("group_override", "groupOverride"), False),
        group_weight=float(_as_int(opt("group_weight", "groupWeight"), 100, where,
                                   "group_weight", warnings) or 0),
        use_regex=_as_bool(raw.get("use_regex"), False),
        priority=_as_int(raw.get("priority"), None, where, "priority", warnings),
        decorators=decorators,
        sticky=max(0, _as_int(opt("sticky", "sticky"), 0, where, "sticky", warnings) or 0),
        cooldown=max(0, _as_int(opt("cooldown", "cooldown"), 0, where, "cooldown",
                                warnings) or 0),
        delay=max(0, _as_int(opt("delay", "delay"), 0, where, "delay", warnings) or 0),
        hash=_fingerprint(raw),
    )
    if spec:
        _apply_v3_decorators(entry, where, warnings)
    _check(entry, where, warnings)
    return entry


def _fingerprint(raw: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(raw, sort_keys=True, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(raw)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _apply_v3_decorators(entry: Entry, where: str, warnings: Warnings) -> None:
    """Placement decorators of the V3 spec (``spec`` semantics only)."""
    d = entry.decorators
    if d.has("depth"):
        depth = _as_int(d.first("depth"), None, where, "@@depth", warnings)
        if depth is not None:
            entry.position, entry.depth = "at_depth", max(0, depth)
    if d.has("role"):
        entry.role = _role(d.first("role"))
    if d.has("scan_depth"):
        entry.scan_depth = _as_int(d.first("scan_depth"), entry.scan_depth, where,
                                   "@@scan_depth", warnings)
    if d.has("position"):
        value = (d.first("position") or "").lower()
        if value in V3_POSITIONS:
            entry.position = V3_POSITIONS[value]
        else:
            warnings.add(where, f"@@position {value!r} is not supported; entry stays "
                                f"{entry.position}")


def _check(entry: Entry, where: str, warnings: Warnings) -> None:
    if entry.disabled:
        return
    if not entry.keys and not entry.constant and not entry.decorators.has("activate"):
        warnings.add(where, "has no keys and is not constant: it can never activate")
    if len(entry.content) > HUGE_CONTENT_CHARS:
        warnings.add(where, f"content is {len(entry.content):,} characters: it will rarely "
                            "fit the token budget (and fills it when it does)")
    if entry.decorators.unknown:
        warnings.add(where, "unknown decorators ignored: "
                            + ", ".join("@@" + n for n in entry.decorators.unknown))


# --- whole lorebooks -------------------------------------------------------------------------


def from_character_book(book: CharacterBook, source: str = "character", *,
                        spec: bool = False) -> Lorebook:
    """A card's ``character_book`` as a ``Lorebook``."""
    warnings = Warnings()
    entries = [
        make_entry(e.model_dump(mode="python", exclude_unset=False), i, source, warnings,
                   spec=spec)
        for i, e in enumerate(book.entries)
    ]
    return Lorebook(name=book.name or source, entries=entries, scan_depth=book.scan_depth,
                    token_budget=book.token_budget,
                    recursive_scanning=book.recursive_scanning, warnings=warnings)


def from_object(data: Any, source: str, *, spec: bool = False) -> Lorebook:
    """A lorebook from parsed JSON: ST World Info, ``lorebook_v3``, a V2 book or a whole card."""
    warnings = Warnings()
    if isinstance(data, Mapping) and data.get("spec") in ("lorebook_v3", "chara_card_v2",
                                                          "chara_card_v3"):
        inner = data.get("data")
        if isinstance(inner, Mapping) and "character_book" in inner:
            inner = inner.get("character_book")
        data = inner
    if not isinstance(data, Mapping):
        warnings.add(source, "not a lorebook (expected a JSON object with `entries`)")
        return Lorebook(name=source, entries=[], warnings=warnings)
    raw_entries = data.get("entries")
    if isinstance(raw_entries, Mapping):
        items = list(raw_entries.values())
    elif isinstance(raw_entries, list):
        items = raw_entries
    else:
        warnings.add(source, "has no `entries` list or object")
        items = []
    entries: list[Entry] = []
    for i, raw in enumerate(items):
        if not isinstance(raw, Mapping):
            warnings.add(f"{source} entry #{i}", f"is {type(raw).__name__}, not an object; "
                                                 "skipped")
            continue
        entries.append(make_entry(raw, i, source, warnings, spec=spec))
    return Lorebook(
        name=str(data.get("name") or source), entries=entries,
        scan_depth=_as_int(data.get("scan_depth"), None, source, "scan_depth", warnings),
        token_budget=_as_int(data.get("token_budget"), None, source, "token_budget", warnings),
        recursive_scanning=_as_opt_bool(data.get("recursive_scanning")),
        warnings=warnings,
    )
