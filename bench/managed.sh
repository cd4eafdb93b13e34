#!/usr/bin/env bash
# Managed backup (agent -> data mover over mutual TLS, three processes on loopback) against
# standalone `bulwark backup` of the same image, full and CBT incremental; peak RSS of agent and
# data mover per size; throttling accuracy. Needs root (loop devices, XFS for reflinks).
#
#   bench/managed.sh                       # 1 GiB and 4 GiB, then 50 MB/s for 60 s
#   bench/managed.sh --size-mib 512        # any sizes; --throttle-mb N --throttle-secs S
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p bulwark --bin bulwark --example managed_bench
export BULWARK_EXE=$PWD/target/release/bulwark
if [ $# -eq 0 ]; then
  set -- --size-mib 1024 --size-mib 4096 --throttle-mb 50 --throttle-secs 60
fi
exec target/release/examples/managed_bench --dir "${BENCH_DIR:-/var/tmp}" "$@"
