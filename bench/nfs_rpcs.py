#!/usr/bin/env python3
"""NFS operations per job: what rq costs the file server, counted on a real Linux NFS client.

The lab's hosts are emulated, so their jobs/s mean little; the RPCs a client sends do not
depend on its speed. This counts them from the client's /proc/self/mountstats (per-op
counters of the /nfs mount) on node1 of ../shared/nfs-lab while only node1 works:

  - submit: one `rq submit` of N jobs (and of a single job);
  - dispatch: node1 feeds N trivial jobs (`true`) submitted from node2, with `sh -c` and
    with the default `bash --login -c` (feeder start and exit included, amortised);
  - an idle feeder, per second over a minute.

    python3 bench/nfs_rpcs.py [--nfs 3] [N]   # needs root; starts and stops the lab

With --nfs 3 the hosts mount NFSv3 (NLM locks), where rq also checks in every transaction
that the database is still the file at `Q/db` (see ARCHITECTURE.md, lock recovery).

Prints a Markdown table for BENCHMARKS.md.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = Path(os.environ.get("NFS_LAB", REPO.parent / "shared" / "nfs-lab"))
RQ_BIN = Path(os.environ.get("RQ_BIN", REPO / "target" / "release" / "rq"))
ENV = dict(os.environ, RQ_BIN=str(RQ_BIN))


def lab(*args, timeout=900):
    p = subprocess.run([str(LAB / args[0]), *args[1:]], capture_output=True, text=True,
                       timeout=timeout, env=ENV, cwd=REPO)
    if p.returncode != 0:
        sys.exit(f"nfs-lab {' '.join(args)} failed: {p.stdout[-500:]} {p.stderr[-500:]}")
    return p.stdout


def run(node, cmd, timeout=600):
    return lab("run", "--timeout", str(timeout), node, cmd, timeout=timeout + 60)


def counters(node="node1"):
    """Per-op RPC counts of the /nfs mount on a node."""
    text = run(node, "cat /proc/self/mountstats")
    ops, inside, per_op = {}, False, False
    for line in text.splitlines():
        if line.startswith("device "):
            inside = " mounted on /nfs " in line
            per_op = False
        elif inside and "per-op statistics" in line:
            per_op = True
        elif inside and per_op and ":" in line:
            name, _, rest = line.strip().partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                ops[name] = int(fields[0])
    return ops


def diff(after, before):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}


def measure(node, cmd, timeout=1800):
    before = counters(node)
    run(node, cmd, timeout=timeout)
    return diff(counters(node), before)


def row(what, ops, per):
    total = sum(ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])
    breakdown = ", ".join(f"{k} {v / per:.1f}" for k, v in top if v / per >= 0.05)
    return f"| {what} | {total / per:.1f} | {breakdown} |"


def main():
    args = sys.argv[1:]
    version = "4"
    if args[:1] == ["--nfs"]:
        version, args = args[1], args[2:]
    n = int(args[0]) if args else 200
    lab("setup", timeout=1800)
    lab("up", "2", *(["--nfs", "3"] if version == "3" else []))
    rows = []
    try:
        if version == "3":
            # A host's first NLM lock after boot waits about 60 s in the lab: not counted.
            for node in ("node1", "node2"):
                run(node, "python3 -c \"import fcntl; f = open('/nfs/.warm-%s', 'w'); "
                          "fcntl.lockf(f, fcntl.LOCK_EX)\"" % node, timeout=240)
        run("node1", "rq /nfs/b create >/dev/null")
        lab_dir = Path(os.environ.get("NFS_LAB_DIR", "/tmp/nfs-lab"))
        for node in ("node1", "node2"):
            (lab_dir / "vm" / node / "home" / "jobs").write_text("true\n" * n)
        ops = measure("node1", "rq /nfs/b submit -q < /root/jobs")
        rows.append(row(f"submit {n} jobs in one call (per job)", ops, n))
        ops = measure("node1", "rq /nfs/b submit -q true")
        rows.append(row("submit 1 job", ops, 1))
        for shell in ("sh -c", "bash --login -c"):
            run("node2", "rq /nfs/b delete all -q >/dev/null; rq /nfs/b submit -q < /root/jobs")
            ops = measure("node1", f"rq /nfs/b feed --exit_when_empty --max_feed 2 --shell '{shell}'")
            rows.append(row(f"dispatch with `{shell}` (claim, run, record; per job)", ops, n))
        run("node1", "rq /nfs/b feed --daemon --max_feed 2 >/dev/null")
        time.sleep(10)
        before = counters("node1")
        time.sleep(60)
        ops = diff(counters("node1"), before)
        rows.append(row("idle feeder (per second, over 60 s)", ops, 60))
        run("node1", "rq /nfs/b shutdown >/dev/null")
    finally:
        lab("down")
    print(f"NFS RPCs counted on the client (node1, NFSv{version}), {n} jobs, rq {RQ_BIN}")
    print()
    print("| what | RPCs | per operation |")
    print("|---|---|---|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
