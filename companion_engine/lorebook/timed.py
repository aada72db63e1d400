"""World Info timed effects: ``sticky``, ``cooldown`` and ``delay``, counted in messages.

SillyTavern 1.12's ``WorldInfoTimedEffects``, rule for rule (the tests replay
scenarios computed by its own class under node):

- ``delay: N`` — the entry cannot activate while the chat has fewer than N messages;
- ``sticky: N`` — once activated it stays active for N messages (even without a
  key match; it also wins its inclusion group and skips its probability roll);
- ``cooldown: N`` — once activated it cannot activate again for N messages; when
  a sticky period ends, the cooldown starts then (``protected``).

The state is one JSON object per conversation (its state key ``"lorebook_timed"``),
``{"sticky": {key: effect}, "cooldown": {key: effect}}`` with ``key`` =
``"<lorebook>.<uid>"`` and ``effect`` = ``{"hash", "start", "end", "protected"}``
(chat lengths). An effect of an entry that changed (another ``hash``) or left the
lorebook lapses at its end; one whose chat did not grow (a regenerated reply, a
deleted tail) is dropped unless protected. A branch copies the state with the
conversation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal

from companion_engine.lorebook.entry import Entry

EffectType = Literal["sticky", "cooldown", "delay"]
STATE_KEY = "lorebook_timed"


def entry_key(entry: Entry) -> str:
    return f"{entry.source}.{entry.uid}"


def _valid(state: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """A clean copy of a stored state (bad parts dropped, as SillyTavern does)."""
    out: dict[str, dict[str, dict[str, Any]]] = {"sticky": {}, "cooldown": {}}
    if not isinstance(state, dict):
        return out
    for kind in ("sticky", "cooldown"):
        effects = state.get(kind)
        if isinstance(effects, dict):
            out[kind] = {str(k): copy.copy(v) for k, v in effects.items()
                         if isinstance(v, dict) and _num(v.get("start")) is not None
                         and _num(v.get("end")) is not None}
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TimedEffects:
    """The timed effects of one scan: read the state, say what is active, record activations."""

    def __init__(self, chat_length: int, entries: Iterable[Entry], state: Any) -> None:
        self.chat_length = chat_length
        self.all_entries = entries if isinstance(entries, list) else list(entries)
        self.entries = [e for e in self.all_entries if e.sticky or e.cooldown or e.delay]
        self.state = _valid(state)
        self._active: dict[str, set[str]] = {"sticky": set(), "cooldown": set(), "delay": set()}
        self.changed = False

    @property
    def any(self) -> bool:
        """Whether timed effects can matter at all (some entry has one, or state exists)."""
        return bool(self.entries or self.state["sticky"] or self.state["cooldown"])

    def _effect(self, kind: str, entry: Entry, protected: bool) -> dict[str, Any]:
        return {"hash": entry.hash, "start": self.chat_length,
                "end": self.chat_length + int(getattr(entry, kind)), "protected": protected}

    def _check(self, kind: Literal["sticky", "cooldown"]) -> None:
        effects = self.state[kind]
        if not effects:
            return
        # Every entry, not only timed ones: one that lost its setting ends its effect now.
        by_hash = {e.hash: e for e in self.all_entries}
        n = self.chat_length
        for key, value in list(effects.items()):
            entry = by_hash.get(str(value.get("hash")))
            start, end = _num(value.get("start")) or 0.0, _num(value.get("end")) or 0.0
            if n <= start and not value.get("protected"):
                del effects[key]  # the chat did not advance
                self.changed = True
                continue
            if entry is None:  # gone from the lorebooks (or changed): lapses at its end
                if n >= end:
                    del effects[key]
                    self.changed = True
                continue
            if not getattr(entry, kind):
                del effects[key]
                self.changed = True
                continue
            if n >= end:
                del effects[key]
                self.changed = True
                if kind == "sticky" and entry.cooldown:  # the cooldown starts as sticky ends
                    self.state["cooldown"][entry_key(entry)] = self._effect("cooldown", entry,
                                                                            True)
                    self._active["cooldown"].add(entry.hash)
                continue
            self._active[kind].add(entry.hash)

    def check(self) -> TimedEffects:
        """SillyTavern's ``checkTimedEffects``: expire, start cooldowns, find what is active."""
        self._check("sticky")
        self._check("cooldown")
        for entry in self.entries:
            if entry.delay and self.chat_length < entry.delay:
                self._active["delay"].add(entry.hash)
        return self

    def active(self, kind: EffectType, entry: Entry) -> bool:
        return entry.hash in self._active[kind]

    def record(self, activated: Iterable[Entry]) -> None:
        """SillyTavern's ``setTimedEffects``: a new sticky / cooldown for each activation."""
        for entry in activated:
            for kind in ("sticky", "cooldown"):
                if getattr(entry, kind) and entry_key(entry) not in self.state[kind]:
                    self.state[kind][entry_key(entry)] = self._effect(kind, entry, False)
                    self.changed = True
