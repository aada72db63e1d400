// The chat: server-managed conversations, streaming replies rendered as they arrive,
// sentence audio queued as `audio_ready` events come, stop (the partial reply is kept,
// marked interrupted), regenerate and continue (when the server has those routes), and
// choosing among a reply's swipes.

import {api} from "./api.js";
import {AudioQueue} from "./audio.js";
import {avatar, character} from "./characters.js";
import {$, h, icon, ICONS} from "./dom.js";
import {MarkdownView} from "./markdown.js";
import {describe, showError} from "./notice.js";
import {stream} from "./sse.js";
import {diagnostics, on, recordError, set, state} from "./state.js";

let controller = null;
let views = [];
let hooks = {turnEnded: () => {}, conversationChanged: () => {}};
let speakingName = "";

export const audio = new AudioQueue({
  onFrame: showSpeech,
  onError: (event, error) => recordError(`audio of sentence ${event.index}`, error),
});

// --- the speaking face ------------------------------------------------------------------

function showSpeech({speaking, shape, expression}) {
  const face = $("#face");
  const mouth = $("#mouth");
  if (mouth.dataset.shape !== shape) mouth.dataset.shape = shape;
  const value = String(speaking);
  if (face.dataset.speaking !== value) {
    face.dataset.speaking = value;
    const name = character(state.characterId)?.name || "The companion";
    speakingName = speaking ? `${name} is speaking` : "";
    $("#speaking").textContent = speakingName;
  }
  if (speaking && expression) showExpression(expression);
}

function showExpression(name) {
  const el = $("#char-expression");
  if (el.textContent !== name) el.textContent = name;
}

// --- messages ---------------------------------------------------------------------------

function timings(done) {
  const t = done?.timings || {};
  const parts = [];
  if (t.ttft_ms != null) parts.push(`first token ${Math.round(t.ttft_ms)} ms`);
  if (t.ttfa_ms != null) parts.push(`first audio ${Math.round(t.ttfa_ms)} ms`);
  if (t.total_ms != null) parts.push(`total ${(t.total_ms / 1000).toFixed(1)} s`);
  if (done?.usage?.total_tokens) parts.push(`${done.usage.total_tokens} tokens${done.usage.estimated ? " (estimated)" : ""}`);
  return parts.join(" · ");
}

class MessageView {
  constructor(message) {
    this.message = message;
    const user = message.role === "user";
    const name = user ? state.userName || "You" : character(state.characterId)?.name || "Assistant";
    this.body = h("div", {class: "msg-body"});
    this.markdown = new MarkdownView(this.body);
    this.badge = h("span", {class: "msg-status", hidden: true});
    this.error = h("div", {class: "msg-error", role: "alert", hidden: true});
    this.timings = h("span");
    this.actions = h("span", {class: "msg-actions"});
    this.meta = h("div", {class: "msg-meta"}, this.timings, this.actions);
    this.swipes = h("span", {class: "greeting-nav", hidden: true});
    this.head = h("div", {class: "msg-head"}, h("span", {class: "msg-name"}, name), this.badge,
      this.swipes);
    this.el = h("li", {class: ["msg", `msg-${message.role}`], dataset: {role: message.role}},
      user ? null : avatar(state.characterId),
      h("div", {class: "msg-main"}, this.head, this.body, this.error, this.meta));
    this.render();
  }

  render() {
    const m = this.message;
    const streaming = m.status === "streaming";
    this.markdown.update(m.content, streaming);
    if (this.el.dataset.status !== m.status) this.el.dataset.status = m.status;
    const label = {interrupted: "interrupted", error: "failed", greeting: "greeting"}[m.status] || "";
    this.badge.hidden = !label;
    this.badge.textContent = label;
    this.error.hidden = !m.error;
    this.error.textContent = m.error || "";
    this.timings.textContent = m.meta || "";
    this.renderSwipes();
  }

  /** ‹ n/m › on a stored reply with alternatives (regenerated replies, greetings). */
  renderSwipes() {
    const m = this.message;
    const count = m.swipes?.length || 0;
    const show = count > 1 && m.index != null && m.status !== "streaming" && state.features.has("conversations");
    this.swipes.hidden = !show;
    if (!show) return;
    const n = m.swipe_index ?? 0;
    this.swipes.replaceChildren(
      h("button", {type: "button", class: "chip-button", "aria-label": "Previous version of this reply",
        disabled: n === 0 || state.streaming, onclick: () => chooseSwipe(m, n - 1)}, "‹"),
      h("span", null, `${n + 1}/${count}`),
      h("button", {type: "button", class: "chip-button", "aria-label": "Next version of this reply",
        disabled: n + 1 >= count || state.streaming, onclick: () => chooseSwipe(m, n + 1)}, "›"));
  }
}

function atBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 48;
}

function keepBottom(wasAtBottom) {
  const log = $("#log");
  if (wasAtBottom) log.scrollTop = log.scrollHeight;
}

function greetingView() {
  const message = {role: "assistant", content: state.greeting, status: "greeting"};
  const view = new MessageView(message);
  if (state.greetingCount > 1) {
    const n = state.greetingIndex;
    view.head.append(h("span", {class: "greeting-nav"},
      h("button", {type: "button", class: "chip-button", "aria-label": "Previous greeting", disabled: n === 0,
        onclick: () => chooseGreeting(n - 1)}, "‹"),
      h("span", {"aria-live": "polite"}, `${n + 1}/${state.greetingCount}`),
      h("button", {type: "button", class: "chip-button", "aria-label": "Next greeting",
        disabled: n + 1 >= state.greetingCount, onclick: () => chooseGreeting(n + 1)}, "›")));
  }
  return view;
}

/** Draw the whole open chat (a conversation opened, a new chat started). */
export function renderLog({keepScroll = false} = {}) {
  const log = $("#log");
  const bottom = atBottom(log);
  const top = log.scrollTop;
  views = state.messages.map((m) => new MessageView(m));
  const items = views.map((v) => v.el);
  if (!state.conversationId && state.greeting) items.unshift(greetingView().el);
  if (!items.length) {
    const who = character(state.characterId)?.name;
    items.push(h("li", {class: "empty"}, who ? `Say hello to ${who}.` : "Pick a character, or just say hello."));
  }
  log.replaceChildren(...items);
  log.scrollTop = keepScroll && !bottom ? top : log.scrollHeight;
  updateButtons();
  lastExpression();
}

function lastExpression() {
  const tags = $("#log").querySelectorAll(".msg-assistant .expr");
  showExpression(tags.length ? tags[tags.length - 1].textContent : "");
}

function append(message) {
  state.messages.push(message);
  const log = $("#log");
  const bottom = true;
  log.querySelector(".empty")?.remove();
  const view = new MessageView(message);
  views.push(view);
  log.append(view.el);
  keepBottom(bottom);
  return view;
}

// --- turns ------------------------------------------------------------------------------

// Regenerate and continue sit on the last reply (they act on it), not in the composer: a
// button appearing there when a reply ends would move the message box.
const regenerateButton = h("button", {type: "button", class: "chip-button", id: "regenerate",
  title: "Regenerate the last reply", onclick: () => regenerate()}, icon(...ICONS.again), "Regenerate");
const continueButton = h("button", {type: "button", class: "chip-button", id: "continue",
  title: "Continue the interrupted reply", onclick: () => continueReply()}, icon(...ICONS.send), "Continue");

function updateButtons() {
  $("#send").hidden = state.streaming;
  $("#stop").hidden = !state.streaming;
  const last = state.messages[state.messages.length - 1];
  const view = views[views.length - 1];
  const ready = state.conversationId && !state.streaming && last?.role === "assistant" && view?.message === last;
  const again = ready && state.features.has("regenerate");
  const more = ready && state.features.has("continue") && last.status === "interrupted" && last.content;
  for (const [button, show] of [[regenerateButton, again], [continueButton, more]]) {
    if (show && button.parentNode !== view.actions) view.actions.append(button);
    else if (!show) button.remove();
  }
}

function requestBody(extra) {
  const body = {enable_tts: state.tts, ...extra};
  if (state.characterId) body.character_id = state.characterId;
  if (state.userName) body.user_name = state.userName;
  return body;
}

/** The body of a generating conversation route: the conversation knows its character; the
 *  version it was read at makes a stale page get a 409 instead of a surprise. */
function editBody() {
  const body = {enable_tts: state.tts};
  if (state.userName) body.user_name = state.userName;
  if (state.version != null) body.version = state.version;
  return body;
}

/** Stream one turn into ``message`` (already shown); resolves when the turn ended. */
async function runTurn(path, body, message, view, {prefix = ""} = {}) {
  controller = new AbortController();
  const signal = controller.signal;
  set({streaming: true});
  updateButtons();
  audio.begin();
  const turn = {path, events: 0, sentences: 0, audio: 0, done: null, error: null, interrupted: false,
    conversationId: state.conversationId};
  let pending = 0;
  const paint = () => {
    pending = 0;
    const bottom = atBottom($("#log"));
    view.render();
    keepBottom(bottom);
  };
  const repaint = () => {
    pending ||= requestAnimationFrame(paint);
  };
  try {
    for await (const {event, data} of stream(path, {json: body, signal})) {
      turn.events++;
      diagnostics.events.push({event, index: data?.index ?? null, at: performance.now()});
      if (event === "provider_connected") {
        if (data.conversation_id && data.conversation_id !== state.conversationId) {
          set({conversationId: data.conversation_id});
          turn.conversationId = data.conversation_id;
          hooks.conversationChanged();
        }
      } else if (event === "content") {
        message.content += data.content;
        if (data.sentence_complete) turn.sentences++;
        repaint();
      } else if (event === "audio_ready" || event === "audio_chunk") {
        turn.audio++;
        if (state.tts) audio.push(data);
      } else if (event === "audio_error") {
        recordError(`speech of sentence ${data.index}`, data.error);
      } else if (event === "done") {
        turn.done = data;
        // (continue: full_content is the appended part)
        if (typeof data.full_content === "string") message.content = prefix + data.full_content;
        message.status = "complete";
        message.meta = timings(data);
      } else if (event === "error") {
        turn.error = data;
        message.status = "error";
        message.error = data.error || data.type || "the turn failed";
      }
    }
    if (!turn.done && !turn.error) {
      message.status = "interrupted";
      message.error = "the connection closed before the reply was complete";
    }
  } catch (error) {
    if (error.name === "AbortError") {
      turn.interrupted = true;
      message.status = "interrupted";
    } else {
      turn.error = {error: describe(error), status: error.status};
      message.status = "error";
      message.error = describe(error);
    }
  } finally {
    if (pending) cancelAnimationFrame(pending);
    controller = null;
    const bottom = atBottom($("#log"));
    view.render();
    keepBottom(bottom);
    set({streaming: false});
    if (state.features.has("conversations") && !turn.interrupted) await refreshConversation();
    set({lastTurn: turn, turns: state.turns + 1, messages: state.messages});
    updateButtons();
    lastExpression();
    hooks.turnEnded(turn);
  }
  return turn;
}

/** Send a message (from the composer). */
export async function send(text) {
  text = text.trim();
  if (!text || state.streaming) return null;
  audio.unlock(); // inside the user's gesture: browsers only let audio start then
  const newConversation = !state.conversationId;
  if (newConversation && state.greeting) {
    // The server stores the greeting as the conversation's first message: show it so.
    state.messages.push({role: "assistant", content: state.greeting, status: "complete"});
    set({greeting: null});
    renderLog();
  }
  append({role: "user", content: text, status: "complete"});
  const message = {role: "assistant", content: "", status: "streaming"};
  const view = append(message);
  const body = requestBody({message: text});
  if (state.conversationId) body.conversation_id = state.conversationId;
  else body.greeting = state.greetingIndex;
  return runTurn("api/chat/stream", body, message, view);
}

/** Stop the running turn now: the request is closed, the server keeps the partial reply
 *  marked interrupted, queued audio stops. */
export function stop() {
  audio.stop();
  controller?.abort();
}

/** Replace the last reply with a new one (the old one becomes a swipe on the server). */
export async function regenerate() {
  const last = state.messages[state.messages.length - 1];
  if (!state.features.has("regenerate") || !state.conversationId || state.streaming || last?.role !== "assistant") return null;
  audio.unlock();
  Object.assign(last, {content: "", status: "streaming", error: null, meta: ""});
  const view = views[views.length - 1];
  view.render();
  return runTurn(`api/conversations/${encodeURIComponent(state.conversationId)}/regenerate`, editBody(), last, view);
}

/** More of the last reply, which was interrupted: appended to it on the server too. */
export async function continueReply() {
  const last = state.messages[state.messages.length - 1];
  if (!state.features.has("continue") || !state.conversationId || state.streaming ||
      last?.role !== "assistant" || last.status !== "interrupted") return null;
  audio.unlock();
  const prefix = last.content;
  Object.assign(last, {status: "streaming", error: null, meta: ""});
  const view = views[views.length - 1];
  view.render();
  return runTurn(`api/conversations/${encodeURIComponent(state.conversationId)}/continue`,
    editBody(), last, view, {prefix});
}

/** Show another version of a stored reply (and make it the one later prompts use). */
async function chooseSwipe(message, n) {
  if (state.streaming || !state.conversationId) return;
  try {
    const reply = await api(`api/conversations/${encodeURIComponent(state.conversationId)}/messages/${message.index}/swipe`,
      {method: "POST", json: {swipe_index: n, version: state.version}});
    Object.assign(message, stored(reply.message));
    set({version: reply.version});
    views.find((v) => v.message === message)?.render();
    hooks.turnEnded?.({swiped: true});
  } catch (error) {
    showError(error, "choosing that version");
    if (error.status === 409) await refreshConversation();
  }
}

function stored(m) {
  return {
    role: m.role, content: m.content, status: m.status === "complete" ? "complete" : m.status,
    error: m.status === "error" ? m.meta?.error || "this reply failed" : null,
    index: m.index ?? null, swipes: m.swipes || null, swipe_index: m.swipe_index ?? null,
  };
}

/** Read the open conversation again (its version, swipes) after the server changed it. */
async function refreshConversation() {
  if (!state.conversationId || !state.features.has("conversations")) return;
  try {
    const {data} = await api(`api/conversations/${encodeURIComponent(state.conversationId)}`);
    if (data.id !== state.conversationId || state.streaming) return;
    const messages = data.messages.filter((m) => m.role !== "system").map(stored);
    // Keep what the page shows (timings, errors) where the server has nothing to add.
    messages.forEach((m, i) => {
      const shown = state.messages[i];
      if (shown && shown.role === m.role && shown.content === m.content) m.meta = shown.meta;
    });
    set({messages, version: data.version});
    renderLog({keepScroll: true});
  } catch (error) {
    showError(error, "reloading the conversation");
  }
}

// --- opening chats ----------------------------------------------------------------------

async function loadGreeting() {
  const id = state.characterId;
  if (state.conversationId || !id) return;
  try {
    const [detail, preview] = await Promise.all([
      api(`api/characters/${id}`),
      api("api/prompt/preview", {method: "POST", json: requestBody({message: "…", greeting: state.greetingIndex})}),
    ]);
    if (state.conversationId || state.characterId !== id) return; // the user moved on
    set({greeting: preview.greeting || null, greetingCount: 1 + (detail.data.alternateGreetings || []).length});
  } catch (error) {
    showError(error, "loading the greeting");
    set({greeting: null});
  }
  renderLog();
}

async function chooseGreeting(n) {
  set({greetingIndex: Math.max(0, n)});
  await loadGreeting();
  $("#log .greeting-nav button:not(:disabled)")?.focus();
}

/** A new, empty chat with a character (its greeting shown). */
export async function newChat(characterId = state.characterId) {
  stop();
  set({conversationId: null, characterId: characterId || state.activeCharacterId, messages: [],
    greeting: null, greetingIndex: 0, greetingCount: 1});
  renderLog();
  hooks.conversationChanged();
  await loadGreeting();
}

/** Open a stored conversation. */
export async function openConversation(id) {
  stop();
  try {
    const {data} = await api(`api/conversations/${encodeURIComponent(id)}`);
    const messages = data.messages.filter((m) => m.role !== "system").map(stored);
    set({conversationId: data.id, characterId: data.character_id || state.activeCharacterId, messages,
      greeting: null, version: data.version ?? null});
    renderLog();
    hooks.conversationChanged();
  } catch (error) {
    showError(error, "opening the conversation");
    if (error.status === 404) await newChat();
  }
}

export function initChat(callbacks) {
  hooks = {...hooks, ...callbacks};
  const input = $("#composer-input");
  const grow = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
  };
  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim() || state.streaming) return;
    input.value = "";
    grow();
    send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    } else if (event.key === "Escape" && state.streaming) {
      stop();
    }
  });
  input.addEventListener("input", grow);
  $("#stop").addEventListener("click", () => {
    stop();
    input.focus();
  });
  on(["tts"], () => {
    if (!state.tts) audio.stop();
  });
  on(["features"], updateButtons);
}
