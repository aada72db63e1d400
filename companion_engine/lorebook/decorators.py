"""``@@decorator`` lines at the top of an entry's content (Character Card V3).

Decorators are stripped from the content before it is placed in the prompt.
SillyTavern 1.12 only acts on ``@@activate`` and ``@@dont_activate``; the V3
spec defines more, which ``spec`` semantics apply (see ``docs/lorebook.md``).
A ``@@@name`` line is a fallback for the decorator above it, used only when
that one is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Decorators this engine understands (others are stripped and ignored).
KNOWN = frozenset({
    "activate", "dont_activate", "depth", "role", "scan_depth", "additional_keys",
    "exclude_keys", "position",
})


@dataclass(slots=True)
class Decorators:
    """Parsed decorators: name -> values (first occurrence wins, except the repeatable ones)."""

    values: dict[str, list[str]] = field(default_factory=dict)
    #: Extra ``@@additional_keys`` groups; each must match (AND), any key of a group (OR).
    additional_keys: list[list[str]] = field(default_factory=list)
    exclude_keys: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return name in self.values

    def first(self, name: str) -> str | None:
        vals = self.values.get(name)
        return vals[0] if vals else None


def _split_values(raw: str) -> list[str]:
    return [v.strip() for v in raw.split(",") if v.strip()]


def parse_decorators(content: str) -> tuple[Decorators, str]:
    """Split leading ``@@`` lines off ``content``: (decorators, remaining content)."""
    decorators = Decorators()
    if not content.startswith("@@"):
        return decorators, content
    lines = content.split("\n")
    rest_at = len(lines)
    previous_unknown = False
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line.startswith("@@"):
            rest_at = i
            break
        is_fallback = line.startswith("@@@")
        if is_fallback and not previous_unknown:
            continue  # the decorator above was understood: its fallback is not needed
        name, _, value = line.lstrip("@").partition(" ")
        name = name.strip().lower()
        if name not in KNOWN:
            decorators.unknown.append(name)
            previous_unknown = True
            continue
        previous_unknown = False
        if name == "additional_keys":
            decorators.additional_keys.append(_split_values(value))
        elif name == "exclude_keys":
            decorators.exclude_keys.extend(_split_values(value))
        elif name not in decorators.values:
            decorators.values[name] = _split_values(value)
    rest = "\n".join(lines[rest_at:]).lstrip("\r\n")
    return decorators, rest
