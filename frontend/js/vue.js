// The one place that names the vendored Vue build, so a refresh is one edit.
// Runtime-only: templates would need Vue's compiler, which needs `eval`, which
// the gateway's Content-Security-Policy forbids; components use render functions.
export * from "../vendor/vue.runtime.esm-browser.prod.js";
