// Safe markdown for chat replies, rendered straight to DOM nodes (never an HTML string).
//
// Roleplay conventions first: *single asterisks* are actions (styled, not just italic),
// "quoted speech" is dialogue, [joy]-style tags are expressions (shown as chips).
// Links open only for http(s)/mailto; images are never loaded (their alt text shows);
// a few attribute-free inline HTML tags (<b>, <i>, <br>, ...) become elements and any
// other markup shows as the text it is. A reply still streaming renders its open
// action or quote styled to the end, so nothing jumps when it closes.

const MAX_DEPTH = 8;
const SAFE_URL = /^(?:https?:\/\/|mailto:)/iu;
const BARE_URL = /^https?:\/\/[^\s<>"'`]+/iu;
const EXPRESSION = /^[\p{L}\p{N}][\p{L}\p{N}_ -]{0,31}$/u;
const INLINE_TAGS = new Set(["b", "i", "em", "strong", "u", "s", "del", "code", "sub", "sup", "small", "mark", "q"]);
const ENTITIES = {
  amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0", hellip: "…", mdash: "—",
  ndash: "–", lsquo: "‘", rsquo: "’", ldquo: "“", rdquo: "”", copy: "©", reg: "®",
  trade: "™", times: "×", middot: "·", bull: "•", deg: "°", laquo: "«", raquo: "»",
};
const PUNCT = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)/u;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/u;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/u;
const QUOTE = /^ {0,3}> ?/u;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])\s+(.*)$/u;

/** Split text into block descriptors ({type, key, ...}); ``key`` identifies its source. */
export function blocks(text) {
  const lines = String(text).replace(/\r\n?/gu, "\n").split("\n");
  const out = [];
  let i = 0;
  const startsBlock = (line) => FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || RULE.test(line) || ITEM.test(line);
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      let closed = false;
      for (i++; i < lines.length; i++) {
        if (lines[i].trim().startsWith(fence[0].repeat(fence.length)) && !lines[i].trim().slice(fence.length).trim()) {
          closed = true;
          i++;
          break;
        }
        body.push(lines[i]);
      }
      out.push({type: "code", lang: m[2], text: body.join("\n"), closed});
    } else if ((m = HEADING.exec(line))) {
      out.push({type: "heading", level: m[1].length, text: m[2]});
      i++;
    } else if (RULE.test(line)) {
      out.push({type: "rule"});
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
      out.push({type: "quote", text: body.join("\n")});
    } else if ((m = ITEM.exec(line))) {
      const ordered = /\d/u.test(m[2]);
      const items = [];
      while (i < lines.length) {
        const item = ITEM.exec(lines[i]);
        if (item && /\d/u.test(item[2]) === ordered) {
          items.push(item[3]);
          i++;
        } else if (items.length && /^\s{2,}\S/u.test(lines[i])) {
          items[items.length - 1] += "\n" + lines[i++].trim();
        } else break;
      }
      out.push({type: "list", ordered, start: ordered ? parseInt(m[2], 10) : 1, items});
    } else {
      const body = [line];
      for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) body.push(lines[i]);
      out.push({type: "paragraph", text: body.join("\n")});
    }
  }
  for (const b of out) b.key = JSON.stringify(b);
  return out;
}

/** One block as a DOM node. ``partial``: the reply is still streaming into this block. */
export function renderBlock(block, partial = false) {
  switch (block.type) {
    case "code": {
      const code = document.createElement("code");
      if (block.lang) code.dataset.lang = block.lang;
      code.textContent = block.text;
      const pre = document.createElement("pre");
      pre.append(code);
      return pre;
    }
    case "heading": {
      // Inside a message, headings are emphasis, not document structure.
      const el = document.createElement("p");
      el.className = `md-h md-h${block.level}`;
      inline(block.text, el, 0, partial);
      return el;
    }
    case "rule":
      return document.createElement("hr");
    case "quote": {
      const el = document.createElement("blockquote");
      for (const inner of blocks(block.text)) el.append(renderBlock(inner, partial));
      return el;
    }
    case "list": {
      const el = document.createElement(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) el.start = block.start;
      block.items.forEach((item, n) => {
        const li = document.createElement("li");
        inline(item, li, 0, partial && n === block.items.length - 1);
        el.append(li);
      });
      return el;
    }
    default: {
      const el = document.createElement("p");
      inline(block.text, el, 0, partial);
      return el;
    }
  }
}

/** The whole text as a fragment. */
export function render(text, partial = false) {
  const fragment = document.createDocumentFragment();
  const all = blocks(text);
  all.forEach((b, n) => fragment.append(renderBlock(b, partial && n === all.length - 1)));
  return fragment;
}

/** A message body that re-renders only the blocks that changed (the last one, while
 *  a reply streams), so earlier paragraphs keep their nodes. */
export class MarkdownView {
  constructor(root) {
    this.root = root;
    this.keys = [];
  }

  update(text, partial = false) {
    const all = blocks(text);
    const nodes = this.root.children;
    all.forEach((block, n) => {
      const key = (partial && n === all.length - 1 ? "~" : "") + block.key;
      if (this.keys[n] === key) return;
      const node = renderBlock(block, partial && n === all.length - 1);
      if (n < nodes.length) nodes[n].replaceWith(node);
      else this.root.append(node);
      this.keys[n] = key;
    });
    while (nodes.length > all.length) nodes[nodes.length - 1].remove();
    this.keys.length = all.length;
  }
}

// --- inline ---------------------------------------------------------------------------

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function runLength(text, i) {
  let n = 1;
  while (text[i + n] === text[i]) n++;
  return n;
}

const isSpace = (ch) => ch === undefined || /\s/u.test(ch);
const isWord = (ch) => ch !== undefined && /[\p{L}\p{N}]/u.test(ch);

/** Index of the run of exactly ``n`` ``ch`` that closes the one opened at ``from``, or -1. */
function closing(text, from, ch, n) {
  for (let j = from; j < text.length; j++) {
    if (text[j] === "\\") {
      j++;
      continue;
    }
    if (text[j] !== ch) continue;
    const len = runLength(text, j);
    if (len === n && !isSpace(text[j - 1]) && !(ch === "_" && isWord(text[j + n]))) return j;
    j += len - 1;
  }
  return -1;
}

function decodeEntity(text, i) {
  const m = /^&(#[xX][0-9a-fA-F]{1,6}|#\d{1,7}|[a-zA-Z]{2,8});/u.exec(text.slice(i, i + 12));
  if (!m) return null;
  const name = m[1];
  if (name[0] === "#") {
    const code = name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
    if (!(code > 0 && code <= 0x10ffff) || (code >= 0xd800 && code <= 0xdfff)) return null;
    return {text: String.fromCodePoint(code), length: m[0].length};
  }
  return name in ENTITIES ? {text: ENTITIES[name], length: m[0].length} : null;
}

function link(href, label, parent, depth) {
  const a = el("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  inline(label, a, depth + 1);
  parent.append(a);
}

/** Render inline markdown of ``text`` into ``parent``. */
export function inline(text, parent, depth = 0, partial = false) {
  if (depth > MAX_DEPTH) {
    parent.append(text);
    return;
  }
  let buf = "";
  const flush = () => {
    buf.split("\n").forEach((line, k) => {
      if (k) parent.append(el("br"));
      if (line) parent.append(line);
    });
    buf = "";
  };
  const wrap = (node, inner, innerPartial = false) => {
    flush();
    inline(inner, node, depth + 1, innerPartial);
    parent.append(node);
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && PUNCT.has(text[i + 1])) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      const n = runLength(text, i);
      const end = text.indexOf(ch.repeat(n), i + n);
      if (end >= 0 && runLength(text, end) === n) {
        flush();
        const code = el("code");
        code.textContent = text.slice(i + n, end).replace(/^ (.+) $/su, "$1");
        parent.append(code);
        i = end + n;
        continue;
      }
      buf += ch.repeat(n);
      i += n;
      continue;
    }
    if (ch === "*" || ch === "_" || ch === "~") {
      const n = runLength(text, i);
      const opens = !isSpace(text[i + n]) && !(ch === "_" && isWord(text[i - 1])) && (ch !== "~" || n === 2) && n <= 3;
      const end = opens ? closing(text, i + n, ch, n) : -1;
      const open = opens && end < 0 && partial && ch === "*" && n === 1 && !text.slice(i).includes("\n");
      if (end >= 0 || open) {
        const inner = open ? text.slice(i + n) : text.slice(i + n, end);
        let node;
        if (ch === "~") node = el("del");
        else if (n === 1) node = ch === "*" ? el("em", "action") : el("em");
        else if (n === 2) node = el("strong");
        else {
          node = el("strong");
          const em = ch === "*" ? el("em", "action") : el("em");
          node.append(em);
          flush();
          inline(inner, em, depth + 1);
          parent.append(node);
          i = end + n;
          continue;
        }
        wrap(node, inner, open);
        i = open ? text.length : end + n;
        continue;
      }
      buf += ch.repeat(n);
      i += n;
      continue;
    }
    if (ch === '"' || ch === "\u201c") {
      const close = ch === '"' ? '"' : "\u201d";
      const end = text.indexOf(close, i + 1);
      const open = end < 0 && partial && !text.slice(i).includes("\n");
      if ((end > i + 1 && !text.slice(i, end).includes("\n")) || open) {
        const node = el("span", "dialogue");
        flush();
        node.append(ch);
        inline(open ? text.slice(i + 1) : text.slice(i + 1, end), node, depth + 1, open);
        if (!open) node.append(close);
        parent.append(node);
        i = open ? text.length : end + 1;
        continue;
      }
    }
    if (ch === "!" && text[i + 1] === "[") {
      const m = /^!\[([^\]\n]{0,200})\]\(([^)\s]{0,2000})(?:\s+"[^"\n]*")?\)/u.exec(text.slice(i));
      if (m) {
        flush();
        const alt = el("span", "image-alt");
        alt.textContent = m[1] || "image";
        alt.title = "image not loaded";
        parent.append(alt);
        i += m[0].length;
        continue;
      }
    }
    if (ch === "[") {
      const m = /^\[([^\]\n]{1,500})\](?:\(([^)\s]{1,2000})(?:\s+"[^"\n]*")?\))?/u.exec(text.slice(i));
      if (m && m[2] !== undefined) {
        flush();
        if (SAFE_URL.test(m[2])) link(m[2], m[1], parent, depth);
        else inline(m[1], parent, depth + 1);
        i += m[0].length;
        continue;
      }
      if (m && EXPRESSION.test(m[1])) {
        flush();
        const tag = el("span", "expr");
        tag.textContent = m[1];
        tag.title = "expression";
        parent.append(tag);
        i += m[0].length;
        continue;
      }
    }
    if (ch === "<") {
      const auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/iu.exec(text.slice(i));
      if (auto) {
        flush();
        link(auto[1], auto[1], parent, depth);
        i += auto[0].length;
        continue;
      }
      const br = /^<br\s*\/?>/iu.exec(text.slice(i, i + 6));
      if (br) {
        flush();
        parent.append(el("br"));
        i += br[0].length;
        continue;
      }
      const tag = /^<([a-z]+)>/iu.exec(text.slice(i, i + 10));
      if (tag && INLINE_TAGS.has(tag[1].toLowerCase())) {
        const name = tag[1].toLowerCase();
        const rest = text.slice(i + tag[0].length);
        const end = rest.toLowerCase().indexOf(`</${name}>`);
        if (end >= 0) {
          wrap(el(name), rest.slice(0, end));
          i += tag[0].length + end + name.length + 3;
          continue;
        }
      }
    }
    if (ch === "&") {
      const entity = decodeEntity(text, i);
      if (entity) {
        buf += entity.text;
        i += entity.length;
        continue;
      }
    }
    if ((ch === "h" || ch === "H") && !isWord(text[i - 1])) {
      const m = BARE_URL.exec(text.slice(i, i + 2100));
      if (m) {
        const url = m[0].replace(/[.,;:!?)\]]+$/u, "");
        flush();
        link(url, url, parent, depth);
        i += url.length;
        continue;
      }
    }
    buf += ch;
    i++;
  }
  flush();
}

/** The text a message shows, without markup (conversation list previews). */
export function plain(text) {
  const div = document.createElement("div");
  div.append(render(text));
  return div.textContent.replace(/\s+/gu, " ").trim();
}
