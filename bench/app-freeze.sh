#!/usr/bin/env bash
# Bulwark application-aware processing benchmark: the freeze (from the PostgreSQL checkpoint to
# the release, the reflink snapshot in between) of a volume backup of a PostgreSQL database
# under write load. See docs/BENCHMARKS.md ("Application-aware processing").
#
#   bench/app-freeze.sh [SCALE (pgbench scale, default 70: about 1 GiB)] [RUNS (default 10)]
#
# As root, with PostgreSQL 15: an XFS filesystem on a loop device holds an ext4 image with the
# cluster; `pgbench -c 4` writes throughout; RUNS backups of the image with
# `--snapshot reflink --app postgres:…` each print freeze_seconds; the script prints every
# run, the median and the maximum, and pgbench's transactions per second. Builds nothing: run
# `cargo build --release` first (binaries from CARGO_TARGET_DIR when set, else target/).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
BW="${CARGO_TARGET_DIR:-$PWD/target}/release/bulwark"
[[ -x "$BW" ]] || { echo "run cargo build --release first" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "run as root (loop devices, mounts, the postgres user)" >&2; exit 1; }
PG=/usr/lib/postgresql/15/bin
[[ -x $PG/postgres ]] || { echo "needs PostgreSQL 15 (Debian package postgresql-15)" >&2; exit 1; }
SCALE=${1:-70}
RUNS=${2:-10}
PORT=55499
W=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-freeze.XXXXXX")
chmod 755 "$W"
XFS_DEV= EXT_MNT= XFS_MNT= BENCH_PID=
cleanup() {
    [[ -n $BENCH_PID ]] && pkill -f "pgbench -h $W/sock" && wait "$BENCH_PID" 2>/dev/null
    runuser -u postgres -- "$PG/pg_ctl" -D "$W/ext/data" -m immediate -w stop >/dev/null 2>&1 || true
    [[ -n $EXT_MNT ]] && umount "$EXT_MNT" 2>/dev/null
    [[ -n $XFS_MNT ]] && umount "$XFS_MNT" 2>/dev/null
    [[ -n $XFS_DEV ]] && losetup -d "$XFS_DEV" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

truncate -s 8G "$W/xfs.img"
XFS_DEV=$(losetup --find --show "$W/xfs.img")
mkfs.xfs -q "$XFS_DEV"
mkdir "$W/xfs" "$W/ext" "$W/sock"
mount "$XFS_DEV" "$W/xfs"; XFS_MNT=$W/xfs
truncate -s 4G "$W/xfs/pg.img"
mkfs.ext4 -q -F "$W/xfs/pg.img"
mount -o loop "$W/xfs/pg.img" "$W/ext"; EXT_MNT=$W/ext
mkdir "$W/ext/data"
chown postgres:postgres "$W/ext/data" "$W/sock"
runuser -u postgres -- "$PG/initdb" -D "$W/ext/data" -A peer -U postgres >/dev/null
runuser -u postgres -- "$PG/pg_ctl" -D "$W/ext/data" -l "$W/sock/log" -w \
    -o "-k $W/sock -p $PORT -c listen_addresses='' -c shared_buffers=256MB" start >/dev/null
echo "== pgbench -i -s $SCALE"
runuser -u postgres -- "$PG/pgbench" -h "$W/sock" -p "$PORT" -i -q -s "$SCALE" postgres >/dev/null 2>&1
# The load written out first: the runs measure a server in its steady state under writes, not
# the flush of the initial load.
runuser -u postgres -- "$PG/psql" -h "$W/sock" -p "$PORT" -XAtc CHECKPOINT postgres >/dev/null
runuser -u postgres -- "$PG/psql" -h "$W/sock" -p "$PORT" -XAtc \
    "SELECT 'database: ' || pg_size_pretty(pg_database_size('postgres'))" postgres
"$BW" repo init "$W/repo" >/dev/null
# Writes throughout: 4 clients, no end before the script stops them; its rate every 5 s.
runuser -u postgres -- "$PG/pgbench" -h "$W/sock" -p "$PORT" -c 4 -j 2 -T 36000 -n -P 5 postgres \
    >"$W/pgbench.out" 2>&1 &
BENCH_PID=$!
sleep 5
echo "== $RUNS backups under write load"
for i in $(seq "$RUNS"); do
    "$BW" backup "$W/xfs/pg.img" --repo "$W/repo" --name pg --snapshot reflink \
        --app "postgres:host=$W/sock,port=$PORT" --json >"$W/run.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["freeze_seconds"], r["consistency"], r["duration_s"])' \
        "$W/run.json" | tee -a "$W/freezes"
done
# runuser does not pass a signal on: stop pgbench itself (it ignores SIGINT with -P).
pkill -f "pgbench -h $W/sock" || true
wait "$BENCH_PID" 2>/dev/null || true; BENCH_PID=
tps=$(grep -Eo '[0-9.]+ tps' "$W/pgbench.out" | awk '{ print $1 }' | sort -n | awk '{ a[NR] = $1 } END {
    if (NR) printf "median %.0f tps over %d intervals of 5 s", a[int((NR + 1) / 2)], NR }')
python3 - "$W/freezes" "$tps" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
f = sorted(float(r[0]) for r in rows)
print("freeze, seconds: median %.3f, max %.3f, min %.3f over %d runs (%s)" % (
    statistics.median(f), f[-1], f[0], len(f), ", ".join(sorted(set(r[1] for r in rows)))))
print("backup, seconds: median %.2f" % statistics.median(float(r[2]) for r in rows))
print("pgbench while backing up: %s" % (sys.argv[2] or "no summary"))
PY
