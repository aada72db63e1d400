// The conversation list: the server's (GET /api/conversations) when it has one, else the
// conversations this browser started (kept in localStorage). Open, delete, new chat.

import {api} from "./api.js";
import {avatar, character} from "./characters.js";
import {$, h, icon, ICONS, relativeTime} from "./dom.js";
import {plain} from "./markdown.js";
import {showError} from "./notice.js";
import {set, state} from "./state.js";

const RECENT = "companion.recentConversations";
const LIMIT = 50;
let hooks = {open: () => {}, newChat: () => {}};

function readRecent() {
  try {
    const list = JSON.parse(localStorage.getItem(RECENT) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function writeRecent(list) {
  try {
    localStorage.setItem(RECENT, JSON.stringify(list.slice(0, LIMIT)));
  } catch {
    /* storage full or disabled: the list lives as long as the page */
  }
}

const serverList = () => state.features.has("conversations");

/** Note the open conversation locally (without a server list, that is the list). */
export function remember() {
  if (serverList() || !state.conversationId) return;
  const last = [...state.messages].reverse().find((m) => m.content);
  const entry = {
    id: state.conversationId, character_id: state.characterId, updated_at: Date.now() / 1000,
    title: state.messages.find((m) => m.role === "user")?.content.slice(0, 80) || "",
    last_message: last ? {role: last.role, content: last.content.slice(0, 200)} : null,
    message_count: state.messages.length,
  };
  writeRecent([entry, ...readRecent().filter((c) => c.id !== entry.id)]);
}

export async function loadConversations() {
  let list;
  if (serverList()) {
    try {
      const reply = await api(`api/conversations?limit=${LIMIT}`);
      list = Array.isArray(reply) ? reply : reply.data || reply.conversations || [];
    } catch (error) {
      showError(error, "listing conversations");
      list = [];
    }
  } else {
    list = readRecent();
  }
  set({conversations: list});
  render();
}

function lastText(c) {
  const last = c.last_message;
  if (!last) return "";
  return plain(typeof last === "string" ? last : last.content || "");
}

function render() {
  const list = $("#conv-list");
  const hint = $("#conv-hint");
  hint.hidden = serverList();
  hint.textContent = "Conversations started in this browser (this server cannot list them).";
  list.replaceChildren(...state.conversations.map((c) => {
    const who = character(c.character_id)?.name || c.character_id || "";
    const title = c.title || lastText(c) || "(empty)";
    return h("li", {class: "conv-item", "aria-current": String(c.id === state.conversationId), dataset: {conversation: c.id}},
      h("button", {type: "button", class: "conv-open", onclick: () => hooks.open(c.id)},
        avatar(c.character_id),
        h("span", {class: "conv-text"},
          h("span", {class: "conv-title"}, title),
          h("span", {class: "conv-when"}, [who, relativeTime(c.updated_at)].filter(Boolean).join(" · ")))),
      h("button", {type: "button", class: "icon-button", "aria-label": `Delete conversation: ${title}`,
        onclick: () => remove(c, title)}, icon(...ICONS.trash)));
  }));
  if (!state.conversations.length) list.replaceChildren(h("li", {class: "hint"}, "No conversations yet."));
}

async function remove(c, title) {
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Delete the conversation “${title}”?`)) return;
  try {
    await api(`api/conversations/${encodeURIComponent(c.id)}`, {method: "DELETE"});
  } catch (error) {
    if (error.status !== 404) {
      showError(error, "deleting the conversation");
      return;
    }
  }
  writeRecent(readRecent().filter((x) => x.id !== c.id));
  if (c.id === state.conversationId) await hooks.newChat();
  await loadConversations();
}

export function initConversations(callbacks) {
  hooks = {...hooks, ...callbacks};
  $("#new-chat").addEventListener("click", () => hooks.newChat());
}

/** A conversation the open chat just started: listed at once (the server's list catches up
 *  when the turn ends), so the list does not jump later. */
export function added() {
  if (!state.conversationId || state.conversations.some((c) => c.id === state.conversationId)) return;
  remember();
  const first = state.messages.find((m) => m.role === "user");
  set({conversations: [{id: state.conversationId, character_id: state.characterId,
    updated_at: Date.now() / 1000, title: first?.content.slice(0, 80) || ""}, ...state.conversations]});
  render();
}

export function markCurrent() {
  for (const item of document.querySelectorAll("#conv-list .conv-item")) {
    item.setAttribute("aria-current", String(item.dataset.conversation === state.conversationId));
  }
}
