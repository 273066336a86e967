// Small text helpers shared by the views.

export function seconds(ms) {
  if (ms === null || ms === undefined) return null;
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function clock(totalSeconds) {
  const s = Math.floor(totalSeconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

const STEPS = [
  ["queued", "waiting in queues"],
  ["transcribe", "transcribing"],
  ["first_token", "to first words"],
  ["generate", "writing the reply"],
  ["total", "in all"],
];

/** A reply's timings: a short line to glance at, and every step for a tooltip. */
export function timingSummary(timings) {
  if (!timings) return null;
  const parts = [];
  if (timings.transcribe != null) parts.push(`heard ${seconds(timings.transcribe)}`);
  if (timings.first_token != null) parts.push(`first words ${seconds(timings.first_token)}`);
  if (timings.total != null) parts.push(`total ${seconds(timings.total)}`);
  const detail = STEPS.filter(([k]) => timings[k] != null)
    .map(([k, label]) => `${label}: ${seconds(timings[k])}`)
    .join("\n");
  return { line: parts.join(" · "), detail };
}

export function when(timestamp) {
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? String(timestamp) : date.toLocaleString();
}
