#!/usr/bin/env bash
# What people-facing output costs on a 1M-job queue (700,000 finished in the last hour,
# 300,000 pending): status as YAML and as the terminal screen, list as YAML and as a
# table (sqlite3 -column on the same rows beside it, as the floor), and the dashboard:
# its first read and a steady refresh of each page, one viewer.
# Usage: bash bench/terminal_dashboard.sh [JOBS]   (release build: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
RQ=${RQ:-$PWD/target/release/rq}
N=${1:-1000000}
TMP=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$TMP"' EXIT
Q=$TMP/q
"$RQ" "$Q" create -q >/dev/null
seq 1 "$N" | sed 's/^/echo job /' | "$RQ" "$Q" submit -q
FINISHED=$((N * 7 / 10))
sqlite3 "$Q/db" "UPDATE jobs SET state='finished', started=submitted,
  finished=strftime('%Y-%m-%dT%H:%M:%fZ','now'), elapsed=0.5, exit_status=(jid%50=0),
  runner='h'||(jid%8) WHERE jid <= $FINISHED"
t() { /usr/bin/time -f "%e s  %M KB  $1" "${@:2}" >/dev/null; }
echo "queue: $N jobs, $FINISHED finished in the last hour"
t "status (YAML)" "$RQ" "$Q" status
t "status (terminal screen)" env COLUMNS=100 "$RQ" "$Q" status --format table
t "list all (YAML)" "$RQ" "$Q" list
t "list all (table, 120 columns)" env COLUMNS=120 "$RQ" "$Q" list --format table
t "sqlite3 -column, same rows (floor)" sqlite3 -column "$Q/db" \
  "SELECT jid, state, priority, tag, runner, started, elapsed, exit_status, command FROM jobs"
"$RQ" "$Q" serve --listen 127.0.0.1:0 >"$TMP/serve.out" 2>/dev/null &
SERVER=$!
for _ in $(seq 50); do grep -q http "$TMP/serve.out" && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$TMP/serve.out")
for path in / / /hosts /metrics "/jobs?state=pending" "/jobs?state=finished&order=desc" "/jobs?q=job%20999" "/jobs/$N"; do
  sleep 1.1   # past the shared snapshot's second
  /usr/bin/time -f "%e s  dashboard GET $path" curl -s -o /dev/null "$URL$path"
done
