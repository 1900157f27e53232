#!/usr/bin/env bash
# Claim + run + record on 1M-job queues with resources (issue #13): one-CPU jobs vs jobs
# with CPU/GPU/memory needs, a tag limit, and an older rq (OLD) on one-CPU jobs; one feeder.
# Usage: OLD=/path/to/old/rq bash bench/claim_resources.sh
RQ="$(cd "$(dirname "$0")/.." && pwd)/target/release/rq"; OLD="${OLD:-$RQ}"
W=$(mktemp -d /var/tmp/cr.XXXX); export HOME=$W; trap 'rm -rf $W' EXIT
seq 1000000 | sed 's/.*/true/' > $W/unit
python3 -c "
import sys
for i in range(1000000):
    if i % 10 == 0: print('- {command: \"true\", cpus: 2}')
    elif i % 10 == 1: print('- {command: \"true\", gpus: 1, mem: 1G}')
    elif i % 10 == 2: print('- {command: \"true\", tag: db}')
    else: print('- {command: \"true\"}')" > $W/mixed.yaml
qu=$W/u; $RQ $qu create >/dev/null; $RQ $qu submit -q < $W/unit
qm=$W/m; $RQ $qm create >/dev/null; $RQ $qm submit -q < $W/mixed.yaml; $RQ $qm configure limit.db=1 -q
qo=$W/o; $OLD $qo create >/dev/null; $OLD $qo submit -q < $W/unit
claim_ms() { RQ_HOST=c1 "$@" --shell 'sh -c' --max_feed 1 2>$W/claim.log >/dev/null & local cp=$!
  sleep 10; kill -TERM $cp 2>/dev/null; wait $cp 2>/dev/null; local n=$(grep -c "started - jid" $W/claim.log); python3 -c "print(round(10000/max($n,1),2))"; }
echo "| round | one-CPU jobs | mixed needs (--cpus 4 --gpus 0,1) | previous rq, one-CPU jobs |"; echo "|---|---|---|---|"
for r in 1 2 3; do
  echo "| $r | $(claim_ms $RQ $qu feed) | $(claim_ms $RQ $qm feed --cpus 4 --gpus 0,1) | $(claim_ms $OLD $qo feed) |"
done
