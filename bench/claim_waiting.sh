#!/usr/bin/env bash
# Claim + run + record on 1M-job queues: half waiting vs all pending vs an older rq (OLD).
# Usage: OLD=/path/to/old/rq bash bench/claim_waiting.sh
RQ="$(cd "$(dirname "$0")/.." && pwd)/target/release/rq"; OLD="${OLD:-$RQ}"
W=$(mktemp -d /var/tmp/cl.XXXX); export HOME=$W
seq 500000 | sed 's/.*/true/' > $W/half
qw=$W/w; $RQ $qw create >/dev/null; $RQ $qw submit -q --stage true; $RQ $qw submit -q --after 1 < $W/half; $RQ $qw submit -q < $W/half
qp=$W/p; $RQ $qp create >/dev/null; cat $W/half $W/half | $RQ $qp submit -q
qo=$W/o; $OLD $qo create >/dev/null; cat $W/half $W/half | $OLD $qo submit -q
claim_ms() { RQ_HOST=c1 $1 $2 feed --shell 'sh -c' --max_feed 1 2>$W/claim.log >/dev/null & local cp=$!
  sleep 10; kill -TERM $cp 2>/dev/null; wait $cp 2>/dev/null; local n=$(grep -c "started - jid" $W/claim.log); python3 -c "print(round(10000/max($n,1),2))"; }
for r in 1 2 3; do
  echo "round $r: waiting+pending $(claim_ms $RQ $qw) | all pending $(claim_ms $RQ $qp) | previous rq all pending $(claim_ms $OLD $qo)"
done
rm -rf $W
