// The conversation as the learner sees it: turns built from what the server
// sends (transcript, then delta pieces, then the response), kept on the device,
// and an outbox that delivers every message exactly once, even across drops:
// a message leaves the outbox only when its answer arrives, and the gateway
// answers a resent id with the answer it already gave.

import { reactive } from "./vue.js";
import { Connection, socketUrl } from "./connection.js";
import { outbox, prefs, turns as savedTurns } from "./storage.js";

// Messages sent and not yet answered at once: the gateway refuses more than a few
// waiting on one connection (WS_MAX_PENDING, 8), and a long outbox must not hit that.
const MAX_IN_FLIGHT = 4;
// Errors that say nothing about the message itself: it stays in the outbox, and
// "Try again" (or the next open of the app) sends it again.
const TRANSIENT = new Set(["unavailable", "busy", "timeout", "too_many_pending", "internal", "transcription_failed"]);

function newId() {
  return crypto.randomUUID();
}

export function newSessionId() {
  return `pwa-${newId()}`;
}

export class Conversation {
  constructor(speaker) {
    this.speaker = speaker;
    this.state = reactive({
      session: prefs.get("session", null) || newSessionId(),
      turns: [],
      connection: "connecting",
      retryAt: null,
      summary: null,
      ending: false,
      loaded: false,
    });
    prefs.set("session", this.state.session);
    this._connection = null;
    // Ids sent on the current socket: a new socket resends whatever is unanswered.
    this._sent = new Set();
  }

  get busy() {
    return this.state.turns.some((t) => t.state === "sent" || t.state === "streaming");
  }

  /** The turn whose reply is being written or waited for, if any. */
  get current() {
    return this.state.turns.find((t) => t.state === "streaming" || t.state === "sent") || null;
  }

  async start() {
    await this._load();
    this._open();
  }

  async _load() {
    const session = this.state.session;
    let kept = [];
    let queued = [];
    try {
      [kept, queued] = await Promise.all([savedTurns.recent(session), outbox.all()]);
    } catch {
      // No IndexedDB (a private window in some browsers): the app still works live.
    }
    const unanswered = new Set(queued.filter((q) => q.session === session).map((q) => q.id));
    for (const turn of kept) {
      // A reply that was mid-stream when the page closed is asked for again.
      if (unanswered.has(turn.id)) {
        turn.state = "queued";
        turn.retryable = false;
      }
      else if (turn.state === "streaming" || turn.state === "sent") turn.state = "interrupted";
    }
    this.state.turns = kept;
    this.state.loaded = true;
  }

  _open() {
    const connection = new Connection(socketUrl(this.state.session));
    connection.addEventListener("state", (e) => {
      this.state.connection = e.detail.state;
      this.state.retryAt = e.detail.retryAt;
      if (e.detail.state === "open") {
        this._sent.clear();
        this.flush();
      }
    });
    connection.addEventListener("message", (e) => this._receive(e.detail));
    this._connection = connection;
    connection.open();
  }

  retryNow() {
    this._connection?.retryNow();
  }

  say(text) {
    return this._queue("text", { type: "text", text }, text);
  }

  sayAudio(base64) {
    return this._queue("audio", { type: "audio", audio: base64 }, null);
  }

  async _queue(kind, message, you) {
    const id = newId();
    const turn = {
      id,
      session: this.state.session,
      created: Date.now(),
      kind,
      you,
      reply: "",
      state: "queued",
      error: null,
      timings: null,
      intent: null,
    };
    this.state.turns.push(turn);
    const entry = { id, session: turn.session, queued: turn.created, message: { ...message, id } };
    try {
      await outbox.put(entry);
    } catch {
      this._memoryOutbox.push(entry);
    }
    this._save(turn);
    await this.flush();
    return id;
  }

  // Used only where IndexedDB is unavailable: kept for this visit.
  _memoryOutbox = [];

  async flush() {
    const connection = this._connection;
    if (!connection || connection.state !== "open") return;
    let queued = [];
    try {
      queued = await outbox.all();
    } catch {
      queued = [];
    }
    for (const entry of [...queued, ...this._memoryOutbox]) {
      if (entry.session !== this.state.session || this._sent.has(entry.id)) continue;
      const turn = this._turn(entry.id);
      if (turn && turn.state === "error") continue; // waits for "Try again"
      if (this._inFlight() >= MAX_IN_FLIGHT) return;
      if (!connection.send(entry.message)) return;
      this._sent.add(entry.id);
      if (turn && (turn.state === "queued" || turn.state === "interrupted")) turn.state = "sent";
    }
  }

  _inFlight() {
    return this.state.turns.filter((t) => this._sent.has(t.id) && (t.state === "sent" || t.state === "streaming")).length;
  }

  /** Sends a message that got a passing error again, under the same id. */
  retry(id) {
    const turn = this._turn(id);
    if (!turn || !turn.retryable) return;
    turn.state = "queued";
    turn.error = null;
    turn.retryable = false;
    this._sent.delete(id);
    this._save(turn);
    this.flush();
  }

  cancel() {
    this.speaker.stop();
    const turn = this.current;
    if (turn && this._connection) this._connection.send({ type: "cancel", id: turn.id });
  }

  end() {
    this.speaker.stop();
    const id = newId();
    this._endId = id;
    this.state.ending = true;
    if (!this._connection?.send({ type: "end", id })) this.state.ending = false;
  }

  newSession() {
    this.speaker.stop();
    this._connection?.close();
    this.state.session = newSessionId();
    prefs.set("session", this.state.session);
    this.state.turns = [];
    this.state.summary = null;
    this.state.ending = false;
    this._sent.clear();
    this._open();
  }

  _turn(id) {
    return this.state.turns.find((t) => t.id === id);
  }

  _receive(message) {
    if (message.type === "summary") {
      this.state.summary = message.text;
      this.state.ending = false;
      return;
    }
    const turn = message.id ? this._turn(message.id) : null;
    if (!turn) return;
    switch (message.type) {
      case "transcript":
        turn.you = message.text;
        break;
      case "delta":
        if (turn.state !== "streaming") turn.reply = "";
        turn.state = "streaming";
        turn.reply += message.text;
        this.speaker.feed(turn.id, turn.reply);
        break;
      case "response":
        turn.you = message.user_text;
        turn.reply = message.agent_text;
        turn.intent = message.intent;
        turn.timings = message.timings || null;
        turn.state = message.cancelled ? "cancelled" : "done";
        if (message.cancelled) this.speaker.stop();
        else this.speaker.finish(turn.id, turn.reply);
        this._settle(turn);
        this.flush();
        break;
      case "error":
        turn.state = "error";
        turn.error = message.message;
        turn.retryable = TRANSIENT.has(message.code);
        this._sent.delete(turn.id);
        if (turn.retryable) this._save(turn);
        else this._settle(turn);
        this.flush();
        break;
      default:
        break;
    }
  }

  _settle(turn) {
    this._memoryOutbox = this._memoryOutbox.filter((e) => e.id !== turn.id);
    outbox.remove(turn.id).catch(() => {});
    this._save(turn);
  }

  _save(turn) {
    savedTurns
      .put(turn)
      .then(() => savedTurns.trim(turn.session))
      .catch(() => {});
  }
}
