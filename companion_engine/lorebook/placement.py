"""Where activated entries go: position buckets and in-chat depth injections.

SillyTavern sorts the activated entries by ``order`` descending and puts each
at the *front* of its bucket: every bucket ends up in ascending ``order``
(lower order = earlier in the prompt) with ties in reverse activation order.
``at_depth`` entries are grouped by (depth, role), each group one message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from companion_engine.lorebook.entry import POSITIONS, ROLES
from companion_engine.lorebook.scan import Activation


@dataclass(slots=True)
class Placement:
    #: position name -> contents, in prompt order
    slots: dict[str, list[str]] = field(default_factory=dict)
    #: (depth, role, text), one per (depth, role) group
    depth_injections: list[tuple[int, str, str]] = field(default_factory=list)
    #: the activations in prompt order (by position, then as placed)
    ordered: list[Activation] = field(default_factory=list)


def place(activated: list[Activation]) -> Placement:
    buckets: dict[str, list[Activation]] = {}
    depth_groups: dict[tuple[int, str], list[Activation]] = {}
    for act in sorted(activated, key=lambda a: -a.entry.order):
        if not act.content.strip():
            continue
        entry = act.entry
        if entry.position == "at_depth":
            depth_groups.setdefault((entry.depth, entry.role), []).insert(0, act)
        else:
            buckets.setdefault(entry.position, []).insert(0, act)
    placement = Placement()
    for position in POSITIONS:
        if position in buckets:
            placement.slots[position] = [a.content for a in buckets[position]]
            placement.ordered.extend(buckets[position])
    for (depth, role), acts in sorted(depth_groups.items(),
                                      key=lambda item: (item[0][0], ROLES.index(item[0][1]))):
        placement.depth_injections.append((depth, role, "\n".join(a.content for a in acts)))
        placement.ordered.extend(acts)
    return placement
