#!/usr/bin/env bash
# Bulwark benchmark harness. See docs/BENCHMARKS.md.
#
#   bench/run.sh [SIZE_MIB] [WORKDIR]        full / 1% incremental / restore + reference tools
#   bench/run.sh --levels [SIZE_MIB] [WORKDIR]  one full backup per compression level
#
# SIZE_MIB defaults to 4096. WORKDIR defaults to a fresh directory under ${TMPDIR:-/tmp}; a
# WORKDIR given on the command line must be absent or empty. The work dir is removed at the
# end unless KEEP=1. Builds nothing: run `cargo build --release` first.
set -euo pipefail
export LC_ALL=C

CALLER_PWD=$PWD
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BW="$ROOT/target/release/bulwark"
IG="$ROOT/target/release/bulwark-imagegen"

MODE=main
if [[ "${1:-}" == "--levels" ]]; then
    MODE=levels
    shift
fi
case "${1:-}" in -h|--help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0 ;;
esac
SIZE_MIB="${1:-4096}"
WORKDIR_ARG="${2:-}"
# A relative WORKDIR is relative to where the script was called from, not to the repo root.
[[ -n "$WORKDIR_ARG" && "$WORKDIR_ARG" != /* ]] && WORKDIR_ARG="$CALLER_PWD/$WORKDIR_ARG"
if ! [[ "$SIZE_MIB" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench/run.sh: SIZE_MIB must be a positive integer, got '$SIZE_MIB'" >&2
    exit 2
fi

if [[ ! -x "$BW" || ! -x "$IG" ]]; then
    echo "target/release/bulwark or target/release/bulwark-imagegen is missing: run cargo build --release first" >&2
    exit 1
fi

say() { printf '%s\n' "$*"; }
note() { printf 'note: %s\n' "$*"; }
die() { printf 'bench/run.sh: FAILED: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# apt-get install, quietly; as root or through passwordless sudo. Returns non-zero on failure.
apt_install() {
    local pre=()
    if [[ $(id -u) -ne 0 ]]; then
        have sudo && sudo -n true 2>/dev/null || return 1
        pre=(sudo -n)
    fi
    have apt-get || return 1
    export DEBIAN_FRONTEND=noninteractive
    if ! "${pre[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1; then
        "${pre[@]}" apt-get update -qq >/dev/null 2>&1 || return 1
        "${pre[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1 || return 1
    fi
}

# ---------------------------------------------------------------- tools
TIME=/usr/bin/time
if [[ ! -x "$TIME" ]]; then
    note "/usr/bin/time (GNU time) missing: installing the Debian package 'time' with apt-get"
    apt_install time || die "could not install GNU time (apt-get install time)"
fi

if have jq; then
    json_get() { jq -r ".$2" "$1"; }
elif have python3; then
    json_get() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
else
    die "need jq or python3 to read bulwark's --json output"
fi

# ---------------------------------------------------------------- work dir
if [[ -n "$WORKDIR_ARG" ]]; then
    if [[ -e "$WORKDIR_ARG" && -n "$(ls -A "$WORKDIR_ARG" 2>/dev/null)" ]]; then
        die "WORKDIR '$WORKDIR_ARG' exists and is not empty"
    fi
    mkdir -p "$WORKDIR_ARG"
    W=$(cd "$WORKDIR_ARG" && pwd)
else
    W=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-bench.XXXXXX")
fi
cleanup() {
    local rc=$?
    if [[ "${KEEP:-0}" == 1 ]]; then
        say "work dir kept (KEEP=1): $W"
    else
        rm -rf "$W"
        [[ $rc -ne 0 ]] && say "work dir removed; rerun with KEEP=1 to keep it" >&2
    fi
    return $rc
}
trap cleanup EXIT

# ---------------------------------------------------------------- timing
declare -A SECS RSS_KIB STORED
STEPS=()

# timed STEP CMD... : runs CMD under GNU time; stdout goes to $W/STEP.out (or to $TO if set),
# stderr to $W/STEP.err. Peak RSS comes from GNU time (%M). Seconds are the wall clock around the
# GNU time call at microsecond resolution: GNU time's own %e (kept in $W/STEP.time) has only 10 ms
# resolution, too coarse for small images.
# Before each step: sync (so write-back left by the previous step is not charged to this one).
timed() {
    local step=$1; shift
    sync
    local t0=$EPOCHREALTIME
    if ! "$TIME" -f '%e %M' -o "$W/$step.time" "$@" >"${TO:-$W/$step.out}" 2>"$W/$step.err"; then
        cat "$W/$step.err" >&2
        die "step '$step' failed: $*"
    fi
    local t1=$EPOCHREALTIME e m
    read -r e m < <(tail -n 1 "$W/$step.time")
    SECS[$step]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    RSS_KIB[$step]=$m
    STEPS+=("$step")
}

# keep_best STEP: STEP was timed twice, as STEP.try1 and STEP; keep the faster run's seconds
# (and the larger RSS). Used for the two steps that write a whole new image (restore and its cp
# reference): on a VM the first write into memory the guest has not touched yet costs seconds
# of system time that have nothing to do with the tool, and whichever step runs first pays it.
keep_best() {
    local step=$1 first="$1.try1"
    if awk -v a="${SECS[$first]}" -v b="${SECS[$step]}" 'BEGIN { exit !(a < b) }'; then
        SECS[$step]=${SECS[$first]}
    fi
    (( ${RSS_KIB[$first]} > ${RSS_KIB[$step]} )) && RSS_KIB[$step]=${RSS_KIB[$first]}
    local kept=()
    for x in "${STEPS[@]}"; do [[ $x != "$first" ]] && kept+=("$x"); done
    STEPS=("${kept[@]}")
}

# Keep the inputs in page cache: every step reads them from memory, not from disk.
warm() { cat "$@" >/dev/null; }

# awk arithmetic helpers; "n/a" propagates.
div() { # div A B [FORMAT]
    awk -v a="$1" -v b="$2" -v f="${3:-%.3f}" 'BEGIN {
        if (a == "n/a" || b == "n/a" || a == "" || b == "" || b + 0 == 0) { print "n/a"; exit }
        printf f "\n", a / b }'
}
mibs() { div "$SIZE_MIB" "${SECS[$1]:-n/a}" "%.1f"; }
rss_mib() { [[ -n "${RSS_KIB[$1]:-}" ]] && div "${RSS_KIB[$1]}" 1024 "%.0f" || echo n/a; }

verdict() { # verdict VALUE OP TARGET  (OP is >= or <=)
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (v == "n/a") { print "n/a"; exit }
        ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
        print ok ? "PASS" : "FAIL" }'
}

machine() {
    say "== machine"
    say "cpus:   $(nproc)"
    say "model:  $(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//' || echo unknown)"
    say "kernel: $(uname -srm)"
    say "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    say "workdir filesystem: $(df -PT "$W" | awk 'NR == 2 { print $2 " on " $1 }')"
}

versions() {
    say "== tool versions"
    say "bulwark: $("$BW" --version 2>&1 | head -n1)"
    say "time:    $("$TIME" --version 2>&1 | head -n1)$(dpkg-query -W -f ' (Debian package ${Version})' time 2>/dev/null || true)"
    if [[ $MODE == main ]]; then
        say "zstd:    $(zstd --version 2>&1 | head -n1)"
        have b3sum && say "b3sum:   $(b3sum --version 2>&1 | head -n1)"
        have restic && say "restic:  $(restic version 2>&1 | head -n1)"
        have borg && say "borg:    $(borg --version 2>&1 | head -n1)"
    fi
    return 0
}

make_images() {
    say "== generating base.img ($SIZE_MIB MiB, seed 1)"
    "$IG" generate "$W/base.img" "$SIZE_MIB" 1 >/dev/null
    if [[ $MODE == main ]]; then
        say "== succ.img = base.img with 1% of regions rewritten (mutate succ.img 1 1 0)"
        cp "$W/base.img" "$W/succ.img"
        "$IG" mutate "$W/succ.img" 1 1 0 >/dev/null
        warm "$W/base.img" "$W/succ.img"
    else
        warm "$W/base.img"
    fi
    say "note: page cache cannot be dropped reliably here, so the inputs are read once beforehand"
    say "      (and again before each step) and every tool reads them from page cache; all figures"
    say "      are warm-cache figures. Each step starts after a sync."
}

# ================================================================ --levels
if [[ $MODE == levels ]]; then
    say "bulwark compression levels benchmark: $SIZE_MIB MiB, work dir $W"
    machine
    versions
    make_images
    LEVELS=(none dedupe-friendly optimal high extreme)
    for lv in "${LEVELS[@]}"; do
        say "-- backup --compression $lv"
        "$BW" repo init "$W/repo-$lv" >/dev/null
        warm "$W/base.img"
        timed "level-$lv" "$BW" backup "$W/base.img" --repo "$W/repo-$lv" --name bench \
            --compression "$lv" --json
        STORED[level-$lv]=$(json_get "$W/level-$lv.out" stored_bytes)
        rm -rf "$W/repo-$lv"
    done
    say ""
    say "== results: one full backup of base.img ($SIZE_MIB MiB) per compression level"
    say "ratio = (source bytes - zero bytes) / stored bytes"
    printf '%-16s %9s %9s %8s %14s %8s\n' level seconds MiB/s RSS_MiB stored_bytes ratio
    for lv in "${LEVELS[@]}"; do
        s="level-$lv"
        src=$(json_get "$W/$s.out" source_bytes)
        zero=$(json_get "$W/$s.out" zero_bytes)
        printf '%-16s %9s %9s %8s %14s %8s\n' "$lv" "${SECS[$s]}" "$(mibs "$s")" "$(rss_mib "$s")" \
            "${STORED[$s]}" "$(div "$((src - zero))" "${STORED[$s]}" "%.2f")"
    done
    exit 0
fi

# ================================================================ main mode
say "bulwark benchmark: $SIZE_MIB MiB image, work dir $W"

NOTES=()
if ! have zstd; then
    note "zstd missing: installing the Debian package 'zstd' with apt-get"
    apt_install zstd || die "zstd is required as the reference compressor (apt-get install zstd)"
fi
if ! have b3sum; then
    b3_policy=$(apt-cache policy b3sum 2>/dev/null || true)
    if [[ "$b3_policy" == *"Candidate: "[0-9]* ]]; then
        note "b3sum missing: Debian has a 'b3sum' package; installing it with apt-get"
        apt_install b3sum || true
    fi
    have b3sum || NOTES+=("b3sum not on PATH and not installable: incremental-vs-b3sum ratio skipped")
fi
if ! have restic || ! have borg; then
    note "restic and/or borg missing: trying apt-get install restic borgbackup"
    have restic || apt_install restic || true
    have borg || apt_install borgbackup || true
fi
have restic || NOTES+=("restic not installed (apt-get install restic failed): restic steps skipped")
have borg || NOTES+=("borg not installed (apt-get install borgbackup failed): borg steps skipped")

machine
versions
make_images

B=$W/base.img
S=$W/succ.img

# ---- bulwark
say "-- bulwark full backup (optimal)"
"$BW" repo init "$W/repo-bulwark" >/dev/null
warm "$B"
timed bulwark-full "$BW" backup "$B" --repo "$W/repo-bulwark" --name bench --compression optimal --json
STORED[bulwark-full]=$(json_get "$W/bulwark-full.out" stored_bytes)

say "-- bulwark 1% incremental backup (optimal, same --name)"
warm "$S"
timed bulwark-incr "$BW" backup "$S" --repo "$W/repo-bulwark" --name bench --compression optimal --json
STORED[bulwark-incr]=$(json_get "$W/bulwark-incr.out" stored_bytes)
STORED[bulwark-repo]=$(du -sb "$W/repo-bulwark" | cut -f1)

say "-- bulwark restore of the incremental point (best of two)"
timed bulwark-restore.try1 "$BW" restore bench:latest --repo "$W/repo-bulwark" --to "$W/restored.img" --json
rm -f "$W/restored.img"
timed bulwark-restore "$BW" restore bench:latest --repo "$W/repo-bulwark" --to "$W/restored.img" --json
keep_best bulwark-restore
if ! cmp "$W/restored.img" "$S"; then
    die "RESTORED IMAGE DIFFERS FROM succ.img (bulwark restore bench:latest)"
fi
say "   restored image is identical to succ.img"
rm -f "$W/restored.img"

# The first incremental after a full backup reads back once every chunk it reuses (a backup never
# builds on a chunk nobody checked since it was written: docs/design/integrity.md). The next
# one finds them checked and marked, and reads back only what the first one wrote: the cost a
# daily incremental has from the second day on.
say "-- bulwark next 1% incremental (succ2.img = succ.img with another 1% rewritten)"
cp "$S" "$W/succ2.img"
"$IG" mutate "$W/succ2.img" 1 1 1 >/dev/null
warm "$W/succ2.img"
timed bulwark-incr2 "$BW" backup "$W/succ2.img" --repo "$W/repo-bulwark" --name bench --compression optimal --json
STORED[bulwark-incr2]=$(json_get "$W/bulwark-incr2.out" stored_bytes)
rm -f "$W/succ2.img"

# ---- references
say "-- zstd -1 -T2"
warm "$B"
# stdout of the timed command is the compressed stream (timed sends stdout to $W/STEP.out).
timed zstd zstd -1 -T2 -c "$B"
STORED[zstd]=$(stat -c %s "$W/zstd.out")
rm -f "$W/zstd.out"

if have b3sum; then
    say "-- b3sum --num-threads 2"
    warm "$B"
    timed b3sum b3sum --num-threads 2 "$B"
fi

say "-- cat base.img > /dev/null"
warm "$B"
TO=/dev/null timed cat cat "$B"

# `sync FILE DIR` fsyncs the copy and its directory: the same durability bulwark restore gives
# (fsync of the file and its directory), without flushing unrelated dirty data system-wide.
say "-- cp base.img copy.img && sync copy.img (restore reference, best of two)"
warm "$B"
timed cp.try1 bash -c 'cp "$1" "$2" && sync "$2" "${2%/*}"' _ "$B" "$W/copy.img"
rm -f "$W/copy.img"
warm "$B"
timed cp bash -c 'cp "$1" "$2" && sync "$2" "${2%/*}"' _ "$B" "$W/copy.img"
rm -f "$W/copy.img"
keep_best cp

# restic and borg back up the same path twice: src/disk.img is a hard link to base.img, then to
# succ.img. The tools see one file whose content changed (and read the same cached pages as
# bulwark did).
mkdir -p "$W/src"
if have restic; then
    say "-- restic full + incremental"
    export RESTIC_REPOSITORY="$W/repo-restic"
    RESTIC_PW=()
    restic_help=$(restic init --help 2>&1 || true)
    if [[ "$restic_help" == *--insecure-no-password* ]]; then
        RESTIC_PW=(--insecure-no-password)
    else
        export RESTIC_PASSWORD=bench
    fi
    restic init "${RESTIC_PW[@]}" >/dev/null 2>&1 || die "restic init failed"
    ln -f "$B" "$W/src/disk.img"
    warm "$B"
    timed restic-full bash -c 'cd "$1" && shift && exec restic backup "$@" disk.img' _ "$W/src" --quiet "${RESTIC_PW[@]}"
    STORED[restic-full]=$(du -sb "$W/repo-restic" | cut -f1)
    ln -f "$S" "$W/src/disk.img"
    warm "$S"
    timed restic-incr bash -c 'cd "$1" && shift && exec restic backup "$@" disk.img' _ "$W/src" --quiet "${RESTIC_PW[@]}"
    STORED[restic-incr]=$(( $(du -sb "$W/repo-restic" | cut -f1) - STORED[restic-full] ))
    rm -rf "$W/repo-restic"
    unset RESTIC_REPOSITORY RESTIC_PASSWORD
fi

if have borg; then
    say "-- borg full + incremental (encryption none, default lz4)"
    export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
    export BORG_BASE_DIR="$W/borg-home"
    borg init --encryption=none "$W/repo-borg" >/dev/null 2>&1 || die "borg init failed"
    ln -f "$B" "$W/src/disk.img"
    warm "$B"
    timed borg-full bash -c 'cd "$1" && exec borg create "$2::full" disk.img' _ "$W/src" "$W/repo-borg"
    STORED[borg-full]=$(du -sb "$W/repo-borg" | cut -f1)
    ln -f "$S" "$W/src/disk.img"
    warm "$S"
    timed borg-incr bash -c 'cd "$1" && exec borg create "$2::incr" disk.img' _ "$W/src" "$W/repo-borg"
    STORED[borg-incr]=$(( $(du -sb "$W/repo-borg" | cut -f1) - STORED[borg-full] ))
    rm -rf "$W/repo-borg"
fi
rm -f "$W/src/disk.img"

# ---------------------------------------------------------------- report
declare -A DESC=(
    [bulwark-full]="bulwark full backup (optimal)"
    [bulwark-incr]="bulwark 1% incremental"
    [bulwark-incr2]="bulwark next 1% incremental"
    [bulwark-restore]="bulwark restore (incr point)"
    [zstd]="zstd -1 -T2 (output size)"
    [b3sum]="b3sum --num-threads 2"
    [cat]="cat > /dev/null"
    [cp]="cp + sync (file)"
    [restic-full]="restic full (repo size)"
    [restic-incr]="restic incremental (repo growth)"
    [borg-full]="borg full (repo size)"
    [borg-incr]="borg incremental (repo growth)"
)
say ""
say "== results: $SIZE_MIB MiB image, warm page cache; MiB/s = $SIZE_MIB MiB / seconds"
printf '%-34s %9s %9s %8s %14s\n' step seconds MiB/s RSS_MiB stored_bytes
for s in "${STEPS[@]}"; do
    printf '%-34s %9s %9s %8s %14s\n' "${DESC[$s]:-$s}" "${SECS[$s]}" "$(mibs "$s")" \
        "$(rss_mib "$s")" "${STORED[$s]:--}"
done
say "bulwark repository after both backups: ${STORED[bulwark-repo]} bytes (du -sb)"
say "bulwark full:  $(tr -d '\n' < "$W/bulwark-full.out")"
say "bulwark incr:  $(tr -d '\n' < "$W/bulwark-incr.out")"
say "bulwark restore: $(tr -d '\n' < "$W/bulwark-restore.out")"

ratio_row() { # ratio_row LABEL VALUE OP TARGET
    local v=$1 label=$2 op=$3 t=$4 verdict_s="" target_s=""
    if [[ -n "$t" ]]; then
        target_s="$op $t"
        verdict_s=$(verdict "$v" "$op" "$t")
    fi
    printf '%-52s %10s %10s  %s\n' "$label" "$v" "$target_s" "$verdict_s"
}
# throughput ratio over the same SIZE_MIB = inverse ratio of the times
tput() { div "${SECS[$2]:-n/a}" "${SECS[$1]:-n/a}"; }

say ""
say "== targets"
printf '%-52s %10s %10s  %s\n' figure value target verdict
ratio_row "$(tput bulwark-full zstd)" "full backup MiB/s / zstd -1 -T2 MiB/s" ">=" 0.8
ratio_row "$(tput bulwark-full restic-full)" "full backup MiB/s / restic full MiB/s" "" ""
ratio_row "$(tput bulwark-full borg-full)" "full backup MiB/s / borg full MiB/s" "" ""
ratio_row "$(tput bulwark-incr b3sum)" "incremental MiB/s / b3sum --num-threads 2 MiB/s" ">=" 0.5
ratio_row "$(tput bulwark-incr2 b3sum)" "next incremental MiB/s / b3sum --num-threads 2 MiB/s" ">=" 0.5
ratio_row "$(div "${STORED[bulwark-incr]}" "${STORED[bulwark-full]}" "%.4f")" \
    "incremental stored / full stored" "<=" 0.015
ratio_row "$(tput bulwark-restore cp)" "restore MiB/s / cp+sync MiB/s" ">=" 0.8
ratio_row "$(div "${STORED[bulwark-full]}" "${STORED[zstd]}")" "full stored bytes / zstd -1 output bytes" "<=" 1.0
ratio_row "$(rss_mib bulwark-full)" "peak RSS MiB, full backup" "<=" 256
ratio_row "$(rss_mib bulwark-incr)" "peak RSS MiB, incremental backup" "<=" 256
ratio_row "$(rss_mib bulwark-restore)" "peak RSS MiB, restore" "<=" 256

for n in "${NOTES[@]}"; do note "$n"; done
