//! Fault injection: the original author's manual kit (rq_killer, killrq), automated.
//! Hosts are separate processes (and, where a whole host must crash or freeze, separate
//! PID and UTS namespaces).

mod common;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Short liveness settings so tests see reclaims within seconds.
fn fast_lease(q: &TestQueue) {
    q.rq(&["configure", "heartbeat=0.5s", "lease=2s"]).ok();
}

/// Short liveness settings for tests that count dead jobs under load: a 2 s lease kills a
/// host's jobs after 0.8 s without a heartbeat, which a busy CI machine can cause by
/// itself; 4 s allows 2.6 s.
fn short_lease(q: &TestQueue) {
    q.rq(&["configure", "heartbeat=0.5s", "lease=4s"]).ok();
}

fn job(q: &TestQueue, jid: i64) -> serde_json::Map<String, serde_json::Value> {
    q.rq(&["list", &jid.to_string()]).ok().records().remove(0)
}

fn exactly_once_under_load(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let feeders: Vec<FeederProc> = ["l1", "l2", "l3", "l4"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "4"]))
        .collect();
    let line = format!(
        "echo \"$RQ_JID $RQ_RUNNER $RQ_ATTEMPTS\" >> {}\n",
        ledger.display()
    );
    let n = 2600;
    let mut submitters = Vec::new();
    for _ in 0..2 {
        let path = q.tmp.path().join(format!("jobs{}", submitters.len()));
        std::fs::write(&path, line.repeat(n)).unwrap();
        let mut cmd = rq_command();
        cmd.args([q.q(), "submit", "-q", "-i", path.to_str().unwrap()]);
        submitters.push(cmd.spawn().unwrap());
    }
    for mut s in submitters {
        assert!(s.wait().unwrap().success());
    }
    let total = 2 * n;
    q.wait_for("every job to finish", 300, |q| {
        q.count("finished") == total as i64
    });
    let mut runs: HashMap<i64, usize> = HashMap::new();
    let mut hosts: HashMap<String, usize> = HashMap::new();
    for l in q.ledger_lines() {
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 3, "{l}");
        *runs.entry(parts[0].parse().unwrap()).or_default() += 1;
        *hosts.entry(parts[1].to_string()).or_default() += 1;
        assert_eq!(parts[2], "1", "first attempt only: {l}");
    }
    assert_eq!(runs.len(), total);
    assert!(runs.values().all(|n| *n == 1), "a job ran twice");
    assert_eq!(hosts.len(), 4, "{hosts:?}");
    q.integrity_ok();
    drop(feeders);
}

fn a_crashed_host_loses_its_jobs_to_another_host(store: StoreKind) {
    let q = TestQueue::on(store);
    fast_lease(&q);
    let ledger = q.ledger();
    for _ in 0..2 {
        q.rq(&[
            "submit",
            "-q",
            "--restartable",
            &format!("echo $RQ_RUNNER >> {}; sleep 3", ledger.display()),
        ])
        .ok();
    }
    q.rq(&["submit", "-q", &q.held()]).ok();
    let mut a = q.host("crashy", &["--max_feed", "3"]);
    q.wait_for("host crashy to run all three", 20, |q| {
        q.rq(&["query", "state=running", "pid!=null"])
            .ok()
            .records()
            .len()
            == 3
    });
    let _b = q.feeder("b", &["--max_feed", "3"]);
    let crashed_at = Instant::now();
    a.crash();
    q.wait_for("the restartable jobs to finish on b", 30, |q| {
        q.count("finished") == 2
    });
    assert!(
        crashed_at.elapsed() >= Duration::from_secs(2),
        "reclaimed before the lease ran out"
    );
    let jobs = q.jobs();
    for j in &jobs[..2] {
        assert_eq!(text(j, "runner"), "b");
        assert_eq!(int(j, "attempts"), 2);
        assert_eq!(text(j, "reclaimed_by"), "b");
        assert!(!text(j, "reclaimed_at").is_empty());
    }
    assert_eq!(text(&jobs[2], "state"), "dead");
    assert_eq!(text(&jobs[2], "reclaimed_by"), "b");
    assert_eq!(q.count("running"), 0);
    let v = q.rq(&["feeders", "--format", "json"]).ok().stdout;
    let list: Vec<serde_json::Value> = serde_json::from_str(&v).unwrap();
    let crashy = list.iter().find(|f| f["host"] == "crashy").unwrap();
    assert_eq!(crashy["alive"], false);
    assert_eq!(crashy["state"], "dead");
    let b = list.iter().find(|f| f["host"] == "b").unwrap();
    assert_eq!(b["alive"], true);
}

fn a_frozen_host_kills_its_stale_copies_when_it_thaws(store: StoreKind) {
    let q = TestQueue::on(store);
    fast_lease(&q);
    let marks = q.tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Each copy of the job keeps touching a file named after its host, for 8 s.
    let body = format!(
        "for i in $(seq 80); do touch {m}/$RQ_JID-$RQ_RUNNER; sleep 0.1; done; echo done-$RQ_RUNNER",
        m = marks.display()
    );
    q.rq(&["submit", "-q", "--restartable", &body]).ok();
    let frozen = q.host("frozen", &["--max_feed", "1"]);
    q.wait_for("host frozen to run the job", 20, |q| {
        q.count("running") == 1 && marks.join("1-frozen").exists()
    });
    let _other = q.feeder("thawed-world", &["--max_feed", "1"]);
    frozen.freeze();
    let frozen_pids = frozen.processes();
    q.wait_for("the job to be rerun elsewhere", 20, |q| {
        let j = job(q, 1);
        text(&j, "state") == "running"
            && text(&j, "runner") == "thawed-world"
            && marks.join("1-thawed-world").exists()
    });
    let new_claim = text(&job(&q, 1), "claim");
    frozen.thaw();
    // Within about a heartbeat the stale host must notice and kill its copy.
    std::thread::sleep(Duration::from_millis(1500));
    let job_pids: Vec<i32> = frozen_pids.iter().skip(2).copied().collect();
    assert!(!job_pids.is_empty());
    for pid in &job_pids {
        assert!(!alive(*pid), "stale copy {pid} still running after thaw");
    }
    let stale_mark = marks.join("1-frozen");
    let touched = std::fs::metadata(&stale_mark).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::metadata(&stale_mark).unwrap().modified().unwrap(),
        touched,
        "stale copy still writing"
    );
    // The new owner's record was never overwritten.
    let j = job(&q, 1);
    assert_eq!(text(&j, "claim"), new_claim);
    assert_eq!(text(&j, "runner"), "thawed-world");
    q.wait_for("the new owner to finish", 20, |q| q.count("finished") == 1);
    let j = job(&q, 1);
    assert_eq!(text(&j, "runner"), "thawed-world");
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "done-thawed-world\n");
    drop(frozen);
}

#[test]
fn a_held_lock_makes_everyone_wait_and_say_whom_they_wait_for() {
    let q = TestQueue::new();
    fast_lease(&q);
    q.rq(&["submit", "-q", "sleep 2; echo survived"]).ok();
    let f = q.feeder_env("h1", &[], &[("RQ_LOCK_NOTICE", "1")]);
    q.wait_for("job running", 10, |q| q.count("running") == 1);
    // An admin on h1 holds the write lock until the test lets go.
    let held = q.home().join("hold");
    std::fs::write(&held, "").unwrap();
    let mut holder = rq_command();
    holder.env("RQ_HOST", "h1").args([
        q.q(),
        "lock",
        "exclusive",
        "--",
        &format!("while [ -e '{}' ]; do sleep 0.05; done", held.display()),
    ]);
    let mut holder = holder.spawn().unwrap();
    q.wait_for("the holder's note", 10, |q| {
        std::fs::read_to_string(q.files().join("lock-holder"))
            .is_ok_and(|note| note.contains(&format!("pid={} ", holder.id())))
    });
    // A submit from h5 waits, and says for whom. It waits as long as it takes: SQLite's
    // attempts (made 1 s long here) end with "database is locked", and the next begins
    // (the first, while opening the queue, once gave up there).
    let err_path = q.home().join("submit.err");
    let mut submit = rq_command();
    submit
        .env("RQ_HOST", "h5")
        .env("RQ_LOCK_NOTICE", "1")
        .env("RQ_TEST_LOCK_ATTEMPT", "1")
        .args([q.q(), "submit", "-q", "echo after the lock"])
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut submit = submit.spawn().unwrap();
    let said = |q: &TestQueue| std::fs::read_to_string(q.home().join("submit.err")).unwrap();
    q.wait_for("the submit to say whom it waits for", 30, |q| {
        said(q).contains("waiting for the queue's lock")
    });
    let words = said(&q);
    assert!(
        words.contains(&format!(
            "last taken for writing by rq lock (pid {} on h1)",
            holder.id()
        )),
        "{words}"
    );
    assert!(words.contains("h1's last heartbeat: "), "{words}");
    assert_eq!(submit.try_wait().unwrap(), None, "still waiting");
    // The feeder on h1 waits too (to record its job's end), and knows the holder is local.
    q.wait_for("the feeder to say so", 30, |q| {
        q.feeder_log("h1").contains("waiting for the queue's lock")
    });
    let log = q.feeder_log("h1");
    assert!(log.contains("(pid "), "{log}");
    assert!(log.contains("on h1)"), "{log}");
    assert!(log.contains(", on this host"), "{log}");
    assert_eq!(submit.try_wait().unwrap(), None, "{}", said(&q));
    std::fs::remove_file(&held).unwrap();
    assert!(holder.wait().unwrap().success());
    assert!(submit.wait().unwrap().success(), "{}", said(&q));
    assert!(
        said(&q).contains("got the queue lock after"),
        "{}",
        said(&q)
    );
    q.wait_for("both jobs to finish", 20, |q| q.count("finished") == 2);
    let jobs = q.jobs();
    assert_eq!(
        int(&jobs[0], "attempts"),
        1,
        "the running job was neither killed nor reclaimed"
    );
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "survived\n");
    // The last writer is named now (the note follows the lock).
    let note = std::fs::read_to_string(q.files().join("lock-holder")).unwrap();
    assert!(note.starts_with("rq-holder host="), "{note}");
    assert!(!note.contains(&format!("pid={} ", holder.id())), "{note}");
    q.integrity_ok();
    drop(f);
}

#[test]
fn a_writer_waiting_for_readers_at_commit_says_so_not_that_it_waits_for_itself() {
    let q = TestQueue::new();
    let held = q.home().join("hold");
    let holding = q.home().join("holding");
    std::fs::write(&held, "").unwrap();
    let mut reader = rq_command();
    reader.args([
        q.q(),
        "lock",
        "shared",
        "--",
        &format!(
            "touch '{}'; while [ -e '{}' ]; do sleep 0.05; done",
            holding.display(),
            held.display()
        ),
    ]);
    let mut reader = reader.spawn().unwrap();
    // Only once the reader holds its lock can the submit be made to wait for it.
    q.wait_for("the reader to hold the lock", 30, |_| holding.exists());
    // The submit gets the write lock beside the reader, writes its note, and waits at
    // commit for the reader to go.
    let err_path = q.home().join("submit.err");
    let mut submit = rq_command();
    submit
        .env("RQ_LOCK_NOTICE", "1")
        .args([q.q(), "submit", "-q", "true"])
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut submit = submit.spawn().unwrap();
    let said = || std::fs::read_to_string(&err_path).unwrap();
    q.wait_for("the submit to say what it waits for", 30, |_| {
        said().contains("waiting for the queue's lock")
    });
    assert!(
        said().contains("this process holds the write lock and waits for readers to finish"),
        "{}",
        said()
    );
    std::fs::remove_file(&held).unwrap();
    assert!(reader.wait().unwrap().success());
    assert!(submit.wait().unwrap().success(), "{}", said());
    assert_eq!(q.count("pending"), 1);
}

/// One restartable and one plain job, claimed by a feeder that kills itself at `fault`.
fn claim_then_crash(q: &TestQueue, fault: &str) {
    fast_lease(q);
    let ledger = q.ledger();
    q.rq(&[
        "submit",
        "-q",
        "--restartable",
        &format!("echo ran >> {}", ledger.display()),
    ])
    .ok();
    q.rq(&[
        "submit",
        "-q",
        &format!("echo plain >> {}", ledger.display()),
    ])
    .ok();
    let mut a = q.feeder_env("victim", &["--max_feed", "2"], &[("RQ_FAULT", fault)]);
    assert_ne!(
        a.wait_exit(Duration::from_secs(10)),
        Some(0),
        "the fault should kill the feeder"
    );
    let jobs = q.jobs();
    assert!(
        jobs.iter()
            .all(|j| text(j, "state") == "running" && j["pid"].is_null())
    );
}

#[test]
fn a_feeder_killed_between_claim_and_spawn_loses_nothing() {
    between_claim_and_spawn(TestQueue::new());
}

#[test]
fn a_feeder_killed_between_claim_and_spawn_loses_nothing_with_everything_in_postgresql() {
    // The dead host's heartbeat and start journal are rows: judged on the server's clock.
    between_claim_and_spawn(TestQueue::in_database());
}

fn between_claim_and_spawn(q: TestQueue) {
    // Claimed, not journaled as started: both provably never ran, so another host gets
    // both back as if they had never been claimed, restartable or not.
    claim_then_crash(&q, "after_claim");
    let _b = q.feeder("rescuer", &[]);
    q.wait_for("the jobs to be recovered", 20, |q| q.count("finished") == 2);
    let mut lines = q.ledger_lines();
    lines.sort();
    assert_eq!(lines, ["plain", "ran"]);
    for j in q.jobs() {
        assert_eq!(text(&j, "runner"), "rescuer");
        assert_eq!(int(&j, "attempts"), 1, "the unstarted claim is no attempt");
        assert_eq!(text(&j, "reclaimed_by"), "rescuer");
    }
    assert!(
        q.feeder_log("rescuer").contains("2 never started"),
        "{}",
        q.feeder_log("rescuer")
    );
}

#[test]
fn a_feeder_killed_after_journaling_a_start_counts_the_job_as_possibly_run() {
    after_journaling_a_start(TestQueue::new());
}

#[test]
fn a_feeder_killed_after_journaling_a_start_counts_the_job_as_possibly_run_with_everything_in_postgresql()
 {
    after_journaling_a_start(TestQueue::in_database());
}

fn after_journaling_a_start(q: TestQueue) {
    // Journaled as started, then killed before the spawn: nobody can tell, so the job is
    // handled as crashed: the restartable one runs once elsewhere, the other is dead.
    claim_then_crash(&q, "after_journal");
    let _b = q.feeder("rescuer", &[]);
    q.wait_for("the jobs to be recovered", 20, |q| {
        q.count("finished") == 1 && q.count("dead") == 1
    });
    assert_eq!(q.ledger_lines(), ["ran"]);
    let jobs = q.jobs();
    assert_eq!(text(&jobs[0], "runner"), "rescuer");
    assert_eq!(int(&jobs[0], "attempts"), 2);
    assert_eq!(text(&jobs[1], "state"), "dead");
    assert_eq!(text(&jobs[1], "reclaimed_by"), "rescuer");
}

#[test]
fn a_database_server_crash_empties_start_journals_and_nothing_unproven_runs_again() {
    // Start journals kept in PostgreSQL are unlogged: a server crash empties them. The
    // victim journaled both starts and died before spawning; then the crash took its
    // journal. Nothing proves either job unstarted any more, so both are handled as
    // crashed, as the journal would have them, never handed out again as unstarted.
    let server = pg::Server::private();
    let q = TestQueue::in_database_on(&server);
    claim_then_crash(&q, "after_journal");
    let journal_rows = || server.psql("SELECT count(*) FROM rq_q.starts");
    assert_ne!(journal_rows().trim(), "0", "the starts were journaled");
    server.crash_and_restart(Duration::from_millis(200));
    assert_eq!(journal_rows().trim(), "0", "the crash emptied the journal");
    let _b = q.feeder("rescuer", &[]);
    q.wait_for("the jobs to be recovered", 20, |q| {
        q.count("finished") == 1 && q.count("dead") == 1
    });
    assert_eq!(q.ledger_lines(), ["ran"]);
    let jobs = q.jobs();
    assert_eq!(
        int(&jobs[0], "attempts"),
        2,
        "the restartable job ran again"
    );
    assert_eq!(text(&jobs[1], "state"), "dead");
}

#[test]
fn a_live_feeder_writes_its_start_journal_again_after_a_database_server_crash() {
    let server = pg::Server::private();
    let q = TestQueue::in_database_on(&server);
    q.rq(&["configure", "heartbeat=0.5s", "lease=60s"]).ok();
    let gate = q.tmp.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let ledger = q.ledger();
    q.rq(&[
        "submit",
        "-q",
        &format!(
            "echo ran >> {}; while [ -e {} ]; do sleep 0.1; done",
            ledger.display(),
            gate.display()
        ),
    ])
    .ok();
    let mut f = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("the job to start", 20, |q| q.ledger_lines().len() == 1);
    // The running job's claim, in a marked journal.
    let proven = || {
        server.psql(
            "SELECT count(*) FROM rq_q.starts s JOIN rq_q.journals j USING (feeder) \
             WHERE s.line = (SELECT claim FROM rq_q.jobs WHERE jid = 1)",
        )
    };
    assert_eq!(proven().trim(), "1");
    server.crash_and_restart(Duration::from_millis(200));
    q.wait_for("the journal to be written again", 30, |_| {
        proven().trim() == "1"
    });
    assert!(
        q.feeder_log("h1").contains("start journal was lost"),
        "{}",
        q.feeder_log("h1")
    );
    std::fs::remove_file(&gate).unwrap();
    q.wait_for("the job to finish", 30, |q| q.count("finished") == 1);
    assert_eq!(q.ledger_lines(), ["ran"]);
    assert_eq!(q.rq_as("h1", &["shutdown"]).status, 0);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
}

fn the_successor_on_the_same_host_gives_back_unstarted_claims(store: StoreKind) {
    let q = TestQueue::on(store);
    claim_then_crash(&q, "after_claim");
    let journals = q.files().join("starts");
    assert_eq!(std::fs::read_dir(&journals).unwrap().count(), 1);
    let mut f = q.feeder("victim", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(q.count("finished"), 2);
    let mut lines = q.ledger_lines();
    lines.sort();
    assert_eq!(lines, ["plain", "ran"]);
    assert!(q.jobs().iter().all(|j| int(j, "attempts") == 1));
    let log = q.feeder_log("victim");
    assert!(log.contains("never started: back to pending"), "{log}");
    assert_eq!(
        std::fs::read_dir(&journals).unwrap().count(),
        0,
        "the dead feeder's journal and the clean one's are gone"
    );
}

fn a_feeder_killed_before_recording_an_end_is_recovered_by_its_successor(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    q.rq(&["submit", "-q", &format!("echo ran >> {}", ledger.display())])
        .ok();
    let mut a = q.feeder_env("h1", &[], &[("RQ_FAULT", "before_record")]);
    assert_ne!(a.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(q.ledger_lines(), ["ran"]);
    let j = job(&q, 1);
    assert_eq!(text(&j, "state"), "running", "the end was never recorded");
    // The next feeder on the same host finds the job's process gone: dead, not lost, not rerun.
    let mut b = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(b.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(text(&job(&q, 1), "state"), "dead");
    assert_eq!(q.ledger_lines(), ["ran"]);
}

fn an_end_journaled_before_the_feeder_died_is_recorded_by_its_successor(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    q.rq(&[
        "submit",
        "-q",
        &format!("echo ran >> {}; exit 3", ledger.display()),
    ])
    .ok();
    let mut a = q.feeder_env("h1", &[], &[("RQ_FAULT", "after_journaling_end")]);
    assert_ne!(a.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(
        text(&job(&q, 1), "state"),
        "running",
        "not in the queue yet"
    );
    let mut b = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(b.wait_exit(Duration::from_secs(20)), Some(0));
    let j = job(&q, 1);
    assert_eq!(text(&j, "state"), "finished");
    assert_eq!(int(&j, "exit_status"), 3);
    assert_eq!(q.ledger_lines(), ["ran"]);
    assert!(q.feeder_log("h1").contains("recorded from the journal"));
}

fn journals_of_feeders_that_never_came_back_are_removed_after_a_day(store: StoreKind) {
    let q = TestQueue::on(store);
    let dir = q.files().join("starts");
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("gone:1:00000000");
    let recent = dir.join("gone:2:00000000");
    std::fs::write(&old, "aaaa-1\n").unwrap();
    std::fs::write(&recent, "bbbb-2\n").unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let mut f = q.feeder("sweeper", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        !old.exists(),
        "a day-old journal of a feeder without jobs stays"
    );
    assert!(recent.exists(), "a recent journal was removed");
}

fn a_feeder_that_cannot_journal_a_start_starts_nothing_and_gives_the_jobs_back(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    for _ in 0..2 {
        q.rq(&["submit", "-q", &format!("echo ran >> {}", ledger.display())])
            .ok();
    }
    let f = q.feeder_env(
        "nojournal",
        &["--max_feed", "2"],
        &[("RQ_FAULT", "journal_write")],
    );
    q.wait_for("the feeder to try", 10, |q| {
        q.feeder_log("nojournal").contains("giving back")
    });
    let cpu_before = cpu_seconds(f.pid());
    std::thread::sleep(Duration::from_secs(2));
    // Waiting to claim again, it sleeps (it once spun a whole core until then).
    let cpu = cpu_seconds(f.pid()) - cpu_before;
    assert!(cpu < 0.5, "the waiting feeder used {cpu:.2}s of CPU in 2s");
    assert!(q.ledger_lines().is_empty(), "a job started unjournaled");
    for j in q.jobs() {
        assert_eq!(text(&j, "state"), "pending");
        assert_eq!(int(&j, "attempts"), 0);
    }
    let log = q.feeder_log("nojournal");
    assert_eq!(
        log.matches("giving back").count(),
        1,
        "it should wait before claiming again: {log}"
    );
    assert!(log.contains("No space left on device"), "{log}");
}

/// Short jobs, so that feeders claim ahead; each appends its jid to the ledger.
fn short_jobs(q: &TestQueue, n: usize) {
    let line = format!("echo $RQ_JID >> {}\n", q.ledger().display());
    q.rq_stdin(&["submit", "-q", "-"], &line.repeat(n)).ok();
}

/// Every ledger line is a distinct job: nothing ran twice. Returns how many ran.
fn ran_once_each(q: &TestQueue) -> usize {
    let lines = q.ledger_lines();
    let distinct: std::collections::HashSet<&String> = lines.iter().collect();
    assert_eq!(distinct.len(), lines.len(), "a job ran twice");
    lines.len()
}

fn a_crashed_host_gives_back_what_it_claimed_ahead_and_nothing_runs_twice(store: StoreKind) {
    let q = TestQueue::on(store);
    short_lease(&q);
    short_jobs(&q, 2000);
    let mut a = q.host("ahead", &["--max_feed", "2"]);
    q.wait_for("host ahead to be well into the queue", 60, |q| {
        q.count("finished") >= 200
    });
    a.crash();
    let claimed = q.count("running");
    assert!(
        claimed > 2,
        "only {claimed} jobs were claimed at the crash: no look-ahead"
    );
    let _b = q.feeder("rescuer", &["--max_feed", "4"]);
    q.wait_for("every job to be settled", 120, |q| {
        let v = q.rq(&["status"]).ok().value();
        v["jobs"]["finished"].as_i64().unwrap() + v["jobs"]["dead"].as_i64().unwrap() == 2000
    });
    let ran = ran_once_each(&q);
    let dead = q.count("dead");
    // Only jobs the crashed host had actually started (at most its two slots) may be dead;
    // what it had claimed ahead went back and ran on the rescuer.
    assert!(
        dead <= 2,
        "{dead} dead jobs; claimed at the crash: {claimed}"
    );
    // Every finished job ran (once); a dead one may or may not have started.
    let finished = 2000 - dead;
    assert!(
        ran as i64 >= finished && ran as i64 <= 2000,
        "{ran} ran, {finished} finished"
    );
    let ledger: std::collections::HashSet<String> = q.ledger_lines().into_iter().collect();
    for j in q.rq(&["query", "state=finished"]).ok().records() {
        assert!(ledger.contains(&int(&j, "jid").to_string()), "{j:?}");
    }
    let log = q.feeder_log("rescuer");
    assert!(log.contains("host ahead has no heartbeat"), "{log}");
}

/// A host frozen after it found its claims safe to start, before it journaled the starts:
/// another host judges it dead and runs the jobs (their starts were never journaled). When
/// the frozen host goes on, its heartbeat may beat again at once; it must still not start
/// them: it reads its claims back first (a double run seen once under load, before).
fn a_host_frozen_before_journaling_its_starts_runs_nothing_given_away(store: StoreKind) {
    let q = TestQueue::on(store);
    fast_lease(&q);
    short_jobs(&q, 6);
    let mut frozen = q.feeder_env(
        "frozen",
        &["--max_feed", "2"],
        &[("RQ_FAULT", "stop_before_journal")],
    );
    q.wait_for("the host to stop before journaling", 20, |_| {
        is_stopped(frozen.pid())
    });
    let mut rescuer = q.feeder_env("rescuer", &["--max_feed", "2"], &[]);
    q.wait_for("the rescuer to run every job", 60, |q| {
        q.count("finished") == 6
    });
    assert!(
        q.feeder_log("rescuer")
            .contains("host frozen has no heartbeat"),
        "{}",
        q.feeder_log_tails()
    );
    frozen.signal(libc::SIGCONT);
    // It goes on: it reads its claims back, or (the bug) runs the jobs again.
    q.wait_for("the frozen host to go on", 30, |q| {
        q.feeder_log("frozen").contains("reading the claims back") || q.ledger_lines().len() > 6
    });
    // Any start it made would have been journaled and spawned by the time the log said
    // so; give a job it spawned the moment to write.
    std::thread::sleep(Duration::from_millis(500));
    frozen.signal(libc::SIGTERM);
    rescuer.signal(libc::SIGTERM);
    assert_eq!(frozen.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(rescuer.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(ran_once_each(&q), 6, "{}", q.feeder_log_tails());
    assert_eq!(q.count("finished"), 6);
}

fn a_frozen_host_does_not_start_what_it_claimed_ahead_once_it_was_given_away(store: StoreKind) {
    let q = TestQueue::on(store);
    fast_lease(&q);
    short_jobs(&q, 2000);
    let frozen = q.host("frozen", &["--max_feed", "2"]);
    q.wait_for("host frozen to be well into the queue", 60, |q| {
        q.count("finished") >= 200
    });
    frozen.freeze();
    let _b = q.feeder("rescuer", &["--max_feed", "2"]);
    // A host frozen inside a write transaction keeps SQLite's lock and every other host
    // waits for it to thaw (on NFS the server ends the lock with its client's lease):
    // not the moment this test is about. Then it is thawed and frozen at another moment.
    // PostgreSQL ends a feeder's session that sits in a transaction for a lease, so
    // there one freeze must do.
    let reclaimed = |q: &TestQueue| {
        q.feeder_log("rescuer")
            .contains("host frozen has no heartbeat")
    };
    let mut freezes = 1;
    for attempt in 1..=4 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reclaimed(&q) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if reclaimed(&q) || attempt == 4 {
            break;
        }
        frozen.thaw();
        std::thread::sleep(Duration::from_millis(700));
        frozen.freeze();
        freezes += 1;
    }
    assert!(
        reclaimed(&q),
        "the frozen host's jobs were not reclaimed: {}",
        q.feeder_log_tails()
    );
    if store == StoreKind::Postgres {
        assert_eq!(
            freezes,
            1,
            "a host frozen mid-transaction held up the reclaim: {}",
            q.feeder_log_tails()
        );
    }
    frozen.thaw();
    q.wait_for("every job to be settled", 120, |q| {
        let v = q.rq(&["status"]).ok().value();
        v["jobs"]["finished"].as_i64().unwrap() + v["jobs"]["dead"].as_i64().unwrap() == 2000
    });
    ran_once_each(&q);
    // Each freeze may cost what was running then (2 slots), nothing more.
    assert!(
        q.count("dead") <= 2 * freezes,
        "only what was running when it froze may be dead ({freezes} freezes)"
    );
    drop(frozen);
}

fn a_draining_feeder_gives_back_the_jobs_it_claimed_ahead(store: StoreKind) {
    let q = TestQueue::on(store);
    short_jobs(&q, 3000);
    let mut f = q.feeder("drainer", &["--max_feed", "2"]);
    q.wait_for("the feeder to be well into the queue", 60, |q| {
        q.count("finished") >= 200
    });
    f.signal(libc::SIGTERM);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
    let finished = q.count("finished");
    assert!(finished < 3000, "drained too late to tell");
    assert_eq!(q.count("running"), 0, "claims were left behind");
    assert_eq!(q.count("pending"), 3000 - finished);
    let unclaimed = q
        .rq(&["query", "state=pending", "attempts=0"])
        .ok()
        .records();
    assert_eq!(
        unclaimed.len() as i64,
        3000 - finished,
        "given back as never tried"
    );
    assert_eq!(ran_once_each(&q) as i64, finished);
    // The next jobs were made ready to start (their output files created) before the
    // drain: given back, they leave no output behind.
    let with_output: Vec<i64> = unclaimed
        .iter()
        .map(|j| int(j, "jid"))
        .filter(|jid| q.files().join("stdout").join(jid.to_string()).exists())
        .collect();
    assert!(
        with_output.is_empty(),
        "output files of unstarted jobs: {with_output:?}"
    );
    let journals = q.files().join("starts");
    assert_eq!(std::fs::read_dir(journals).unwrap().count(), 0);
}

struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A queue on a 3 MiB tmpfs of its own (unmounted when the `Tmpfs` is dropped).
fn queue_on_a_small_filesystem() -> (TestQueue, std::path::PathBuf, Tmpfs) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mounting a tmpfs needs root");
    let mount = Tmpfs(mnt.clone());
    let qpath = mnt.join("q");
    rq_in(tmp.path(), &[qpath.to_str().unwrap(), "create"], None).ok();
    (
        TestQueue {
            tmp,
            path: qpath,
            store: common::StoreKind::Sqlite,
            in_database: false,
        },
        mnt,
        mount,
    )
}

#[test]
fn a_full_disk_fails_submits_cleanly_and_feeders_resume() {
    let (q, mnt, _mount) = queue_on_a_small_filesystem();
    let f = q.feeder("h1", &[]);
    q.rq(&["submit", "-q", "echo before"]).ok();
    q.wait_for("first job", 10, |q| q.count("finished") == 1);
    let before = q.dump();
    // Fill the filesystem.
    let filler = mnt.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=100"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let jobs: String = (0..3000)
        .map(|i| format!("echo job {i} with a long enough command line to need pages\n"))
        .collect();
    let out = q.rq_stdin(&["submit", "-q", "-"], &jobs).fails();
    assert!(out.stderr.contains("full"), "{}", out.stderr);
    assert_eq!(q.dump(), before, "nothing partial");
    // Space returns: submits and feeders carry on.
    std::fs::remove_file(&filler).unwrap();
    q.rq(&["submit", "-q", "echo after"]).ok();
    q.wait_for("the feeder to resume", 20, |q| q.count("finished") == 2);
    assert_eq!(q.rq(&["stdout", "2"]).ok().stdout, "after\n");
    q.integrity_ok();
    drop(f);
}

#[test]
fn feeding_a_broken_queue_fails_clearly() {
    let q = TestQueue::new();
    std::fs::write(q.path.join("db"), b"this is not a database, just junk bytes................................................................................................").unwrap();
    let out = q.rq_as("h1", &["feed"]).fails();
    assert!(out.stderr.contains("damaged"), "{}", out.stderr);
    let tmp = tempfile::tempdir().unwrap();
    let out = rq_in(tmp.path(), &[tmp.path().to_str().unwrap(), "feed"], None).fails();
    assert!(out.stderr.contains("not an rq queue"), "{}", out.stderr);
}

#[test]
fn an_old_queue_is_migrated_on_open() {
    let q = TestQueue::new();
    // A queue as the first release made it (schema version 1), with a job in it.
    let db = std::path::Path::new(q.q()).join("db");
    std::fs::remove_file(&db).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = PERSIST; {} PRAGMA application_id = {}; PRAGMA user_version = 1;",
            rq::store::SCHEMA_SQL,
            rq::store::APPLICATION_ID
        ))
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (state, submitted, submitter, command) \
             VALUES ('pending', '2026-01-01T00:00:00.000000Z', 'h1', 'echo old')",
            [],
        )
        .unwrap();
    }
    let jobs = q.jobs();
    assert_eq!(text(&jobs[0], "command"), "echo old");
    assert_eq!(int(&jobs[0], "retries"), 0);
    assert_eq!(int(&jobs[0], "waiting_on"), 0);
    assert!(
        q.sql("PRAGMA user_version")
            .stdout
            .contains(&format!("user_version: {}", rq::store::SCHEMA_VERSION))
    );
    // The counts status reads are filled from the jobs already there.
    let status = q.rq(&["status", "--format", "json"]).ok().value();
    assert_eq!(status["jobs"]["pending"], 1, "{status}");
    assert_eq!(status["jobs"]["total"], 1, "{status}");
    // The table accepts the states of workflows now, and is sound.
    let waiting = q.rq(&["submit", "--after", "1", "echo new"]).ok().records();
    assert_eq!(text(&waiting[0], "state"), "waiting");
    assert!(q.sql("PRAGMA integrity_check").stdout.contains("ok"));
    // A state outside the known ones is still refused.
    let bogus = q.rq(&["execute", "UPDATE jobs SET state = 'bogus' WHERE jid = 1"]);
    assert!(
        bogus.stderr.contains("CHECK constraint failed"),
        "{}",
        bogus.stderr
    );
}

fn hostile_input_gets_errors_or_is_stored_exactly(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let before = q.dump();
    let deep = format!("- command: {}x{}\n", "[".repeat(5000), "]".repeat(5000));
    let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    let bomb = format!(
        "---\n- command: x\n  tag: {{{}}}\n",
        bomb.replace('\n', ", ").trim_end_matches(", ")
    );
    for bad in [
        deep.as_str(),
        bomb.as_str(),
        "---\n- command: x\n  priority: 99999999999999999999999\n",
        "- command: ok\n- {command: [1, 2]}\n",
    ] {
        let out = q.rq_stdin(&["submit", "-"], bad);
        assert_ne!(out.status, 0);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert_eq!(q.dump(), before);
    }
    // invalid UTF-8, and binary junk (a NUL byte)
    for (junk, said) in [
        (&[0xff, 0xfe, 0x80, b'\n', 0xc3, 0x28][..], "UTF-8"),
        (&[0xff, 0xfe, 0x00, 0x80, b'\n', 0xc3, 0x28][..], "NUL byte"),
    ] {
        let mut cmd = rq_command();
        cmd.args([q.q(), "submit", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(junk).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert_eq!(q.dump(), before);
    }
    // A 1 MB command could never start (the kernel passes at most 128 KiB): refused,
    // nothing changed. One of 100 kB is stored exactly.
    let before = q.dump();
    let too_big = format!("echo {}", "y".repeat(1 << 20));
    q.rq_stdin(&["submit", "-q", "-"], &format!("{too_big}\n"))
        .fails();
    assert_eq!(q.dump(), before);
    let huge = format!("echo {}", "y".repeat(100_000));
    q.rq_stdin(&["submit", "-q", "-"], &format!("{huge}\n"))
        .ok();
    let json = q
        .rq(&["list", "2", "--format", "json", "-f", "command"])
        .ok()
        .stdout;
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[0]["command"].as_str().unwrap(), huge);
    // Priorities at the limits, and a command that looks like SQL.
    q.rq(&["submit", "-q", "-p", "-9223372036854775808", "echo min"])
        .ok();
    let evil = "x'); DROP TABLE jobs; --";
    q.rq(&["submit", "-q", "-t", evil, evil]).ok();
    let found = q.rq(&["query", &format!("tag={evil}")]);
    // The simple language does not apply to a value with spaces: that is raw SQL, refused.
    assert_ne!(found.status, 0);
    // A bad raw clause is a usage error on either store: exit 2, one line saying what the
    // database found wrong, without the statement rq wrapped around it.
    for bad in ["jid >>> 3", "nosuchcolumn = 1", "state = "] {
        let refused = q.rq(&["query", bad]).fails();
        assert_eq!(refused.status, 2, "{bad}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(&format!("(in: {bad})")),
            "{}",
            refused.stderr
        );
        assert!(!refused.stderr.contains("SELECT"), "{}", refused.stderr);
    }
    let found = q.rq(&["query", "command=~x')%"]).ok().records();
    assert_eq!(found.len(), 1);
    assert_eq!(text(&found[0], "command"), evil);
    assert_eq!(q.rq(&["list", "3"]).ok().records()[0]["priority"], i64::MIN);
    q.integrity_ok();
}

fn clock_skew_does_not_cause_false_reclaims(store: StoreKind) {
    let q = TestQueue::on(store);
    fast_lease(&q);
    for _ in 0..4 {
        q.rq(&["submit", "-q", "sleep 4"]).ok();
    }
    let _ahead = q.feeder_env(
        "ahead",
        &["--max_feed", "2"],
        &[("RQ_TEST_CLOCK_OFFSET", "+600s")],
    );
    let _behind = q.feeder_env(
        "behind",
        &["--max_feed", "2"],
        &[("RQ_TEST_CLOCK_OFFSET", "-600s")],
    );
    q.wait_for("all four to finish", 40, |q| q.count("finished") == 4);
    for j in q.jobs() {
        assert_eq!(int(&j, "attempts"), 1, "a job was reclaimed: {j:?}");
        assert!(j["reclaimed_by"].is_null());
    }
    let runners: std::collections::HashSet<String> =
        q.jobs().iter().map(|j| text(j, "runner")).collect();
    assert_eq!(runners.len(), 2, "both hosts ran jobs");
}

fn a_crash_looping_job_becomes_dead_after_max_attempts(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "max_attempts=2"]).ok();
    q.rq(&["submit", "-q", "--restartable", "echo never gets to run"])
        .ok();
    // Each feeder claims the job, journals its start and crashes (as a job that takes its
    // host down would); the next feeder on the host finds it.
    for attempt in 1..=2 {
        let mut f = q.feeder_env("looper", &[], &[("RQ_FAULT", "after_journal")]);
        assert_ne!(f.wait_exit(Duration::from_secs(10)), Some(0));
        assert_eq!(int(&job(&q, 1), "attempts"), attempt);
    }
    let mut f = q.feeder("looper", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
    let j = job(&q, 1);
    assert_eq!(text(&j, "state"), "dead", "no third attempt");
    assert_eq!(int(&j, "attempts"), 2);
}

#[test]
fn feeders_refuse_a_queue_whose_locks_are_local_to_each_host() {
    let q = TestQueue::new();
    let info = q.tmp.path().join("mountinfo");
    let mount = q.tmp.path().canonicalize().unwrap();
    std::fs::write(
        &info,
        format!(
            "22 1 8:1 / / rw - ext4 /dev/vda rw\n40 22 0:45 / {} rw - nfs server:/x rw,vers=3,nolock,local_lock=all\n",
            mount.display()
        ),
    )
    .unwrap();
    let mut cmd = rq_command();
    cmd.env("RQ_TEST_MOUNTINFO", &info)
        .env("HOME", q.home())
        .args([q.q(), "feed", "--exit_when_empty"]);
    let out = run_cmd(cmd, None).fails();
    assert!(
        out.stderr.contains("refusing to feed") && out.stderr.contains("nolock"),
        "{}",
        out.stderr
    );
    // other writers warn, and still work
    let mut cmd = rq_command();
    cmd.env("RQ_TEST_MOUNTINFO", &info)
        .args([q.q(), "submit", "-q", "true"]);
    let out = run_cmd(cmd, None).ok();
    assert!(
        out.stderr.contains("WARNING") && out.stderr.contains("local to each host"),
        "{}",
        out.stderr
    );
    // a single-host user may override
    let mut cmd = rq_command();
    cmd.env("RQ_TEST_MOUNTINFO", &info)
        .env("RQ_ALLOW_LOCAL_LOCKS", "1")
        .env("HOME", q.home())
        .args([q.q(), "feed", "--exit_when_empty", "--shell", "sh -c"]);
    run_cmd(cmd, None).ok();
    assert_eq!(q.count("finished"), 1);
}

#[test]
fn a_feeder_whose_heartbeats_fail_kills_its_jobs_before_the_lease_runs_out() {
    // The heartbeat cannot be written (its directory is replaced by a file), while the
    // queue itself stays usable: the watchdog must kill the running job by 0.9 x lease,
    // the job is settled as crashed (restartable: pending again), and once heartbeats work
    // again it runs to the end.
    let q = TestQueue::new();
    q.rq(&["configure", "heartbeat=0.5s", "lease=4s"]).ok();
    let marks = q.tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let body = format!(
        "echo $$ >> {m}/runs; for i in $(seq 100); do touch {m}/alive; sleep 0.1; done",
        m = marks.display()
    );
    q.rq(&["submit", "-q", "--restartable", &body]).ok();
    let mut f = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("the job to run", 20, |_| marks.join("alive").exists());
    let hosts = q.path.join("hosts");
    std::fs::remove_dir_all(&hosts).unwrap();
    std::fs::write(&hosts, "not a directory").unwrap();
    let cut = std::time::Instant::now();
    q.wait_for("the watchdog to kill the job", 20, |q| {
        q.feeder_log("h1")
            .contains("the watchdog killed 1 running jobs")
    });
    let touched = std::fs::metadata(marks.join("alive"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        std::fs::metadata(marks.join("alive"))
            .unwrap()
            .modified()
            .unwrap(),
        touched,
        "the job still runs"
    );
    assert!(
        cut.elapsed() < Duration::from_secs(4),
        "killed after the lease ran out"
    );
    q.wait_for("the job to be settled as crashed", 10, |q| {
        text(&job(q, 1), "state") == "pending"
    });
    std::fs::remove_file(&hosts).unwrap();
    q.wait_for("the job to run again and finish", 40, |q| {
        q.count("finished") == 1
    });
    let j = job(&q, 1);
    assert_eq!(j["attempts"], 2);
    assert_eq!(j["exit_status"], 0);
    let runs = std::fs::read_to_string(marks.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 2);
    f.signal(libc::SIGTERM);
    assert_eq!(f.wait_exit(Duration::from_secs(10)), Some(0));
}

fn each_run_gets_fresh_output_files_and_planted_links_are_not_followed(store: StoreKind) {
    let q = TestQueue::on(store);
    let victim = q.tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    for dir in ["stdout", "stderr"] {
        std::os::unix::fs::symlink(&victim, q.files().join(dir).join("1")).unwrap();
    }
    q.rq(&["submit", "-q", "echo out; echo err >&2"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "out\n");
    assert_eq!(q.rq(&["stderr", "1"]).ok().stdout, "err\n");
    // A stale writer holding the first run's file (a killed copy on a host that was cut
    // off) cannot touch the next run's output.
    use std::io::Write;
    let mut stale = std::fs::OpenOptions::new()
        .append(true)
        .open(q.files().join("stdout/1"))
        .unwrap();
    q.rq(&["resubmit", "1"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    stale.write_all(b"stale\n").unwrap();
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "out\n");
    // A job that cannot start (a directory planted where its output goes): why it did
    // not start is not written through a link planted as its stderr.
    q.rq(&["submit", "-q", "echo never"]).ok();
    std::fs::create_dir(q.files().join("stdout/2")).unwrap();
    std::os::unix::fs::symlink(&victim, q.files().join("stderr/2")).unwrap();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(q.feeder_log("h1").contains("not started - jid 2"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(q.count("pending") + q.count("running"), 0);
}

#[test]
fn a_feeder_on_a_database_damaged_for_real_exits_and_says_why() {
    // Damage that fresh connections keep confirming ends the feeder (after a few checks),
    // in its log and as 'failed' in feeders; a passing fault would not.
    let q = TestQueue::new();
    q.rq(&["configure", "heartbeat=0.5s", "lease=4s"]).ok();
    let mut f = q.feeder("h1", &["--max_feed", "1", "--max_sleep", "0.2"]);
    q.wait_for("the feeder to start", 10, |q| {
        q.feeder_log("h1").contains("** STARTED **")
    });
    // Cut the database to its first page: every table page is gone.
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(q.path.join("db"))
        .unwrap();
    db.set_len(4096).unwrap();
    assert_eq!(f.wait_exit(Duration::from_secs(60)), Some(1));
    let log = q.feeder_log("h1");
    assert!(
        log.contains("** EXITING **") && log.contains("damaged"),
        "{log}"
    );
    let hb = std::fs::read_to_string(q.path.join("hosts/h1.hb")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&hb).unwrap();
    assert_eq!(info["stopped"], true);
    assert!(
        info["error"].as_str().unwrap().contains("damaged"),
        "{info}"
    );
}

/// On NFS a host cut off in mid-commit can, when it heals, put the database back in time
/// (its stale writes reach the server after others committed). Simulated here by copying
/// an older database over the live one: the feeder finds a job the queue says it runs but
/// it does not, and records it again with the end it remembers.
#[test]
fn a_feeder_records_again_ends_the_database_lost() {
    let q = TestQueue::new();
    fast_lease(&q);
    q.rq(&["submit", "-q", "sleep 1; exit 3"]).ok();
    let _f = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("the job to run", 10, |q| {
        job(q, 1)["pid"].as_i64().is_some()
    });
    let db = q.path.join("db");
    let old = q.tmp.path().join("db.old");
    let copy = format!("cp {} {}", db.display(), old.display());
    q.rq(&["lock", "exclusive", "--", &copy]).ok();
    q.wait_for("the job to end", 10, |q| q.count("finished") == 1);
    let back = format!("cat {} > {}", old.display(), db.display());
    q.rq(&["lock", "exclusive", "--", &back]).ok();
    // Back in time: the job runs again in the queue's eyes (unless the feeder, ticking
    // every half second, already noticed and settled it: its log says so then).
    let state = text(&job(&q, 1), "state");
    assert!(
        state == "running" || q.feeder_log("h1").contains("settling them again"),
        "back in time: {state}"
    );
    q.wait_for("the job to be recorded again", 10, |q| {
        q.count("finished") == 1
    });
    let j = job(&q, 1);
    assert_eq!(int(&j, "exit_status"), 3, "the end it remembered: {j:?}");
    assert_eq!(int(&j, "attempts"), 1);
    let err = std::fs::read_to_string(q.tmp.path().join("feeder-h1.err")).unwrap();
    assert!(err.contains("settling them again"), "{err}");
}

#[test]
fn a_feeder_claims_nothing_while_the_filesystem_is_full() {
    let (q, mnt, _mount) = queue_on_a_small_filesystem();
    q.rq(&["configure", "heartbeat=0.5s", "lease=4s"]).ok();
    let f = q.feeder("h1", &["--max_feed", "2"]);
    q.rq(&["submit", "-q", "echo before"]).ok();
    q.wait_for("the first job", 10, |q| q.count("finished") == 1);
    // Leave 12 KiB free: under the reserve (1 % of 3 MiB = 30 KiB), yet room for a submit.
    let free = rustix::fs::statvfs(&mnt).unwrap();
    let avail = free.f_bavail * free.f_frsize;
    let filler = mnt.join("filler");
    let blocks = (avail - 12 * 1024) / 4096;
    assert!(
        std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=4096", &format!("count={blocks}")])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    q.wait_for("the feeder to notice", 10, |q| {
        q.rq_as("h1", &["feeders", "--format", "json"])
            .stdout
            .contains("\"waiting\"")
    });
    q.rq(&["submit", "-q", "echo one"]).ok();
    q.rq(&["submit", "-q", "echo two"]).ok();
    let cpu_before = cpu_seconds(f.pid());
    std::thread::sleep(Duration::from_secs(3));
    // Work waits, and the feeder sleeps meanwhile (it once spun a whole core).
    let cpu = cpu_seconds(f.pid()) - cpu_before;
    assert!(
        cpu < 0.75,
        "the held-back feeder used {cpu:.2}s of CPU in 3s"
    );
    assert_eq!(
        q.count("pending"),
        2,
        "a feeder claimed jobs on a full filesystem"
    );
    let feeders = q.rq_as("h1", &["feeders", "--format", "json"]).ok().stdout;
    assert!(feeders.contains("filesystem is full"), "{feeders}");
    // Space again: the jobs run, and their output is whole.
    std::fs::remove_file(&filler).unwrap();
    q.wait_for("the jobs after space returned", 20, |q| {
        q.count("finished") == 3
    });
    assert_eq!(q.rq(&["stdout", "3"]).ok().stdout, "two\n");
    let log = q.feeder_log("h1");
    assert!(
        log.contains("filesystem is full") && log.contains("space again"),
        "{log}"
    );
    drop(f);
}

crate::on_both_stores!(
    a_host_frozen_before_journaling_its_starts_runs_nothing_given_away,
    exactly_once_under_load,
    a_crashed_host_loses_its_jobs_to_another_host,
    a_frozen_host_kills_its_stale_copies_when_it_thaws,
    the_successor_on_the_same_host_gives_back_unstarted_claims,
    a_feeder_killed_before_recording_an_end_is_recovered_by_its_successor,
    an_end_journaled_before_the_feeder_died_is_recorded_by_its_successor,
    journals_of_feeders_that_never_came_back_are_removed_after_a_day,
    a_feeder_that_cannot_journal_a_start_starts_nothing_and_gives_the_jobs_back,
    a_crashed_host_gives_back_what_it_claimed_ahead_and_nothing_runs_twice,
    a_frozen_host_does_not_start_what_it_claimed_ahead_once_it_was_given_away,
    a_draining_feeder_gives_back_the_jobs_it_claimed_ahead,
    hostile_input_gets_errors_or_is_stored_exactly,
    clock_skew_does_not_cause_false_reclaims,
    a_crash_looping_job_becomes_dead_after_max_attempts,
    each_run_gets_fresh_output_files_and_planted_links_are_not_followed,
);
