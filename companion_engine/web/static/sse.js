// Server-sent events over fetch(): POST bodies and the Authorization header, which
// EventSource cannot send. One parser for the chat stream and the live status stream.

import {api} from "./api.js";

/** Parse an event stream into {event, data} objects (data parsed as JSON when it is). */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/u)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) yield {event, data: parse(data.join("\n"))};
          event = "message";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /u, "");
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Open an SSE endpoint (GET, or POST with a JSON body) and iterate its events. */
export async function* stream(path, {json, signal} = {}) {
  const response = await api(path, {
    method: json === undefined ? "GET" : "POST", json, signal, raw: true,
    headers: {Accept: "text/event-stream"},
  });
  yield* readEvents(response);
}
