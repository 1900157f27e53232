#!/usr/bin/env bash
# rq benchmark harness: dispatch throughput against the spawn floor and GNU parallel (plain
# and its SQL queue mode), pick-up latency, submit throughput, scale, resources, fairness.
# Prints figures, ratios and whether each target is met. Usage: bench/run.sh [--quick]
# Needs: cargo; installs GNU parallel and DBD::SQLite with apt-get when missing (root).
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
N=5000; SCALE_FINISHED=1000000; SCALE_PENDING=10000; SUBMIT_N=100000; INVOCATIONS=1000; LAT_N=50; IDLE_S=60
LARGE="1000000 10000000"
if [ $QUICK = 1 ]; then N=1000; SCALE_FINISHED=100000; SCALE_PENDING=2000; SUBMIT_N=20000; INVOCATIONS=100; LAT_N=10; IDLE_S=10; LARGE="100000"; fi

if ! command -v parallel >/dev/null || ! perl -MDBD::SQLite -e1 2>/dev/null || [ ! -x /usr/bin/time ] || ! command -v sqlite3 >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq parallel libdbd-sqlite3-perl time sqlite3 >/dev/null
fi
cargo build --release --quiet && cargo build --release --quiet --example spawn_floor || exit 1
RQ="$PWD/target/release/rq"; FLOOR="$PWD/target/release/examples/spawn_floor"
WORK=$(mktemp -d /var/tmp/rq-bench.XXXXXX); export HOME="$WORK/home"; mkdir -p "$HOME"
DFS="$WORK/fs"; mkdir -p "$DFS"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -QUIT "$p" 2>/dev/null; done; sleep 0.5; for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null; done; umount "$DFS" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

now() { date +%s.%N; }
# Let the filesystem settle before a dispatch run. ext4 without a journal (this VM's disk)
# re-checks every inode freed in the last 60 s (360 s while its block is dirty) on each
# file create, so one run's deletions (GNU parallel's temp files, cargo's) would slow the
# next run's creates several-fold. Each peer gets the same quiet start.
settle() { [ "$QUICK" = 1 ] && return; sync; sleep 65; }
# Where that is not enough (a create makes an inode-table block dirty again, and then
# deletions of the last 6 minutes count), each dispatch run gets a new, empty ext4 with its
# journal -- what a user's local disk is -- when we may make one (root, mkfs.ext4, a loop
# device); else the settle above, in $WORK.
FRESH=0
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && truncate -s 4G "$WORK/fs.img" && mkfs.ext4 -q -F "$WORK/fs.img" && mount -o loop "$WORK/fs.img" "$DFS"; then FRESH=1; fi
fresh_fs() {
    if [ "$FRESH" = 1 ]; then
        umount "$DFS" && rm -f "$WORK/fs.img" && truncate -s 4G "$WORK/fs.img" && mkfs.ext4 -q -F "$WORK/fs.img" && mount -o loop "$WORK/fs.img" "$DFS" || exit 1
    else settle; fi
}
calc() { python3 -c "print($1)"; }
verdict() { if python3 -c "import sys; sys.exit(0 if ($1) else 1)"; then echo "MET"; else echo "MISSED"; fi; }
count() { "$RQ" "$1" status --format json | python3 -c "import json,sys; print(json.load(sys.stdin)['jobs']['$2'])"; }

echo "# rq benchmarks — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); rq $("$RQ" --version | cut -d' ' -f2); $(parallel --version | head -1)"
echo "queue directory: $WORK (local disk: $(df -T "$WORK" | awk 'NR==2{print $2}')); dispatch runs in $DFS: $([ $FRESH = 1 ] && echo "a new ext4 with its journal for each run (loop device)" || echo "the same disk, after a settle")"
echo

# 1. Dispatch throughput ----------------------------------------------------------------
dispatch() { # shell feeders max_feed -> jobs/s
    local shell="$1" feeders="$2" maxfeed="$3" q="$DFS/d$RANDOM"
    "$RQ" "$q" create -q
    seq "$N" | sed 's/.*/true/' | "$RQ" "$q" submit -q -
    local t0; t0=$(now)
    local fp=()
    for i in $(seq "$feeders"); do
        RQ_HOST="b$i" "$RQ" "$q" feed --shell "$shell" --max_feed "$maxfeed" --exit_when_empty 2>/dev/null & fp+=($!)
    done
    wait "${fp[@]}"
    local t1; t1=$(now)
    [ "$(count "$q" finished)" = "$N" ] || echo "WARNING: not all jobs finished" >&2
    LAST_Q="$q"
    calc "round($N/($t1-$t0))"
}
floor=$("$FLOOR" "$N" 4)
floor2=$("$FLOOR" "$N" 2)
fresh_fs; rq_sh=$(dispatch "sh -c" 2 2)
fresh_fs; rq_bash=$(dispatch "bash --login -c" 2 2)
fresh_fs; rq_none=$(dispatch "none" 2 2)
fresh_fs; t0=$(now); seq "$N" | TMPDIR="$DFS" parallel -j4 true >/dev/null; t1=$(now); par=$(calc "round($N/($t1-$t0))")
# GNU parallel's SQL queue: a master fills the table, two workers (2 slots each) drain it.
PDB="$DFS/par.sqlite"; URL="sqlite3:///$(python3 -c "import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=''))" "$PDB")/jobs"
fresh_fs; t0=$(now)
seq "$N" | parallel --sqlmaster "$URL" true >/dev/null 2>&1
parallel --sqlworker "$URL" -j2 >/dev/null 2>&1 & w1=$!
parallel --sqlworker "$URL" -j2 >/dev/null 2>&1 & w2=$!
wait $w1 $w2; t1=$(now); parsql=$(calc "round($N/($t1-$t0))")
echo "## 1. Dispatch: $N trivial jobs"
echo "| runner | jobs/s |"; echo "|---|---|"
echo "| spawn floor (minimal program, 4 at a time) | $floor |"
echo "| spawn floor (2 at a time) | $floor2 |"
echo "| GNU parallel -j4 | $par |"
echo "| GNU parallel --sqlmaster + 2 --sqlworker -j2 | $parsql |"
echo "| rq, 2 feeders x max_feed 2, --shell 'sh -c' | $rq_sh |"
echo "| rq, 2 feeders x max_feed 2, bash --login -c | $rq_bash |"
echo "| rq, 2 feeders x max_feed 2, --shell none | $rq_none |"
echo
echo "- rq/floor(4): sh -c $(calc "round($rq_sh/$floor,2)"), --shell none $(calc "round($rq_none/$floor,2)") (target >= 0.8: $(verdict "max($rq_sh,$rq_none) >= 0.8*$floor"))"
echo "- rq/floor(4) = $(calc "round($rq_sh/$floor,2)"), rq/parallel = $(calc "round($rq_sh/$par,2)"), rq/parallel-sql = $(calc "round($rq_sh/$parsql,1)")"
echo "- target >= 1000 jobs/s with sh -c: $(verdict "$rq_sh >= 1000")"
echo "- target >= 2x GNU parallel -j4: $(verdict "$rq_sh >= 2*$par")"
echo "- target >= 10x GNU parallel SQL mode: $(verdict "$rq_sh >= 10*$parsql")"
echo

# 6. Fairness (4 feeders competing) -------------------------------------------------------
fresh_fs; dispatch "sh -c" 4 1 >/dev/null
shares=$("$RQ" "$LAST_Q" query "state=finished" --format json -f runner | python3 -c "
import json,sys,collections
c=collections.Counter(r['runner'] for r in json.load(sys.stdin)); t=sum(c.values())
print(' '.join(f'{h}={100*n/t:.0f}%' for h,n in sorted(c.items())))")
echo "## 6. Lock fairness: 4 feeders x max_feed 1, $N jobs"
echo "- share of jobs per feeder: $shares (even would be 25% each)"
echo

# 2. Pick-up latency -----------------------------------------------------------------------
latency() { # queue -> prints sorted latencies
    local q="$1" out="$WORK/lat.$RANDOM"
    for i in $(seq "$LAT_N"); do
        rm -f "$out"; local t0; t0=$(now)
        "$RQ" "$q" submit -q "date +%s.%N > $out"
        while [ ! -s "$out" ]; do sleep 0.005; done
        calc "$(cat "$out") - $t0"
        sleep 0.$((RANDOM % 5))
    done | sort -n
}
QL="$WORK/lat"; "$RQ" "$QL" create -q
RQ_HOST=l1 "$RQ" "$QL" feed --shell 'sh -c' 2>/dev/null & PIDS+=($!)
RQ_HOST=l2 "$RQ" "$QL" feed --shell 'sh -c' 2>/dev/null & PIDS+=($!)
sleep 1
lat=$(latency "$QL")
med=$(echo "$lat" | python3 -c "import sys,statistics; v=[float(x) for x in sys.stdin]; print(round(statistics.median(v),3))")
p95=$(echo "$lat" | python3 -c "import sys; v=sorted(float(x) for x in sys.stdin); print(round(v[int(0.95*(len(v)-1))],3))")
echo "## 2. Pick-up latency: idle feeders (2 hosts, default --min_sleep 0.2), $LAT_N submissions"
echo "- median ${med}s, p95 ${p95}s; target median < 0.5 s: $(verdict "$med < 0.5")"
echo

# 5. Resources -----------------------------------------------------------------------------
fp=${PIDS[0]}
rss=$(awk '/VmRSS/{print $2}' /proc/$fp/status)
c0=$(awk '{print $14+$15}' /proc/$fp/stat); sleep "$IDLE_S"; c1=$(awk '{print $14+$15}' /proc/$fp/stat)
hz=$(getconf CLK_TCK); cpu=$(calc "round(100*($c1-$c0)/$hz/$IDLE_S,3)")
echo "## 5. Resources of an idle feeder"
echo "- RSS ${rss} kB (target < 20 MB: $(verdict "$rss < 20480")); CPU ${cpu}% of a core over ${IDLE_S}s (target < 1 %: $(verdict "$cpu < 1"))"
echo

# 3. Submit throughput -----------------------------------------------------------------------
QS="$WORK/sub"; "$RQ" "$QS" create -q
seq "$SUBMIT_N" | sed 's/^/echo /' > "$WORK/joblist"
t0=$(now); "$RQ" "$QS" submit -q -i "$WORK/joblist"; t1=$(now); sub=$(calc "round($SUBMIT_N/($t1-$t0))")
t0=$(now); for i in $(seq "$INVOCATIONS"); do "$RQ" "$QS" submit -q "echo $i"; done; t1=$(now); inv=$(calc "round($INVOCATIONS/($t1-$t0))")
echo "## 3. Submit throughput"
echo "- $SUBMIT_N jobs from a file in one submit: $sub jobs/s (target >= 50,000: $(verdict "$sub >= 50000"))"
echo "- $INVOCATIONS separate 'rq q submit CMD': $inv invocations/s"
echo

# 4. Scale -------------------------------------------------------------------------------------
QB="$WORK/big"; "$RQ" "$QB" create -q
"$RQ" "$QB" execute "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $SCALE_FINISHED)
  INSERT INTO jobs (priority, state, submitted, started, finished, elapsed, submitter, runner, exit_status, tag, command)
  SELECT i % 10, 'finished', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:01.000000Z', '2026-01-01T00:00:02.000000Z',
         1.0, 'bench', 'b1', i % 3, CASE WHEN i % 1000 = 0 THEN 'x' ELSE 'y' END, 'true' FROM n" >/dev/null
seq "$SCALE_PENDING" | sed 's/.*/true/' | "$RQ" "$QB" submit -q -
size=$(du -m "$QB/db" | cut -f1)
timeit() { local t0; t0=$(now); "$@" >/dev/null; local t1; t1=$(now); calc "round(1000*($t1-$t0))"; }
st=$(timeit "$RQ" "$QB" status)
lp=$(timeit "$RQ" "$QB" list pending)
qx=$(timeit "$RQ" "$QB" query tag=x)
RQ_HOST=s1 "$RQ" "$QB" feed --shell 'sh -c' --max_feed 1 --exit_when_empty 2>"$WORK/scale.log" >/dev/null & sp=$!
sleep 3; kill -TERM $sp 2>/dev/null; wait $sp 2>/dev/null
claims=$(grep -c "started - jid" "$WORK/scale.log")
echo "## 4. Scale: $SCALE_FINISHED finished + $SCALE_PENDING pending jobs (db ${size} MB)"
echo "- status ${st} ms (target < 200: $(verdict "$st < 200")); list pending ${lp} ms (target < 200: $(verdict "$lp < 200")); query tag=x ${qx} ms"
echo "- one feeder (max_feed 1) claimed and ran $claims jobs in 3 s on this queue: $(calc "round(3000/max($claims,1),1)") ms per claim+run+record"
rot=$( { /usr/bin/time -f "%e s, %M KB peak RSS" "$RQ" "$QB" rotate "$WORK/big-archive" >/dev/null; } 2>&1 | tail -1)
echo "- rotate (the finished jobs into an archive, packed): $rot; $(count "$QB" finished) finished left"
echo

# 7. Many hosts at equal total slots ------------------------------------------------------
fresh_fs; h2=$(dispatch "sh -c" 2 4)
fresh_fs; h4=$(dispatch "sh -c" 4 2)
fresh_fs; h8=$(dispatch "sh -c" 8 1)
echo "## 7. Hosts at equal total slots (8): $N trivial jobs, --shell 'sh -c'"
echo "| feeders x max_feed | jobs/s |"; echo "|---|---|"
echo "| 2 x 4 | $h2 |"; echo "| 4 x 2 | $h4 |"; echo "| 8 x 1 | $h8 |"
echo "- 8 hosts / 2 hosts = $(calc "round($h8/$h2,2)") (target >= 0.95: $(verdict "$h8 >= 0.95*$h2"))"
echo

# 8. Large queues ---------------------------------------------------------------------------
# Time and peak RSS of each command (GNU time), beside sqlite3 doing the same in SQL.
measure() { /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || cat "$WORK/err" >&2; tail -1 "$WORK/time"; }
secs() { echo "$1" | cut -d' ' -f1; }
mb() { calc "round($(echo "$1" | cut -d' ' -f2)/1024)"; }
echo "## 8. Large queues (pending jobs \`echo <i>\`; seconds, peak RSS)"
echo "| jobs | submit from stdin | jobs/s | sqlite3 INSERT..SELECT | status | list all --format json | rows/s | list all (YAML) | rows/s | sqlite3 -json | query command='echo 7' | claim+run+record (1 feeder) | db MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for size in $LARGE; do
    QL="$WORK/large$size"; "$RQ" "$QL" create -q
    seq "$size" | sed 's/^/echo /' > "$WORK/jobs"
    sub=$(measure sh -c "'$RQ' '$QL' submit -q < '$WORK/jobs'")
    # The floor: the same rows inserted by SQL into a copy of the empty queue's schema.
    "$RQ" "$WORK/floorq" create -q; cp "$WORK/floorq/db" "$WORK/floor.db"
    sqlt=$(measure sqlite3 "$WORK/floor.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $size)
        INSERT INTO jobs (priority, state, submitted, submitter, command, cwd) SELECT 0, 'pending',
        strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'b', 'echo ' || i, '/tmp' FROM n")
    rm -rf "$WORK/floorq" "$WORK/floor.db"
    st=$(measure "$RQ" "$QL" status)
    lj=$(measure "$RQ" "$QL" list all --format json)
    ly=$(measure "$RQ" "$QL" list all)
    sj=$(measure sqlite3 -json "$QL/db" "SELECT * FROM jobs")
    qc=$(measure "$RQ" "$QL" query "command='echo 7'")
    RQ_HOST=c1 "$RQ" "$QL" feed --shell 'sh -c' --max_feed 1 2>"$WORK/claim.log" >/dev/null & cp=$!
    sleep 5; kill -TERM $cp 2>/dev/null; wait $cp 2>/dev/null
    claims=$(grep -c "started - jid" "$WORK/claim.log")
    size_mb=$(du -m "$QL/db" | cut -f1)
    echo "| $size | $(secs "$sub") s, $(mb "$sub") MB | $(calc "round($size/max($(secs "$sub"),0.001))") | $(secs "$sqlt") s | $(calc "round(1000*$(secs "$st"))") ms, $(mb "$st") MB | $(secs "$lj") s, $(mb "$lj") MB | $(calc "round($size/max($(secs "$lj"),0.001))") | $(secs "$ly") s, $(mb "$ly") MB | $(calc "round($size/max($(secs "$ly"),0.001))") | $(secs "$sj") s | $(secs "$qc") s | $(calc "round(5000/max($claims,1),1)") ms | $size_mb |"
    rm -rf "$QL" "$WORK/jobs"
done
echo
echo "- targets: submit >= 250,000 jobs/s and RSS < 64 MB; list >= 500,000 rows/s and RSS < 64 MB; status < 100 ms at 1M, < 300 ms at 10M"
