// Installable and up to date: registers the service worker, offers "reload to
// update" when a new deploy's worker is waiting, and the browser's install prompt.

import { reactive } from "./vue.js";

export const pwa = reactive({ updateReady: false, canInstall: false });

let waiting = null;
let installEvent = null;

function offer(worker) {
  waiting = worker;
  pwa.updateReady = true;
}

export async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  let reloading = false;
  navigator.serviceWorker.addEventListener("controllerchange", () => {
    // Only an update the learner asked for reloads the page under them.
    if (waiting && !reloading) {
      reloading = true;
      window.location.reload();
    }
  });
  try {
    const registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    // A worker already waiting (a deploy seen on an earlier visit).
    if (registration.waiting && navigator.serviceWorker.controller) offer(registration.waiting);
    registration.addEventListener("updatefound", () => {
      const worker = registration.installing;
      worker?.addEventListener("statechange", () => {
        if (worker.state === "installed" && navigator.serviceWorker.controller) offer(worker);
      });
    });
  } catch {
    // Without a service worker the app still works online; nothing to tell the learner.
  }
}

export function applyUpdate() {
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
