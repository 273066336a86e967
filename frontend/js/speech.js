// Speaks replies with the browser's speech synthesis, a sentence at a time as
// each sentence completes, so the companion starts talking while it still writes.

import { reactive } from "./vue.js";
import { prefs } from "./storage.js";

// A sentence ends at . ! ? or … (with closing quotes or brackets) before a space.
const SENTENCE_END = /[.!?…]+["'”’)\]]*\s+/g;

export function completeSentences(text, from) {
  // The text from `from` up to the end of its last complete sentence.
  SENTENCE_END.lastIndex = from;
  let end = from;
  for (let m = SENTENCE_END.exec(text); m; m = SENTENCE_END.exec(text)) end = m.index + m[0].length;
  return end;
}

export class Speaker {
  constructor() {
    this.supported = typeof window.speechSynthesis !== "undefined";
    this.state = reactive({ enabled: this.supported && prefs.get("speak", true), speaking: false });
    // Per turn: how much of its reply has been handed to the synthesiser.
    this._spoken = new Map();
    this._queued = 0;
  }

  setEnabled(on) {
    this.state.enabled = on && this.supported;
    prefs.set("speak", on);
    if (!on) this.stop();
  }

  /** The reply so far: speaks any sentence completed since the last call. */
  feed(turnId, text) {
    if (!this.state.enabled) return;
    const from = this._spoken.get(turnId) ?? 0;
    const end = completeSentences(text, from);
    if (end > from) this._say(turnId, text.slice(from, end), end);
  }

  /** The whole reply: speaks whatever is left of it. */
  finish(turnId, text) {
    if (!this.state.enabled) return;
    const from = this._spoken.get(turnId) ?? 0;
    if (text.length > from) this._say(turnId, text.slice(from), text.length);
  }

  stop() {
    this._queued = 0;
    this.state.speaking = false;
    if (this.supported) window.speechSynthesis.cancel();
  }

  _say(turnId, text, upTo) {
    this._spoken.set(turnId, upTo);
    if (!text.trim()) return;
    const utterance = new SpeechSynthesisUtterance(text.trim());
    this._queued += 1;
    this.state.speaking = true;
    const done = () => {
      this._queued = Math.max(0, this._queued - 1);
      if (this._queued === 0) this.state.speaking = false;
    };
    utterance.onend = done;
    utterance.onerror = done;
    window.speechSynthesis.speak(utterance);
  }
}
