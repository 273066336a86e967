// The streaming WebSocket to the gateway: reconnects by itself after a drop,
// with exponential backoff and jitter (so a restarted gateway is not met by
// every client at the same instant), and says what state it is in.

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 30_000;
// Idle proxies and phone networks drop quiet sockets; a ping keeps ours alive.
const PING_EVERY_MS = 25_000;
// A v1 policy close (bad session id) will not get better by retrying.
const POLICY_VIOLATION = 1008;

export function socketUrl(sessionId, location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/${encodeURIComponent(sessionId)}?stream=1`;
}

export class Connection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.state = "connecting";
    this.retryAt = null;
    this._attempt = 0;
    this._ws = null;
    this._timer = null;
    this._ping = null;
    this._closed = false;
    this._onOnline = () => this.retryNow();
    window.addEventListener("online", this._onOnline);
  }

  open() {
    this._closed = false;
    this._connect();
  }

  /** Closes for good (a new session opens a new connection). */
  close() {
    this._closed = true;
    window.removeEventListener("online", this._onOnline);
    clearTimeout(this._timer);
    clearInterval(this._ping);
    if (this._ws) this._ws.close(1000, "closed by the app");
    this._ws = null;
  }

  /** Sends a message now if the socket is open; false means it was not sent. */
  send(message) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(message));
    return true;
  }

  retryNow() {
    if (this._closed || this.state === "open" || this.state === "connecting") return;
    clearTimeout(this._timer);
    this._connect();
  }

  _set(state, retryAt = null) {
    this.state = state;
    this.retryAt = retryAt;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, retryAt } }));
  }

  _connect() {
    this._set("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      this._attempt = 0;
      this._set("open");
      clearInterval(this._ping);
      this._ping = setInterval(() => this.send({ type: "ping" }), PING_EVERY_MS);
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && message.type !== "pong") {
        this.dispatchEvent(new CustomEvent("message", { detail: message }));
      }
    };
    ws.onclose = (event) => {
      clearInterval(this._ping);
      if (this._ws !== ws) return;
      this._ws = null;
      if (this._closed) return;
      if (event.code === POLICY_VIOLATION) {
        this._set("refused");
        return;
      }
      this._scheduleRetry();
    };
  }

  _scheduleRetry() {
    const ceiling = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this._attempt);
    this._attempt += 1;
    // Half fixed, half random: spread out, yet never a tight loop of instant retries.
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this._set("waiting", Date.now() + delay);
    this._timer = setTimeout(() => this._connect(), delay);
  }
}
