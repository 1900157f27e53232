//! The store's operations, run against both stores with the same expectations (River's
//! riverdrivertest): each family of `store::ops` through the protocol functions that use
//! it, on a real SQLite queue and a real PostgreSQL queue; and every statement of each
//! store prepared by that store.

mod common;

use common::{StoreKind, TestQueue};
use rq::claims::Fate;
use rq::claims::{self, Capacity, End, Room};
use rq::job::Row;
use rq::queue::Queue;
use rq::store::{Access, ops};

fn open(q: &TestQueue) -> Queue {
    Queue::open(&q.path, Access::ReadWrite).expect("open the queue")
}

fn submit(q: &TestQueue, args: &[&str]) -> i64 {
    let mut all = vec!["submit", "-f", "jid", "--format", "json"];
    all.extend_from_slice(args);
    all.push("true");
    let records = q.rq(&all).ok().records();
    records[0]["jid"].as_i64().expect("a jid")
}

fn room(cpus: i64) -> Room {
    let capacity = Capacity {
        cpus,
        mem: 1 << 30,
        devices: Vec::new(),
    };
    Room {
        jobs: 10,
        ahead: 0,
        total: capacity.clone(),
        free: capacity,
        reserve_after: 600.0,
    }
}

fn jids(rows: &[Row]) -> Vec<i64> {
    rows.iter().map(Row::jid).collect()
}

fn claim_of(rows: &[Row], jid: i64) -> String {
    let row = rows.iter().find(|r| r.jid() == jid).expect("claimed");
    row.get("claim")
        .as_text()
        .expect("a claim token")
        .to_string()
}

fn state(queue: &mut Queue, jid: i64) -> (String, Option<i64>, i64) {
    let rows = queue
        .store()
        .read(|tx| rq::queue::select_rows(tx, &rq::store::Filter::jids(&[jid])))
        .unwrap();
    let row = &rows[0];
    (
        row.get("state").as_text().unwrap().to_string(),
        row.get("exit_status").as_int(),
        row.get("attempts").as_int().unwrap(),
    )
}

fn end(jid: i64, claim: &str, retry_at: Option<String>) -> End {
    End {
        jid,
        claim: claim.to_string(),
        exit_status: Some(0),
        signal: None,
        elapsed: 0.5,
        timed_out: false,
        retry_at,
        ended_at: rq::time::now(),
        usage: rq::process::Usage {
            cpu_user: Some(1.25),
            cpu_system: Some(0.5),
            max_rss: Some(3 << 20),
            read_bytes: Some(7 << 30),
            write_bytes: Some(12345),
        },
        reason: None,
    }
}

/// What job `jid`'s last run used, as recorded: user CPU, system CPU, peak memory, bytes
/// read and written.
type Used = (
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// What `end` says each run used.
const USED: Used = (
    Some(1.25),
    Some(0.5),
    Some(3 << 20),
    Some(7 << 30),
    Some(12345),
);

fn usage_of(queue: &mut Queue, jid: i64) -> Used {
    let rows = queue
        .store()
        .read(|tx| rq::queue::select_rows(tx, &rq::store::Filter::jids(&[jid])))
        .unwrap();
    let row = &rows[0];
    let real = |name: &str| match row.get(name) {
        rq::job::Cell::Real(r) => Some(*r),
        rq::job::Cell::Int(i) => Some(*i as f64),
        _ => None,
    };
    (
        real("cpu_user"),
        real("cpu_system"),
        row.get("max_rss").as_int(),
        row.get("read_bytes").as_int(),
        row.get("write_bytes").as_int(),
    )
}

/// The claim protocol (`ops::claims`): claim by order, fit, host and tag limit; record
/// starts and ends under the claim token only; retry, release, crash, failed starts; a
/// dead host's jobs reclaimed; paused queues claim nothing.
fn claims_family(store: StoreKind) {
    let q = TestQueue::on(store);
    let plain = submit(&q, &[]);
    let restartable = submit(&q, &["--restartable"]);
    let tagged = submit(&q, &["--tag", "t"]);
    let tagged2 = submit(&q, &["--tag", "t"]);
    let elsewhere = submit(&q, &["--runner", "h2"]);
    let big = submit(&q, &["--cpus", "4"]);
    q.rq(&["configure", "limit.t=1"]).ok();
    let mut queue = open(&q);
    let store = queue.store();
    let feeder = "h1:1:conformance";
    let now = rq::time::now();

    let total = room(3).total;
    assert!(
        store
            .read(|tx| claims::claimable(tx, "h1", &now, 3, &total))
            .unwrap()
    );
    // In order; the second tagged job waits for the tag's room, h2's job and the 4-CPU job
    // are not for this host.
    let first = store
        .write(|tx| claims::claim(tx, "h1", feeder, &now, &room(3), 3))
        .unwrap();
    assert_eq!(jids(&first), vec![plain, restartable, tagged]);
    for row in &first {
        assert_eq!(row.get("state").as_text(), Some("running"));
        assert_eq!(row.get("runner").as_text(), Some("h1"));
        assert_eq!(row.get("attempts").as_int(), Some(1));
    }
    let mut held = store.read(|tx| claims::held_by(tx, "h1", feeder)).unwrap();
    held.sort();
    assert_eq!(held, vec![plain, restartable, tagged]);
    assert_eq!(
        store.read(claims::busy_hosts).unwrap(),
        vec!["h1".to_string()]
    );
    let current = store
        .read(|tx| claims::current_claims(tx, &[plain, tagged]))
        .unwrap();
    assert_eq!(current.len(), 2);
    for c in &current {
        assert_eq!(c.claim.as_deref(), Some(claim_of(&first, c.jid).as_str()));
        assert_eq!(c.kill_signal, None);
    }

    let by_feeder = store.read(|tx| claims::held_by_feeder(tx, feeder)).unwrap();
    assert_eq!(jids(&by_feeder), vec![plain, restartable, tagged]);
    let orphans = store
        .read(|tx| claims::orphans(tx, "h1", "h1:2:later"))
        .unwrap();
    assert_eq!(jids(&orphans), vec![plain, restartable, tagged]);
    assert!(
        store
            .read(|tx| claims::orphans(tx, "h1", feeder))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.read(claims::running_feeders).unwrap(),
        vec![feeder.to_string()]
    );
    let files = store.read(|tx| claims::job_files(tx, &[plain])).unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].1.contains(&format!("stdout/{plain}")));
    assert!(files[0].1.contains(&format!("stderr/{plain}")));

    // Starts and ends count only under the job's claim token.
    let c_plain = claim_of(&first, plain);
    assert!(
        store
            .write(|tx| claims::record_start(tx, plain, &c_plain, 4242, Some("boot:1")))
            .unwrap()
    );
    assert!(
        !store
            .write(|tx| claims::record_start(tx, plain, "not-the-claim", 1, None))
            .unwrap()
    );
    assert!(
        store
            .write(|tx| claims::finish(tx, &end(plain, &c_plain, None)))
            .unwrap()
    );
    assert!(
        !store
            .write(|tx| claims::finish(tx, &end(plain, &c_plain, None)))
            .unwrap()
    );
    // A retry is pending again, not before its time.
    let c_tagged = claim_of(&first, tagged);
    let later = Some("2999-01-01T00:00:00.000Z".to_string());
    assert!(
        store
            .write(|tx| claims::finish(tx, &end(tagged, &c_tagged, later.clone())))
            .unwrap()
    );
    // A claimed job that never started goes back with its attempt.
    let c_restartable = claim_of(&first, restartable);
    assert!(
        store
            .write(|tx| claims::release(tx, restartable, &c_restartable, None))
            .unwrap()
    );
    assert_eq!(state(&mut queue, plain), ("finished".into(), Some(0), 1));
    assert_eq!(state(&mut queue, tagged), ("pending".into(), Some(0), 1));
    // What the run used goes with its end (a retry's too).
    let used = USED;
    assert_eq!(usage_of(&mut queue, plain), used);
    assert_eq!(usage_of(&mut queue, tagged), used);
    assert_eq!(state(&mut queue, restartable), ("pending".into(), None, 0));

    // Next: the released job and the second tagged one (the retried one waits).
    let store = queue.store();
    let second = store
        .write(|tx| claims::claim(tx, "h1", feeder, &now, &room(3), 3))
        .unwrap();
    assert_eq!(jids(&second), vec![restartable, tagged2]);
    let (c_r, c_t2) = (claim_of(&second, restartable), claim_of(&second, tagged2));
    let crashed = store
        .write(|tx| claims::mark_crashed(tx, restartable, &c_r, Some("KILL"), 3))
        .unwrap();
    assert_eq!(crashed, "restartable: back to pending");
    let crashed = store
        .write(|tx| claims::mark_crashed(tx, tagged2, &c_t2, None, 3))
        .unwrap();
    assert_eq!(crashed, "marked dead");
    let third = store
        .write(|tx| claims::claim(tx, "h1", feeder, &now, &room(3), 3))
        .unwrap();
    assert_eq!(jids(&third), vec![restartable]);
    let c_r = claim_of(&third, restartable);
    store
        .write(|tx| claims::failed_to_start(tx, restartable, &c_r, &now))
        .unwrap();
    assert_eq!(
        state(&mut queue, restartable),
        ("finished".into(), Some(127), 2)
    );
    assert_eq!(state(&mut queue, tagged2).0, "dead");

    // h2's job, claimed there; h2 dies: the job may have run and is not restartable.
    let store = queue.store();
    let on_h2 = store
        .write(|tx| claims::claim(tx, "h2", "h2:1:conformance", &now, &room(3), 3))
        .unwrap();
    assert_eq!(jids(&on_h2), vec![elsewhere]);
    let running = store.read(|tx| claims::running_on(tx, "h2")).unwrap();
    assert_eq!(running.len(), 1);
    assert!(!running[0].pid_recorded);
    let reclaimed = store
        .write(|tx| claims::reclaim_host(tx, "h2", "h1", &now, 3, &mut |_| Fate::MayHaveRun))
        .unwrap();
    assert_eq!(
        (reclaimed.released, reclaimed.requeued, reclaimed.dead),
        (0, 0, 1)
    );
    assert_eq!(state(&mut queue, elsewhere).0, "dead");
    assert_eq!(state(&mut queue, big).0, "pending");

    // A paused queue: nothing to claim, and the reason.
    q.rq(&["pause"]).ok();
    let store = queue.store();
    let why = store.read(|tx| claims::held_back(tx, "h1")).unwrap();
    assert!(why.is_some_and(|w| w.starts_with("the queue is paused")));
    assert!(
        !store
            .read(|tx| claims::claimable(tx, "h1", &now, 3, &room(8).total))
            .unwrap()
    );
}

fn reason(queue: &mut Queue, jid: i64) -> Option<String> {
    let rows = queue
        .store()
        .read(|tx| rq::queue::select_rows(tx, &rq::store::Filter::jids(&[jid])))
        .unwrap();
    rows[0].get("reason").as_text().map(str::to_string)
}

/// Dependencies (`ops::deps`): a failed job cancels the chain that needs it, with the root
/// reason, and releases the job that waits for any end; run again, it re-arms the chain;
/// deleting a job cancels what needs it.
fn deps_family(store: StoreKind) {
    let q = TestQueue::on(store);
    let head = submit(&q, &[]);
    let head_s = head.to_string();
    let next = submit(&q, &["--after", &head_s]);
    let last = submit(&q, &["--after", &next.to_string()]);
    let any = submit(&q, &["--after-any", &head_s]);
    let mut queue = open(&q);
    assert_eq!(state(&mut queue, next).0, "waiting");
    assert_eq!(state(&mut queue, any).0, "waiting");
    let now = rq::time::now();
    let store = queue.store();
    let claimed = store
        .write(|tx| claims::claim(tx, "h1", "h1:1:deps", &now, &room(1), 3))
        .unwrap();
    assert_eq!(jids(&claimed), vec![head]);
    let mut failed = end(head, &claim_of(&claimed, head), None);
    failed.exit_status = Some(3);
    // The end and its cascade in one write.
    assert!(store.write(|tx| claims::finish(tx, &failed)).unwrap());
    let why = format!("dependency {head} exited 3");
    for jid in [next, last] {
        assert_eq!(state(&mut queue, jid).0, "cancelled");
        assert_eq!(reason(&mut queue, jid).as_deref(), Some(why.as_str()));
    }
    assert_eq!(state(&mut queue, any).0, "pending");

    // Run again: the chain waits again.
    q.rq(&["resubmit", &head_s]).ok();
    assert_eq!(state(&mut queue, head).0, "pending");
    for jid in [next, last] {
        assert_eq!(state(&mut queue, jid).0, "waiting");
        let waits = reason(&mut queue, jid).unwrap_or_default();
        assert!(waits.starts_with("waits for"), "{jid}: {waits}");
    }
    // Deleted: what needs it is cancelled, and says why.
    q.rq(&["delete", "--force", &head_s]).ok();
    assert_eq!(state(&mut queue, next).0, "cancelled");
    assert_eq!(
        reason(&mut queue, next).as_deref(),
        Some(format!("dependency {head} was deleted").as_str())
    );
    assert_eq!(state(&mut queue, last).0, "cancelled");
}

/// Every statement of each store is valid there (prepared, not run).
fn every_statement_prepares(store: StoreKind) {
    let q = TestQueue::on(store);
    let mut queue = open(&q);
    // In a write transaction: some statements (PostgreSQL's ANALYZE) may not run in a
    // read-only one.
    queue
        .store()
        .write(|tx| {
            for op in ops::all_in(tx.dialect()) {
                tx.prepare_op(op)
                    .unwrap_or_else(|e| panic!("{} does not prepare: {e}", op.0));
            }
            Ok(())
        })
        .unwrap();
}

/// A transaction's starts and ends, recorded together (`claims::record_starts`,
/// `claims::finish_all`: one statement each where the store does better so): each only
/// under its job's claim, an end to be retried going back to pending, a start not
/// recorded yet recorded with its end.
fn starts_and_ends_together(store: StoreKind) {
    let q = TestQueue::on(store);
    let jobs: Vec<i64> = (0..4).map(|_| submit(&q, &[])).collect();
    let mut queue = open(&q);
    let store = queue.store();
    let now = rq::time::now();
    let claimed = store
        .write(|tx| claims::claim(tx, "h1", "h1:1:together", &now, &room(4), 3))
        .unwrap();
    assert_eq!(jids(&claimed), jobs);
    let tokens: Vec<String> = jobs.iter().map(|j| claim_of(&claimed, *j)).collect();
    let starts: Vec<claims::StartRecord<'_>> = vec![
        (jobs[0], &tokens[0], 100, Some("boot:100")),
        (jobs[1], &tokens[1], 101, None),
        (jobs[2], &tokens[2], 102, None),
        (jobs[3], "not-the-claim", 103, None),
    ];
    let lost = store
        .write(|tx| claims::record_starts(tx, &starts))
        .unwrap();
    assert_eq!(lost, vec![jobs[3]]);
    let later = rq::time::format(rq::time::now_ts() + jiff::SignedDuration::from_hours(1));
    let ended = [
        end(jobs[0], &tokens[0], None),
        end(jobs[1], &tokens[1], Some(later.clone())),
        end(jobs[2], "not-the-claim", None),
        end(jobs[3], &tokens[3], None),
    ];
    let ended: Vec<(&End, claims::Started<'_>)> = ended
        .iter()
        .map(|e| (e, (e.jid == jobs[3]).then_some((103, Some("boot:103")))))
        .collect();
    let lost = store.write(|tx| claims::finish_all(tx, &ended)).unwrap();
    assert_eq!(lost, vec![jobs[2]]);
    assert_eq!(state(&mut queue, jobs[0]), ("finished".into(), Some(0), 1));
    assert_eq!(state(&mut queue, jobs[1]), ("pending".into(), Some(0), 1));
    assert_eq!(state(&mut queue, jobs[2]), ("running".into(), None, 1));
    let rows = queue
        .store()
        .read(|tx| rq::queue::select_rows(tx, &rq::store::Filter::jids(&jobs)))
        .unwrap();
    let row = |jid: i64| rows.iter().find(|r| r.jid() == jid).unwrap();
    assert_eq!(row(jobs[0]).get("pid").as_int(), Some(100));
    assert_eq!(row(jobs[0]).get("process").as_text(), Some("boot:100"));
    assert_eq!(row(jobs[2]).get("pid").as_int(), Some(102));
    // Its start was refused (not its claim), then recorded with its end.
    assert_eq!(state(&mut queue, jobs[3]), ("finished".into(), Some(0), 1));
    assert_eq!(row(jobs[3]).get("pid").as_int(), Some(103));
    assert_eq!(row(jobs[3]).get("process").as_text(), Some("boot:103"));
    assert_eq!(row(jobs[1]).get("retried").as_int(), Some(1));
    assert_eq!(
        row(jobs[1]).get("not_before").as_text(),
        Some(later.as_str())
    );
    assert_eq!(row(jobs[0]).get("retried").as_int(), Some(0));
    assert_eq!(row(jobs[0]).get("claim").as_text(), None);
    let used = USED;
    assert_eq!(usage_of(&mut queue, jobs[0]), used);
    assert_eq!(usage_of(&mut queue, jobs[1]), used);
    assert_eq!(
        usage_of(&mut queue, jobs[2]),
        (None, None, None, None, None)
    );
    // The counts every listing reads moved with the ends.
    let summary = q.rq(&["status"]).ok().value();
    assert_eq!(summary["jobs"]["finished"], 2, "{summary}");
    assert_eq!(summary["jobs"]["pending"], 1, "{summary}");
    assert_eq!(summary["jobs"]["running"], 1, "{summary}");
}

on_both_stores!(
    claims_family,
    deps_family,
    every_statement_prepares,
    starts_and_ends_together
);
