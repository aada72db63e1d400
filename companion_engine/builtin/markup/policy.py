"""The one policy: what a browser would fetch or execute because of a reply's markup.

Every check reads a value the way the browser (or a markdown renderer) finally uses it:
character references resolved (repeatedly, so a renderer that decodes twice gains nothing),
then as the URL parser does: leading and trailing spaces and control characters dropped, tabs
and line breaks removed anywhere (``jav&#x09;ascript:`` is ``javascript:``), ``\\`` read as
``/``, the scheme case-insensitive. We go one step further than the parser and drop every
control character and space (``java\\x01script:`` is not a script URL to a browser, but
treating it as one costs nothing).

- ``is_script_url``: ``javascript:``, ``vbscript:`` (and the old ``livescript:``/``mocha:``),
  and ``data:`` unless it is a raster image: these run code when followed or loaded.
- ``is_remote_url``: a URL that makes the browser contact some server (a scheme other than
  ``data:``, or ``//host``); relative paths stay on the page's own server.
- ``css_verdict``: whether a style (or any attribute holding ``url(``) runs code or fetches.
- ``judge_tag``: the decision for one HTML tag: drop it, or keep it with which attributes.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from companion_engine.builtin.markup.tags import CM_ATTR_NAME, Attr, Tag

#: Elements removed together with everything up to their end tag.
DROP_WITH_CONTENT = frozenset({"script", "style", "iframe", "object", "applet", "noscript",
                               "noembed", "noframes", "frameset", "template"})
#: Elements removed as a tag: they load or configure something by themselves, or (SVG
#: animation: ``<set attributeName=href to=javascript:...>``) rewrite other attributes.
DROP_TAG = frozenset({"embed", "link", "meta", "base", "frame", "param", "portal",
                      "animate", "animatemotion", "animatetransform", "animatecolor", "set",
                      "discard", "handler", "listener"})
#: Attributes removed whatever their value: ``srcdoc`` is a whole document, ``ping`` posts to
#: its URLs when a link is followed.
DROP_ATTRS = frozenset({"srcdoc", "ping"})
#: Attributes whose value a browser loads by itself, on any element: a remote URL here (with
#: ``remote_images: false``) drops the whole tag. ``href`` counts everywhere but on ``a`` and
#: ``area`` (SVG ``<use>``, ``<image>``, ``<feImage>`` load it).
FETCH_ATTRS = frozenset({"src", "srcset", "imagesrcset", "poster", "background", "lowsrc",
                         "dynsrc", "data", "codebase", "manifest", "href", "xlink:href"})
LINK_ELEMENTS = frozenset({"a", "area"})

SCRIPT_SCHEMES = frozenset({"javascript", "vbscript", "livescript", "mocha"})
_SAFE_DATA = re.compile(r"data:image/(?:png|gif|jpe?g|pjpeg|webp|bmp|avif|x-icon|apng)[;,]")
_NOISE = re.compile(r"[\x00-\x20\x7f-\x9f]+")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")
#: Text inside any attribute value that we never keep, even where no URL is expected (an
#: attribute of some future element, SVG ``values="a;javascript:..."``), and what looks like
#: an event handler smuggled into a value.
_ACTIVE_VALUE = re.compile(r"javascript:|vbscript:|livescript:|data:text/html|"
                           r"(?:^|[\s/\"'])on[a-z]+\s*=")
#: CSS that runs code (old IE and Firefox): never kept.
_CSS_RUNS = re.compile(r"expression\(|javascript:|vbscript:|behaviou?r:|-moz-binding|binding:")
#: CSS that may fetch: its URLs are checked.
_CSS_FETCH = re.compile(r"url\(|image\(|image-set\(|cross-fade\(|element\(|src\(|@import")
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n\r\f]?|(\n)|(.))", re.DOTALL)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)
_CSS_TARGET = re.compile(r"(?:url|src)\(\s*(\"[^\"]*\"?|'[^']*'?|[^)]*)\)?|\"([^\"]*)\"|'([^']*)'")


def decode(value: str) -> str:
    """Character references resolved until nothing changes (at most a few rounds)."""
    for _ in range(4):
        if "&" not in value:
            break
        decoded = html.unescape(value)
        if decoded == value:
            break
        value = decoded
    return value


def plain_url(url: str) -> str:
    """The URL as the browser's parser sees its start: decoded, no noise, ``\\`` as ``/``."""
    return _NOISE.sub("", decode(url)).replace("\\", "/").lower()


def url_scheme(url: str) -> str | None:
    m = _SCHEME.match(plain_url(url))
    return m.group(1) if m else None


def is_script_url(url: str) -> bool:
    """True for a URL that runs code when followed or loaded."""
    u = plain_url(url)
    m = _SCHEME.match(u)
    if m is None:
        return False
    scheme = m.group(1)
    return scheme in SCRIPT_SCHEMES or (scheme == "data" and not _SAFE_DATA.match(u))


def is_remote_url(url: str) -> bool:
    """True for a URL that points at some server (any scheme but ``data:``, or ``//host``)."""
    u = plain_url(url.strip("\"' <>"))
    if u.startswith("//"):
        return True
    m = _SCHEME.match(u)
    return m is not None and m.group(1) != "data"


def _css_plain(css: str) -> str:
    """A style as the CSS tokenizer sees it: escapes resolved, comments gone, lower case."""
    def unescape(m: re.Match[str]) -> str:
        if m.group(1):
            cp = int(m.group(1), 16)
            return chr(cp) if 0 < cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF else "\ufffd"
        return "" if m.group(2) else m.group(3)

    return _CSS_COMMENT.sub("", _CSS_ESCAPE.sub(unescape, decode(css))).lower()


@dataclass(frozen=True, slots=True)
class CSSVerdict:
    runs: bool  # would run code
    fetches: bool  # would load something from another server


def css_verdict(css: str) -> CSSVerdict:
    text = _css_plain(css)
    squeezed = _NOISE.sub("", text)
    runs = bool(_CSS_RUNS.search(squeezed))
    fetches = False
    if _CSS_FETCH.search(squeezed):
        if "@import" in squeezed:
            fetches = True
        for m in _CSS_TARGET.finditer(re.sub(r"(url|src)\s+\(", r"\1(", text)):
            target = next((g for g in m.groups() if g is not None), "")
            if is_script_url(target.strip("\"' \t\n\r\f")):
                runs = True
            if is_remote_url(target.strip(" \t\n\r\f")):
                fetches = True
    return CSSVerdict(runs=runs, fetches=fetches)


def _candidates(value: str) -> list[str]:
    """The URLs of a ``srcset``-like list (conservatively: every piece between spaces, commas)."""
    return [p for p in re.split(r"[\s,]+", decode(value)) if p]


@dataclass(slots=True)
class Verdict:
    drop_tag: bool = False
    keep: list[Attr] | None = None  # the attributes to keep (None: all of them)


def attr_is_safe(tag_name: str, attr: Attr, remote_images: bool) -> bool:
    """May this attribute stay on a kept tag?"""
    name = attr.name
    if not CM_ATTR_NAME.fullmatch(attr.raw_name):
        return False  # quotes or other oddities in a name: no use, and unreadable to markdown
    if name.startswith("on") or name in DROP_ATTRS:
        return False
    value = attr.value
    if not value:
        return True
    plain = _NOISE.sub("", decode(value)).lower()
    if _ACTIVE_VALUE.search(plain) or _ACTIVE_VALUE.search(decode(value).lower()):
        return False
    if is_script_url(value):
        return False
    if name == "style" or "(" in plain or "\\" in value:
        verdict = css_verdict(value)
        if verdict.runs or (verdict.fetches and not remote_images):
            return False
    return True


def fetches_remote(tag_name: str, attr: Attr) -> bool:
    """Would this attribute make the browser load something from another server by itself?"""
    if attr.name not in FETCH_ATTRS:
        return False
    if attr.name in ("href", "xlink:href") and tag_name in LINK_ELEMENTS:
        return False  # a link: followed only when clicked
    if attr.name in ("srcset", "imagesrcset"):
        return any(is_remote_url(p) for p in _candidates(attr.raw_value or ""))
    return is_remote_url(attr.raw_value or "")


def judge_tag(tag: Tag, remote_images: bool) -> Verdict:
    """Drop the tag, or keep it with the attributes that are safe."""
    if not remote_images and not tag.end and any(fetches_remote(tag.name, a) for a in tag.attrs):
        return Verdict(drop_tag=True)
    keep = [a for a in tag.attrs if attr_is_safe(tag.name, a, remote_images)]
    return Verdict(keep=None if len(keep) == len(tag.attrs) else keep)
