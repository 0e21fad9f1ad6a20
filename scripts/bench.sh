#!/usr/bin/env bash
# Reruns the benchmark suite and rewrites BENCHMARKS.md and bench/*.svg: Palisade, the bare
# async-graphql-axum peer and the Node graphql-ws peer, each started fresh per scenario, release
# builds, loopback only. Takes about half an hour on 2 cores. `--quick` runs small counts instead.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin palisade --bin palisade-bare --bin palisade-bench
(cd bench/peers/node && npm ci --silent)
exec target/release/palisade-bench suite --redis "${REDIS_URL:-redis://127.0.0.1:6379}" \
  --postgres "${PALISADE_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}" "$@"
