"""Reading card files: detect the format, normalise to ``Character``, validate.

Accepted: TavernAI V1 (flat, also the Pygmalion ``char_*`` variant), Character
Card V2 (``chara_card_v2``, hybrids with V1 fields at the root included) and V3
(``chara_card_v3``), as JSON or embedded in a PNG, plus hand-written YAML in
the store folder (a bare V2 ``data`` mapping or a full envelope).

Nothing is dropped: unknown card fields stay on the model (``extra="allow"``),
unknown keys at the file's root go to ``Character.root_extra``. Problems that
make a card unusable raise ``CardError``; the rest come back as warnings.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from companion_engine import jsoninput
from companion_engine.cards import png
from companion_engine.cards.errors import CardError, Issue
from companion_engine.cards.model import Character

Container = Literal["json", "png", "yaml"]

V2_SPEC, V3_SPEC = "chara_card_v2", "chara_card_v3"
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
#: Card fields read from the root of a card without ``spec``: V1's own plus the V2 ones a
#: flat object may carry (a bare card sent to the API, ST's V1 exports with ``creator``).
FLAT_FIELDS = (*V1_FIELDS, "creator_notes", "system_prompt", "post_history_instructions",
               "alternate_greetings", "character_book", "tags", "creator", "character_version",
               "extensions")
#: V1 fields (and ST's root copies) that a V2 hybrid repeats at the root; written from ``data``.
MIRROR_KEYS = frozenset({*V1_FIELDS, "creatorcomment", "tags"})
ENVELOPE_KEYS = frozenset({"spec", "spec_version", "data"})
#: Pygmalion / "gradio" JSON field names, mapped as SillyTavern maps them.
PYGMALION_FIELDS = {"char_name": "name", "char_persona": "personality",
                    "char_greeting": "first_mes", "world_scenario": "scenario",
                    "example_dialogue": "mes_example"}
#: Model fields that are store bookkeeping, not card data.
INTERNAL_FIELDS = frozenset({"id", "source_format", "source_file", "root_extra"})
STRING_FIELDS = ("description", "personality", "scenario", "first_mes", "mes_example",
                 "creator_notes", "system_prompt", "post_history_instructions", "creator",
                 "character_version")
LIST_FIELDS = ("alternate_greetings", "tags", "group_only_greetings")
#: Largest card text (base64 in a PNG chunk) decoded.
MAX_CARD_TEXT = 16 * 1024 * 1024
_OTHER_IMAGES = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"RIFF": "WEBP"}


@dataclass(slots=True)
class ParsedCard:
    """A card read from a file: the normalised character and what was tolerated."""

    character: Character
    container: Container
    warnings: list[Issue] = field(default_factory=list)


# --- bytes -> object ---------------------------------------------------------------------------


def parse_card(data: bytes) -> ParsedCard:
    """A card from the bytes of a JSON or PNG file (detected by content, not by name)."""
    if png.is_png(data):
        return _parse_png(data)
    for magic, kind in _OTHER_IMAGES.items():
        if data.startswith(magic):
            raise CardError(f"{kind} images cannot carry a card; upload a PNG or JSON card",
                            status=415)
    text = _decode_utf8(data, "file")
    if text.lstrip()[:1] not in ("{", "["):
        raise CardError("not a character card: expected a PNG image or a JSON object",
                        status=415)
    return card_from_object(load_json(text, "file"), container="json")


def load_json(text: str, what: str) -> Any:
    """Client JSON (``jsoninput.loads``) with a 400 ``CardError`` naming line and column."""
    try:
        return jsoninput.loads(text)
    except jsoninput.JSONInputError as exc:
        raise CardError(f"{what} is not valid JSON: {exc.detail}", status=400,
                        line=exc.line) from None


def _decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason})",
                        status=400) from None


def _parse_png(data: bytes) -> ParsedCard:
    texts = png.card_texts(png.read_chunks(data))
    if not texts:
        raise CardError("PNG has no character card in it (no tEXt chunk named 'chara' "
                        "or 'ccv3')", status=422)
    failures: list[str] = []
    for keyword, text in texts:
        try:
            parsed = card_from_object(_decode_chunk(keyword, text), container="png")
        except CardError as exc:
            if len(texts) == 1 or failures:
                prior = f"{failures[0]}; " if failures else ""
                raise CardError(f"{prior}{exc.message}", status=exc.status,
                                issues=exc.issues) from None
            failures.append(exc.message)
            continue
        if failures:
            parsed.warnings.append(Issue("", f"{failures[0]}; used the '{keyword}' chunk"))
        return parsed
    raise AssertionError("unreachable")  # pragma: no cover


def _decode_chunk(keyword: str, text: str) -> Any:
    """The JSON object in a card chunk: base64 of UTF-8 JSON (or, leniently, raw JSON)."""
    what = f"the PNG '{keyword}' chunk"
    if len(text) > MAX_CARD_TEXT:
        raise CardError(f"{what} is larger than {MAX_CARD_TEXT} bytes", status=413)
    stripped = text.strip()
    if stripped.startswith("{"):
        return load_json(stripped, what)
    compact = re.sub(r"\s+", "", stripped)
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"{what} is not valid base64", status=400) from None
    return load_json(_decode_utf8(raw, what), what)


# --- object -> Character -----------------------------------------------------------------------


def card_from_object(obj: Any, *, container: Container = "json",
                     yaml_flat: bool = False) -> ParsedCard:
    """Normalise a decoded card (any supported version) and validate it.

    ``yaml_flat``: a mapping without ``spec`` is a bare V2 ``data`` block (how
    hand-written YAML cards are written) rather than a V1 card.
    """
    if not isinstance(obj, dict):
        raise CardError(f"not a character card: expected a JSON object, got "
                        f"{_type_name(obj)}")
    ensure_unicode(obj)
    warnings: list[Issue] = []
    spec = obj.get("spec")
    if spec is None:
        data, prefix, root_extra, source = _unversioned(obj, yaml_flat, warnings)
    elif spec in (V2_SPEC, V3_SPEC):
        data = obj.get("data")
        if not isinstance(data, dict):
            raise CardError(f"not a valid {spec} card: `data` must be an object",
                            issues=[Issue("data", "missing or not an object")])
        prefix = "data."
        root_extra = {k: v for k, v in obj.items() if k not in ENVELOPE_KEYS | MIRROR_KEYS}
        source = "v2" if spec == V2_SPEC else "v3"
        _check_spec_version(spec, obj.get("spec_version"), warnings)
    elif spec == "lorebook_v3":
        raise CardError("this is a lorebook (lorebook_v3), not a character card")
    else:
        raise CardError(f"unsupported card spec {spec!r}: expected {V2_SPEC!r} or {V3_SPEC!r}",
                        issues=[Issue("spec", f"unsupported value {spec!r}")])
    if yaml_flat or container == "yaml":
        data = _plain_json(data)
        root_extra = _plain_json(root_extra)
        source = "yaml"
    character = _validate(data, prefix, warnings)
    if source == "v3" and "group_only_greetings" not in data:
        warnings.append(Issue(f"{prefix}group_only_greetings", "required by V3; assumed []"))
    character.source_format = source
    character.root_extra = root_extra
    return ParsedCard(character, container, warnings)


def ensure_unicode(obj: Any) -> None:
    """Reject text that cannot be stored as UTF-8 (unpaired UTF-16 surrogates like ``\\ud800``)."""
    try:
        json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise CardError("card text contains an unpaired UTF-16 surrogate (\\ud800-\\udfff); "
                        "it is not valid Unicode") from None


def _unversioned(obj: dict[str, Any], yaml_flat: bool, warnings: list[Issue]
                 ) -> tuple[dict[str, Any], str, dict[str, Any], str]:
    """(data, path prefix, root extras, source format) of a card without ``spec``."""
    if yaml_flat:
        return obj, "", {}, "yaml"
    if "name" not in obj and "entries" in obj:
        raise CardError("this is a lorebook / World Info file, not a character card")
    if "char_name" in obj and "name" not in obj:
        obj = {PYGMALION_FIELDS.get(k, k): v for k, v in obj.items()}
        warnings.append(Issue("", "Pygmalion-style card converted to V2"))
    if "name" not in obj:
        raise CardError("not a character card: no `spec` and no `name`",
                        issues=[Issue("name", "missing")])
    data = {k: obj[k] for k in FLAT_FIELDS if k in obj}
    if "creatorcomment" in obj and "creator_notes" not in obj:
        data["creator_notes"] = obj["creatorcomment"]
    root_extra = {k: v for k, v in obj.items() if k not in MIRROR_KEYS | set(FLAT_FIELDS)}
    return data, "", root_extra, "v1"


def _check_spec_version(spec: str, version: Any, warnings: list[Issue]) -> None:
    expected = "2.0" if spec == V2_SPEC else "3.0"
    if version is None:
        warnings.append(Issue("spec_version", f"missing; assumed {expected}"))
        return
    if spec == V2_SPEC:
        if str(version) != expected:
            warnings.append(Issue("spec_version", f"{version!r} is not {expected!r}"))
        return
    try:
        newer = float(version) > 3.0
    except (TypeError, ValueError):
        warnings.append(Issue("spec_version", f"{version!r} is not a number"))
        return
    if newer:
        warnings.append(Issue("spec_version", f"{version} is newer than 3.0; read as 3.0"))


def _validate(data: dict[str, Any], prefix: str, warnings: list[Issue]) -> Character:
    data = dict(data)
    for key in INTERNAL_FIELDS & data.keys():
        warnings.append(Issue(prefix + key, "reserved by the store; ignored"))
        del data[key]
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problem = "missing" if name is None else (
            "must be a string" if not isinstance(name, str) else "is empty")
        raise CardError(f"invalid character card: {prefix}name {problem}",
                        issues=[Issue(prefix + "name", problem)])
    _coerce_loose_types(data, prefix, warnings)
    try:
        character = Character.model_validate(data)
    except ValidationError as exc:
        issues = [
            Issue(prefix + _loc(e["loc"]), e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise CardError(f"invalid character card: {issues[0]}", issues=issues) from None
    _content_warnings(character, prefix, warnings)
    return character


def _coerce_loose_types(data: dict[str, Any], prefix: str, warnings: list[Issue]) -> None:
    """Fix the harmless type slips common in real cards (null strings, numeric versions)."""
    for key in STRING_FIELDS:
        value = data.get(key)
        if key in data and value is None:
            data[key] = ""
            warnings.append(Issue(prefix + key, "null; read as empty text"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            data[key] = str(value)
            warnings.append(Issue(prefix + key, "a number; read as text"))
    for key in LIST_FIELDS:
        value = data.get(key)
        if key in data and value is None:
            data[key] = []
            warnings.append(Issue(prefix + key, "null; read as an empty list"))
        elif isinstance(value, str):
            data[key] = ([t.strip() for t in value.split(",") if t.strip()] if key == "tags"
                         else [value])
            warnings.append(Issue(prefix + key, "a string; read as a list"))


def _content_warnings(c: Character, prefix: str, warnings: list[Issue]) -> None:
    if not c.description.strip():
        warnings.append(Issue(prefix + "description", "empty"))
    if not c.first_mes.strip():
        warnings.append(Issue(prefix + "first_mes", "empty: the character has no greeting"))
    if c.mes_example.strip() and "<start>" not in c.mes_example.lower():
        warnings.append(Issue(prefix + "mes_example", "has no <START> separator"))
    if c.character_book is not None:
        for i, entry in enumerate(c.character_book.entries):
            if not entry.constant and not any(k.strip() for k in entry.keys):
                warnings.append(Issue(f"{prefix}character_book.entries[{i}].keys",
                                      "no keys and not constant: the entry never activates"))


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _type_name(obj: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(obj), type(obj).__name__)


def _plain_json(value: Any) -> Any:
    """YAML-only values (dates, timestamps) as the ISO text JSON would carry."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


# --- YAML cards ----------------------------------------------------------------------------


def read_yaml_card(path: Path, display: str | None = None) -> ParsedCard:
    """A hand-written YAML card; errors carry the line of the offending key."""
    from companion_engine.configload import read_yaml
    from companion_engine.errors import ConfigError

    try:
        doc = read_yaml(path, display)
    except ConfigError as exc:
        first = exc.problems[0]
        raise CardError(first.message, status=400, line=first.line) from None
    try:
        parsed = card_from_object(doc.data, container="yaml", yaml_flat="spec" not in (
            doc.data if isinstance(doc.data, dict) else {}))
    except CardError as exc:
        issues = [Issue(i.path, i.message, doc.line(i.path)) for i in exc.issues]
        raise CardError(exc.message, status=exc.status, issues=issues,
                        line=issues[0].line if issues else None) from None
    parsed.warnings = [Issue(w.path, w.message, doc.line(w.path)) for w in parsed.warnings]
    return parsed
