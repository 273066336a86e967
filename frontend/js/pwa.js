// Installable and up to date: registers the service worker, offers "reload to
// update" when a new deploy's worker is waiting, and the browser's install prompt.

import { reactive } from "./vue.js";

export const pwa = reactive({ updateReady: false, canInstall: false });

// Browsers look for a new worker on navigation; a page left open looks now and then.
const CHECK_EVERY_MS = 30 * 60 * 1000;

let waiting = null;
let asked = false;
let installEvent = null;

function pageVersion() {
  return document.querySelector('meta[name="lva-version"]')?.content;
}

function workerVersion(worker) {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = (event) => resolve(event.data);
    worker.postMessage({ type: "version" }, [channel.port2]);
    setTimeout(() => resolve(null), 2000);
  });
}

// A waiting worker of the version this page already runs (the page itself came
// from the network) takes over quietly; one of a newer version asks first, as
// taking over would leave this page running the old version against new assets.
async function arrived(worker) {
  if ((await workerVersion(worker)) === pageVersion()) {
    worker.postMessage({ type: "skip-waiting" });
    return;
  }
  waiting = worker;
  pwa.updateReady = true;
}

export async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  let reloading = false;
  navigator.serviceWorker.addEventListener("controllerchange", () => {
    // Only an update the learner asked for reloads the page under them.
    if (asked && !reloading) {
      reloading = true;
      window.location.reload();
    }
  });
  let registration;
  try {
    registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
  } catch {
    // Without a service worker the app still works online; nothing to tell the learner.
    return;
  }
  if (registration.waiting && navigator.serviceWorker.controller) arrived(registration.waiting);
  registration.addEventListener("updatefound", () => {
    const worker = registration.installing;
    worker?.addEventListener("statechange", () => {
      if (worker.state === "installed" && navigator.serviceWorker.controller) arrived(worker);
    });
  });
  const check = () => registration.update().catch(() => {});
  setInterval(check, CHECK_EVERY_MS);
  window.addEventListener("online", check);
}

export function applyUpdate() {
  asked = true;
  if (waiting) waiting.postMessage({ type: "skip-waiting" });
  else window.location.reload();
}

window.addEventListener("beforeinstallprompt", (event) => {
  event.preventDefault();
  installEvent = event;
  pwa.canInstall = true;
});

window.addEventListener("appinstalled", () => {
  installEvent = null;
  pwa.canInstall = false;
});

export async function install() {
  if (!installEvent) return;
  installEvent.prompt();
  await installEvent.userChoice;
  installEvent = null;
  pwa.canInstall = false;
}
