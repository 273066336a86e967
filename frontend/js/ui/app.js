// The whole screen: a header (connection, search, speech, session), the
// conversation, and the composer; Ctrl+K / Cmd+K opens search anywhere.

import { h, onBeforeUnmount, onMounted, ref } from "../vue.js";
import { Composer } from "./composer.js";
import { SearchDialog } from "./search-dialog.js";
import { Turns } from "./turns.js";
import { applyUpdate, install, pwa } from "../pwa.js";

function connectionText(state, retryAt, now) {
  switch (state.connection) {
    case "open":
      return "Connected";
    case "connecting":
      return "Connecting…";
    case "waiting": {
      const s = Math.max(0, Math.ceil((retryAt - now) / 1000));
      const queued = state.turns.filter((t) => t.state === "queued").length;
      const kept = queued ? ` ${queued} message${queued > 1 ? "s" : ""} will be sent when it is back.` : "";
      return `Connection lost. Retrying in ${s} s.${kept}`;
    }
    case "refused":
      return "The server refused this session. Start a new session.";
    default:
      return state.connection;
  }
}

export const App = {
  name: "App",
  props: {
    conversation: { type: Object, required: true },
    talk: { type: Object, required: true },
    speaker: { type: Object, required: true },
  },
  setup(props) {
    const searching = ref(false);
    const now = ref(Date.now());
    const state = props.conversation.state;
    let ticker = null;
    const onKey = (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "k") {
        e.preventDefault();
        searching.value = true;
      }
    };
    onMounted(() => {
      window.addEventListener("keydown", onKey);
      ticker = setInterval(() => (now.value = Date.now()), 500);
    });
    onBeforeUnmount(() => {
      window.removeEventListener("keydown", onKey);
      clearInterval(ticker);
    });

    const header = () => {
      const speaker = props.speaker;
      const searchButton = h(
        "button",
        { type: "button", class: "search-open", onClick: () => (searching.value = true), "aria-keyshortcuts": "Control+K Meta+K" },
        ["Search", h("kbd", { "aria-hidden": "true" }, "Ctrl K")],
      );
      const buttons = [];
      if (speaker.supported) {
        buttons.push(
          h("label", { class: "toggle" }, [
            h("input", { type: "checkbox", checked: speaker.state.enabled, onChange: (e) => speaker.setEnabled(e.target.checked) }),
            "Speak",
            h("span", { class: "long" }, " replies"),
          ]),
        );
      }
      buttons.push(
        state.summary === null
          ? h("button", { type: "button", class: "end", disabled: state.connection !== "open" || state.ending || !state.turns.length, onClick: () => props.conversation.end() }, state.ending ? "Ending…" : ["End", h("span", { class: "long" }, " session")])
          : null,
        h("button", { type: "button", class: ["new", state.summary !== null && "primary"], onClick: () => props.conversation.newSession() }, ["New", h("span", { class: "long" }, " session")]),
      );
      if (pwa.canInstall) buttons.push(h("button", { type: "button", class: "install", onClick: install }, "Install app"));
      return h("header", { class: "bar" }, [
        h("div", { class: "title" }, [
          h("img", { src: new URL("../../icons/icon-192.png", import.meta.url).href, alt: "", width: 28, height: 28 }),
          h("h1", null, "Learning Voice Agent"),
        ]),
        searchButton,
        h("p", { class: ["connection", state.connection], role: "status" }, [
          connectionText(state, state.retryAt, now.value),
          state.connection === "waiting" ? h("button", { type: "button", class: "link", onClick: () => props.conversation.retryNow() }, "Retry now") : null,
        ]),
        h("nav", { class: "actions", "aria-label": "Actions" }, buttons),
      ]);
    };

    return () =>
      h("div", { class: "app" }, [
        header(),
        pwa.updateReady
          ? h("div", { class: "update", role: "alert" }, [
              "A new version is ready.",
              h("button", { type: "button", class: "primary", onClick: applyUpdate }, "Reload to update"),
            ])
          : null,
        h("main", { class: "main" }, [h(Turns, { conversation: props.conversation })]),
        h(Composer, { talk: props.talk }),
        h(SearchDialog, { open: searching.value, onClose: () => (searching.value = false) }),
      ]);
  },
};
