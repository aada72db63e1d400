// Boot and wiring: modules stay unaware of each other; this file connects them, keeps
// the URL in step (#/c/<conversation>, #/characters), owns the drawers, settings and the
// API key dialog, and exposes window.__companion for tests.

import {api, onKeyNeeded} from "./api.js";
import {avatar, character, initCharacters, loadCharacters} from "./characters.js";
import {audio, initChat, newChat, openConversation} from "./chat.js";
import {added, initConversations, loadConversations, markCurrent, remember} from "./conversations.js";
import {$, h} from "./dom.js";
import {initNotice, showError} from "./notice.js";
import {initPanel, schedulePreview, watchStatus} from "./panel.js";
import {diagnostics, on, recordError, set, state} from "./state.js";

document.addEventListener("securitypolicyviolation", (e) => {
  diagnostics.cspViolations.push({directive: e.effectiveDirective || e.violatedDirective,
    blocked: e.blockedURI, sample: e.sample, source: e.sourceFile, line: e.lineNumber});
});
window.addEventListener("error", (e) => recordError("page", e.error || e.message));
window.addEventListener("unhandledrejection", (e) => recordError("promise", e.reason));

const app = document.querySelector(".app");
const narrow = window.matchMedia("(max-width: 759px)");
let toastTimer = 0;

function announce(text) {
  const toast = $("#toast");
  toast.textContent = text;
  toast.dataset.show = "true";
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    toast.dataset.show = "false";
  }, 4000);
}

function stored(key, fallback) {
  try {
    return localStorage.getItem(key) ?? fallback;
  } catch {
    return fallback;
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* storage disabled: the setting lasts for this page */
  }
}

// --- the API key ----------------------------------------------------------------------

let keyPrompts = 0;

function askKey(reason) {
  keyPrompts++;
  return new Promise((resolve) => {
    const dialog = $("#key-dialog");
    const form = $("#key-form");
    const input = $("#key-input");
    $("#key-reason").textContent = `${reason} Enter this server's API key (server.api_key).`;
    input.value = "";
    const submit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      form.removeEventListener("submit", submit);
      dialog.close();
      resolve(key);
    };
    form.addEventListener("submit", submit);
    // Nothing works without the key: Escape does not dismiss the dialog.
    dialog.addEventListener("cancel", (event) => event.preventDefault(), {once: true});
    dialog.showModal();
    input.focus();
  });
}

// --- views, drawers, the URL ----------------------------------------------------------

function showView(view) {
  set({view});
  $("#chat-view").hidden = view !== "chat";
  $("#characters-view").hidden = view !== "characters";
  setRoute();
  if (view === "characters") $("#h-manage").focus?.();
}

function setRoute() {
  const hash = state.view === "characters" ? "#/characters" : state.conversationId ? `#/c/${state.conversationId}` : "#/";
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function setNav(open) {
  app.dataset.nav = open ? "open" : "closed";
  $("#toggle-nav").setAttribute("aria-expanded", String(open));
  if (open && narrow.matches) $("#nav button")?.focus();
}

function closeDrawersOnNarrow() {
  if (narrow.matches) setNav(false);
}

function initDrawers() {
  $("#toggle-nav").addEventListener("click", () => setNav(app.dataset.nav !== "open"));
  $("#manage-chars").addEventListener("click", () => {
    showView("characters");
    closeDrawersOnNarrow();
  });
  $("#back-to-chat").addEventListener("click", () => {
    showView("chat");
    $("#composer-input").focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || state.streaming) return;
    if (app.dataset.nav === "open" && narrow.matches) {
      setNav(false);
      $("#toggle-nav").focus();
    } else if (app.dataset.panel === "open" && !window.matchMedia("(min-width: 1200px)").matches) {
      app.dataset.panel = "closed";
      $("#toggle-panel").setAttribute("aria-expanded", "false");
      $("#toggle-panel").focus();
    }
  });
  $("#main").addEventListener("click", () => closeDrawersOnNarrow());
}

// --- settings -------------------------------------------------------------------------

async function loadModels() {
  try {
    const reply = await api("api/models");
    $("#model-list").replaceChildren(...reply.data.map((m) => h("option", {value: m.name})));
    if (!$("#model-input").value) $("#model-input").value = reply.active_model;
    set({model: reply.active_model});
  } catch (error) {
    recordError("models", error);
  }
}

async function switchModel() {
  const name = $("#model-input").value.trim();
  if (!name || name === state.model) return;
  try {
    const reply = await api("api/models/switch", {method: "POST", json: {new_model: name}});
    set({model: reply.active_model});
    if (state.status) set({status: {...state.status, active_model: reply.active_model}});
    announce(`${reply.message}${reply.connected === false ? " (the provider does not answer yet)" : ""}`);
  } catch (error) {
    showError(error, "switching the model");
    $("#model-input").value = state.model;
  }
}

function initSettings() {
  const tts = $("#tts-toggle");
  tts.addEventListener("change", () => {
    set({tts: tts.checked});
    store("companion.tts", tts.checked ? "on" : "off");
  });
  const name = $("#user-name");
  name.value = state.userName;
  name.addEventListener("change", () => {
    set({userName: name.value.trim()});
    store("companion.userName", state.userName);
  });
  $("#model-switch").addEventListener("click", switchModel);
  $("#model-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") switchModel();
  });
  on(["status"], () => {
    const model = state.status?.active_model;
    if (model && model !== state.model) {
      set({model});
      if (document.activeElement !== $("#model-input")) $("#model-input").value = model;
    }
  });
}

// --- the header -------------------------------------------------------------------------

function showCharacter() {
  const c = character(state.characterId);
  $("#char-name").textContent = c?.name || "Companion";
  document.title = c ? `${c.name} · Companion` : "Companion";
  const face = avatar(state.characterId, true);
  face.id = "face-avatar";
  $("#face-avatar").replaceWith(face);
}

// --- boot -------------------------------------------------------------------------------

function readFeatures() {
  const meta = document.querySelector('meta[name="companion-features"]');
  return new Set((meta?.content || "").split(/\s+/u).filter(Boolean));
}

function route() {
  const m = /^#\/c\/([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})$/u.exec(location.hash);
  return {conversation: m ? m[1] : null, characters: location.hash === "#/characters"};
}

async function follow() {
  const where = route();
  if (where.characters) {
    if (state.view !== "characters") showView("characters");
    return;
  }
  // Open first, then show: showing the chat writes the open conversation into the hash.
  if (where.conversation && where.conversation !== state.conversationId) await openConversation(where.conversation);
  else if (!where.conversation && location.hash === "#/" && state.conversationId) await newChat(state.characterId);
  if (state.view !== "chat") showView("chat");
}

async function pick(id) {
  showView("chat");
  closeDrawersOnNarrow();
  if (id !== state.characterId || state.conversationId || state.messages.length) await newChat(id);
  $("#composer-input").focus();
}

async function boot() {
  set({
    features: readFeatures(),
    tts: stored("companion.tts", "on") !== "off",
    userName: stored("companion.userName", ""),
  });
  $("#tts-toggle").checked = state.tts;
  onKeyNeeded(askKey);
  initNotice();
  initCharacters({pick, announce, deleted: (id) => id === state.characterId && newChat(state.activeCharacterId)});
  initChat({
    turnEnded: () => {
      remember();
      loadConversations();
      schedulePreview(0);
    },
    conversationChanged: () => {
      setRoute();
      added();
      markCurrent();
    },
  });
  initConversations({
    open: async (id) => {
      showView("chat");
      closeDrawersOnNarrow();
      await openConversation(id);
    },
    newChat: async () => {
      showView("chat");
      closeDrawersOnNarrow();
      await newChat(state.characterId);
      $("#composer-input").focus();
    },
  });
  initPanel();
  initSettings();
  initDrawers();
  on(["characterId", "characters"], showCharacter);
  watchStatus();
  try {
    await loadCharacters();
  } catch (error) {
    showError(error, "loading characters");
  }
  set({characterId: state.activeCharacterId ?? state.characters[0]?.id ?? null});
  const where = route();
  if (where.conversation) await openConversation(where.conversation);
  else await newChat(state.characterId);
  if (where.characters) showView("characters");
  // Back, forward, an edited address or a pasted link: follow the hash.
  window.addEventListener("hashchange", follow);
  await loadConversations();
  loadModels();
  set({ready: true});
}

// --- the test hook --------------------------------------------------------------------

function snapshot() {
  return JSON.parse(JSON.stringify({
    ready: state.ready,
    features: [...state.features],
    characters: state.characters.map((c) => c.id),
    activeCharacterId: state.activeCharacterId,
    characterId: state.characterId,
    conversationId: state.conversationId,
    version: state.version,
    messages: state.messages.map(({role, content, status, error}) => ({role, content, status, error: error || null})),
    greeting: state.greeting,
    streaming: state.streaming,
    tts: state.tts,
    model: state.model,
    status: state.status,
    preview: state.preview,
    conversations: state.conversations.map((c) => c.id),
    view: state.view,
    lastTurn: state.lastTurn,
    turns: state.turns,
    lastError: state.lastError,
    keyPrompts,
  }));
}

window.__companion = Object.freeze({
  version: 1,
  get state() {
    return snapshot();
  },
  get audio() {
    return {
      context: audio.ctx ? audio.ctx.state : "none",
      speaking: audio.speaking,
      shape: audio.shape,
      /** Every sentence scheduled, in the order it was scheduled. */
      scheduled: audio.scheduled.map((e) => ({...e})),
    };
  },
  get events() {
    return diagnostics.events.slice();
  },
  get cspViolations() {
    return diagnostics.cspViolations.slice();
  },
  get errors() {
    return diagnostics.errors.slice();
  },
});

boot().catch((error) => showError(error, "starting the app"));
