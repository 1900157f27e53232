#!/usr/bin/env bash
# CPU per dispatched job on each store, in one run (issue #29's targets): N trivial jobs
# (`true`, shell `sh -c`), 2 feeders x 2 slots, on a SQLite queue directory, a PostgreSQL
# queue with a job-file directory, and a PostgreSQL queue keeping everything in its
# database. CPU comes from cgroup accounting (cgroup v1 cpuacct): the feeders and their
# jobs in one group, the PostgreSQL server (postmaster and every backend) in another.
# Usage: bench/store_cpu.sh [N] (default 3000; REPS=2 runs each store that many times;
# PEER=/path/to/another/rq measures that build too, in the same run, queue for queue;
# RQ=/path/to/rq measures that build instead of this checkout's; STORES="pgdb" only those).
# Needs root and Debian's postgresql (installed when missing).
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}; REPS=${REPS:-2}
CG=/sys/fs/cgroup/cpuacct
[ -d "$CG" ] || { echo "no cgroup v1 cpuacct hierarchy at $CG" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if [ -z "${RQ:-}" ]; then
    cargo build --release --quiet || exit 1
    RQ="$PWD/target/release/rq"
fi
WORK=$(mktemp -d /var/tmp/rq-cpubench.XXXXXX); chmod 755 "$WORK"; export HOME="$WORK/home"; mkdir -p "$HOME"
FEED_CG="$CG/rq-bench-feeders.$$"; SERVER_CG="$CG/rq-bench-server.$$"
mkdir -p "$FEED_CG" "$SERVER_CG"
PGDIR="$WORK/pg"; mkdir -p "$PGDIR"; chown postgres "$PGDIR"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U rq -E UTF8 >/dev/null
# The server is started from a shell already in the server's group: every backend it
# forks is counted there.
sh -c "echo \$\$ > $SERVER_CG/cgroup.procs; exec runuser -u postgres -- $PGBIN/pg_ctl -D $PGDIR/data -l $PGDIR/log -w \
    -o \"-k $PGDIR -c listen_addresses='' -c max_connections=100\" start" >/dev/null
URL="postgres://rq@$(echo "$PGDIR" | sed 's|/|%2F|g')/postgres"
cleanup() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1
    for g in "$FEED_CG" "$SERVER_CG"; do
        for p in $(cat "$g/cgroup.procs" 2>/dev/null); do echo "$p" > "$CG/cgroup.procs" 2>/dev/null; done
        rmdir "$g" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
usage() { cat "$1/cpuacct.usage"; }   # nanoseconds
newq() { # store -> a new queue
    local n; n=$(date +%s%N)
    case $1 in
        sqlite) "$RQ" "$WORK/q$n" create -q; echo "$WORK/q$n" ;;
        pgdb) "$RQ" "$URL?queue=b$n" create -q; echo "$URL?queue=b$n" ;;
        *) "$RQ" "$URL?queue=b$n" create -q
           "$RQ" "$URL?queue=b$n" configure files="$WORK/f$n" >/dev/null; echo "$URL?queue=b$n" ;;
    esac
}
run() { # store [rq] -> "jobs/s feeder_ms_per_job server_ms_per_job"
    local q t0 t1 f0 f1 s0 s1 pids=() RQ=${2:-$RQ}
    q=$(newq "$1")
    seq "$N" | sed 's/.*/true/' | "$RQ" "$q" submit -q -
    f0=$(usage "$FEED_CG"); s0=$(usage "$SERVER_CG"); t0=$(now)
    for i in 1 2; do
        sh -c "echo \$\$ > $FEED_CG/cgroup.procs; RQ_HOST=c$i RQ_ALLOW_LOCAL_LOCKS=1 exec $RQ '$q' feed --shell 'sh -c' --max_feed 2 --exit_when_empty" 2>/dev/null &
        pids+=($!)
    done
    wait "${pids[@]}"
    t1=$(now); f1=$(usage "$FEED_CG"); s1=$(usage "$SERVER_CG")
    local done; done=$("$RQ" "$q" status --format json | python3 -c "import json,sys; print(json.load(sys.stdin)['jobs']['finished'])")
    [ "$done" = "$N" ] || echo "WARNING: $done of $N jobs finished" >&2
    echo "$(calc "round($N/($t1-$t0))") $(calc "round(($f1-$f0)/1e6/$N, 3)") $(calc "round(($s1-$s0)/1e6/$N, 3)")"
}

echo "# rq: CPU per dispatched job by store — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD)"
echo "machine: $(nproc) cores; $("$PGBIN/postgres" --version); $N jobs (sh -c true), 2 feeders x 2 slots"
echo
echo "| store | jobs/s | feeders + jobs, ms CPU/job | server, ms CPU/job | total, ms CPU/job |"
echo "|---|---|---|---|---|"
for rep in $(seq "$REPS"); do
    for store in ${STORES:-sqlite postgres pgdb}; do
        for build in "$RQ" ${PEER:+"$PEER"}; do
            read -r rate feed server <<< "$(run $store "$build")"
            label=$store; [ "$build" = "$RQ" ] || label="$store, peer"
            echo "| $label (run $rep) | $rate | $feed | $server | $(calc "round($feed+$server, 3)") |"
        done
    done
done
