// Talking and typing: a hold-to-talk button (pointer, touch, or the Space bar
// when no text field has focus), a text field (Enter sends), and Stop.

import { h, onBeforeUnmount, onMounted, ref } from "../vue.js";
import { clock } from "../format.js";

function inTextField(target) {
  return !!target?.closest?.("input, textarea, select, [contenteditable='true']");
}

export const Composer = {
  name: "Composer",
  props: { talk: { type: Object, required: true } },
  setup(props) {
    const text = ref("");
    const field = ref(null);
    const talk = props.talk;

    const send = () => {
      const value = text.value.trim();
      if (!value) return;
      talk.sendText(value);
      text.value = "";
    };
    const onKey = (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send();
      }
    };
    const onSpaceDown = (e) => {
      if (e.code !== "Space" || e.repeat || inTextField(e.target) || e.target?.closest?.("dialog")) return;
      e.preventDefault();
      talk.press();
    };
    const onSpaceUp = (e) => {
      if (e.code !== "Space" || inTextField(e.target)) return;
      if (talk.recorder.state.recording || talk.pressed.value) {
        e.preventDefault();
        talk.release();
      }
    };
    onMounted(() => {
      window.addEventListener("keydown", onSpaceDown);
      window.addEventListener("keyup", onSpaceUp);
    });
    onBeforeUnmount(() => {
      window.removeEventListener("keydown", onSpaceDown);
      window.removeEventListener("keyup", onSpaceUp);
    });

    const talkButton = () => {
      const recording = talk.recorder.state.recording;
      return h(
        "button",
        {
          type: "button",
          class: ["talk", recording && "recording"],
          "aria-label": recording ? "Release to send" : "Hold to talk",
          "aria-pressed": recording ? "true" : "false",
          disabled: !talk.recorder.supported || talk.ended(),
          onPointerdown: (e) => {
            if (e.button !== 0) return;
            e.currentTarget.setPointerCapture?.(e.pointerId);
            talk.press();
          },
          onPointerup: () => talk.release(),
          onPointercancel: () => talk.release(),
          onContextmenu: (e) => e.preventDefault(),
          // Enter on the focused button toggles, for keyboards without a held key.
          onKeydown: (e) => {
            if (e.key === "Enter") {
              e.preventDefault();
              if (recording) talk.release();
              else talk.press();
            }
          },
        },
        [h("span", { class: "mic", "aria-hidden": "true" }), h("span", { class: "talk-label" }, recording ? "Release to send" : "Hold to talk")],
      );
    };

    return () => {
      const rec = talk.recorder.state;
      const children = [];
      if (rec.problem) children.push(h("p", { class: "problem", role: "alert" }, rec.problem));
      if (talk.notice.value) children.push(h("p", { class: "notice", role: "status" }, talk.notice.value));
      children.push(
        h("div", { class: ["recording-state", rec.recording && "on"], "aria-live": "polite" }, rec.recording
          ? [
              h("span", { class: "dot", "aria-hidden": "true" }),
              h("span", null, `Recording ${clock(rec.elapsed)} / ${clock(talk.recorder.maxSeconds)}`),
              h("span", { class: "level", role: "meter", "aria-label": "Input level", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(rec.level * 100)) }, [
                h("span", { class: "level-bar", style: { transform: `scaleX(${rec.level.toFixed(3)})` } }),
              ]),
            ]
          : []),
      );
      const row = [
        talkButton(),
        h("form", { class: "typed", onSubmit: (e) => { e.preventDefault(); send(); } }, [
          h("label", { class: "visually-hidden", for: "message" }, "Type a message"),
          h("textarea", {
            id: "message",
            ref: field,
            rows: 1,
            placeholder: "Type a thought…",
            value: text.value,
            maxlength: talk.maxTextChars,
            disabled: talk.ended(),
            onInput: (e) => (text.value = e.target.value),
            onKeydown: onKey,
          }),
          h("button", { type: "submit", class: "send", disabled: talk.ended() || !text.value.trim() }, "Send"),
        ]),
      ];
      if (talk.canStop()) {
        row.push(h("button", { type: "button", class: "stop", onClick: () => talk.stop() }, "Stop"));
      }
      children.push(h("div", { class: "controls" }, row));
      return h("footer", { class: "composer", "aria-label": "Talk or type" }, children);
    };
  },
};
