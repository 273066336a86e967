// Search over the archive as the learner types, and a session's history.
// Snippets arrive as HTML in which only <mark> is markup (the archiver escapes
// the rest); they are turned into text and <mark> parts here, never into HTML,
// so nothing the learner once said can become markup in the page.

import { reactive } from "./vue.js";

export const DEBOUNCE_MS = 200;
export const RESULTS = 20;

const ENTITIES = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'", "&#39;": "'" };

function unescape(text) {
  return text.replace(/&(?:amp|lt|gt|quot|#x27|#39);/g, (e) => ENTITIES[e]);
}

/** [{text, mark}] parts of a server snippet: marked or plain text, nothing else. */
export function snippetParts(snippet) {
  const parts = [];
  let marked = false;
  for (const piece of String(snippet).split(/(<mark>|<\/mark>)/)) {
    if (piece === "<mark>") marked = true;
    else if (piece === "</mark>") marked = false;
    else if (piece) parts.push({ text: unescape(piece), mark: marked });
  }
  return parts;
}

async function json(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && (body.detail || body.error || body.message);
    throw new Error(typeof detail === "string" ? detail : `the server answered ${response.status}`);
  }
  return body;
}

export class Search {
  constructor() {
    this.state = reactive({ query: "", results: [], loading: false, error: null, done: false });
    this._timer = null;
    this._asked = 0;
  }

  /** The query as typed: searched once typing pauses. */
  type(query) {
    this.state.query = query;
    clearTimeout(this._timer);
    if (!query.trim()) {
      this.state.results = [];
      this.state.done = false;
      this.state.error = null;
      return;
    }
    this._timer = setTimeout(() => this.run(query), DEBOUNCE_MS);
  }

  async run(query) {
    // Answers can overtake one another: only the latest question's answer shows.
    const asked = ++this._asked;
    this.state.loading = true;
    try {
      const body = await json(
        await fetch("/api/search", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ query, limit: RESULTS }),
        }),
      );
      if (asked !== this._asked) return;
      this.state.results = body.results;
      this.state.error = null;
    } catch (err) {
      if (asked !== this._asked) return;
      this.state.results = [];
      this.state.error = navigator.onLine
        ? `Search failed: ${err.message}.`
        : "Search needs a connection; you are offline.";
    } finally {
      if (asked === this._asked) {
        this.state.loading = false;
        this.state.done = true;
      }
    }
  }
}

export async function sessionHistory(sessionId, limit = 200) {
  const url = `/api/session/${encodeURIComponent(sessionId)}/history?limit=${limit}`;
  return json(await fetch(url));
}
