#!/usr/bin/env bash
# Copy Vue's runtime-only browser build into frontend/vendor/ from the npm registry.
# The PWA has no build step, so the file is kept in the repository; this script is
# how it got there and how it is upgraded: scripts/vendor_vue.sh [VERSION]
set -euo pipefail

VERSION="${1:-3.5.45}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/frontend/vendor"
FILE="vue.runtime.esm-browser.prod.js"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# npm pack fetches the published tarball only: no install, no package scripts run.
(cd "$WORK" && npm pack --silent "vue@$VERSION" >/dev/null)
tar -xzf "$WORK/vue-$VERSION.tgz" -C "$WORK"

mkdir -p "$VENDOR"
cp "$WORK/package/dist/$FILE" "$VENDOR/$FILE"
cp "$WORK/package/LICENSE" "$VENDOR/LICENSE-vue.txt"
SHA256="$(sha256sum "$VENDOR/$FILE" | cut -d' ' -f1)"

cat >"$VENDOR/README.md" <<EOF
# Vendored files

| File | Package | Version | Licence |
| --- | --- | --- | --- |
| \`$FILE\` | [vue](https://www.npmjs.com/package/vue) (\`dist/$FILE\`) | $VERSION | MIT, see \`LICENSE-vue.txt\` |

sha256 of \`$FILE\`: \`$SHA256\`

Written by \`scripts/vendor_vue.sh $VERSION\` (\`make vendor\`), which takes the file
from the package on the npm registry; run it again to upgrade, never edit the file.

Why the runtime-only build: the gateway's Content-Security-Policy has no
\`'unsafe-eval'\`, and Vue's template compiler turns templates into functions with
\`new Function\`, which that policy forbids. The PWA writes its components' render
functions by hand (\`h()\`), so it needs no compiler, and the runtime-only build is
also the smaller one.
EOF

echo "vendored vue@$VERSION into $VENDOR (sha256 $SHA256)"
