// For profile authors: the server's live status (GET /-/events: every reload and its
// error the moment it happens), the running profile and its stages, and the prompt the
// next message would send (POST /api/prompt/preview): messages exactly as sent,
// activated lorebook entries with the key that matched, token counts against budgets.

import {api} from "./api.js";
import {$, h} from "./dom.js";
import {describe} from "./notice.js";
import {stream} from "./sse.js";
import {on, recordError, set, state} from "./state.js";

const PLACEHOLDER = "(your next message)";
let previewTimer = 0;
let previewSeq = 0;

const isOpen = () => document.querySelector(".app").dataset.panel === "open";

function facts(target, rows) {
  $(target).replaceChildren(...rows.filter(Boolean).flatMap(([term, value, attrs]) =>
    [h("dt", null, term), h("dd", attrs || null, value ?? "—")]));
}

// --- live status ------------------------------------------------------------------------

export async function watchStatus() {
  let delay = 500;
  for (;;) {
    try {
      for await (const {event, data} of stream("-/events")) {
        delay = 500;
        if (event === "status") set({status: {...data, offline: false}});
      }
    } catch (error) {
      recordError("live status", error);
    }
    set({status: {...(state.status || {}), offline: true}});
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

function showStatus() {
  const s = state.status;
  const error = s?.config?.last_error || "";
  const button = $("#status-button");
  const label = !s ? "connecting" : s.offline ? "offline" : error ? "reload failed" : s.status;
  button.dataset.state = !s ? "unknown" : s.offline ? "offline" : error ? "degraded" : "healthy";
  $("#status-text").textContent = label;
  button.title = `Server: ${label}${s?.profile ? ` · profile ${s.profile}` : ""}`;
  if ($("#reload-error").textContent !== error) $("#reload-error").textContent = error;
  $("#reload-banner").hidden = !error;
  const panelError = $("#panel-reload-error");
  panelError.textContent = error;
  panelError.hidden = !error;
  renderHealth();
  renderStages();
  if (isOpen()) {
    refreshHealth();
    schedulePreview(0);
  }
}

function renderHealth() {
  const s = state.status || {};
  const health = state.health || {};
  const cfg = s.config || health.config || {};
  const llm = health.llm;
  facts("#health", [
    ["Status", s.offline ? "offline (reconnecting)" : s.status || health.status],
    ["Version", s.version || health.version],
    ["Model", s.active_model],
    ["Provider", llm ? `${llm.type}, ${llm.connected ? "reachable" : "not reachable"}` : null],
    ["Config", cfg.generation != null ? `generation ${cfg.generation}` : null],
    ["Reloaded", cfg.last_reload ? new Date(cfg.last_reload * 1000).toLocaleTimeString() : "not since start"],
    cfg.restart_required?.length ? ["Needs restart", cfg.restart_required.join(", ")] : null,
    ["Last error", cfg.last_error ? "see below" : "none", {dataset: {field: "last-error"}}],
  ]);
}

function stageList(list) {
  return list.map((st) => st.name).join(", ") || "none";
}

function renderStages() {
  const s = state.status;
  if (!s?.stages) return;
  const st = s.stages;
  facts("#stages", [
    ["Profile", s.profile],
    ["Prompt", stageList(st.prompt)],
    ["Output", stageList(st.output)],
    ["Splitter", st.splitter?.name],
    ["Cleaners", stageList(st.cleaners)],
    ["Voice", `${st.tts?.name}${s.tts?.enabled ? "" : " (speech off in the profile)"}`],
  ]);
}

export async function refreshHealth() {
  try {
    set({health: await api("health")});
  } catch (error) {
    recordError("health", error);
  }
  renderHealth();
}

// --- the prompt preview -----------------------------------------------------------------

export function schedulePreview(delay = 300) {
  clearTimeout(previewTimer);
  if (!isOpen()) return;
  previewTimer = setTimeout(refreshPreview, delay);
}

export async function refreshPreview() {
  const draft = $("#composer-input").value.trim();
  const body = {message: draft || PLACEHOLDER};
  if (state.conversationId) body.conversation_id = state.conversationId;
  else body.greeting = state.greetingIndex;
  if (state.characterId) body.character_id = state.characterId;
  if (state.userName) body.user_name = state.userName;
  const seq = ++previewSeq;
  try {
    const preview = await api("api/prompt/preview", {method: "POST", json: body});
    if (seq !== previewSeq) return;
    set({preview: {...preview, draft}});
    renderPreview();
  } catch (error) {
    if (seq !== previewSeq) return;
    set({preview: null});
    $("#prompt-for").textContent = `No preview: ${describe(error)}`;
    $("#prompt-list").replaceChildren();
    $("#lore-list").replaceChildren();
    facts("#tokens", []);
  }
}

function budget(used, max) {
  return max ? `${used ?? 0} / ${max}` : `${used ?? 0}`;
}

function renderPreview() {
  const p = state.preview;
  const t = p.tokens;
  $("#prompt-for").textContent = p.draft
    ? `As it would be sent with “${p.draft.length > 60 ? p.draft.slice(0, 60) + "…" : p.draft}”, to ${p.model}.`
    : `Type a message to see what it activates. Shown with the placeholder “${PLACEHOLDER}”, to ${p.model}.`;
  facts("#tokens", [
    ["Prompt", `${t.total} tokens (${t.exact ? t.tokenizer : "estimated, " + t.tokenizer})`],
    ["Lorebook", `${budget(t.lore, t.lore_budget)}${t.lore_overflowed ? " (budget full: entries left out)" : ""}`],
    ["History", `${budget(t.history, t.history_budget)}${t.history_dropped ? `, ${t.history_dropped} old message(s) left out` : ""}`],
    p.warnings?.length ? ["Warnings", p.warnings.join("; ")] : null,
  ]);
  $("#lore-list").replaceChildren(...p.lore.map((e) => h("li", {class: "lore-item", dataset: {entry: String(e.id ?? "")}},
    h("strong", null, e.comment || `entry ${e.id}`),
    h("span", null, "matched ", h("span", {class: "lore-key"}, e.matched || "?")),
    h("span", {class: "hint"}, ` · ${e.position}${e.depth != null ? " @" + e.depth : ""} · order ${e.order} · ${e.tokens} tokens · ${e.source}`))));
  if (!p.lore.length) $("#lore-list").replaceChildren(h("li", {class: "hint"}, "No entry activated."));
  $("#prompt-list").replaceChildren(...p.messages.map((m, n) => h("li", {class: "prompt-msg", dataset: {role: m.role}},
    h("header", null, h("span", null, `${n + 1}. ${m.role}`), h("span", null, `${m.tokens} tokens`)),
    h("pre", null, m.content))));
}

// --- opening and closing ----------------------------------------------------------------

export function setPanel(open) {
  document.querySelector(".app").dataset.panel = open ? "open" : "closed";
  for (const id of ["#toggle-panel", "#status-button"]) $(id).setAttribute("aria-expanded", String(open));
  if (open) {
    refreshHealth();
    schedulePreview(0);
  }
}

export function initPanel() {
  const toggle = () => setPanel(!isOpen());
  $("#toggle-panel").addEventListener("click", toggle);
  $("#status-button").addEventListener("click", () => {
    setPanel(true);
    $("#h-health").scrollIntoView({block: "nearest"});
  });
  $("#close-panel").addEventListener("click", () => {
    setPanel(false);
    $("#toggle-panel").focus();
  });
  $("#composer-input").addEventListener("input", () => schedulePreview());
  on(["status"], showStatus);
  on(["conversationId", "characterId", "greetingIndex"], () => schedulePreview(0));
}
