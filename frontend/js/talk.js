// What the talk button and the text field do: record and send, barge in on a
// reply being spoken or written, and say what went wrong in plain words.

import { ref } from "./vue.js";
import { MIN_CLIP_MS, RecorderError, blobToBase64 } from "./recorder.js";

export class Talk {
  constructor(conversation, recorder, speaker, maxTextChars) {
    this.conversation = conversation;
    this.recorder = recorder;
    this.speaker = speaker;
    this.maxTextChars = maxTextChars;
    this.notice = ref(null);
    this.pressed = ref(false);
    // The clip stops itself at the longest the server takes, and is sent.
    recorder.onLimit = () => this.release();
  }

  ended() {
    return this.conversation.state.summary !== null;
  }

  canStop() {
    return this.speaker.state.speaking || this.conversation.busy;
  }

  /** Stops the companion: its speech, and the reply being written (barge-in). */
  stop() {
    this.conversation.cancel();
  }

  async press() {
    if (this.pressed.value || this.ended()) return;
    this.pressed.value = true;
    this.notice.value = null;
    if (this.canStop()) this.stop();
    try {
      await this.recorder.start();
    } catch (err) {
      this.pressed.value = false;
      if (!(err instanceof RecorderError)) throw err;
      return;
    }
    // Released while the microphone was still starting.
    if (!this.pressed.value) await this.release(true);
  }

  async release(force = false) {
    if (!this.pressed.value && !force) return;
    this.pressed.value = false;
    const clip = await this.recorder.stop();
    if (!clip) return;
    if (clip.ms < MIN_CLIP_MS) {
      this.notice.value = "Hold the button down while you speak, then let go.";
      return;
    }
    this.conversation.sayAudio(await blobToBase64(clip.blob));
  }

  sendText(text) {
    this.notice.value = null;
    if (this.canStop()) this.stop();
    this.conversation.say(text);
  }
}
