#!/usr/bin/env bash
# Dispatch of two rq builds side by side, alternating, each run on a new ext4 (with its
# journal, on a loop device) beside the spawn floor: a before/after of a change without
# the disk's history in it. Needs root, mkfs.ext4 and a release build (spawn_floor example).
# Usage: bench/dispatch_ab.sh OLD_RQ NEW_RQ   (CONFS="feeders slots shell" lines, REPS=2,
# SUBMIT="--mem 64M": options of the submitted jobs)
set -uo pipefail
cd "$(dirname "$0")/.."
OLD=$1; NEW=$2; N=${N:-5000}; FLOOR="$PWD/target/release/examples/spawn_floor"
WORK=$(mktemp -d /var/tmp/rq-ab.XXXXXX); MNT="$WORK/fs"; mkdir -p "$MNT"
trap 'umount "$MNT" 2>/dev/null; rm -rf "$WORK"' EXIT
fresh() { umount "$MNT" 2>/dev/null; rm -f "$WORK/img"; truncate -s 4G "$WORK/img"; mkfs.ext4 -q -F "$WORK/img" && mount -o loop "$WORK/img" "$MNT"; }
run() { # rq feeders slots shell -> jobs/s
    local rq=$1 q="$MNT/q" pids=() t0 t1; export HOME="$MNT/home"; mkdir -p "$HOME"
    "$rq" "$q" create -q; seq "$N" | sed 's/.*/true/' | "$rq" "$q" submit -q ${SUBMIT:-} -
    t0=$(date +%s.%N)
    for i in $(seq "$2"); do RQ_HOST="h$i" "$rq" "$q" feed --shell "$4" --max_feed "$3" --exit_when_empty 2>/dev/null & pids+=($!); done
    wait "${pids[@]}"; t1=$(date +%s.%N); python3 -c "print(round($N/($t1-$t0)))"
}
echo "| feeders x slots, shell | spawn floor | old | new |"; echo "|---|---|---|---|"
while read -r f m sh; do
    for _ in $(seq "${REPS:-2}"); do
        fresh; fl=$("$FLOOR" "$N" $((f * m)))
        fresh; old=$(run "$OLD" "$f" "$m" "$sh")
        fresh; new=$(run "$NEW" "$f" "$m" "$sh")
        echo "| $f x $m, $sh | $fl | $old | $new |"
    done
done <<< "${CONFS:-2 2 sh -c}"
