#!/usr/bin/env bash
# Workflow benchmarks (dependencies and arrays), each beside the same work without them in
# the same run: submit of a 100,000-job array, dispatch of 10,000 array jobs and of a
# 10,000-job chain, and the cost of a claim on a 1M-job queue half of which waits.
#   bench/workflows.sh [OLD_RQ]   # OLD_RQ: an earlier rq binary for "unchanged from before"
# Prints Markdown for BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OLD="${1:-}"
cargo build --release --quiet || exit 1
RQ="$PWD/target/release/rq"
WORK=$(mktemp -d /var/tmp/rq-wf.XXXXXX); export HOME="$WORK/home"; mkdir -p "$HOME"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -QUIT "$p" 2>/dev/null; done; sleep 0.5; for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
N=10000
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
# ext4 without a journal (this VM) re-checks recently freed inodes on each create: let
# one run's deletions age before the next dispatch run (see bench/run.sh).
settle() { sync; sleep 65; }
count() { "$1" "$2" status --format json | python3 -c "import json,sys; print(json.load(sys.stdin)['jobs']['$3'])"; }

echo "# rq workflow benchmarks — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(uname -r); rq $("$RQ" --version | cut -d' ' -f2); queue on $(df -T "$WORK" | awk 'NR==2{print $2}')"
echo

# 1. Submitting an array ---------------------------------------------------------------------
echo "## Submit 100,000 jobs (seconds, best of 3)"
best() { local b=999; for _ in 1 2 3; do rm -rf "$WORK/s"; "$1" "$WORK/s" create >/dev/null; local t0; t0=$(now); eval "$2" >/dev/null; local t1; t1=$(now); b=$(calc "min($b, $t1-$t0)"); done; calc "round($b,2)"; }
seq 100000 | sed 's/.*/true/' > "$WORK/lines"
arr=$(best "$RQ" "'$RQ' '$WORK/s' submit -q --array 1-100000 true")
arrl=$(best "$RQ" "'$RQ' '$WORK/s' submit -q --array 1-100000%50 true")
plain=$(best "$RQ" "'$RQ' '$WORK/s' submit -q < '$WORK/lines'")
echo "| what | s |"; echo "|---|---|"
echo "| \`submit --array 1-100000 true\` | $arr |"
echo "| \`submit --array 1-100000%50 true\` | $arrl |"
echo "| 100,000 lines \`true\` from stdin | $plain |"
if [ -n "$OLD" ]; then old=$(best "$OLD" "'$OLD' '$WORK/s' submit -q < '$WORK/lines'"); echo "| the same lines, previous rq | $old |"; fi
echo

# 2. Dispatch -------------------------------------------------------------------------------
feed_all() { # queue feeders max_feed -> seconds until the feeders exit (queue empty)
    local q="$1" feeders="$2" slots="$3" fp=() t0 t1
    t0=$(now)
    for i in $(seq "$feeders"); do
        RQ_HOST="b$i" "$RQ" "$q" feed --shell "sh -c" --max_feed "$slots" --exit_when_empty 2>/dev/null & fp+=($!)
    done
    wait "${fp[@]}"; t1=$(now)
    calc "$t1-$t0"
}
echo "## Dispatch of $N trivial jobs (\`true\`, \`sh -c\`; jobs/s)"
echo "| jobs | feeders x slots | jobs/s |"; echo "|---|---|---|"
q="$WORK/plain"; "$RQ" "$q" create >/dev/null; seq $N | sed 's/.*/true/' | "$RQ" "$q" submit -q
settle; t=$(feed_all "$q" 2 2); echo "| $N plain jobs | 2 x 2 | $(calc "round($N/$t)") |"; rm -rf "$q"
q="$WORK/array"; "$RQ" "$q" create >/dev/null; "$RQ" "$q" submit -q --array 1-$N true
settle; t=$(feed_all "$q" 2 2); echo "| array of $N | 2 x 2 | $(calc "round($N/$t)") |"
[ "$(count "$RQ" "$q" finished)" = "$N" ] || echo "WARNING: not all array jobs finished" >&2; rm -rf "$q"
q="$WORK/arrayl"; "$RQ" "$q" create >/dev/null; "$RQ" "$q" submit -q --array "1-$N%4" true
settle; t=$(feed_all "$q" 2 2); echo "| array of $N, %4 | 2 x 2 | $(calc "round($N/$t)") |"; rm -rf "$q"
q="$WORK/serial"; "$RQ" "$q" create >/dev/null; seq $N | sed 's/.*/true/' | "$RQ" "$q" submit -q
settle; t=$(feed_all "$q" 1 1); echo "| $N plain jobs, one at a time | 1 x 1 | $(calc "round($N/$t)") |"; rm -rf "$q"
q="$WORK/chain"; "$RQ" "$q" create >/dev/null
python3 -c "
print('- {name: j1, command: \"true\"}')
for i in range(2, $N + 1): print('- {name: j%d, command: \"true\", after: j%d}' % (i, i - 1))" > "$WORK/chain.yaml"
t0=$(now); "$RQ" "$q" submit -q < "$WORK/chain.yaml"; t1=$(now); chain_submit=$(calc "round($t1-$t0,2)")
settle; t=$(feed_all "$q" 1 1); echo "| chain of $N (each after the one before) | 1 x 1 | $(calc "round($N/$t)") |"
[ "$(count "$RQ" "$q" finished)" = "$N" ] || echo "WARNING: not all chain jobs finished" >&2; rm -rf "$q"
echo
echo "(submitting the chain, $N jobs with names and \`after:\` in YAML: $chain_submit s)"
echo

# 3. Claim cost on a large queue with waiting jobs ------------------------------------------
claim_ms() { # binary queue -> ms per claim+run+record, one feeder, one slot, 5 s
    RQ_HOST=c1 "$1" "$2" feed --shell 'sh -c' --max_feed 1 2>"$WORK/claim.log" >/dev/null & local cp=$!
    sleep 5; kill -TERM $cp 2>/dev/null; wait $cp 2>/dev/null
    local n; n=$(grep -c "started - jid" "$WORK/claim.log")
    calc "round(5000/max($n,1),2)"
}
echo "## Claim + run + record on 1,000,000 jobs (one feeder, one slot; ms per job)"
echo "| queue | ms/job |"; echo "|---|---|"
seq 500000 | sed 's/.*/true/' > "$WORK/half"
q="$WORK/w"; "$RQ" "$q" create >/dev/null
"$RQ" "$q" submit -q --stage 'true'
t0=$(now); "$RQ" "$q" submit -q --after 1 < "$WORK/half"; t1=$(now)
"$RQ" "$q" submit -q < "$WORK/half"
echo "| 500,000 waiting (after a held job) + 500,000 pending | $(claim_ms "$RQ" "$q") |"
waiting_submit=$(calc "round($t1-$t0,1)"); rm -rf "$q"
q="$WORK/p"; "$RQ" "$q" create >/dev/null; cat "$WORK/half" "$WORK/half" | "$RQ" "$q" submit -q
echo "| 1,000,000 pending | $(claim_ms "$RQ" "$q") |"; rm -rf "$q"
if [ -n "$OLD" ]; then
    q="$WORK/o"; "$OLD" "$q" create >/dev/null; cat "$WORK/half" "$WORK/half" | "$OLD" "$q" submit -q
    echo "| 1,000,000 pending, previous rq | $(claim_ms "$OLD" "$q") |"; rm -rf "$q"
fi
echo
echo "(submitting the 500,000 waiting jobs, each after job 1: $waiting_submit s)"
