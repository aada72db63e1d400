// Sentence audio through Web Audio: each `audio_ready` is decoded as it arrives and
// scheduled to start exactly when the previous sentence ends (no gap, no overlap), in
// the order the events came, which is sentence order. Decoding runs in parallel but
// scheduling is chained, so a short sentence that decodes first still waits its turn.
// While audio plays, the visemes of the sentence being heard drive a mouth shape.

/** The 15 Oculus visemes the engine sends, as five mouth shapes. */
export const MOUTH = {
  sil: "closed", PP: "closed",
  FF: "narrow", TH: "narrow", DD: "narrow", kk: "narrow", CH: "narrow", SS: "narrow", nn: "narrow", RR: "narrow",
  aa: "open", E: "wide", ih: "wide", oh: "round", ou: "round",
};
/** Seconds between "now" and the first sentence's start: room for the audio thread. */
const LEAD_S = 0.05;

function bytesOf(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export class AudioQueue {
  /** onFrame({speaking, shape, viseme, index, expression}) runs on every animation frame
   *  while audio plays, and once when it stops. */
  constructor({onFrame = () => {}, onError = () => {}} = {}) {
    this.onFrame = onFrame;
    this.onError = onError;
    this.ctx = null;
    this.turn = 0;
    this.end = 0;
    this.tail = Promise.resolve();
    this.sources = new Set();
    this.segments = [];
    /** Every sentence scheduled, in scheduling order (the test hook reads it). */
    this.scheduled = [];
    this.raf = 0;
    this.shape = "closed";
  }

  get available() {
    return typeof AudioContext !== "undefined";
  }

  /** Create or resume the context; call from a user gesture (autoplay rules). */
  unlock() {
    if (!this.available) return;
    this.ctx ??= new AudioContext({latencyHint: "interactive"});
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
  }

  get speaking() {
    return Boolean(this.ctx && this.ctx.currentTime < this.end && this.sources.size);
  }

  /** A new turn: whatever was queued or playing stops. */
  begin() {
    this.stop();
  }

  /** Queue one `audio_ready` event (or an audio chunk of the same shape). */
  push(event) {
    if (!this.ctx || !event.audio) return;
    const turn = this.turn;
    const decoded = this.decode(bytesOf(event.audio), event);
    this.tail = this.tail
      .then(() => decoded)
      .then((buffer) => {
        if (turn === this.turn) this.schedule(event, buffer, turn);
      })
      .catch((error) => {
        if (turn === this.turn) this.onError(event, error);
      });
  }

  decode(bytes, event) {
    if (event.format === "pcm16") {
      const samples = new Int16Array(bytes.buffer, 0, bytes.byteLength >> 1);
      const buffer = this.ctx.createBuffer(1, samples.length || 1, event.sample_rate || 22050);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
      return Promise.resolve(buffer);
    }
    return this.ctx.decodeAudioData(bytes.buffer);
  }

  schedule(event, buffer, turn) {
    const ctx = this.ctx;
    const now = ctx.currentTime;
    const start = Math.max(now + LEAD_S, this.end);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    source.onended = () => this.sources.delete(source);
    source.start(start);
    this.sources.add(source);
    const previousEnd = this.end;
    this.end = start + buffer.duration;
    const entry = {
      turn, index: event.index, sentence: event.sentence ?? "", display: event.display ?? "",
      queued_at: now, start, end: this.end, duration: buffer.duration,
      // Time between the previous sentence's end and this one's start (0: seamless;
      // more only when this audio arrived after the previous had finished).
      gap_ms: previousEnd > 0 ? Math.max(0, start - previousEnd) * 1000 : 0,
      previous_end: previousEnd,
    };
    this.scheduled.push(entry);
    this.segments.push({...entry, visemes: event.visemes || [], expression: event.expression || null});
    this.animate();
  }

  /** Stop everything now (the stop button, a new turn, leaving the conversation). */
  stop() {
    this.turn++;
    this.tail = Promise.resolve();
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        /* not started yet */
      }
    }
    this.sources.clear();
    this.segments = [];
    this.end = 0;
    if (this.raf) cancelAnimationFrame(this.raf);
    this.raf = 0;
    this.frame(null, null);
  }

  frame(segment, viseme) {
    const shape = viseme ? MOUTH[viseme] || "narrow" : "closed";
    this.shape = shape;
    this.onFrame({speaking: Boolean(segment), shape, viseme, index: segment?.index ?? null,
      expression: segment?.expression ?? null});
  }

  animate() {
    if (this.raf) return;
    const tick = () => {
      const t = this.ctx.currentTime;
      const segment = this.segments.find((s) => s.start <= t && t < s.end);
      let viseme = null;
      if (segment) {
        const ms = (t - segment.start) * 1000;
        viseme = "sil";
        for (const v of segment.visemes) {
          if (v.time_ms > ms) break;
          viseme = v.viseme;
        }
      }
      this.frame(segment, viseme);
      this.raf = t < this.end ? requestAnimationFrame(tick) : 0;
      if (!this.raf) this.frame(null, null);
    };
    this.raf = requestAnimationFrame(tick);
  }
}
