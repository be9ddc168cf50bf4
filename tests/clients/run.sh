#!/usr/bin/env bash
# Generates a Python client (openapi-python-client) and a TypeScript client (openapi-typescript
# + openapi-fetch) from the OpenAPI document a running orch server serves, and runs a
# start -> get -> search -> journal -> retry flow through each; checks that the checkout
# workflow's input and output are real models in both (not Any/unknown).
# Usage: tests/clients/run.sh <base-url> <id-of-a-failed-checkout-instance>
# Tools are installed once, pinned, under target/clients (set ORCH_CLIENTS_DIR to move it).
set -euo pipefail
base="${1:?base URL, e.g. http://127.0.0.1:8080}"
failed="${2:?id of a failed checkout instance}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${ORCH_CLIENTS_DIR:-$root/target/clients}"
PY_GEN_VERSION=0.29.1
TS_GEN_VERSION=7.13.0
FETCH_VERSION=0.17.0
mkdir -p "$work"
curl -fsS "${base%/}/api/v1/openapi.json" -o "$work/openapi.json"

# Python.
if [ ! -x "$work/venv/bin/openapi-python-client" ] ||
   ! "$work/venv/bin/pip" show openapi-python-client 2>/dev/null | grep -q "Version: $PY_GEN_VERSION"; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "openapi-python-client==$PY_GEN_VERSION"
fi
rm -rf "$work/py"
"$work/venv/bin/openapi-python-client" generate --path "$work/openapi.json" \
  --output-path "$work/py/orch_client" --meta none >"$work/py-generate.log" 2>&1 ||
  { cat "$work/py-generate.log"; exit 1; }
PYTHONPATH="$work/py" "$work/venv/bin/python" "$here/flow.py" "$base" "$failed"

# TypeScript.
if [ ! -f "$work/ts/node_modules/openapi-typescript/package.json" ] ||
   ! grep -q "\"version\": \"$TS_GEN_VERSION\"" "$work/ts/node_modules/openapi-typescript/package.json"; then
  mkdir -p "$work/ts"
  (cd "$work/ts" && echo '{"private": true, "type": "module"}' >package.json &&
    npm install --silent --no-audit --no-fund "openapi-typescript@$TS_GEN_VERSION" \
      "openapi-fetch@$FETCH_VERSION" "typescript@5")
fi
(cd "$work/ts" && npx --no-install openapi-typescript "$work/openapi.json" -o schema.d.ts >/dev/null)
# `EmptyRequest` (restart takes `{}`), `webhooks` and `$defs` are empty on purpose.
if grep -n "Record<string, never>" "$work/ts/schema.d.ts" |
   grep -vE "EmptyRequest:|type webhooks =|type [$]defs ="; then
  echo "openapi-typescript typed a schema as Record<string, never> (a bare object schema)" >&2
  exit 1
fi
# The checkout's models are its Rust types: typed.ts compiles only if they are (its
# @ts-expect-error lines fail to compile when the input is `unknown` or `any`).
cp "$here/typed.ts" "$work/ts/typed.ts"
(cd "$work/ts" && npx --no-install tsc --noEmit --strict --skipLibCheck typed.ts)
echo "typescript models: ok"
cp "$here/flow.mjs" "$work/ts/flow.mjs"
(cd "$work/ts" && node flow.mjs "$base" "$failed")
echo "generated clients: ok"
