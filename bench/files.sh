#!/usr/bin/env bash
# Bulwark file-level benchmark. See docs/BENCHMARKS.md.
#
#   bench/files.sh [SMALL_FILES (default 100000)] [LARGE_FILES (default 50)]
#   bench/files.sh --tree-size N      peak memory of a backup of a tree of N tiny files
#
# Main mode: a tree of SMALL_FILES files of 1-64 KiB (log-uniform sizes, half text, half random)
# and LARGE_FILES files of 30 MiB (mixed content), about 3 GiB in all with the defaults. In one
# run on the same tree: `tar -c | zstd -1 -T2` (reference), a Bulwark full backup, 1% of the
# files rewritten, a Bulwark incremental, and restic and borg (full + incremental) where
# installed. Targets: full backup >= 0.5x the reference's throughput; the incremental takes
# <= 10% of the full backup's time.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
BW="$PWD/target/release/bulwark"
IG="$PWD/target/release/bulwark-imagegen"
[[ -x "$BW" && -x "$IG" ]] || { echo "run cargo build --release first" >&2; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-files.XXXXXX")
trap 'rm -rf "$W"' EXIT
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "needs GNU time at /usr/bin/time (Debian package time)" >&2; exit 1; }
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

timed() { # timed NAME CMD... -> seconds and peak RSS into $W/NAME.t
    local name=$1; shift
    sync
    local t0=$EPOCHREALTIME
    "$TIME" -f '%M' -o "$W/$name.rss" "$@" > "$W/$name.out" 2> "$W/$name.err" || { cat "$W/$name.err" >&2; echo "step $name failed" >&2; exit 1; }
    local t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }' > "$W/$name.t"
}
secs() { cat "$W/$1.t"; }
rss() { awk '{ printf "%.0f", $1 / 1024 }' "$W/$1.rss"; }

if [[ "${1:-}" == "--tree-size" ]]; then
    N=${2:?count}
    echo "making a tree of $N tiny files (1000 per directory)"
    python3 - "$W/tree" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:05d}")
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, f"f{i:07d}"), "w") as f:
        f.write(f"file {i}\n")
PY
    "$BW" repo init "$W/repo" >/dev/null
    timed full "$BW" backup "$W/tree" --repo "$W/repo" --name t --snapshot none --json
    echo "tree of $N files: backup $(secs full) s, peak RSS $(rss full) MiB, entries $(jget "$W/full.out" entries)"
    exit 0
fi

SMALL=${1:-100000}
LARGE=${2:-50}
echo "making the tree: $SMALL small files, $LARGE large ones"
python3 - "$W/src" "$SMALL" <<'PY'
import math, os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
words = [w.encode() for w in "the backup volume restore point block chunk server agent data mover session task job snapshot linux kernel file error warning info".split()]
for i in range(n):
    d = os.path.join(root, "small", f"d{i // 500:04d}")
    if i % 500 == 0:
        os.makedirs(d)
    size = int(math.exp(rng.uniform(math.log(1024), math.log(64 * 1024))))
    if i % 2:
        data = os.urandom(size)
    else:
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        data = bytes(out[:size])
    with open(os.path.join(d, f"f{i:06d}.dat"), "wb") as f:
        f.write(data)
PY
mkdir -p "$W/src/large"
for i in $(seq 1 "$LARGE"); do "$IG" generate "$W/src/large/l$i.img" 30 "$i"; done
TOTAL=$(du -sb "$W/src" | cut -f1)
TOTAL_MIB=$(( TOTAL >> 20 ))
tar -cf - -C "$W" src > /dev/null   # warm the page cache

timed ref sh -c "tar -cf - -C '$W' src | zstd -1 -T2 -q > '$W/ref.tar.zst'"
"$BW" repo init "$W/repo" >/dev/null
timed full "$BW" backup "$W/src" --repo "$W/repo" --name src --snapshot none --json
HAVE_RESTIC=0; HAVE_BORG=0
if command -v restic >/dev/null; then
    HAVE_RESTIC=1
    export RESTIC_PASSWORD=bench
    restic init -q -r "$W/restic" >/dev/null
    timed restic_full restic -q -r "$W/restic" backup "$W/src"
fi
if command -v borg >/dev/null; then
    HAVE_BORG=1
    export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    borg init -e none "$W/borg" >/dev/null 2>&1
    timed borg_full borg create "$W/borg::full" "$W/src"
fi
rewrite_1pct() { # rewrite_1pct SEED: 1% of the small files get new content of the same size
python3 - "$W/src" "$SMALL" "$1" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(int(sys.argv[3]))
for i in rng.sample(range(n), max(1, n // 100)):
    p = os.path.join(root, "small", f"d{i // 500:04d}", f"f{i:06d}.dat")
    size = os.path.getsize(p)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
PY
tar -cf - -C "$W" src > /dev/null
}
rewrite_1pct 2
timed incr "$BW" backup "$W/src" --repo "$W/repo" --name src --snapshot none --json
[[ $HAVE_RESTIC == 1 ]] && timed restic_incr restic -q -r "$W/restic" backup "$W/src"
[[ $HAVE_BORG == 1 ]] && timed borg_incr borg create "$W/borg::incr" "$W/src"
# The first incremental after a full backup reads back once every chunk it reuses (none was
# checked since it was written: docs/design/integrity.md); the next one finds them marked.
rewrite_1pct 3
timed incr2 "$BW" backup "$W/src" --repo "$W/repo" --name src --snapshot none --json
timed restore "$BW" restore src:latest --repo "$W/repo" --to "$W/restored" --json
diff -r "$W/src" "$W/restored" > /dev/null || { echo "restored tree differs" >&2; exit 1; }
rm -rf "$W/restored"


REF=$(secs ref); FULL=$(secs full); INCR=$(secs incr); INCR2=$(secs incr2)
rate() { awk -v m="$TOTAL_MIB" -v s="$1" 'BEGIN { printf "%.0f", m / s }'; }
echo
echo "== results: $SMALL small + $LARGE large files, $TOTAL_MIB MiB, warm cache, $(nproc) cores"
printf '%-38s %9s %9s %8s %14s\n' step seconds MiB/s RSS_MiB stored_bytes
printf '%-38s %9s %9s %8s %14s\n' "tar -c | zstd -1 -T2" "$REF" "$(rate "$REF")" - "$(stat -c %s "$W/ref.tar.zst")"
printf '%-38s %9s %9s %8s %14s\n' "bulwark full backup" "$FULL" "$(rate "$FULL")" "$(rss full)" "$(jget "$W/full.out" stored_bytes)"
printf '%-38s %9s %9s %8s %14s\n' "bulwark incremental (1% of files)" "$INCR" "$(rate "$INCR")" "$(rss incr)" "$(jget "$W/incr.out" stored_bytes)"
printf '%-38s %9s %9s %8s %14s\n' "bulwark next incremental (1% more)" "$INCR2" "$(rate "$INCR2")" "$(rss incr2)" "$(jget "$W/incr2.out" stored_bytes)"
printf '%-38s %9s %9s %8s %14s\n' "bulwark restore (incremental point)" "$(secs restore)" "$(rate "$(secs restore)")" "$(rss restore)" -
[[ -f "$W/restic_full.t" ]] && printf '%-38s %9s %9s %8s %14s\n' "restic full" "$(secs restic_full)" "$(rate "$(secs restic_full)")" "$(rss restic_full)" "$(du -sb "$W/restic" | cut -f1)"
[[ -f "$W/restic_incr.t" ]] && printf '%-38s %9s %9s %8s %14s\n' "restic incremental" "$(secs restic_incr)" "$(rate "$(secs restic_incr)")" "$(rss restic_incr)" -
[[ -f "$W/borg_full.t" ]] && printf '%-38s %9s %9s %8s %14s\n' "borg full" "$(secs borg_full)" "$(rate "$(secs borg_full)")" "$(rss borg_full)" "$(du -sb "$W/borg" | cut -f1)"
[[ -f "$W/borg_incr.t" ]] && printf '%-38s %9s %9s %8s %14s\n' "borg incremental" "$(secs borg_incr)" "$(rate "$(secs borg_incr)")" "$(rss borg_incr)" -
echo "bulwark incremental: unchanged_files=$(jget "$W/incr.out" unchanged_files) read_bytes=$(jget "$W/incr.out" read_bytes)"
echo
echo "== targets"
FR=$(awk -v r="$REF" -v f="$FULL" 'BEGIN { printf "%.3f", r / f }')
IR=$(awk -v i="$INCR" -v f="$FULL" 'BEGIN { printf "%.3f", i / f }')
printf '%-52s %8s %8s %s\n' "full backup throughput / tar|zstd throughput" "$FR" ">= 0.5" "$(awk -v v="$FR" 'BEGIN { print (v >= 0.5) ? "PASS" : "FAIL" }')"
printf '%-52s %8s %8s %s\n' "incremental time / full backup time" "$IR" "<= 0.10" "$(awk -v v="$IR" 'BEGIN { print (v <= 0.10) ? "PASS" : "FAIL" }')"
IR2=$(awk -v i="$INCR2" -v f="$FULL" 'BEGIN { printf "%.3f", i / f }')
printf '%-52s %8s %8s %s\n' "next incremental time / full backup time" "$IR2" "<= 0.10" "$(awk -v v="$IR2" 'BEGIN { print (v <= 0.10) ? "PASS" : "FAIL" }')"
[[ -f "$W/restic_full.t" ]] && printf '%-52s %8s\n' "full backup throughput / restic full" "$(awk -v r="$(secs restic_full)" -v f="$FULL" 'BEGIN { printf "%.3f", r / f }')"
[[ -f "$W/borg_full.t" ]] && printf '%-52s %8s\n' "full backup throughput / borg full" "$(awk -v r="$(secs borg_full)" -v f="$FULL" 'BEGIN { printf "%.3f", r / f }')"
exit 0
