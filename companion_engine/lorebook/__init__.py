"""The lorebook (World Info) engine: read, compile once, scan every turn, place.

``entry`` normalises every lorebook format to ``Entry``; ``compile`` indexes all
keys of the lorebooks in play (``CompiledLore``, cached by ``LoreCache``);
``scan`` runs SillyTavern's activation passes; ``placement`` turns activations
into prompt slots and depth injections. The ``lorebook`` stage
(``companion_engine.builtin.lorebook``) ties them to a turn.
"""

from companion_engine.lorebook.cache import LoreCache
from companion_engine.lorebook.compile import CompiledLore, CompileSettings, Source, compile_lore
from companion_engine.lorebook.entry import Entry, Lorebook, from_character_book, from_object
from companion_engine.lorebook.files import LorebookFiles
from companion_engine.lorebook.placement import Placement, place
from companion_engine.lorebook.scan import (
    Activation,
    ScanOptions,
    ScanResult,
    chat_for_scan,
    scan,
)

__all__ = [
    "Activation",
    "CompileSettings",
    "CompiledLore",
    "Entry",
    "LoreCache",
    "Lorebook",
    "LorebookFiles",
    "Placement",
    "ScanOptions",
    "ScanResult",
    "Source",
    "chat_for_scan",
    "compile_lore",
    "from_character_book",
    "from_object",
    "place",
    "scan",
]
