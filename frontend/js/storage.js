// What the app keeps on the device: the outbox of messages not yet answered,
// the recent conversation (IndexedDB), and small preferences (localStorage).

const DB_NAME = "learning-voice-agent";
const DB_VERSION = 1;
// Turns kept per session for the next open; older ones are in the archive.
export const RECENT_TURNS = 50;

let opening = null;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function db() {
  if (!opening) {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const d = req.result;
      // Keyed by the message id the server echoes, so an answer removes its entry.
      const outbox = d.createObjectStore("outbox", { keyPath: "id" });
      outbox.createIndex("queued", "queued");
      const turns = d.createObjectStore("turns", { keyPath: "id" });
      turns.createIndex("session", ["session", "created"]);
    };
    opening = request(req).catch((err) => {
      opening = null;
      throw err;
    });
  }
  return opening;
}

async function store(name, mode) {
  return (await db()).transaction(name, mode).objectStore(name);
}

export const outbox = {
  async put(message) {
    await request((await store("outbox", "readwrite")).put(message));
  },
  async remove(id) {
    await request((await store("outbox", "readwrite")).delete(id));
  },
  /** Every queued message, oldest first: they are delivered in the order said. */
  async all() {
    const index = (await store("outbox", "readonly")).index("queued");
    return request(index.getAll());
  },
};

export const turns = {
  async put(turn) {
    await request((await store("turns", "readwrite")).put(JSON.parse(JSON.stringify(turn))));
  },
  /** The last `limit` turns of a session, oldest first. */
  async recent(session, limit = RECENT_TURNS) {
    const index = (await store("turns", "readonly")).index("session");
    const range = IDBKeyRange.bound([session, 0], [session, Infinity]);
    const all = await request(index.getAll(range));
    return all.slice(-limit);
  },
  /** Drops turns beyond the most recent `limit` of a session. */
  async trim(session, limit = RECENT_TURNS) {
    const index = (await store("turns", "readwrite")).index("session");
    const range = IDBKeyRange.bound([session, 0], [session, Infinity]);
    const keys = await request(index.getAllKeys(range));
    const objects = await store("turns", "readwrite");
    await Promise.all(keys.slice(0, Math.max(0, keys.length - limit)).map((k) => request(objects.delete(k))));
  },
};

export const prefs = {
  get(name, fallback) {
    try {
      const raw = localStorage.getItem(`lva:${name}`);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(name, value) {
    try {
      localStorage.setItem(`lva:${name}`, JSON.stringify(value));
    } catch {
      // Private browsing or a full quota: the preference lasts this visit only.
    }
  },
};
