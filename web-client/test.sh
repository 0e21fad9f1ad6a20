#!/usr/bin/env bash
# Builds the web client and runs its tests against the real Palisade binary: `npm ci` from the
# committed lockfile, the type check and build, the conformance tests of the npm GraphQL
# clients, and the browser tests in Debian's Chromium (installed with apt-get when missing; no
# browser is ever downloaded by a test tool). The browser tests need PostgreSQL and Redis, as
# scripts/test.sh provides (DATABASE_URL and REDIS_URL, or the local defaults).
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "web-client/test.sh: installing Chromium (Debian's package)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

npm ci --no-audit --no-fund
npm run build
(cd .. && cargo build --locked --quiet)
node --test --test-concurrency=1 test/unit/ test/conformance/ test/e2e/
