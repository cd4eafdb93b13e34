#!/usr/bin/env bash
# The backup server as computers grow: N agent processes (each its own small disk, in a mount
# namespace of its own), one job over all of them; the server's CPU per task and peak RSS, and
# the repository's task maximum checked from the session's records. Needs root.
#
#   bench/server.sh                      # 10, 50 and 200 computers
#   bench/server.sh --computers 20       # any counts
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p bulwark --bin bulwark --example server_bench
export BULWARK_EXE=$PWD/target/release/bulwark
if [ $# -eq 0 ]; then
  set -- --computers 10 --computers 50 --computers 200
fi
ulimit -n 65536 2>/dev/null || true
exec target/release/examples/server_bench --dir "${BENCH_DIR:-/var/tmp}" "$@"
