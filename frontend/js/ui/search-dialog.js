// Ctrl+K / Cmd+K: search every kept thought as you type; a result opens its
// session's history. Snippets show the server's <mark> highlights as <mark>
// elements built here; all other text is text.

import { h, nextTick, ref, watch } from "../vue.js";
import { Search, sessionHistory, snippetParts } from "../search.js";
import { when } from "../format.js";

function snippet(html, fallback) {
  const parts = snippetParts(html || fallback);
  return parts.map((p) => (p.mark ? h("mark", null, p.text) : p.text));
}

export const SearchDialog = {
  name: "SearchDialog",
  props: { open: { type: Boolean, required: true } },
  emits: ["close"],
  setup(props, { emit }) {
    const search = new Search();
    const dialog = ref(null);
    const input = ref(null);
    const history = ref(null);
    const historyError = ref(null);

    watch(
      () => props.open,
      async (open) => {
        await nextTick();
        const el = dialog.value;
        if (!el) return;
        if (open && !el.open) {
          el.showModal();
          history.value = null;
          input.value?.focus();
          input.value?.select();
        } else if (!open && el.open) {
          el.close();
        }
      },
    );

    const openSession = async (sessionId) => {
      historyError.value = null;
      try {
        const body = await sessionHistory(sessionId);
        history.value = { sessionId, items: [...body.history].sort((a, b) => (a.timestamp < b.timestamp ? -1 : 1)) };
      } catch (err) {
        historyError.value = `History could not be loaded: ${err.message}.`;
      }
    };

    const results = () => {
      const s = search.state;
      if (s.error) return h("p", { class: "search-note", role: "alert" }, s.error);
      if (!s.query.trim()) return h("p", { class: "search-note" }, "Type to search everything you have said and heard.");
      if (s.done && !s.loading && !s.results.length) return h("p", { class: "search-note", role: "status" }, "Nothing found.");
      return h(
        "ul",
        { class: "results", "aria-label": "Search results" },
        s.results.map((r) =>
          h("li", { key: r.id }, [
            h("button", { type: "button", class: "result", onClick: () => openSession(r.session_id) }, [
              h("span", { class: "result-you" }, snippet(r.user_snippet, r.user_text)),
              h("span", { class: "result-companion" }, snippet(r.agent_snippet, r.agent_text)),
              h("span", { class: "result-when" }, when(r.timestamp)),
            ]),
          ]),
        ),
      );
    };

    const historyView = () =>
      h("div", { class: "history", role: "region", "aria-label": "Session history" }, [
        h("div", { class: "history-head" }, [
          h("button", { type: "button", class: "back", onClick: () => { history.value = null; nextTick(() => input.value?.focus()); } }, "Back to results"),
          h("h2", null, "Session history"),
        ]),
        h(
          "ol",
          { class: "history-items" },
          history.value.items.map((item) =>
            h("li", { key: item.id }, [
              h("p", { class: "said" }, [h("span", { class: "who" }, "You"), item.user_text]),
              h("p", { class: "reply" }, [h("span", { class: "who" }, "Companion"), item.agent_text]),
              h("p", { class: "result-when" }, when(item.timestamp)),
            ]),
          ),
        ),
      ]);

    return () =>
      h(
        "dialog",
        {
          ref: dialog,
          class: "search-dialog",
          "aria-label": "Search",
          onClose: () => emit("close"),
          // A click on the backdrop (the dialog element itself) closes it.
          onClick: (e) => e.target === dialog.value && emit("close"),
        },
        [
          h("div", { class: "search-box" }, [
            h("label", { for: "search", class: "search-label" }, "Search your thoughts"),
            h("input", {
              id: "search",
              ref: input,
              type: "search",
              autocomplete: "off",
              spellcheck: "false",
              placeholder: "photosynthesis, the moon, …",
              value: search.state.query,
              onInput: (e) => search.type(e.target.value),
            }),
            h("button", { type: "button", class: "close", onClick: () => emit("close") }, "Close"),
          ]),
          historyError.value ? h("p", { class: "search-note", role: "alert" }, historyError.value) : null,
          history.value ? historyView() : results(),
        ],
      );
  },
};
