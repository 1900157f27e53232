#!/usr/bin/env bash
# Dispatch with the queue on tmpfs (/dev/shm), beside the spawn floor in the same run: what
# rq costs per job when creating the job's files costs the filesystem nothing special.
# (On this VM's ext4, inode allocation after earlier deletions dominates: see BENCHMARKS.md.)
# Usage: bench/tmpfs_dispatch.sh [N]   (needs a release build: cargo build --release --examples)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
RQ="$PWD/target/release/rq"; FLOOR="$PWD/target/release/examples/spawn_floor"
WORK=$(mktemp -d /dev/shm/rq-bench.XXXXXX); trap 'rm -rf "$WORK"' EXIT
export HOME="$WORK/home"; mkdir -p "$HOME"
rate() { python3 -c "print(round($N/($2-$1)))"; }
run() { # feeders max_feed shell -> jobs/s
    local q="$WORK/q$RANDOM" pids=() t0 t1
    "$RQ" "$q" create -q
    seq "$N" | sed 's/.*/true/' | "$RQ" "$q" submit -q -
    t0=$(date +%s.%N)
    for i in $(seq "$1"); do RQ_HOST="h$i" "$RQ" "$q" feed --shell "$3" --max_feed "$2" --exit_when_empty 2>/dev/null & pids+=($!); done
    wait "${pids[@]}"; t1=$(date +%s.%N)
    rate "$t0" "$t1"; rm -rf "$q"
}
f4=$("$FLOOR" "$N" 4); f8=$("$FLOOR" "$N" 8)
s22=$(run 2 2 "sh -c"); n22=$(run 2 2 none); s24=$(run 2 4 "sh -c"); s42=$(run 4 2 "sh -c"); s81=$(run 8 1 "sh -c")
echo "| spawn floor 4 at a time | spawn floor 8 at a time | rq 2x2 sh -c | rq 2x2 --shell none | rq 2x4 | rq 4x2 | rq 8x1 | 2x2/floor(4) | 8x1/2x4 |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| $f4 | $f8 | $s22 | $n22 | $s24 | $s42 | $s81 | $(python3 -c "print(round(max($s22,$n22)/$f4,2))") | $(python3 -c "print(round($s81/$s24,2))") |"
