#!/usr/bin/env bash
# Runs schemathesis (pinned, installed from PyPI into target/schemathesis/venv) over the
# OpenAPI document a running orch server serves, against that server.
# Usage: tests/fuzz/schemathesis.sh <base-url> [admin-token] [extra schemathesis args...]
# With a token every request sends `Authorization: Bearer <token>`; run it once without and
# once with tokens (a server started with ORCH_ADMIN_TOKENS). Reports land in
# target/schemathesis/report-*. The checkout example makes a good target:
#   cargo run --example checkout -- --orders 20 --http 127.0.0.1:8080 --serve
set -euo pipefail
base="${1:?base URL, e.g. http://127.0.0.1:8080}"
token="${2:-}"
shift $(( $# >= 2 ? 2 : 1 ))
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$root/target/schemathesis"
VERSION=4.32.5
if ! "$work/venv/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "schemathesis==$VERSION"
fi
auth=()
if [ -n "$token" ]; then auth=(-H "Authorization: Bearer $token"); fi
# schemathesis keeps its cache in the working directory: keep it under target/.
cd "$work"
# The document names the server `/`; the base path is in the paths themselves.
exec "$work/venv/bin/schemathesis" run "${base%/}/api/v1/openapi.json" --url "${base%/}" \
  "${auth[@]}" --checks all --workers 2 --max-examples "${ORCH_FUZZ_EXAMPLES:-50}" \
  --report junit --report-dir "$work/report-$(date +%s)" "$@"
