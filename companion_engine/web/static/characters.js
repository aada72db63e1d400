// Characters: the picker, avatars (the PNG card's picture, else initials) and the
// manager view (upload by drag and drop or file chooser, create, edit, export, delete,
// activate).

import {api, blob} from "./api.js";
import {$, h, hue, icon, ICONS, initials} from "./dom.js";
import {showError} from "./notice.js";
import {on, set, state} from "./state.js";

/** id -> {key, url}: object URLs of fetched avatars (fetched with the API key). */
const avatars = new Map();
const FIELDS = ["name", "description", "personality", "scenario", "first_mes", "mes_example",
  "system_prompt", "post_history_instructions"];
const DETAIL_NAMES = {first_mes: "firstMessage", mes_example: "exampleDialogue",
  system_prompt: "systemPrompt", post_history_instructions: "postHistoryInstructions"};

let hooks = {pick: () => {}, announce: () => {}};
let editing = null;

export function character(id) {
  return state.characters.find((c) => c.id === id) || null;
}

/** An avatar element for a character id (kept up to date when its picture arrives). */
export function avatar(id, large = false) {
  const el = h("span", {class: ["avatar", large && "avatar-lg"], "aria-hidden": "true", dataset: {avatarOf: id || ""}});
  fillAvatar(el, id);
  return el;
}

function fillAvatar(el, id) {
  const c = character(id);
  const name = c?.name || id || "?";
  el.style.setProperty("--hue", String(hue(name)));
  const known = avatars.get(id);
  if (known) el.replaceChildren(h("img", {src: known.url, alt: ""}));
  else el.replaceChildren(initials(name));
}

function refreshAvatars(id) {
  for (const el of document.querySelectorAll("[data-avatar-of]")) {
    if (el.dataset.avatarOf === id) fillAvatar(el, id);
  }
}

async function loadAvatar(c) {
  const known = avatars.get(c.id);
  if (known && known.key === c.updated_at) return;
  try {
    const picture = await blob(c.avatar);
    if (known) URL.revokeObjectURL(known.url);
    avatars.set(c.id, {key: c.updated_at, url: URL.createObjectURL(picture)});
    refreshAvatars(c.id);
  } catch (error) {
    showError(error, `picture of ${c.name}`);
  }
}

export async function loadCharacters() {
  const reply = await api("api/characters");
  const list = reply.data;
  set({characters: list, activeCharacterId: list.find((c) => c.active)?.id ?? null});
  for (const c of list) if (c.avatar) loadAvatar(c);
  return list;
}

// --- the picker ------------------------------------------------------------------------

function renderPicker() {
  const list = $("#char-list");
  list.replaceChildren(...state.characters.map((c) => h("li", null,
    h("button", {
      type: "button", class: "char-item", "aria-pressed": String(c.id === state.characterId),
      dataset: {character: c.id}, onclick: () => hooks.pick(c.id),
    }, avatar(c.id), h("span", {class: "name"}, c.name), c.active ? h("span", {class: "badge"}, "active") : null))));
  if (!state.characters.length) list.replaceChildren(h("li", {class: "hint"}, "No characters yet: add one under Manage characters."));
  refreshAvatars(state.characterId);
}

// --- the manager -----------------------------------------------------------------------

function renderManager() {
  const list = $("#manage-list");
  list.replaceChildren(...state.characters.map((c) => h("li", {class: "manage-item", dataset: {character: c.id}},
    avatar(c.id, true),
    h("div", {class: "manage-info"},
      h("strong", null, c.name, c.active ? " " : "", c.active ? h("span", {class: "badge"}, "active") : null),
      h("span", null, c.description || "(no description)"),
      h("span", null, `${c.cardFormat.toUpperCase()} · ${c.sourceFormat} file${c.tags.length ? " · " + c.tags.join(", ") : ""}`)),
    h("div", {class: "manage-actions"},
      h("button", {type: "button", class: "chip-button", dataset: {action: "chat"}, onclick: () => hooks.pick(c.id)}, "Chat"),
      h("button", {type: "button", class: "chip-button", dataset: {action: "edit"}, onclick: () => edit(c.id)},
        icon(...ICONS.edit), "Edit"),
      c.active ? null : h("button", {type: "button", class: "chip-button", dataset: {action: "activate"}, onclick: () => activate(c)},
        icon(...ICONS.star), "Activate"),
      h("button", {type: "button", class: "chip-button", dataset: {action: "export-json"}, onclick: () => exportCard(c, "json"),
        "aria-label": `Export ${c.name} as JSON`}, icon(...ICONS.download), "JSON"),
      h("button", {type: "button", class: "chip-button", dataset: {action: "export-png"}, onclick: () => exportCard(c, "png"),
        "aria-label": `Export ${c.name} as PNG`}, icon(...ICONS.download), "PNG"),
      h("button", {type: "button", class: "chip-button", dataset: {action: "delete"}, onclick: () => remove(c),
        "aria-label": `Delete ${c.name}`}, icon(...ICONS.trash), "Delete")))));
}

export async function upload(file) {
  if (!file) return null;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const reply = await api("api/characters/upload", {method: "POST", body: form});
    await loadCharacters();
    hooks.announce(`Imported ${reply.data.name}`);
    const item = document.querySelector(`#manage-list [data-character="${CSS.escape(reply.data.id)}"] button`);
    item?.focus();
    return reply.data;
  } catch (error) {
    showError(error, `importing ${file.name}`);
    return null;
  }
}

async function activate(c) {
  try {
    await api(`api/characters/${c.id}/activate`, {method: "POST"});
    await loadCharacters();
    hooks.announce(`${c.name} is now the active character`);
  } catch (error) {
    showError(error, `activating ${c.name}`);
  }
}

async function exportCard(c, format) {
  try {
    const file = await blob(`api/characters/${c.id}/export?format=${format}`);
    const url = URL.createObjectURL(file);
    const a = h("a", {href: url, download: `${c.id}.${format}`, hidden: true});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    showError(error, `exporting ${c.name}`);
  }
}

async function remove(c) {
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Delete ${c.name}? Its card file is removed from the server.`)) return;
  try {
    await api(`api/characters/${c.id}`, {method: "DELETE"});
    avatars.delete(c.id);
    await loadCharacters();
    hooks.announce(`Deleted ${c.name}`);
    hooks.deleted?.(c.id);
  } catch (error) {
    showError(error, `deleting ${c.name}`);
  }
}

function openForm(title, values) {
  const form = $("#card-form");
  $("#card-form-title").textContent = title;
  for (const field of FIELDS) form.elements[field].value = values[field] || "";
  form.elements.tags.value = (values.tags || []).join(", ");
  form.hidden = false;
  form.elements.name.focus();
}

function closeForm() {
  const form = $("#card-form");
  form.hidden = true;
  form.reset(); // a later edit must not show (or be mistaken for) this one's values
  editing = null;
}

async function edit(id) {
  try {
    const {data} = await api(`api/characters/${id}`);
    editing = id;
    const values = {tags: data.tags};
    for (const field of FIELDS) values[field] = data[DETAIL_NAMES[field] || field];
    openForm(`Edit ${data.name}`, values);
  } catch (error) {
    showError(error, "opening the card");
  }
}

async function save(event) {
  event.preventDefault();
  const form = $("#card-form");
  const data = {};
  for (const field of FIELDS) data[field] = form.elements[field].value;
  data.tags = form.elements.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
  try {
    if (editing) {
      await api(`api/characters/${editing}`, {method: "PUT", json: data});
      hooks.announce(`Saved ${data.name}`);
    } else {
      const reply = await api("api/characters", {method: "POST", json: {spec: "chara_card_v2", spec_version: "2.0", data}});
      hooks.announce(`Created ${reply.data.name}`);
    }
    closeForm();
    await loadCharacters();
  } catch (error) {
    showError(error, "saving the card");
  }
}

export function initCharacters(callbacks) {
  hooks = {...hooks, ...callbacks};
  on(["characters", "characterId"], () => {
    renderPicker();
    renderManager();
  });
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.dataset.over = "true";
  });
  zone.addEventListener("dragleave", () => {
    zone.dataset.over = "false";
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.dataset.over = "false";
    for (const file of event.dataTransfer?.files || []) upload(file);
  });
  // A card dropped anywhere on the manager view counts; elsewhere the browser must not
  // navigate away to the file.
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => event.preventDefault());
  $("#card-file").addEventListener("change", async (event) => {
    const input = event.target;
    for (const file of input.files) await upload(file);
    input.value = "";
  });
  $("#create-char").addEventListener("click", () => {
    editing = null;
    openForm("New character", {});
  });
  $("#card-cancel").addEventListener("click", closeForm);
  $("#card-form").addEventListener("submit", save);
}
