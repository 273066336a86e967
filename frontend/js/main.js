// Starts the app: reads the server's limits from the page, wires the parts
// together and mounts the view.

import { createApp } from "./vue.js";
import { App } from "./ui/app.js";
import { Conversation } from "./transcript.js";
import { Recorder } from "./recorder.js";
import { Speaker } from "./speech.js";
import { Talk } from "./talk.js";
import { registerServiceWorker } from "./pwa.js";

function setting(name, fallback) {
  const value = Number(document.querySelector(`meta[name="${name}"]`)?.content);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

const speaker = new Speaker();
const conversation = new Conversation(speaker);
const recorder = new Recorder(setting("lva-max-audio-seconds", 60));
const talk = new Talk(conversation, recorder, speaker, setting("lva-max-text-chars", 4000));

createApp(App, { conversation, talk, speaker }).mount("#app");
conversation.start();
registerServiceWorker();
