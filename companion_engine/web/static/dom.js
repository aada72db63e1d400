// DOM building without HTML strings: every text goes in as a text node, every attribute
// through setAttribute, so nothing a server, a card or a model writes can become markup.
// (The page's CSP enforces Trusted Types: an innerHTML assignment would be refused.)

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string" && !key.startsWith("aria")) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("button", {class: "x", onclick: f}, "Label", child, ...) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  return append(el, children);
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  return append(el, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** A small line icon (24x24 viewBox, stroke paths), hidden from screen readers. */
export function icon(...paths) {
  return s("svg", {viewBox: "0 0 24 24", class: "icon", "aria-hidden": "true", focusable: "false"},
    ...paths.map((d) => s("path", {d})));
}

export const ICONS = {
  menu: ["M4 6h16", "M4 12h16", "M4 18h16"],
  send: ["M4 12l16-8-6 16-3-7z"],
  stop: ["M7 7h10v10H7z"],
  again: ["M20 12a8 8 0 1 1-2.34-5.66", "M20 4v5h-5"],
  close: ["M6 6l12 12", "M18 6L6 18"],
  trash: ["M5 7h14", "M10 7V4h4v3", "M7 7l1 13h8l1-13"],
  panel: ["M4 5h16v14H4z", "M14 5v14"],
  plus: ["M12 5v14", "M5 12h14"],
  upload: ["M12 16V4", "M7 9l5-5 5 5", "M5 20h14"],
  download: ["M12 4v12", "M7 11l5 5 5-5", "M5 20h14"],
  edit: ["M4 20h4L19 9l-4-4L4 16z"],
  star: ["M12 4l2.5 5 5.5.8-4 3.9.9 5.5-4.9-2.6-4.9 2.6.9-5.5-4-3.9 5.5-.8z"],
  people: ["M9 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6z", "M3 20c0-3.3 2.7-6 6-6s6 2.7 6 6", "M16 5a3 3 0 0 1 0 6", "M18 14c2 .8 3 2.9 3 6"],
};

/** Up to two initials of a name ("Seraphina Moon" -> "SM"). */
export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/u).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : [words[0] || "?"];
  return letters.map((w) => Array.from(w)[0].toUpperCase()).join("");
}

/** A stable hue for a name, so each character's initials get their own colour. */
export function hue(name) {
  let x = 0;
  for (const ch of String(name)) x = (x * 31 + ch.codePointAt(0)) % 360;
  return x;
}

export function relativeTime(seconds) {
  if (!seconds) return "";
  const diff = Date.now() / 1000 - seconds;
  if (diff < 60) return "just now";
  if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
  if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}
