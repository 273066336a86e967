// Records the microphone with MediaRecorder while the talk button is held:
// elapsed time, a live input level, and a stop at the longest clip the server takes.

import { reactive } from "./vue.js";

// Containers the server decodes, in order of preference (Opus is small and clear).
const ACCEPTED = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/ogg"];
// Shorter than this is a tap, not speech: ask to hold instead of sending it.
export const MIN_CLIP_MS = 400;

export function chooseType(isSupported = (t) => MediaRecorder.isTypeSupported(t)) {
  return ACCEPTED.find((t) => isSupported(t)) || null;
}

export class RecorderError extends Error {}

function explain(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "Microphone access is blocked. Allow it in the browser's site settings to talk, or type below.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return "No microphone was found. Connect one to talk, or type below.";
  }
  if (name === "NotReadableError") {
    return "The microphone is busy in another app. Close it there to talk, or type below.";
  }
  return "The microphone could not be started. You can still type below.";
}

export class Recorder {
  constructor(maxSeconds) {
    this.maxSeconds = maxSeconds;
    this.state = reactive({ recording: false, elapsed: 0, level: 0, problem: null });
    this.supported =
      typeof window.MediaRecorder !== "undefined" && !!navigator.mediaDevices?.getUserMedia;
    if (!this.supported) {
      this.state.problem = "This browser cannot record audio. You can still type below.";
    } else if (!chooseType()) {
      // Safari records only audio/mp4, a container the server does not take yet.
      this.supported = false;
      this.state.problem =
        "This browser records audio only as MP4, which the companion cannot hear yet. Please type, or use Chrome, Edge or Firefox to talk.";
    }
    this._stopping = null;
  }

  /** Starts recording; resolves once the microphone is live. */
  async start() {
    if (!this.supported || this.state.recording) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 },
      });
    } catch (err) {
      this.state.problem = explain(err);
      throw new RecorderError(this.state.problem);
    }
    this.state.problem = null;
    const type = chooseType();
    const chunks = [];
    const recorder = new MediaRecorder(stream, { mimeType: type, audioBitsPerSecond: 32_000 });
    recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
    const startedAt = performance.now();
    this._meter = this._startMeter(stream);
    this._clock = setInterval(() => {
      this.state.elapsed = (performance.now() - startedAt) / 1000;
      if (this.state.elapsed >= this.maxSeconds) this.onLimit?.();
    }, 100);
    this._stopping = new Promise((resolve) => {
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        resolve({ blob: new Blob(chunks, { type }), ms: performance.now() - startedAt });
      };
    });
    this._recorder = recorder;
    recorder.start(250);
    this.state.elapsed = 0;
    this.state.recording = true;
  }

  /** Stops and resolves with the clip ({blob, ms}), or null if nothing was recording. */
  async stop() {
    if (!this.state.recording) return null;
    this.state.recording = false;
    clearInterval(this._clock);
    this._meter?.();
    this.state.level = 0;
    this._recorder.stop();
    return this._stopping;
  }

  _startMeter(stream) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    const context = new Context();
    const analyser = context.createAnalyser();
    analyser.fftSize = 512;
    context.createMediaStreamSource(stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    let frame = 0;
    const tick = () => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      // RMS to a 0..1 scale that moves visibly for normal speech (about -40 to 0 dBFS).
      const db = 10 * Math.log10(sum / samples.length + 1e-10);
      this.state.level = Math.min(1, Math.max(0, (db + 60) / 50));
      frame = requestAnimationFrame(tick);
    };
    tick();
    return () => {
      cancelAnimationFrame(frame);
      context.close();
    };
  }
}

export function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}
