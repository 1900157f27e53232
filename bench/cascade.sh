#!/usr/bin/env bash
# A failed dependency's cascade: a chain of N jobs (each `after:` the one before) whose head
# fails, on a SQLite queue directory and a PostgreSQL queue, then the head resubmitted
# (re-arming the chain). Reports the time to cancel / re-arm all of it, the longest a
# concurrent `submit` waited meanwhile, and how soon a feeder that recorded the failure
# exits after TERM, and how long submitting the chain took. BEFORE=REV also times rq built at REV as the peer of the same run
# (OLD_RQ=BINARY: one built already), on PEER_SIZES (default 2000 8000) and PEER_STORES
# (default sqlite), labelled PEER_LABEL; PEER_PROBE=0 times it with nothing else running.
# Usage: bench/cascade.sh [N ...]   (default: 10000 100000)
# Needs root for the PostgreSQL server (Debian's postgresql, installed when missing).
set -uo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(10000 100000)
cargo build --release --quiet || exit 1
RQ="$PWD/target/release/rq"
WORK=$(mktemp -d /var/tmp/rq-cascade.XXXXXX); chmod 755 "$WORK"; export HOME="$WORK/home"; mkdir -p "$HOME"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDIR="$WORK/pg"; mkdir -p "$PGDIR"; chown postgres "$PGDIR"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U rq -E UTF8 >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-k $PGDIR -c listen_addresses='' -c max_connections=100" start >/dev/null
URL="postgres://rq@$(echo "$PGDIR" | sed 's|/|%2F|g')/postgres"
cleanup() { pkill -f "$WORK" 2>/dev/null; runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$WORK"; }
trap cleanup EXIT

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
chain() { python3 -c "
print('- {name: j1, command: \"false\"}')
for i in range(2, $1 + 1): print('- {name: j%d, command: \"true\", after: j%d}' % (i, i - 1))"; }
newq() { # store n -> a new queue
    if [ "$1" = sqlite ]; then "$RQ" "$WORK/q$2" create -q; echo "$WORK/q$2"
    else "$RQ" "$URL?queue=c$2" create -q; "$RQ" "$URL?queue=c$2" configure files="$WORK/f$2" >/dev/null; echo "$URL?queue=c$2"; fi
}
count() { "$1" "$2" status --format json | python3 -c "import json,sys; print(json.load(sys.stdin)['jobs']['$3'])"; }
# Submits one job at a time (rq binary $3) while `$1` (a pid) runs: the longest wait,
# in seconds.
probe() {
    local worst=0 t0 t1
    while kill -0 "$1" 2>/dev/null; do
        t0=$(now); "$3" "$2" submit -q --priority -1 true; t1=$(now)
        worst=$(calc "max($worst, $t1 - $t0)")
    done
    echo "$worst"
}
# rq binary, queue: submit the chain in $WORK/chain.yaml; prints the seconds it took.
submit_chain() {
    local t0 t1; t0=$(now); "$1" "$2" submit -q < "$WORK/chain.yaml"; t1=$(now)
    calc "round($t1-$t0,2)"
}
# rq binary, queue: fail the head (as a feeder records it) and time the cascade; then
# resubmit it and time the re-arm. Prints "cancel_s worst_submit_s rearm_s worst_submit_s".
# PROBE=0: no submits meanwhile (their processes take CPU from the cascade).
run_chain() {
    local rq=$1 q=$2 n=$3 t0 t1 t2 t3 pid w1=0 w2=0
    t0=$(now)
    "$rq" "$q" execute "UPDATE jobs SET state = 'finished', exit_status = 1, finished = started WHERE jid = 1" >/dev/null & pid=$!
    [ "${PROBE:-1}" = 1 ] && w1=$(probe $pid "$q" "$rq"); wait $pid; t1=$(now)
    [ "$(count "$rq" "$q" cancelled)" = "$((n - 1))" ] || echo "WARNING: not all $((n - 1)) cancelled" >&2
    t2=$(now)
    "$rq" "$q" resubmit 1 >/dev/null & pid=$!
    [ "${PROBE:-1}" = 1 ] && w2=$(probe $pid "$q" "$rq"); wait $pid; t3=$(now)
    [ "$(count "$rq" "$q" waiting)" = "$((n - 1))" ] || echo "WARNING: not all $((n - 1)) waiting again" >&2
    echo "$(calc "round($t1-$t0,2)") $(calc "round($w1,2)") $(calc "round($t3-$t2,2)") $(calc "round($w2,2)")"
}

echo "# rq: a failed dependency's cascade — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores; $("$PGBIN/postgres" --version); queue directories on $(df -T "$WORK" | awk 'NR==2{print $2}')"
echo
echo "| store | chain | submit the chain (s) | cancel all (s) | longest submit wait meanwhile (s) | re-arm all (s) | longest submit wait meanwhile (s) |"
echo "|---|---|---|---|---|---|---|"
for n in "${SIZES[@]}"; do
    chain "$n" > "$WORK/chain.yaml"
    for store in sqlite postgres; do
        q=$(newq $store "$n"); s=$(submit_chain "$RQ" "$q")
        read -r c w1 r w2 < <(run_chain "$RQ" "$q" "$n")
        echo "| $store | $n | $s | $c | $w1 | $r | $w2 |"
        q=$(newq $store "a$n"); s=$(submit_chain "$RQ" "$q")
        read -r c w1 r w2 < <(PROBE=0 run_chain "$RQ" "$q" "$n")
        echo "| $store, nothing else running | $n | $s | $c | - | $r | - |"
    done
done
if [ -n "${BEFORE:-}" ] || [ -n "${OLD_RQ:-}" ]; then
    if [ -n "${OLD_RQ:-}" ]; then OLD=$OLD_RQ; BEFORE=${BEFORE:-$("$OLD" --version)}
    else git worktree add -q "$WORK/before" "$BEFORE" && (cd "$WORK/before" && cargo build --release --quiet) \
        && OLD="$WORK/before/target/release/rq"; fi
    for n in ${PEER_SIZES:-2000 8000}; do
        chain "$n" > "$WORK/chain.yaml"
        for store in ${PEER_STORES:-sqlite}; do
            RQ_SAVED=$RQ; RQ=$OLD; q=$(newq $store "old$n"); RQ=$RQ_SAVED
            s=$(submit_chain "$OLD" "$q")
            read -r c w1 r w2 < <(PROBE=${PEER_PROBE:-1} run_chain "$OLD" "$q" "$n")
            echo "| $store, rq at $BEFORE${PEER_LABEL:+ ($PEER_LABEL)} | $n | $s | $c | $w1 | $r | $w2 |"
        done
    done
    [ -d "$WORK/before" ] && git worktree remove --force "$WORK/before"
fi
echo
# A feeder records the head's failure, starts the cascade, and is told to stop.
n=${SIZES[-1]}; chain "$n" > "$WORK/chain.yaml"
for store in sqlite postgres; do
    q=$(newq $store "t$n"); "$RQ" "$q" submit -q < "$WORK/chain.yaml"
    RQ_HOST=b1 RQ_ALLOW_LOCAL_LOCKS=1 "$RQ" "$q" feed --shell "sh -c" --min_sleep 0.05 2>"$WORK/feeder.log" & fpid=$!
    until [ "$(count "$RQ" "$q" finished)" = 1 ]; do sleep 0.05; done
    t0=$(now); kill -TERM $fpid; wait $fpid; t1=$(now)
    left=$(count "$RQ" "$q" waiting)
    echo "$store: a feeder told to stop (TERM) right after it recorded the head's failure of a $n-job chain exited after $(calc "round($t1-$t0,2)") s, leaving $left jobs waiting on the work list"
    "$RQ" "$q" configure heartbeat=0.5s >/dev/null
    t0=$(now)
    RQ_HOST=b2 RQ_ALLOW_LOCAL_LOCKS=1 "$RQ" "$q" feed --shell "sh -c" --min_sleep 0.05 2>>"$WORK/feeder.log" & fpid=$!
    until [ "$(count "$RQ" "$q" waiting)" = 0 ]; do sleep 0.2; done; t1=$(now)
    kill -TERM $fpid; wait $fpid
    echo "$store: another feeder (heartbeat 0.5 s) finished them a batch per tick in $(calc "round($t1-$t0,1)") s: $(count "$RQ" "$q" cancelled) cancelled"
done
