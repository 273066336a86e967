// The service worker: the app shell and the vendored Vue come from a cache named
// after this deploy's version, so the app opens offline; a new deploy changes
// this file, installs a new cache beside the old one, and the page offers to
// reload. The API, the WebSocket and the health check are never served from cache.

const VERSION = "__VERSION__";
const CACHE = `lva-shell-${VERSION}`;
const PRECACHE = __PRECACHE__;
const NEVER_CACHED = ["/api/", "/ws/", "/health", "/docs", "/openapi.json"];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE).then((cache) =>
      cache.addAll(
        PRECACHE.map(
          // "/" answers API clients with the health check; the shell is its HTML.
          (url) => new Request(url, { cache: "reload", headers: url === "/" ? { Accept: "text/html" } : {} }),
        ),
      ),
    ),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      const names = await caches.keys();
      await Promise.all(names.filter((n) => n.startsWith("lva-shell-") && n !== CACHE).map((n) => caches.delete(n)));
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("message", (event) => {
  const type = event.data && event.data.type;
  if (type === "skip-waiting") self.skipWaiting();
  // The page compares this with its own version to tell whether it is stale.
  if (type === "version" && event.ports[0]) event.ports[0].postMessage(VERSION);
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (NEVER_CACHED.some((prefix) => url.pathname.startsWith(prefix))) return;
  if (request.mode === "navigate") {
    // The page from the network when there is one (a deploy shows at once),
    // else this version's copy ("/" varies by Accept: the copy is its HTML).
    event.respondWith(
      fetch(request).catch(async () => (await caches.match("/", { cacheName: CACHE, ignoreVary: true })) || Response.error()),
    );
    return;
  }
  // Versioned assets never change under their URL: the cache is always right.
  event.respondWith(
    caches.match(request, { cacheName: CACHE, ignoreVary: true }).then((hit) => hit || fetch(request)),
  );
});
