#!/usr/bin/env bash
# Bulwark kill -9 campaign: real operations on real repositories, killed at random instants.
#
#   bench/crash-campaign.sh [TRIALS]        TRIALS defaults to 500
#
# Each trial runs one scenario against a plain or an encrypted repository (a shuffled
# round-robin over 6 scenarios x 2 repositories, seeded: SEED=N repeats a run's choices) and
# sends SIGKILL after a delay drawn uniformly from 0 to 1.3x the duration of an uninterrupted
# run of that operation (measured once per scenario and repository at start):
#   1 volume backup, full (a new name)      2 volume incremental (image mutated)
#   3 file-level backup, full or incremental 4 forget (retention)
#   5 gc (garbage made first by forgetting)  6 two concurrent backups plus a gc, each killed
# After every trial: verify exits 0; no point listed before is gone (unless a forget was asked
# to delete it); new and touched points plus 2 older ones restore exactly what was backed up;
# a re-run of the operation succeeds and verifies clean. A repository past MAX_POINTS points or
# MAX_MIB MiB, and both at the end, are checked in full (every point restored) and replaced.
# Exit status 0 only if nothing was lost or damaged and every re-run succeeded.
#
# Environment: SEED (repeat a run's choices), KEEP=1 (keep the work dir; it is kept anyway when
# something is lost, damaged or failed, unless KEEP=0), MAX_POINTS (default 60), MAX_MIB
# (default 160). Work dir: mktemp under ${TMPDIR:-/tmp}. Builds nothing: run
# `cargo build --release -p bulwark -p bulwark-imagegen` first (copies of both are used).
set -euo pipefail
export LC_ALL=C

CALLER_PWD=$PWD
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BW="$ROOT/target/release/bulwark"
IG="$ROOT/target/release/bulwark-imagegen"
ME=bench/crash-campaign.sh

case "${1:-}" in -h|--help)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 0 ;;
esac
TRIALS="${1:-500}"
if ! [[ "$TRIALS" =~ ^[1-9][0-9]*$ ]]; then
    echo "$ME: TRIALS must be a positive integer, got '$TRIALS'" >&2
    exit 2
fi
[[ $# -le 1 ]] || { echo "$ME: too many arguments (see --help)" >&2; exit 2; }
MAX_POINTS="${MAX_POINTS:-60}"
MAX_MIB="${MAX_MIB:-160}"
for v in MAX_POINTS MAX_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$ME: $v must be a positive integer" >&2; exit 2; }
done
if [[ -n "${SEED:-}" ]]; then
    [[ "$SEED" =~ ^[0-9]+$ ]] || { echo "$ME: SEED must be a non-negative integer" >&2; exit 2; }
    SEED=$((10#$SEED))
else
    SEED=$(( (RANDOM << 15 | RANDOM) ))
fi

if [[ ! -x "$BW" || ! -x "$IG" ]]; then
    echo "target/release/bulwark or target/release/bulwark-imagegen is missing: run cargo build --release -p bulwark -p bulwark-imagegen first" >&2
    exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "$ME: python3 is required" >&2; exit 1; }

say() { printf '%s\n' "$*"; }
die() { printf '%s: FAILED: %s\n' "$ME" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- work dir
TMPBASE=${TMPDIR:-/tmp}
[[ $TMPBASE == /* ]] || TMPBASE="$CALLER_PWD/$TMPBASE"
W=$(mktemp -d "$TMPBASE/bulwark-crash.XXXXXX")
ANY_FAIL=0
cleanup() {
    local rc=$?
    trap - ERR
    if [[ "${KEEP:-}" == 1 ]]; then
        say "work dir kept (KEEP=1): $W"
    elif [[ $ANY_FAIL == 1 && "${KEEP:-}" != 0 ]]; then
        say "work dir kept (something was lost, damaged or failed; KEEP=0 removes it): $W" >&2
    else
        rm -rf "$W"
        [[ $rc -ne 0 ]] && say "work dir removed; rerun with KEEP=1 to keep it" >&2
    fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -E
trap 'printf "%s: FAILED: unexpected exit status %s at line %s: %s\n" "$ME" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

# The campaign runs copies of the binaries: a rebuild of target/release meanwhile changes
# nothing, and the first calibration run does not pay for a cold binary.
mkdir -p "$W/bin"
cp "$BW" "$IG" "$W/bin/"
BW="$W/bin/bulwark" IG="$W/bin/bulwark-imagegen"
"$BW" --version >/dev/null

PW="$W/password"
printf 'crash-campaign-%s\n' "$SEED" >"$PW"
PY="$W/helper.py"
PY3=(python3 -S)   # stdlib only; -S skips site-packages start-up (tenths of a second per call)

# ---------------------------------------------------------------- python helper
# run SPEC          start the commands of SPEC (one per line: DELAY_US OUT ERR ARGV..., tab
#                   separated) at once; SIGKILL each after its delay (-1: never); print
#                   "INDEX RC MID SECONDS" per command (MID 1: the kill landed while it ran)
# tree-make DIR SEED MF / tree-mutate DIR SEED MF   a test tree; MF gets its manifest
# forget-ids JSON   ids a `forget --json` (or --dry-run) output does not keep
# oldest STATE NAME id and expectation of the oldest known point of NAME
# check ...         verify, compare the listing with what is known, restore and compare points
cat >"$PY" <<'PYEOF'
import hashlib, json, os, random, shutil, stat, subprocess, sys, time

def log(path, msg):
    with open(path, "a") as f:
        f.write(msg.rstrip("\n") + "\n")

def cmd_run(spec):
    procs = []
    for line in open(spec):
        f = line.rstrip("\n").split("\t")
        delay, out, err, argv = int(f[0]), f[1], f[2], f[3:]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(out, "wb"), stderr=open(err, "wb"))
        procs.append({"p": p, "t0": t0, "kill": None if delay < 0 else t0 + delay / 1e6, "end": None})
    while True:
        now = time.monotonic()
        running = False
        for q in procs:
            if q["end"] is not None:
                continue
            if q["p"].poll() is not None:
                q["end"] = time.monotonic()
            elif q["kill"] is not None and now >= q["kill"]:
                # If it exited after poll(), this hits an unreaped zombie: harmless, and wait()
                # then returns its own exit status, so the kill counts as "after it finished".
                q["p"].kill()
                q["p"].wait()
                q["end"] = time.monotonic()
            else:
                running = True
        if not running:
            break
        nxt = min([q["kill"] for q in procs if q["end"] is None and q["kill"] is not None], default=now + 1)
        time.sleep(max(0.0, min(0.001, nxt - time.monotonic())))
    for i, q in enumerate(procs):
        rc = q["p"].returncode
        print(i, 128 - rc if rc < 0 else rc, 1 if rc == -9 else 0, "%.6f" % (q["end"] - q["t0"]))

def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()

def manifest(root):
    m = {}
    for dp, dns, fns in os.walk(root):
        for n in ["."] + dns + fns:
            p = dp if n == "." else os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            if n == "." and rel != ".":
                continue
            st = os.lstat(p)
            e = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns}
            if stat.S_ISREG(st.st_mode):
                e.update(size=st.st_size, nlink=st.st_nlink, sha=sha_file(p))
            elif stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                e["rdev"] = st.st_rdev
            try:
                xs = sorted(os.listxattr(p, follow_symlinks=False))
                e["xattr"] = {x: os.getxattr(p, x, follow_symlinks=False).hex() for x in xs}
            except OSError:
                pass
            m[rel] = e
    return m

def write_manifest(root, out):
    with open(out, "w") as f:
        json.dump(manifest(root), f, sort_keys=True)

def content(rnd, n):
    if rnd.random() < 0.5:
        return rnd.randbytes(n)
    word = rnd.randbytes(rnd.randint(8, 64)).hex().encode() + b"\n"
    return (word * (n // len(word) + 1))[:n]

def file_size(rnd):
    r = rnd.random()
    if r < 0.70:
        return rnd.randint(0, 8192)
    if r < 0.97:
        return rnd.randint(8192, 65536)
    return rnd.randint(256 << 10, 1536 << 10)

def cmd_tree_make(root, seed, mf):
    rnd = random.Random(int(seed))
    os.makedirs(root)
    dirs = [root]
    for i in range(24):
        d = os.path.join(rnd.choice(dirs), "d%02d" % i)
        os.mkdir(d)
        dirs.append(d)
    files = []
    for i in range(320):
        p = os.path.join(rnd.choice(dirs), "f%04d" % i)
        with open(p, "wb") as f:
            f.write(content(rnd, file_size(rnd)))
        files.append(p)
    for i, p in enumerate(rnd.sample(files, 12)):
        os.chmod(p, rnd.choice([0o600, 0o640, 0o755, 0o444]))
        if i < 6:
            os.setxattr(p, "user.crash%d" % i, rnd.randbytes(8))
    for i in range(6):
        t = rnd.choice(files)
        os.symlink(os.path.relpath(t, root), os.path.join(root, "link%d" % i))
    os.symlink("does/not/exist", os.path.join(root, "dangling"))
    for i in range(3):
        os.link(rnd.choice(files), os.path.join(rnd.choice(dirs), "hard%d" % i))
    os.mkdir(os.path.join(root, "empty"))
    os.mkfifo(os.path.join(root, "fifo"))
    with open(os.path.join(root, "sparse"), "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(rnd.randbytes(5000))
    write_manifest(root, mf)

def cmd_tree_mutate(root, seed, mf):
    rnd = random.Random(int(seed))
    files, dirs = [], []
    for dp, dns, fns in os.walk(root):
        dirs.append(dp)
        for n in fns:
            p = os.path.join(dp, n)
            if stat.S_ISREG(os.lstat(p).st_mode) and n != "sparse":
                files.append(p)
    files.sort(); dirs.sort()
    for p in rnd.sample(files, min(len(files), rnd.randint(2, 12))):
        how = rnd.randrange(4)
        if how == 0:
            with open(p, "wb") as f:
                f.write(content(rnd, file_size(rnd)))
        elif how == 1:
            with open(p, "ab") as f:
                f.write(content(rnd, rnd.randint(1, 20000)))
        elif how == 2:
            size = os.path.getsize(p)
            if size:
                with open(p, "r+b") as f:
                    f.seek(rnd.randrange(size))
                    f.write(rnd.randbytes(min(4096, size)))
        else:
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
    gone = rnd.sample(files, min(len(files), rnd.randint(1, 3)))
    for p in gone:
        if os.path.exists(p):
            os.unlink(p)
    left = [p for p in files if os.path.exists(p)]
    for j in range(rnd.randint(1, 4)):
        with open(os.path.join(rnd.choice(dirs), "m%s_%d" % (seed, j)), "wb") as f:
            f.write(content(rnd, file_size(rnd)))
    if left:
        p = rnd.choice(left)
        os.rename(p, p + ".r")
        left.remove(p)
    if left:
        os.chmod(rnd.choice(left), rnd.choice([0o600, 0o644, 0o700]))
    if left:
        p = rnd.choice(left)
        os.utime(p, ns=(time.time_ns(), rnd.randint(10**18, 1700 * 10**15)))
    if left:
        os.setxattr(rnd.choice(left), "user.m", rnd.randbytes(6))
    if rnd.random() < 0.2:
        d = os.path.join(rnd.choice(dirs), "n%s" % seed)
        os.mkdir(d)
        for j in range(rnd.randint(1, 5)):
            with open(os.path.join(d, "g%d" % j), "wb") as f:
                f.write(content(rnd, file_size(rnd)))
    write_manifest(root, mf)

def cmd_forget_ids(path):
    for p in json.load(open(path)).get("points", []):
        if not p.get("kept"):
            print(p["point"])

def load_state(sd):
    try:
        return json.load(open(os.path.join(sd, "known.json")))
    except FileNotFoundError:
        return {"seq": 0, "points": {}, "damaged": []}

def save_state(sd, st):
    tmp = os.path.join(sd, "known.json.tmp")
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.replace(tmp, os.path.join(sd, "known.json"))
    counts = {}
    for p in st["points"].values():
        counts[p["name"]] = counts.get(p["name"], 0) + 1
    with open(os.path.join(sd, "names.tsv"), "w") as f:
        for n in sorted(counts):
            f.write("%s\t%d\n" % (n, counts[n]))
    with open(os.path.join(sd, "npoints"), "w") as f:
        f.write("%d\n" % len(st["points"]))

def cmd_oldest(sd, name):
    pts = [(p["seq"], pid, p["expect"]) for pid, p in load_state(sd)["points"].items() if p["name"] == name]
    if pts:
        _, pid, exp = min(pts)
        print(pid, exp)

def cmd_check(bw, repo, pw, sd, pending, allowed, touched, seed, sample, mode, trial, logf, tmp):
    ra = ["--repo", repo] + (["--password-file", pw] if pw else [])
    st = load_state(sd)
    pts = st["points"]
    pend = {}
    for line in open(pending):
        if line.strip():
            n, e = line.rstrip("\n").split("\t", 1)
            pend[n] = e
    allow = {l.strip() for l in open(allowed) if l.strip()}
    lost, damaged = [], []
    def dmg(key, why):
        log(logf, "DAMAGED %s: %s" % (key, why))
        if key not in st["damaged"]:
            st["damaged"].append(key)
            damaged.append(key)

    r = subprocess.run([bw, "verify"] + ra + ["--json"], capture_output=True)
    log(logf, "verify: exit %d" % r.returncode)
    listing = None
    try:
        v = json.loads(r.stdout)
        listing = {p["point"]: p for p in v["points"]}
    except Exception:
        dmg("verify@trial%s" % trial, "verify gave no JSON (exit %d): %s"
            % (r.returncode, r.stderr.decode(errors="replace")[-2000:]))
    if listing is None:
        r2 = subprocess.run([bw, "points"] + ra + ["--json"], capture_output=True)
        try:
            listing = {p["id"]: {"point": p["id"], "name": p["name"], "ok": True} for p in json.loads(r2.stdout)}
        except Exception:
            log(logf, "points: exit %d, no listing: %s" % (r2.returncode, r2.stderr.decode(errors="replace")[-2000:]))
            save_state(sd, st)
            print(0, len(damaged), 0, len(pts))
            return
    else:
        bad = [pid for pid, p in listing.items() if not p.get("ok")]
        for pid in bad:
            p = listing[pid]
            dmg(pid, "verify: point %s (%s) not ok: problem=%s damaged_ranges=%s damaged_files=%s"
                % (pid, p.get("name"), p.get("problem"), json.dumps(p.get("damaged_ranges"))[:500],
                   json.dumps(p.get("damaged_files"))[:500]))
        if r.returncode != 0 and not bad:
            dmg("verify@trial%s" % trial, "verify exit %d with no damaged point: %s"
                % (r.returncode, r.stderr.decode(errors="replace")[-2000:]))
    for pid in sorted(set(pts) - set(listing)):
        if pid in allow:
            log(logf, "forgotten as asked: %s (%s)" % (pid, pts[pid]["name"]))
        else:
            log(logf, "LOST %s (%s, made in trial %s)" % (pid, pts[pid]["name"], pts[pid].get("trial")))
            lost.append(pid)
        del pts[pid]
    new = []
    for pid in sorted(set(listing) - set(pts)):
        name = listing[pid]["name"]
        st["seq"] += 1
        if name in pend:
            pts[pid] = {"name": name, "expect": pend[name], "seq": st["seq"], "trial": trial}
            new.append(pid)
            log(logf, "new point %s (%s)" % (pid, name))
        else:
            pts[pid] = {"name": name, "expect": None, "seq": st["seq"], "trial": trial}
            dmg(pid, "a point nobody made: %s (%s)" % (pid, name))
    if mode == "all":
        todo = sorted(pts, key=lambda k: pts[k]["seq"])
    else:
        todo = list(new)
        for name in [t for t in touched.split(",") if t]:
            ids = sorted((p["seq"], k) for k, p in pts.items() if p["name"] == name and k not in todo)
            todo += [k for _, k in ids[-1:]]
        rest = sorted(k for k in pts if k not in todo)
        todo += random.Random(int(seed)).sample(rest, min(int(sample), len(rest)))
    restored = 0
    for pid in todo:
        exp = pts[pid]["expect"]
        if exp is None or pid in st["damaged"]:
            continue
        restored += 1
        kind, want = exp.split(":", 1)
        out = os.path.join(tmp, "restore.img" if kind == "vol" else "restore.d")
        shutil.rmtree(out, ignore_errors=True) if os.path.isdir(out) else (os.path.exists(out) and os.unlink(out))
        rr = subprocess.run([bw, "restore", pid] + ra + ["--to", out, "--json"], capture_output=True)
        if rr.returncode != 0:
            dmg(pid, "restore exit %d: %s" % (rr.returncode, rr.stderr.decode(errors="replace")[-2000:]))
        elif kind == "vol":
            got = sha_file(out)
            if got != want:
                dmg(pid, "restored image sha256 %s, backed up %s" % (got, want))
        else:
            a, b = json.load(open(want)), manifest(out)
            diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            if diff:
                dmg(pid, "restored tree differs from %s in %d entries: %s"
                    % (want, len(diff), "; ".join("%s: %s != %s" % (k, a.get(k), b.get(k)) for k in diff[:5])))
        if os.path.isdir(out):
            shutil.rmtree(out, ignore_errors=True)
        elif os.path.exists(out):
            os.unlink(out)
    log(logf, "checked: %d points listed, %d restored and compared, %d lost, %d damaged"
        % (len(pts), restored, len(lost), len(damaged)))
    save_state(sd, st)
    print(len(lost), len(damaged), restored, len(pts))

cmd = sys.argv[1]
args = sys.argv[2:]
{"run": cmd_run, "tree-make": cmd_tree_make, "tree-mutate": cmd_tree_mutate,
 "forget-ids": cmd_forget_ids, "oldest": cmd_oldest, "check": cmd_check}[cmd](*args)
PYEOF

# ---------------------------------------------------------------- randomness (main shell only)
RANDOM=$SEED
R=0
rnd() { R=$(( ((RANDOM << 15) | RANDOM) % $1 )); }     # R = 0 .. $1-1
rnd_range() { rnd $(( $2 - $1 + 1 )); R=$(( R + $1 )); } # R = $1 .. $2

# ---------------------------------------------------------------- counters
SCEN=(1 2 3 4 5 6)
declare -A SNAME=([1]=vol-full [2]=vol-incr [3]=files [4]=forget [5]=gc [6]=concurrent [setup]=setup [sweep]=full-check)
declare -A C_TRIALS C_MID C_AFTER C_LOST C_DMG C_FAIL C_ERR C_SECS
for k in "${SCEN[@]}" setup sweep; do
    C_TRIALS[$k]=0; C_MID[$k]=0; C_AFTER[$k]=0; C_LOST[$k]=0; C_DMG[$k]=0; C_FAIL[$k]=0; C_ERR[$k]=0
    C_SECS[$k]=0
done
inc() { eval "$1[\$2]=\$(( \${$1[\$2]} + ${3:-1} ))"; }   # inc ARRAY KEY [N]

# ---------------------------------------------------------------- per-trial plumbing
T="" LOG="" KEY="" SLOT="" D="" RA=()
declare -A DIR GEN CAL BAD LOSTP   # BAD/LOSTP[slot]=1: the repository holds evidence

log() { printf '%s\n' "$*" >>"$LOG"; }
begin() { # begin DIRNAME KEY: a fresh trial directory
    T="$W/trials/$1"; KEY=$2
    mkdir -p "$T"
    LOG="$T/log"
    : >"$T/pending.tsv"; : >"$T/allowed.txt"; : >"$T/spec.tsv"
}
use_repo() { # use_repo SLOT
    SLOT=$1; D=${DIR[$1]}
    RA=(--repo "$D/repo")
    [[ $1 == enc ]] && RA+=(--password-file "$PW")
    return 0
}
pend() { printf '%s\t%s\n' "$1" "$2" >>"$T/pending.tsv"; log "expect $1 -> $2"; }
vol_expect() { printf 'vol:%s' "$(sha256sum "$1" | cut -c1-64)"; }
fail() { inc C_FAIL "$KEY"; ANY_FAIL=1; log "FAILED: $*"; say "  FAILED ($SLOT, ${SNAME[$KEY]}): $* (log: $LOG)" >&2; }
error() { inc C_ERR "$KEY"; ANY_FAIL=1; log "ERROR: $*"; say "  ERROR ($SLOT, ${SNAME[$KEY]}): $* (log: $LOG)" >&2; }

# bw LABEL SUBCOMMAND ARGS...: bulwark SUBCOMMAND on the current repository; output in $T/LABEL.*
bw() {
    local label=$1 sub=$2; shift 2
    local rc=0
    log "\$ bulwark $sub ${RA[*]} $*"
    "$BW" "$sub" "${RA[@]}" "$@" >"$T/$label.out" 2>"$T/$label.err" || rc=$?
    log "  exit $rc"
    [[ $rc -eq 0 ]] || log "  stderr: $(tail -c 2000 "$T/$label.err")"
    return $rc
}
# spec DELAY_US LABEL SUBCOMMAND ARGS...: one command for the next `launch` (-1: never killed)
spec() {
    local delay=$1 label=$2 sub=$3; shift 3
    local line
    line=$(printf '%s\t' "$delay" "$T/$label.out" "$T/$label.err" "$BW" "$sub" "${RA[@]}" "$@")
    printf '%s\n' "${line%$'\t'}" >>"$T/spec.tsv"
    log "\$ bulwark $sub ${RA[*]} $*   # kill after ${delay} us"
}
# launch: run the spec'd commands at once, killing each after its delay; sets K_RC K_MID K_SECS,
# counts the kills (mid-operation or after it finished) and flags commands that failed unkilled.
K_RC=() K_MID=() K_SECS=()
launch() {
    local i rc mid secs labels
    K_RC=() K_MID=() K_SECS=()
    mapfile -t labels < <(cut -f2 "$T/spec.tsv")
    local killable=()
    mapfile -t killable < <(cut -f1 "$T/spec.tsv")
    while read -r i rc mid secs; do
        K_RC[i]=$rc K_MID[i]=$mid K_SECS[i]=$secs
        log "  [$i] exit $rc after ${secs}s$([[ $mid == 1 ]] && echo ' (killed mid-operation)')"
        if [[ ${killable[i]} != -1 ]]; then
            if [[ $mid == 1 ]]; then inc C_MID "$KEY"; else inc C_AFTER "$KEY"; fi
        fi
        if [[ $mid != 1 && $rc != 0 ]]; then
            log "  stderr: $(tail -c 2000 "${labels[i]%.out}.err")"
            error "an uninterrupted $(basename "${labels[i]%.out}") exited $rc"
        fi
    done < <("${PY3[@]}" "$PY" run "$T/spec.tsv")
    : >"$T/spec.tsv"
}
us() { awk -v s="$1" 'BEGIN { printf "%d", s * 1e6 }'; }
delay_for() { rnd $(( ${CAL[$SLOT:$1]} * 13 / 10 + 1 )); }   # sets R: a kill delay in us

# check PHASE TOUCHED SAMPLE [all]: verify, compare the listing, restore and compare points
LAST_DMG=0
check() {
    local phase=$1 touched=$2 sample=$3 mode=${4:-some} l d r n
    log "-- check ($phase)"
    rnd 1000000000
    read -r l d r n < <("${PY3[@]}" "$PY" check "$BW" "$D/repo" "$([[ $SLOT == enc ]] && echo "$PW")" "$D" \
        "$T/pending.tsv" "$T/allowed.txt" "$touched" "$R" "$sample" "$mode" "$(basename "$T")" "$LOG" "$W/tmp") || true
    [[ -n "${n:-}" ]] || die "the check helper failed (log: $LOG)"
    inc C_LOST "$KEY" "$l"; inc C_DMG "$KEY" "$d"
    LAST_DMG=$d
    if (( l > 0 )); then
        LOSTP[$SLOT]=1 ANY_FAIL=1
        say "  LOST $l point(s) ($SLOT, ${SNAME[$KEY]}, $phase): see $LOG; repository $D/repo" >&2
    fi
    if (( d > 0 )); then
        BAD[$SLOT]=1 ANY_FAIL=1
        say "  DAMAGED $d point(s) ($SLOT, ${SNAME[$KEY]}, $phase): see $LOG; repository $D/repo" >&2
    fi
    return 0
}
forget_allowed() { "${PY3[@]}" "$PY" forget-ids "$1" | tee -a "$T/allowed.txt" | sed 's/^/  to delete: /' >>"$LOG"; }
names_with_2() { awk -F'\t' '$2 >= 2 { print $1 }' "$D/names.tsv"; }
points_of() { awk -F'\t' -v n="$1" '$1 == n { print $2 }' "$D/names.tsv"; }
pick() { rnd $#; shift "$R"; PICKED=$1; }   # PICKED = one of the arguments

new_image() { # new_image PATH: 8-32 MiB from bulwark-imagegen, random seed
    rnd_range 8 32; local size=$R
    rnd 1000000; local seed=$R
    log "\$ bulwark-imagegen generate $1 $size $seed"
    "$IG" generate "$1" "$size" "$seed" >/dev/null
}
mutate_image() { # mutate_image PATH: bulwark-imagegen mutate, or dd of random (or zero) blocks
    local img=$1 blocks
    blocks=$(( $(stat -c %s "$img") / 65536 ))
    rnd 2
    if (( R == 0 )); then
        rnd_range 1 10; local pct=$R; rnd 1000000; local s=$R; rnd 1000000
        log "\$ bulwark-imagegen mutate $img $pct $s $R"
        "$IG" mutate "$img" "$pct" "$s" "$R" >/dev/null
    else
        rnd_range 1 4; local n=$R j src
        for ((j = 0; j < n; j++)); do
            rnd 4; src=/dev/urandom; (( R == 0 )) && src=/dev/zero
            rnd "$blocks"; local at=$R; rnd_range 1 16
            log "\$ dd if=$src of=$img bs=64K seek=$at count=$R conv=notrunc"
            dd if=$src of="$img" bs=64K seek="$at" count="$R" conv=notrunc status=none
        done
        truncate -s $(( blocks * 65536 )) "$img"
    fi
}

# ---------------------------------------------------------------- repositories
# setup_repo SLOT: a fresh repository with two volume series (incA, incB) and a file series
# (files-main); with CALIBRATE=1 also times one uninterrupted run of every scenario.
setup_repo() {
    local slot=$1 cal=${2:-0}
    GEN[$slot]=$(( ${GEN[$slot]:-0} + 1 ))
    inc C_TRIALS setup
    DIR[$slot]="$W/repos/$slot-${GEN[$slot]}"
    use_repo "$slot"
    begin "setup-$slot-${GEN[$slot]}" setup
    mkdir -p "$D/img" "$D/mf" "$W/tmp"
    local enc=()
    [[ $slot == enc ]] && enc=(--encryption aes256gcm --password-file "$PW")
    "$BW" repo init "$D/repo" "${enc[@]}" --json >"$T/init.out" 2>"$T/init.err" || die "repo init failed: $(cat "$T/init.err")"
    echo '{"seq": 0, "points": {}, "damaged": []}' >"$D/known.json"
    : >"$D/names.tsv"; echo 0 >"$D/npoints"
    new_image "$D/img/incA.img"; new_image "$D/img/incB.img"
    rnd 1000000
    "${PY3[@]}" "$PY" tree-make "$D/tree" "$R" "$D/mf/setup0.json"
    echo "$D/mf/setup0.json" >"$D/tree-mf"

    pend incA "$(vol_expect "$D/img/incA.img")"
    pend incB "$(vol_expect "$D/img/incB.img")"
    pend files-main "tree:$D/mf/setup0.json"
    if [[ $cal == 1 ]]; then
        "$IG" generate "$D/img/cal.img" 20 7 >/dev/null
        pend full-cal "$(vol_expect "$D/img/cal.img")"
        spec -1 cal1 backup "$D/img/cal.img" --name full-cal --json; launch
        CAL[$slot:1]=$(us "${K_SECS[0]}")
    fi
    spec -1 incA backup "$D/img/incA.img" --name incA --block-size 256K --json; launch
    spec -1 incB backup "$D/img/incB.img" --name incB --block-size 256K --json; launch
    spec -1 files backup "$D/tree" --name files-main --json; launch
    [[ $cal == 1 ]] && CAL[$slot:3f]=$(us "${K_SECS[0]}")
    # A check after each step that gives a series new contents: new points take the
    # expectation of their name at the time of the check.
    setup_check
    if [[ $cal == 1 ]]; then
        mutate_image "$D/img/incA.img"
        pend incA "$(vol_expect "$D/img/incA.img")"
        spec -1 cal2 backup "$D/img/incA.img" --name incA --block-size 256K --json; launch
        CAL[$slot:2]=$(us "${K_SECS[0]}")
        "${PY3[@]}" "$PY" tree-mutate "$D/tree" 0 "$D/mf/setup1.json"
        echo "$D/mf/setup1.json" >"$D/tree-mf"
        pend files-main "tree:$D/mf/setup1.json"
        spec -1 cal3 backup "$D/tree" --name files-main --json; launch
        CAL[$slot:3i]=$(us "${K_SECS[0]}")
        setup_check
        bw cal4-dry forget --name files-main --keep-last 1 --dry-run --json || error "forget --dry-run failed"
        forget_allowed "$T/cal4-dry.out"
        spec -1 cal4 forget --name files-main --keep-last 1 --json; launch
        CAL[$slot:4]=$(us "${K_SECS[0]}")
        spec -1 cal5 gc --json; launch
        CAL[$slot:5]=$(us "${K_SECS[0]}")
        mutate_image "$D/img/incB.img"
        pend incB "$(vol_expect "$D/img/incB.img")"
        pend conc-cal "$(vol_expect "$D/img/cal.img")"
        spec -1 cal6a backup "$D/img/cal.img" --name conc-cal --block-size 256K --json
        spec -1 cal6b backup "$D/img/incB.img" --name incB --block-size 256K --json
        spec -1 cal6g gc --json
        launch
        CAL[$slot:6a]=$(us "${K_SECS[0]}"); CAL[$slot:6b]=$(us "${K_SECS[1]}"); CAL[$slot:6g]=$(us "${K_SECS[2]}")
        rm -f "$D/img/cal.img"
    fi
    setup_check
    BAD[$slot]=0 LOSTP[$slot]=0
}
setup_check() {
    check setup "" 0
    (( LAST_DMG == 0 )) || die "a fresh repository is damaged already (log: $LOG)"
}

# retire SLOT REASON: the repository is replaced by a fresh one; kept if it holds evidence
retire() {
    local slot=$1 why=$2 old=${DIR[$1]}
    if [[ ${BAD[$slot]} == 1 || ${LOSTP[$slot]} == 1 ]]; then
        say "  repository $old kept as evidence ($why)" >&2
        echo "$why" >"$old/EVIDENCE"
    else
        rm -rf "$old"
    fi
    setup_repo "$slot"
}

# full_check SLOT: restore every point of the repository
full_check() {
    use_repo "$1"
    begin "full-check-$1-${GEN[$1]}" sweep
    inc C_TRIALS sweep
    local t0=$EPOCHREALTIME
    check "full check" "" 0 all
    C_SECS[sweep]=$(awk -v a="${C_SECS[sweep]}" -v b="$EPOCHREALTIME" -v c="$t0" 'BEGIN { printf "%.3f", a + b - c }')
}

# ---------------------------------------------------------------- scenarios
# Each runs in trial dir $T against repository $D (slot $SLOT); trial number $I.

sc1() { # volume backup, full: a new name
    local name="full-$I" img="$D/img/full.img" bs
    new_image "$img"
    pick 256K 1M; bs=$PICKED
    pend "$name" "$(vol_expect "$img")"
    delay_for 1; spec "$R" op backup "$img" --name "$name" --block-size "$bs" --json; launch
    check "after kill" "" 2
    bw rerun backup "$img" --name "$name" --block-size "$bs" --json || fail "re-run backup exited $?"
    check "after re-run" "" 0
    (( LAST_DMG == 0 )) || fail "re-run did not verify clean"
    rm -f "$img"
}

sc2() { # volume incremental: mutated image, same name
    local name img
    pick incA incB; name=$PICKED; img="$D/img/$name.img"
    mutate_image "$img"
    pend "$name" "$(vol_expect "$img")"
    delay_for 2; spec "$R" op backup "$img" --name "$name" --block-size 256K --json; launch
    check "after kill" "$name" 2
    bw rerun backup "$img" --name "$name" --block-size 256K --json || fail "re-run backup exited $?"
    check "after re-run" "" 0
    (( LAST_DMG == 0 )) || fail "re-run did not verify clean"
}

sc3() { # file-level backup: a new name (full), --full, or incremental
    local name=files-main mf="$D/mf/$I.json" args=() cal=3i
    "${PY3[@]}" "$PY" tree-mutate "$D/tree" "$I" "$mf"
    echo "$mf" >"$D/tree-mf"
    pick new full incr
    case $PICKED in
        new) name="files-$I"; cal=3f ;;
        full) args=(--full); cal=3f ;;
    esac
    log "file-level backup: $PICKED"
    pend "$name" "tree:$mf"
    delay_for $cal; spec "$R" op backup "$D/tree" --name "$name" "${args[@]}" --json; launch
    check "after kill" "$name" 2
    bw rerun backup "$D/tree" --name "$name" "${args[@]}" --json || fail "re-run backup exited $?"
    check "after re-run" "" 0
    (( LAST_DMG == 0 )) || fail "re-run did not verify clean"
}

follow_up_backup() { # a backup of the (unchanged) tree after a forget or gc
    pend files-main "tree:$(cat "$D/tree-mf")"
    bw follow-up backup "$D/tree" --name files-main --json || fail "backup after the re-run exited $?"
}

sc4() { # forget, by retention
    local names name count keep
    mapfile -t names < <(names_with_2)
    if (( ${#names[@]} == 0 )); then
        follow_up_backup   # files-main gets a second point
        name=files-main; count=$(( $(points_of files-main) + 1 ))
    else
        pick "${names[@]}"; name=$PICKED; count=$(points_of "$name")
    fi
    rnd_range 1 $(( count - 1 )); keep=$R
    bw dry forget --name "$name" --keep-last "$keep" --dry-run --json || error "forget --dry-run exited $?"
    forget_allowed "$T/dry.out"
    delay_for 4; spec "$R" op forget --name "$name" --keep-last "$keep" --json; launch
    check "after kill" "$name" 2
    bw rerun forget --name "$name" --keep-last "$keep" --json || fail "re-run forget exited $?"
    follow_up_backup
    check "after re-run" "$name" 0
    (( LAST_DMG == 0 )) || fail "re-run did not verify clean"
}

sc5() { # gc, after forgetting points to make garbage
    local names=() n forgot=() i
    mapfile -t names < <(names_with_2)
    for ((i = 0; i < 3 && ${#names[@]} > 0; i++)); do
        pick "${names[@]}"; n=$PICKED
        names=("${names[@]:0:R}" "${names[@]:R+1}")
        if bw "garbage-$n" forget --name "$n" --keep-last 1 --json; then
            forget_allowed "$T/garbage-$n.out"; forgot+=("$n")
        else
            error "forget --name $n --keep-last 1 (making garbage) failed"
        fi
    done
    log "made garbage by forgetting: ${forgot[*]:-nothing}"
    delay_for 5; spec "$R" op gc --json; launch
    check "after kill" "$(IFS=,; echo "${forgot[*]:-}")" 2
    bw rerun gc --json || fail "re-run gc exited $?"
    follow_up_backup
    check "after re-run" "" 0
    (( LAST_DMG == 0 )) || fail "re-run did not verify clean"
}

sc6() { # two concurrent backups of different names plus a gc, each killed
    local bait="$D/img/bait.img" name="conc-$I" old exp got
    # The bait: incA's oldest point (from an earlier trial), restored, then forgotten after a new
    # incA point. Backing the bait up under a new name reuses chunks that are garbage by then
    # (and old enough for the gc to delete), while the gc sweeps.
    mutate_image "$D/img/incA.img"
    pend incA "$(vol_expect "$D/img/incA.img")"
    if ! bw pre-incA backup "$D/img/incA.img" --name incA --block-size 256K --json; then
        error "backup of incA (before the bait) exited non-zero"
    else
        read -r old exp < <("${PY3[@]}" "$PY" oldest "$D" incA)
        if bw bait restore "$old" --to "$bait" --json; then
            got="vol:$(sha256sum "$bait" | cut -c1-64)"
            if [[ $got != "$exp" ]]; then
                inc C_DMG 6; BAD[$SLOT]=1 ANY_FAIL=1
                log "DAMAGED $old: restored image $got, backed up $exp"
                say "  DAMAGED: $old restores wrongly (log $LOG)" >&2
            fi
        else
            inc C_DMG 6; BAD[$SLOT]=1 ANY_FAIL=1
            say "  DAMAGED: $old does not restore (log $LOG)" >&2
        fi
        if bw garbage forget --name incA --keep-last 1 --json; then
            forget_allowed "$T/garbage.out"
        else
            error "forget --name incA --keep-last 1 (making garbage) failed"
        fi
    fi
    [[ -f $bait ]] || new_image "$bait"
    mutate_image "$D/img/incB.img"
    pend "$name" "$(vol_expect "$bait")"
    pend incB "$(vol_expect "$D/img/incB.img")"
    delay_for 6a; spec "$R" op-a backup "$bait" --name "$name" --block-size 256K --json
    delay_for 6b; spec "$R" op-b backup "$D/img/incB.img" --name incB --block-size 256K --json
    delay_for 6g; spec "$R" op-gc gc --json
    launch
    check "after kill" "incA,incB" 2
    bw rerun-a backup "$bait" --name "$name" --block-size 256K --json || fail "re-run backup $name exited $?"
    bw rerun-b backup "$D/img/incB.img" --name incB --block-size 256K --json || fail "re-run backup incB exited $?"
    bw rerun-gc gc --json || fail "re-run gc exited $?"
    check "after re-run" "" 0
    (( LAST_DMG == 0 )) || fail "re-runs did not verify clean"
    rm -f "$bait"
}

# ---------------------------------------------------------------- main
say "bulwark kill -9 campaign: $TRIALS trials, SEED=$SEED, work dir $W"
say "bulwark: $("$BW" --version 2>&1 | head -n1) (target/release/bulwark of $(date -r "$ROOT/target/release/bulwark" '+%F %T')); $(nproc) cpus; $(df -PT "$W" | awk 'NR == 2 { print $2 }') under $W"
T0=$EPOCHREALTIME
setup_repo plain 1
setup_repo enc 1
say "uninterrupted durations (s), kills drawn from 0 to 1.3x:"
printf '  %-6s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n' repo full incr files-f files-i forget gc conc-a conc-b conc-gc
for s in plain enc; do
    printf '  %-6s' "$s"
    for k in 1 2 3f 3i 4 5 6a 6b 6g; do
        printf ' %8.3f' "$(awk -v u="${CAL[$s:$k]}" 'BEGIN { print u / 1e6 }')"
    done
    printf '\n'
done

DECK=()
deal() { # 6 scenarios x 2 repositories, shuffled
    local s r i j t
    DECK=()
    for s in "${SCEN[@]}"; do for r in plain enc; do DECK+=("$s:$r"); done; done
    for ((i = ${#DECK[@]} - 1; i > 0; i--)); do
        rnd $((i + 1)); j=$R
        t=${DECK[i]}; DECK[i]=${DECK[j]}; DECK[j]=$t
    done
}

TRIAL_SECS=0
for ((I = 1; I <= TRIALS; I++)); do
    (( ${#DECK[@]} > 0 )) || deal
    s=${DECK[0]%%:*}; slot=${DECK[0]#*:}; DECK=("${DECK[@]:1}")
    # A repository grown past the limits is checked in full and replaced.
    use_repo "$slot"
    if (( $(cat "$D/npoints") > MAX_POINTS || $(du -sm "$D/repo" | cut -f1) > MAX_MIB )); then
        full_check "$slot"
        say "  [$slot] repository $(basename "$D") fully checked ($(cat "$D/npoints") points) and replaced"
        retire "$slot" "limits reached"
    fi
    use_repo "$slot"
    begin "$(printf '%04d' "$I")-$slot-${SNAME[$s]}" "$s"
    inc C_TRIALS "$s"
    log "trial $I: scenario $s (${SNAME[$s]}), repository $slot ($D/repo), SEED=$SEED"
    before=("${C_MID[$s]}" "${C_LOST[$s]}" "${C_DMG[$s]}" "${C_FAIL[$s]}" "${C_ERR[$s]}")
    t0=$EPOCHREALTIME
    "sc$s"
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
    C_SECS[$s]=$(awk -v a="${C_SECS[$s]}" -v b="$secs" 'BEGIN { printf "%.3f", a + b }')
    TRIAL_SECS=$(awk -v a="$TRIAL_SECS" -v b="$secs" 'BEGIN { printf "%.3f", a + b }')
    verdict=""
    [[ ${C_LOST[$s]} != "${before[1]}" ]] && verdict+=" LOST"
    [[ ${C_DMG[$s]} != "${before[2]}" ]] && verdict+=" DAMAGED"
    [[ ${C_FAIL[$s]} != "${before[3]}" || ${C_ERR[$s]} != "${before[4]}" ]] && verdict+=" FAILED"
    verdict=${verdict:- ok}; verdict=${verdict# }
    printf '[%4d/%d] %-5s %-10s %d kill(s), %d mid-operation  %6.2fs  %s\n' "$I" "$TRIALS" "$slot" \
        "${SNAME[$s]}" "$(grep -c 'kill after [0-9]' "$LOG" || true)" $(( C_MID[$s] - before[0] )) "$secs" "$verdict"
    log "trial $I: $verdict in ${secs}s"
    if [[ ${BAD[$slot]} == 1 ]]; then
        retire "$slot" "damage found in trial $I ($T)"
    fi
done

for slot in plain enc; do
    full_check "$slot"
    if [[ ${BAD[$slot]} == 1 || ${LOSTP[$slot]} == 1 ]]; then
        echo "holds evidence (see the trial logs)" >"$D/EVIDENCE"
    fi
done
TOTAL=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')

# ---------------------------------------------------------------- report
say ""
say "== results (SEED=$SEED): kills mid = landed while the operation ran, after = it had finished"
printf '%-11s %7s %6s %6s %6s %7s %9s %7s %8s\n' scenario trials mid after lost damaged failed-re errors "s/trial"
L=0 DD=0 F=0 E=0
for k in "${SCEN[@]}" setup sweep; do
    printf '%-11s %7s %6s %6s %6s %7s %9s %7s %8s\n' "${SNAME[$k]}" "${C_TRIALS[$k]}" "${C_MID[$k]}" \
        "${C_AFTER[$k]}" "${C_LOST[$k]}" "${C_DMG[$k]}" "${C_FAIL[$k]}" "${C_ERR[$k]}" \
        "$(awk -v s="${C_SECS[$k]}" -v n="${C_TRIALS[$k]}" 'BEGIN { if (n > 0) printf "%.2f", s / n; else print "-" }')"
    L=$((L + C_LOST[$k])); DD=$((DD + C_DMG[$k])); F=$((F + C_FAIL[$k])); E=$((E + C_ERR[$k]))
done
say "setup = fresh repositories and calibration; full-check = every point of a repository restored"
say "(when it reached MAX_POINTS=$MAX_POINTS or MAX_MIB=$MAX_MIB, and at the end)."
say "errors = operations that were not killed yet failed (setup, forgets that make garbage)."
say "$(awk -v t="$TRIAL_SECS" -v n="$TRIALS" 'BEGIN { printf "%.2f", t / n }') s per trial on average; ${TOTAL} s in all; repositories used: plain ${GEN[plain]}, encrypted ${GEN[enc]}"
(( L + DD + F + E == 0 )) || say "reproduce the choices with SEED=$SEED; trial logs under $W/trials" >&2
line="crash-campaign: $TRIALS trials, $L lost, $DD damaged, $F failed re-backups"
(( E == 0 )) || line+=", $E other errors"
say "$line"
trap - ERR
if (( L + DD + F + E == 0 )); then exit 0; else exit 1; fi
