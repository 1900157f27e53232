#!/usr/bin/env bash
# The PostgreSQL store against the SQLite queue directory, in the same run on the same
# machine: dispatch of trivial jobs with 2, 4 and 8 feeders (2 slots each), submit of
# 100,000 jobs from a file, status and list on 1,000,000 jobs, pick-up latency of a job
# submitted to an idle feeder. Usage: bench/postgres.sh [--quick]
# ONLY=dispatch,submit,big,pickup runs those sections only.
# Needs root (the server runs as the postgres user) and Debian's postgresql (installed
# when missing). The server runs on a Unix socket in a temporary directory with its
# default durability (fsync on), as a real deployment would.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
N=5000; SUBMIT_N=100000; BIG=1000000; LAT_N=20
if [ $QUICK = 1 ]; then N=1000; SUBMIT_N=20000; BIG=100000; LAT_N=5; fi

ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet || exit 1
RQ="$PWD/target/release/rq"
WORK=$(mktemp -d /var/tmp/rq-pgbench.XXXXXX); chmod 755 "$WORK"; export HOME="$WORK/home"; mkdir -p "$HOME"
PGDIR="$WORK/pg"; mkdir -p "$PGDIR"; chown postgres "$PGDIR"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U rq -E UTF8 >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-k $PGDIR -c listen_addresses='' -c max_connections=100" start >/dev/null
URL="postgres://rq@$(echo "$PGDIR" | sed 's|/|%2F|g')/postgres"
cleanup() { pkill -f "rq-pgbench" 2>/dev/null; runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$WORK"; }
trap cleanup EXIT

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
verdict() { if python3 -c "import sys; sys.exit(0 if ($1) else 1)"; then echo "MET"; else echo "MISSED"; fi; }
newq() { # store -> a new queue (a directory; a URL with its files directory; pgdb: a
          # URL keeping job files, heartbeats and journals in the database)
    local n; n=$(date +%s%N)
    if [ "$1" = sqlite ]; then "$RQ" "$WORK/q$n" create -q; echo "$WORK/q$n"
    elif [ "$1" = pgdb ]; then "$RQ" "$URL?queue=b$n" create -q; echo "$URL?queue=b$n"
    else "$RQ" "$URL?queue=b$n" create -q; "$RQ" "$URL?queue=b$n" configure files="$WORK/f$n" >/dev/null; echo "$URL?queue=b$n"; fi
}

echo "# rq: PostgreSQL store vs SQLite directory — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$PGBIN/postgres" --version); queue directories and job files on $(df -T "$WORK" | awk 'NR==2{print $2}')"
echo

dispatch() { # store feeders -> jobs/s
    local q; q=$(newq "$1")
    seq "$N" | sed 's/.*/true/' | "$RQ" "$q" submit -q -
    local t0; t0=$(now)
    local fp=()
    for i in $(seq "$2"); do
        RQ_HOST="b$i" RQ_ALLOW_LOCAL_LOCKS=1 "$RQ" "$q" feed --shell "sh -c" --max_feed 2 --exit_when_empty 2>/dev/null & fp+=($!)
    done
    wait "${fp[@]}"
    local t1; t1=$(now)
    local done; done=$("$RQ" "$q" status --format json | python3 -c "import json,sys; print(json.load(sys.stdin)['jobs']['finished'])")
    [ "$done" = "$N" ] || echo "WARNING: $done of $N jobs finished" >&2
    calc "round($N/($t1-$t0))"
}
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
if want dispatch; then
echo "## Dispatch: $N trivial jobs (sh -c true), feeders of 2 slots each, jobs/s"
echo "| feeders | SQLite directory | PostgreSQL | ratio | PostgreSQL, all in the database |"
echo "|---|---|---|---|---|"
for f in 2 4 8; do
    s=$(dispatch sqlite "$f"); p=$(dispatch postgres "$f"); d=$(dispatch pgdb "$f")
    echo "| $f | $s | $p | $(calc "round($p/$s, 2)") | $d |"
    [ "$f" = 8 ] && { S8=$s; P8=$p; }
done
echo "target: PostgreSQL >= 2x SQLite at 8 feeders: $(verdict "$P8 >= 2 * $S8")"
echo
fi

if want submit; then
echo "## Submit $SUBMIT_N jobs from a file"
seq "$SUBMIT_N" | sed 's/.*/echo &/' > "$WORK/jobs"
for store in sqlite postgres; do
    q=$(newq $store)
    t0=$(now); "$RQ" "$q" submit -q -i "$WORK/jobs"; t1=$(now)
    rate=$(calc "round($SUBMIT_N/($t1-$t0))")
    echo "- $store: $(calc "round($t1-$t0, 2)") s, $rate jobs/s"
    [ $store = postgres ] && echo "  target >= 50,000 jobs/s: $(verdict "$rate >= 50000")"
done
echo
fi

if want big; then
echo "## A queue of $BIG pending jobs: status and list"
seq "$BIG" | sed 's/.*/echo &/' > "$WORK/big"
for store in sqlite postgres; do
    q=$(newq $store)
    "$RQ" "$q" submit -q -i "$WORK/big"
    best=999
    for _ in 1 2 3; do t0=$(now); "$RQ" "$q" status --format yaml >/dev/null; t1=$(now); best=$(calc "min($best, $t1-$t0)"); done
    t0=$(now); "$RQ" "$q" list all --format json >/dev/null; t1=$(now)
    echo "- $store: status $(calc "round($best*1000)") ms (best of 3); list all --format json $(calc "round($t1-$t0, 1)") s"
    [ $store = postgres ] && echo "  target status < 200 ms: $(verdict "$best < 0.2")"
done
echo
fi

want pickup || exit 0
echo "## Pick-up: submit to an idle feeder (min_sleep 0.05 s), ms until the job started"
for store in sqlite postgres; do
    q=$(newq $store)
    RQ_HOST=lat RQ_ALLOW_LOCAL_LOCKS=1 "$RQ" "$q" feed --shell "sh -c" --min_sleep 0.05 2>/dev/null & fp=$!
    sleep 3
    lat=(); pick=()
    for i in $(seq "$LAT_N"); do
        sleep 1
        t0=$(now); jid=$("$RQ" "$q" submit -f jid --format json -- 'date +%s.%N' | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['jid'])")
        "$RQ" "$q" wait "$jid" >/dev/null
        started=$("$RQ" "$q" stdout "$jid")
        lat+=("$(calc "round(($started-$t0)*1000)")")
        # From the job's submitted time (taken just before its insert) to its start.
        pick+=("$("$RQ" "$q" list "$jid" -f submitted --format json | python3 -c "
import json, sys, datetime
s = json.load(sys.stdin)[0]['submitted']
t = datetime.datetime.strptime(s, '%Y-%m-%dT%H:%M:%S.%fZ').replace(tzinfo=datetime.timezone.utc).timestamp()
print(round(($started - t) * 1000))")")
    done
    kill -QUIT $fp; wait $fp 2>/dev/null
    med=$(printf '%s\n' "${lat[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    medp=$(printf '%s\n' "${pick[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "- $store: median $med ms from running rq submit, $medp ms from the job's submitted time, over $LAT_N jobs"
done
