#!/usr/bin/env bash
# Files out of volume points. See docs/BENCHMARKS.md ("Files out of volume points").
#
#   bench/browse.sh [SIZE_MIB (default 4096)] [DATA_MIB (default 1024)]
#
# An ext4 filesystem of SIZE_MIB, made by `mkfs.ext4 -d` from a tree of about DATA_MIB of files
# (4 MiB and 64 KiB files, half random, half text-like; one 1 KiB file), backed up as a volume
# point. Timed, each in a new process (Bulwark's caches empty; the page cache is dropped too
# with BENCH_DROP_CACHES=1): `bulwark ls /` and the restore of the 1 KiB file (target <= 1 s
# each); the restore of the whole tree with --path against a whole-volume restore of the same
# point into an image file. Both move the same file data, so the target is read on their times:
# extraction throughput >= 0.5x the whole-volume restore's, i.e. at most twice its time.
# BULWARK_BIN runs another build (default target/release/bulwark).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
BW="${BULWARK_BIN:-$PWD/target/release/bulwark}"
SIZE_MIB="${1:-4096}"
DATA_MIB="${2:-1024}"
[[ -x "$BW" ]] || { echo "run cargo build --release first (or set BULWARK_BIN)" >&2; exit 1; }
for t in mkfs.ext4 python3; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
W=$(mktemp -d -t bulwark-browse.XXXXXX)
trap 'rm -rf "$W"' EXIT

jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
cold() {
    sync
    if [[ "${BENCH_DROP_CACHES:-0}" == 1 ]]; then echo 3 > /proc/sys/vm/drop_caches; fi
}
timed() { # timed NAME CMD... -> seconds into $W/NAME.t, stdout into $W/NAME.out
    local name=$1; shift
    cold
    local t0=$EPOCHREALTIME
    "$@" > "$W/$name.out" 2> "$W/$name.err" || { cat "$W/$name.err" >&2; echo "step $name failed" >&2; exit 1; }
    local t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }' > "$W/$name.t"
}
secs() { cat "$W/$1.t"; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 <= t + 0) ? "PASS" : "FAIL" }'; }

echo "making about $DATA_MIB MiB of files"
python3 - "$W/src/data" "$DATA_MIB" <<'PY'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
words = b"the backup volume restore point block chunk server agent data mover session task job snapshot ".split()
text = b" ".join(rng.choice(words) for _ in range(300_000))[: 1 << 20]
big, small = (mib * 4 // 5) // 4, (mib // 5) * 16
for i in range(big + small):
    d = os.path.join(root, f"d{i // 200:03d}")
    if i % 200 == 0:
        os.makedirs(d, exist_ok=True)
    size = (4 << 20) if i < big else (64 << 10)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        if i % 2:
            f.write(os.urandom(size))
        else:
            f.write((text * (size // len(text) + 1))[:size])
with open(os.path.join(root, "small.txt"), "wb") as f:
    f.write(bytes(rng.randrange(32, 127) for _ in range(1024)))
PY
DATA_BYTES=$(du -sb "$W/src/data" | cut -f1)
mkfs.ext4 -q -F -d "$W/src" "$W/fs.img" "${SIZE_MIB}M"
"$BW" repo init "$W/repo" >/dev/null
timed backup "$BW" backup "$W/fs.img" --repo "$W/repo" --name fs --json

timed ls "$BW" ls fs:latest / --repo "$W/repo"
timed one "$BW" restore fs:latest --repo "$W/repo" --path /data/small.txt --to "$W/one" --json
cmp "$W/src/data/small.txt" "$W/one/data/small.txt"
timed volume "$BW" restore fs:latest --repo "$W/repo" --to "$W/restored.img" --json
rm -f "$W/restored.img"
timed extract "$BW" restore fs:latest --repo "$W/repo" --path /data --to "$W/out" --json
diff -r -q "$W/src/data" "$W/out/data"
rm -rf "$W/out"

ratio=$(awk -v v="$(secs volume)" -v e="$(secs extract)" 'BEGIN { printf "%.2f", v / e }')
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1048576 }'; }
echo
echo "filesystem ${SIZE_MIB} MiB, files $((DATA_BYTES >> 20)) MiB; backup $(secs backup) s"
echo "ls / (cold process)                $(secs ls) s   target <= 1 s: $(verdict "$(secs ls)" 1)"
echo "restore one 1 KiB file (cold)      $(secs one) s   target <= 1 s: $(verdict "$(secs one)" 1)"
echo "whole-volume restore               $(secs volume) s  ($(mibs "$((SIZE_MIB << 20))" "$(secs volume)") MiB/s of volume)"
echo "extract all files (--path /data)   $(secs extract) s  ($(mibs "$DATA_BYTES" "$(secs extract)") MiB/s of files)"
echo "extraction / whole-volume throughput on the same files: ${ratio}x   target >= 0.5: $(verdict 0.5 "$ratio")"
