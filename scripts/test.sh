#!/usr/bin/env bash
# Runs every test suite. Makes sure PostgreSQL and Redis are installed and running first
# (installing them with apt-get on a fresh Debian machine), so it works the same for a newcomer
# and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # wait_for NAME COMMAND...
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "test.sh: $name did not come up" >&2
    return 1
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "test.sh: installing PostgreSQL"
        apt_install postgresql
        FRESH_POSTGRES=1
    fi
    if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
        echo "test.sh: starting PostgreSQL"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
        wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
    fi
    if [ "${FRESH_POSTGRES:-0}" = 1 ]; then
        # A fresh Debian install asks for a password over TCP; give the test role one.
        as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
    fi
}

ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "test.sh: installing Redis"
        apt_install redis-server
    fi
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "test.sh: starting Redis"
        as_root mkdir -p /var/lib/redis /var/log/redis
        as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log
        wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
    fi
}

ensure_promtool() {
    if ! command -v promtool >/dev/null 2>&1; then
        echo "test.sh: installing promtool (Debian's prometheus package)"
        apt_install --no-install-recommends prometheus
    fi
}

# `ss` reads a listener's queue length back from the kernel for the listen_backlog test.
ensure_ss() {
    if ! command -v ss >/dev/null 2>&1; then
        echo "test.sh: installing ss (Debian's iproute2 package)"
        apt_install --no-install-recommends iproute2
    fi
}

ensure_postgres
ensure_redis
ensure_promtool
ensure_ss

# `#[sqlx::test]` creates a fresh database per test through this server. The password is ignored
# where the server trusts local connections.
export DATABASE_URL="${PALISADE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${PALISADE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

promtool check rules deploy/prometheus/palisade-alerts.yml
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Benches are compiled by clippy above and run on demand (`cargo bench`): in a debug build they
# would only measure the debug build, slowly.
cargo test --lib --bins --tests --locked

# The benchmark tools, as a smoke check: the quick suite (small counts) against debug builds of
# Palisade, the bare peer and the Node peer, written to a scratch directory. Real figures come from
# `scripts/bench.sh`.
(cd bench/peers/node && npm ci --silent)
cargo build --locked --bin palisade --bin palisade-bare --bin palisade-bench
bench_out=$(mktemp -d)
"${CARGO_TARGET_DIR:-target}/debug/palisade-bench" suite --quick --redis "$REDIS_URL" --postgres "$DATABASE_URL" --out "$bench_out/BENCHMARKS.md"
rm -rf "$bench_out"
web-client/test.sh   # the browser app: build, npm clients' conformance tests, Chromium tests
