// The page's state in one object, with change notifications by key. The test hook
// (window.__companion, set up in main.js) reads it; nothing else reaches into modules.

export const state = {
  ready: false,
  /** Optional server routes found in the page's <meta name="companion-features">. */
  features: new Set(),
  characters: [],
  activeCharacterId: null,
  /** The character of the open chat (a new chat starts with the picked one). */
  characterId: null,
  conversationId: null,
  /** The open conversation's version (servers with conversation editing). */
  version: null,
  /** [{role, content, status, error?, expressions?, meta?}] of the open chat. */
  messages: [],
  greeting: null,
  greetingIndex: 0,
  greetingCount: 1,
  streaming: false,
  tts: true,
  userName: "",
  model: "",
  /** The last `status` event of /-/events (profile, stages, reload outcome). */
  status: null,
  health: null,
  preview: null,
  conversations: [],
  view: "chat",
  lastTurn: null,
  /** Turns finished since the page loaded (however they ended). */
  turns: 0,
  lastError: null,
};

const listeners = new Map();

/** Merge ``patch`` into the state and tell whoever listens to one of its keys. */
export function set(patch) {
  Object.assign(state, patch);
  const called = new Set();
  for (const key of Object.keys(patch)) {
    for (const fn of listeners.get(key) || []) {
      if (called.has(fn)) continue;
      called.add(fn);
      fn(state);
    }
  }
}

/** Call ``fn(state)`` whenever one of ``keys`` is set. */
export function on(keys, fn) {
  for (const key of keys) {
    if (!listeners.has(key)) listeners.set(key, new Set());
    listeners.get(key).add(fn);
  }
}

/** What the browser reported that tests (and bug reports) want to see. */
export const diagnostics = {
  cspViolations: [],
  errors: [],
  /** SSE events of chat turns, in arrival order: {event, index?, at}. */
  events: [],
};

export function recordError(where, error) {
  diagnostics.errors.push({where, message: String(error?.message || error), at: Date.now()});
}
