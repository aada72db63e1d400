// Errors shown to the user: the server's own message, in a dismissible alert.

import {$} from "./dom.js";
import {recordError, set} from "./state.js";

export function describe(error) {
  if (!error) return "";
  const detail = error.detail;
  let text = error.message || String(error);
  if (typeof detail === "string" && detail !== text) text += ` (${detail})`;
  else if (Array.isArray(detail) && detail.length && detail[0].msg) {
    text += ": " + detail.map((d) => `${d.loc ? d.loc + ": " : ""}${d.msg}`).join("; ");
  }
  return text;
}

export function showError(error, where = "") {
  if (error?.name === "AbortError") return;
  const text = describe(error);
  recordError(where, text);
  set({lastError: text});
  $("#error-text").textContent = where ? `${where}: ${text}` : text;
  $("#error-banner").hidden = false;
}

export function clearError() {
  $("#error-banner").hidden = true;
  set({lastError: null});
}

export function initNotice() {
  $("#error-close").addEventListener("click", clearError);
}
