#!/usr/bin/env bash
# Bulwark snapshot / change tracking / filter benchmark. See docs/BENCHMARKS.md.
#
#   bench/cbt.sh [SIZE_MIB]      (default 4096; needs root, xfsprogs, e2fsprogs)
#
# Part 1 (CBT): an ext4 filesystem in a SIZE_MIB disk image on XFS, mounted through a loop
# device and half filled; a full backup (reflink snapshot, filesystem frozen), then 1% of the
# filesystem rewritten in place through the mount, then a CBT incremental and, for comparison,
# an incremental without CBT. Targets: the CBT incremental reads <= 2% of the image and takes
# <= 10% of the full backup's time.
# Part 2 (filters): a 1 GiB "reused" disk (old data everywhere), ext4 made without discard,
# filled to 50% with files, half of them deleted; a backup with filters and one without.
# Target: the filtered backup stores <= 30% of the unfiltered one.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
BW="$PWD/target/release/bulwark"
IG="$PWD/target/release/bulwark-imagegen"
SIZE_MIB="${1:-4096}"
[[ -x "$BW" && -x "$IG" ]] || { echo "run cargo build --release first" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "bench/cbt.sh needs root (loop devices, mounts)" >&2; exit 1; }
for t in mkfs.xfs mkfs.ext4 losetup python3; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done

W=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-cbt.XXXXXX")
MOUNTS=()
cleanup() {
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT

jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 <= t + 0) ? "PASS" : "FAIL" }'; }

truncate -s $(( SIZE_MIB * 3 + 2048 ))M "$W/xfs.img"
mkfs.xfs -q "$W/xfs.img"
mkdir "$W/xfs" && mount -o loop "$W/xfs.img" "$W/xfs" && MOUNTS+=("$W/xfs")

# ---------------------------------------------------------------- part 1: CBT
IMG="$W/xfs/vm.img"
truncate -s "${SIZE_MIB}M" "$IMG"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMG"
mkdir "$W/vm" && mount -o loop "$IMG" "$W/vm" && MOUNTS+=("$W/vm")
FILES=$(( SIZE_MIB / 2 / 256 ))
echo "filling the guest filesystem: $FILES files of 256 MiB (mixed zero/text/random content)"
for i in $(seq 1 "$FILES"); do "$IG" generate "$W/vm/data$i" 256 "$i"; done
sync
"$BW" repo init "$W/repo" >/dev/null

echo "full backup (reflink snapshot, frozen)"
"$BW" backup "$IMG" --repo "$W/repo" --name vm --snapshot reflink --cbt extents --json > "$W/full.json"

CHANGE_MIB=$(( SIZE_MIB / 100 ))
echo "rewriting $CHANGE_MIB MiB (1%) in place through the mounted filesystem"
python3 - "$W/vm" "$FILES" "$CHANGE_MIB" <<'PY'
import os, random, sys
root, files, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
for n in range(mib):
    path = os.path.join(root, f"data{rng.randint(1, files)}")
    with open(path, "r+b") as f:
        f.seek(rng.randrange(0, 256) << 20)
        f.write(os.urandom(1 << 20))
PY
sync
echo "CBT incremental"
"$BW" backup "$IMG" --repo "$W/repo" --name vm --snapshot reflink --cbt extents --json > "$W/incr.json"
echo "incremental without CBT (same data, for comparison)"
"$BW" backup "$IMG" --repo "$W/repo" --name vm --snapshot reflink --cbt none --json > "$W/nocbt.json"

SIZE_B=$(( SIZE_MIB << 20 ))
FT=$(jget "$W/full.json" duration_s); IT=$(jget "$W/incr.json" duration_s); NT=$(jget "$W/nocbt.json" duration_s)
IR=$(jget "$W/incr.json" read_bytes); NR=$(jget "$W/nocbt.json" read_bytes)
TRACKED=$(jget "$W/incr.json" change_tracking)
READ_SHARE=$(ratio "$IR" "$SIZE_B"); TIME_SHARE=$(ratio "$IT" "$FT")

# ---------------------------------------------------------------- part 2: filters
FS_MIB=1024
DISK="$W/xfs/reused.img"
echo "filters: a ${FS_MIB} MiB reused disk, 50% full, half deleted"
"$IG" generate "$DISK" "$FS_MIB" 99 >/dev/null
python3 - "$DISK" <<'PY'
import os, sys
# Old data everywhere, as on a disk that held something before (no zero regions).
with open(sys.argv[1], "r+b") as f:
    for i in range(os.path.getsize(sys.argv[1]) >> 20):
        f.seek(i << 20)
        f.write(os.urandom(1 << 20))
PY
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$DISK"
mkdir "$W/disk" && mount -o loop "$DISK" "$W/disk" && MOUNTS+=("$W/disk")
N=$(( FS_MIB / 2 / 16 ))
for i in $(seq 1 "$N"); do head -c 16M /dev/urandom > "$W/disk/f$i"; done
for i in $(seq 1 2 "$N"); do rm "$W/disk/f$i"; done
sync
"$BW" repo init "$W/r-on" >/dev/null
"$BW" repo init "$W/r-off" >/dev/null
"$BW" backup "$DISK" --repo "$W/r-on" --name d --snapshot reflink --json > "$W/on.json"
"$BW" backup "$DISK" --repo "$W/r-off" --name d --snapshot reflink --keep-unused --keep-swap --json > "$W/off.json"
ON=$(jget "$W/on.json" stored_bytes); OFF=$(jget "$W/off.json" stored_bytes)
FILTER_SHARE=$(ratio "$ON" "$OFF")

echo
echo "== results (${SIZE_MIB} MiB image; $(nproc) cores; $(uname -r))"
printf '%-44s %10s %14s\n' step seconds read_bytes
printf '%-44s %10.3f %14s\n' "full backup" "$FT" "$(jget "$W/full.json" read_bytes)"
printf '%-44s %10.3f %14s\n' "CBT incremental (1% rewritten)" "$IT" "$IR"
printf '%-44s %10.3f %14s\n' "incremental without CBT" "$NT" "$NR"
printf '%-44s %10s %14s\n' "filters on: stored bytes" "" "$ON"
printf '%-44s %10s %14s\n' "filters off: stored bytes" "" "$OFF"
echo
echo "== targets"
printf '%-52s %8s %8s %s\n' figure value target verdict
printf '%-52s %8s %8s %s\n' "change tracking used by the incremental" "$TRACKED" "True" "$([[ $TRACKED == True ]] && echo PASS || echo FAIL)"
printf '%-52s %8s %8s %s\n' "CBT incremental read / image size" "$READ_SHARE" "<= 0.02" "$(verdict "$READ_SHARE" 0.02)"
printf '%-52s %8s %8s %s\n' "CBT incremental time / full backup time" "$TIME_SHARE" "<= 0.10" "$(verdict "$TIME_SHARE" 0.10)"
printf '%-52s %8s %8s %s\n' "filtered stored / unfiltered stored" "$FILTER_SHARE" "<= 0.30" "$(verdict "$FILTER_SHARE" 0.30)"
