// The conversation: each turn is what the learner said (or what was heard) and
// the companion's reply as it streams in. Everything is rendered as text.

import { h, nextTick, onMounted, ref, watch } from "../vue.js";
import { timingSummary } from "../format.js";

const BADGES = {
  queued: "Waiting for a connection",
  sent: "Thinking…",
  interrupted: "Interrupted",
  cancelled: "Stopped",
  error: "Not answered",
};

function you(turn) {
  let text = turn.you;
  if (text === null || text === undefined) {
    text = turn.state === "queued" ? "Voice message (waiting to send)" : "Listening to your voice message…";
  }
  return h("div", { class: "you" }, [
    h("span", { class: "who" }, "You"),
    h("p", { class: ["said", turn.you == null && "pending"] }, text),
  ]);
}

function companion(turn, conversation) {
  const timing = timingSummary(turn.timings);
  const children = [h("span", { class: "who" }, "Companion")];
  if (turn.state === "error") {
    children.push(h("p", { class: "reply error" }, turn.error || "Something went wrong."));
  } else {
    children.push(
      h("p", { class: "reply" }, [
        turn.reply,
        turn.state === "streaming" || turn.state === "sent"
          ? h("span", { class: "typing", "aria-hidden": "true" })
          : null,
      ]),
    );
  }
  const meta = [];
  if (BADGES[turn.state]) meta.push(h("span", { class: `badge ${turn.state}` }, BADGES[turn.state]));
  if (turn.state === "error" && turn.retryable) {
    meta.push(h("button", { type: "button", class: "link retry", onClick: () => conversation.retry(turn.id) }, "Try again"));
  }
  if (timing && timing.line) {
    meta.push(h("span", { class: "timings", title: timing.detail, tabindex: "0" }, timing.line));
  }
  if (meta.length) children.push(h("p", { class: "meta" }, meta));
  return h("div", { class: "companion" }, children);
}

export const Turns = {
  name: "Turns",
  props: { conversation: { type: Object, required: true } },
  setup(props) {
    const list = ref(null);
    const state = props.conversation.state;
    // Follow the newest words, unless the learner scrolled up to read.
    let following = true;
    const onScroll = () => {
      const el = document.scrollingElement;
      following = el.scrollHeight - el.scrollTop - el.clientHeight < 120;
    };
    onMounted(() => window.addEventListener("scroll", onScroll, { passive: true }));
    watch(
      () => state.turns.map((t) => t.reply.length + (t.you || "").length + t.state).join(),
      async () => {
        if (!following) return;
        await nextTick();
        list.value?.lastElementChild?.scrollIntoView({ block: "end" });
      },
    );
    return () => {
      const streaming = state.turns.some((t) => t.state === "streaming");
      const items = state.turns.map((turn) =>
        h("li", { key: turn.id, class: "turn", "data-state": turn.state }, [you(turn), companion(turn, props.conversation)]),
      );
      const children = [];
      if (!state.turns.length && state.loaded) {
        children.push(
          h("div", { class: "empty" }, [
            h("p", { class: "empty-title" }, "What are you curious about?"),
            h("p", null, "Hold the talk button (or the Space bar) and think out loud, or type below. Every thought is kept and can be searched with Ctrl+K."),
          ]),
        );
      }
      children.push(
        h(
          "ol",
          {
            ref: list,
            class: "turns",
            role: "log",
            "aria-live": "polite",
            // Announced once the reply is whole, not at every piece.
            "aria-busy": streaming ? "true" : "false",
            "aria-label": "Conversation",
          },
          items,
        ),
      );
      if (state.summary !== null) {
        children.push(
          h("div", { class: "summary", role: "status" }, [
            h("h2", null, "Session summary"),
            h("p", null, state.summary),
          ]),
        );
      }
      return h("section", { class: "conversation", "aria-label": "Conversation" }, children);
    };
  },
};
