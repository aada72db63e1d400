"""Content-hashed names for the web app's files, computed when the server first serves them.

Every file in ``static/`` gets a name carrying the hash of its content
(``chat.js`` -> ``chat.3f9a0c1b2d.js``), so it can be cached forever
(``immutable``) and a changed file is a new URL. A module's hash covers the
hashed names of the modules it imports (its imports are rewritten to them), so
changing ``api.js`` also renames every module that imports it, and nothing else.
``index.html`` is rendered with the hashed names and a ``modulepreload`` link for
every module the entry point reaches, so the browser fetches them in parallel.

The files are plain ES modules as written (no bundler, nothing to build); only
relative imports of sibling files (``from "./api.js"``) are rewritten, and a
missing file or an import cycle is an error at build time, not a broken page.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
INDEX = "index.html"
ENTRY = "main.js"
#: How ``index.html`` refers to files (relative to ``/``, so a proxy prefix still works).
ASSET_PATH = "app/assets/"
HASH_CHARS = 10
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".html": "text/html; charset=utf-8",
}
#: Compressing these pays; images are compressed already.
COMPRESSIBLE = frozenset({".js", ".css", ".svg", ".html"})

#: ``from "./x.js"``, ``import "./x.js"``, ``import("./x.js")``.
IMPORT = re.compile(r"""(\bfrom\s*|\bimport\s*\(?\s*)(["'])\./([\w-]+\.js)\2""")
#: ``url("./icon.svg")`` in CSS.
CSS_URL = re.compile(r"""(url\(\s*)(["']?)\./([\w.-]+)\2(\s*\))""")
#: ``"app/assets/main.js"`` in the page.
PAGE_REF = re.compile(r"""(["'])""" + re.escape(ASSET_PATH) + r"""([\w.-]+)\1""")
PRELOAD_MARK = "<!-- modulepreload -->"


class AssetError(Exception):
    """The static folder is inconsistent (a missing import, a cycle)."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One servable file: its hashed name, bytes, and the gzip of them when that is smaller."""

    name: str
    source: str
    body: bytes
    gzipped: bytes | None
    content_type: str

    @property
    def etag(self) -> str:
        return '"' + self.name + '"'


@dataclass(frozen=True, slots=True)
class Manifest:
    """The fingerprinted app: assets by hashed name, the rendered page, and what it was
    built from (to notice edits)."""

    assets: dict[str, Asset]
    hashed: dict[str, str]
    index: Asset
    signature: tuple[tuple[str, int, int], ...]

    def url(self, source: str) -> str:
        """The path of a file by its source name, e.g. ``/app/assets/main.3f9a0c1b2d.js``."""
        return "/" + ASSET_PATH + self.hashed[source]

    @property
    def weight(self) -> tuple[int, int]:
        """(bytes, gzipped bytes) of the page and every asset."""
        files = [self.index, *self.assets.values()]
        return (sum(len(a.body) for a in files),
                sum(len(a.gzipped or a.body) for a in files))


def signature(directory: Path = STATIC_DIR) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of every file: changes when any file is edited."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            st = path.stat()
            found.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(found)


def compressed(body: bytes, suffix: str) -> bytes | None:
    """``body`` gzipped, when that pays for this kind of file."""
    if suffix not in COMPRESSIBLE:
        return None
    packed = gzip.compress(body, compresslevel=9, mtime=0)
    return packed if len(packed) < len(body) else None


def _asset(name: str, source: str, body: bytes) -> Asset:
    suffix = Path(source).suffix
    return Asset(name, source, body, compressed(body, suffix),
                 CONTENT_TYPES.get(suffix, "application/octet-stream"))


def _references(source: str, text: str) -> list[str]:
    if source.endswith(".js"):
        return [m.group(3) for m in IMPORT.finditer(text)]
    if source.endswith(".css"):
        return [m.group(3) for m in CSS_URL.finditer(text)]
    return []


def build(directory: Path = STATIC_DIR) -> Manifest:
    """Fingerprint every file of ``directory`` and render the page (blocking file I/O)."""
    sig = signature(directory)
    files = {name for name, _, _ in sig}
    if INDEX not in files or ENTRY not in files:
        raise AssetError(f"{directory} needs {INDEX} and {ENTRY}")
    hashed: dict[str, str] = {}
    assets: dict[str, Asset] = {}
    imports: dict[str, list[str]] = {}

    def resolve(source: str, chain: tuple[str, ...]) -> str:
        if source in hashed:
            return hashed[source]
        if source in chain:
            raise AssetError("import cycle: " + " -> ".join((*chain, source)))
        if source not in files:
            raise AssetError(f"{chain[-1]} refers to {source}, which is not in {directory}")
        raw = (directory / source).read_bytes()
        if source.endswith((".js", ".css")):
            text = raw.decode("utf-8")
            refs = _references(source, text)
            imports[source] = refs
            names = {ref: resolve(ref, (*chain, source)) for ref in refs}
            pattern = IMPORT if source.endswith(".js") else CSS_URL
            text = pattern.sub(lambda m: m.group(0).replace(m.group(3), names[m.group(3)]),
                               text)
            raw = text.encode("utf-8")
        digest = hashlib.sha256(raw).hexdigest()[:HASH_CHARS]
        stem, dot, suffix = source.rpartition(".")
        name = f"{stem}.{digest}.{suffix}" if dot else f"{source}.{digest}"
        hashed[source] = name
        assets[name] = _asset(name, source, raw)
        return name

    for source in sorted(files - {INDEX}):
        resolve(source, (INDEX,))

    def reachable(source: str, seen: dict[str, None]) -> dict[str, None]:
        for dep in imports.get(source, []):
            if dep not in seen:
                seen[dep] = None
                reachable(dep, seen)
        return seen

    page = (directory / INDEX).read_text("utf-8")

    def page_ref(m: re.Match[str]) -> str:
        if m.group(2) not in hashed:
            raise AssetError(f"{INDEX} refers to {m.group(2)}, which is not in {directory}")
        return m.group(1) + ASSET_PATH + hashed[m.group(2)] + m.group(1)

    page = PAGE_REF.sub(page_ref, page)
    preload = "\n".join(f'<link rel="modulepreload" href="{ASSET_PATH}{hashed[dep]}">'
                        for dep in reachable(ENTRY, {}))
    page = page.replace(PRELOAD_MARK, preload)
    body = page.encode("utf-8")
    index = _asset(hashlib.sha256(body).hexdigest()[:HASH_CHARS], INDEX, body)
    return Manifest(assets, hashed, index, sig)
