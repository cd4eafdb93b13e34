#!/usr/bin/env bash
# The web console under a grown catalog: 200 computers, 10 daily jobs of 20 computers each
# with a month of sessions (300 sessions, 6 000 tasks) and 10 000 restore points, in SQLite and
# (when BULWARK_TEST_POSTGRES names a server) PostgreSQL. A real `bulwark server` serves the
# pages; the catalog is filled with SQL beside it. Prints the dashboard's and a session page's
# server time (curl's total less the TLS set-up, every request on a connection of its own), and
# the restore points page's (the newest 100 of the 10 000, a page of them),
# as min / median / max over N requests, and the weight of each page with its assets.
#
#   bench/console.sh          # 50 requests per page
#   bench/console.sh 200
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
cargo build --release -q -p bulwark --bin bulwark
exe=$PWD/target/release/bulwark
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bulwark-console.XXXXXX")
server=
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The catalog, in SQL both SQLite and PostgreSQL run.
seed_sql() {
  cat <<'SQL'
INSERT INTO nodes (name, role, address, serial, joined)
  WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200)
  SELECT 'pc-' || i, 'agent', '127.0.0.1:1', 'serial-' || i, '2026-10-01T00:00:00Z' FROM c;
INSERT INTO nodes (name, role, address, serial, joined) VALUES ('store', 'transport', '127.0.0.1:1', 'serial-t', '2026-10-01T00:00:00Z');
INSERT INTO repositories (name, transport, path, max_tasks, created) VALUES ('main', 'store', '/srv/backup/main', 8, '2026-10-01T00:00:00Z');
INSERT INTO jobs (name, spec, created)
  WITH RECURSIVE j(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM j WHERE i < 9)
  SELECT 'job-' || i,
    '{"name":"job-' || i || '","computers":["pc-' || (i * 20 + 1) || '","pc-' || (i * 20 + 2) || '"],"repository":"main","sources":["/dev/vdb"],"schedule":{"kind":"daily","at":"22:00"}}',
    '2026-10-01T00:00:00Z' FROM j;
INSERT INTO sessions (id, job, status, started, ended, kind)
  WITH RECURSIVE j(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM j WHERE i < 9),
       d(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM d WHERE k < 29)
  SELECT 's-' || i || '-' || k, 'job-' || i, 'success',
    '2026-11-' || CASE WHEN k < 9 THEN '0' ELSE '' END || (k + 1) || 'T22:00:00Z',
    '2026-11-' || CASE WHEN k < 9 THEN '0' ELSE '' END || (k + 1) || 'T22:10:00Z', 'backup'
  FROM j, d;
INSERT INTO tasks (id, session_id, computer, repository, priority, seq, attempt, status, queued, started, ended, sent_bytes)
  WITH RECURSIVE j(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM j WHERE i < 9),
       d(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM d WHERE k < 29),
       c(m) AS (SELECT 1 UNION ALL SELECT m + 1 FROM c WHERE m < 20)
  SELECT 't-' || i || '-' || k || '-' || m, 's-' || i || '-' || k, 'pc-' || (i * 20 + m), 'main', 0,
    (i * 30 + k) * 20 + m, 1, 'success', '2026-11-01T22:00:00Z', '2026-11-01T22:00:01Z', '2026-11-01T22:09:00Z', 123456789
  FROM j, d, c;
INSERT INTO points (id, repository, task_id, computer, name, kind, created, manifest)
  WITH RECURSIVE p(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM p WHERE i < 10000)
  SELECT 'point-' || i, 'main', NULL, 'pc-' || (i % 200 + 1), 'pc-' || (i % 200 + 1) || '-vdb', 'volume',
    '2026-11-01T22:05:00Z',
    '{"id":"point-' || i || '","name":"vdb","kind":"volume","source":"/dev/vdb","snapshot":"reflink","consistency":"crash-consistent","volume_size":10737418240,"stats":{"source_bytes":10737418240,"read_bytes":536870912,"zero_bytes":0,"unchanged_bytes":10200547328,"new_bytes":268435456,"stored_bytes":134217728,"duration_s":41.5}}'
  FROM p;
SQL
}

# min / median / max of the numbers on stdin, in ms.
stats() {
  sort -n | awk '{ v[NR] = $1 * 1000 } END { printf "%.1f / %.1f / %.1f ms", v[1], v[int((NR + 1) / 2)], v[NR] }'
}

run() {
  local label=$1 db=$2
  local dir=$work/$label
  mkdir -p "$dir"
  local args=(server --data-dir "$dir/server" --listen 127.0.0.1:0)
  [ -z "$db" ] || args+=(--db "$db")
  "$exe" "${args[@]}" >"$dir/out" 2>"$dir/log" &
  server=$!
  for _ in $(seq 100); do [ -s "$dir/out" ] && break; sleep 0.1; done
  local address
  address=$(sed -n 's/.*"listening":"\([^"]*\)".*/\1/p' "$dir/out" | head -1)
  [ -n "$address" ] || { echo "the server did not start:"; cat "$dir/log"; exit 1; }
  if [ -z "$db" ]; then
    seed_sql | sqlite3 "$dir/server/config.db"
  else
    seed_sql | psql -q "$db" >/dev/null
  fi
  local base=https://$address ca=$dir/server/ca.pem jar=$dir/cookies
  curl -s --cacert "$ca" -c "$jar" -o /dev/null \
    --data-urlencode name=admin --data-urlencode "password=$(cat "$dir/server/initial-admin-password")" "$base/ui/login"
  for page in /ui/ /ui/sessions/s-3-29 /ui/points; do
    curl -s --cacert "$ca" -b "$jar" -o "$dir/page.html" -w '%{http_code}' "$base$page" | grep -q 200 ||
      { echo "$page did not answer 200"; exit 1; }
    # The pages show what was seeded: the session's 20 tasks; the dashboard's 200 computers.
    case $page in
      /ui/sessions/*) [ "$(grep -o '<tr class="task"' "$dir/page.html" | wc -l)" = 20 ] || { echo "$page lacks its tasks"; exit 1; } ;;
      /ui/) grep -q 'All 200 computers' "$dir/page.html" || { echo "$page lacks the computers"; exit 1; } ;;
      /ui/points) [ "$(grep -o '<tr class="point"' "$dir/page.html" | wc -l)" = 100 ] || { echo "$page lacks its points"; exit 1; } ;;
    esac
    local times
    times=$(for _ in $(seq "$n"); do
      curl -s --cacert "$ca" -b "$jar" -o /dev/null -w '%{time_appconnect} %{time_total}\n' "$base$page"
    done | awk '{ print $2 - $1 }' | stats)
    local weight=$(( $(stat -c %s "$dir/page.html") ))
    for asset in pico.min.css htmx.min.js console.css console.js; do
      weight=$(( weight + $(curl -s --cacert "$ca" -o /dev/null -w '%{size_download}' "$base/ui/assets/$asset") ))
    done
    printf '%-9s %-22s %s, page with assets %d KiB\n' "$label" "$page" "$times" $(( weight / 1024 ))
  done
  kill "$server"; wait "$server" 2>/dev/null || true; server=
}

echo "200 computers, 10 jobs, 300 sessions (6 000 tasks), 10 000 points; $n requests per page (min / median / max)"
run sqlite ""
if [ -n "${BULWARK_TEST_POSTGRES:-}" ]; then
  pgdb=bulwark_console_bench
  psql -q "$BULWARK_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS $pgdb" -c "CREATE DATABASE $pgdb"
  run postgres "${BULWARK_TEST_POSTGRES%/*}/$pgdb"
  psql -q "$BULWARK_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)"
fi
