//! Taking the queue's lock back from a holder that is gone (`lock_recovery`): on NFSv3 a
//! dead host's lock is never freed. Here the filesystem is local, so the holder is a
//! stopped process (its lock stays, as a dead NFSv3 client's does) and the test switch
//! RQ_TEST_LOCK_RECOVERY=1 turns on what rq does on NFSv3. `tests/nfs` shows it on real
//! NFSv3 clients.

mod common;
use std::os::unix::fs::MetadataExt;
use std::process::Child;

use common::*;

const RECOVERY: (&str, &str) = ("RQ_TEST_LOCK_RECOVERY", "1");

/// Heartbeat 0.5 s, lease 2 s: a silent holder counts as dead after 8 s (the lease plus
/// three refreshes of the holder note).
fn fast_lease(q: &TestQueue) {
    q.rq(&["configure", "heartbeat=0.5s", "lease=2s"]).ok();
}

fn db_inode(q: &TestQueue) -> u64 {
    std::fs::metadata(q.files().join("db")).unwrap().ino()
}

/// `rq Q lock exclusive` as host `host`, holding until `release` is removed; `holding`
/// appears once it holds the lock.
fn hold_lock(q: &TestQueue, host: &str, release: &std::path::Path) -> (Child, std::path::PathBuf) {
    let holding = q.home().join(format!("holding-{host}"));
    std::fs::write(release, "").unwrap();
    let mut cmd = rq_command();
    cmd.env("RQ_HOST", host)
        .env(RECOVERY.0, RECOVERY.1)
        .env("HOME", q.home())
        .args([
            q.q(),
            "lock",
            "exclusive",
            "--",
            &format!(
                "touch '{}'; while [ -e '{}' ]; do sleep 0.05; done",
                holding.display(),
                release.display()
            ),
        ])
        .stderr(std::fs::File::create(q.home().join(format!("lock-{host}.err"))).unwrap());
    let child = cmd.spawn().unwrap();
    (child, holding)
}

fn signal_tree(root: u32, signal: i32) {
    let mut pids = descendants(root as i32);
    if !pids.contains(&(root as i32)) {
        pids.push(root as i32);
    }
    for pid in pids {
        unsafe { libc::kill(pid, signal) };
    }
}

/// A submit from another host, waiting for the lock; its stderr goes to `submit-<n>.err`.
fn submit_waiting(q: &TestQueue, command: &str, n: usize) -> Child {
    submit_waiting_on(q, "h5", command, n)
}

/// The same, from host `host`.
fn submit_waiting_on(q: &TestQueue, host: &str, command: &str, n: usize) -> Child {
    let mut submit = rq_command();
    submit
        .env("RQ_HOST", host)
        .env(RECOVERY.0, RECOVERY.1)
        .env("HOME", q.home())
        .env("RQ_LOCK_NOTICE", "1")
        .args([q.q(), "submit", "-q", command])
        .stderr(std::fs::File::create(q.home().join(format!("submit-{n}.err"))).unwrap());
    submit.spawn().unwrap()
}

fn wait_exit(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_lock_whose_holder_is_gone_is_taken_back_and_the_holder_cannot_write_into_the_queue() {
    let q = TestQueue::new();
    fast_lease(&q);
    let ledger = q.ledger();
    q.rq(&["submit", "-q", &format!("echo one >> {}", ledger.display())])
        .ok();
    let before = db_inode(&q);
    let mut feeder = q.feeder_env("h1", &[], &[RECOVERY]);
    q.wait_for("the first job", 20, |q| q.ledger_lines().len() == 1);
    // Host h9 takes the lock and stops dead (its note is not refreshed any more, it has no
    // heartbeat): the lock stays held, as a dead NFSv3 client's does.
    let release = q.home().join("release");
    let (mut holder, holding) = hold_lock(&q, "h9", &release);
    q.wait_for("the lock to be held", 20, |_| holding.exists());
    signal_tree(holder.id(), libc::SIGSTOP);
    let mut submit = submit_waiting(&q, &format!("echo two >> {}", ledger.display()), 1);
    let said = || std::fs::read_to_string(q.home().join("submit-1.err")).unwrap();
    q.wait_for("the submit to say whom it waits for", 30, |_| {
        said().contains("waiting for the queue's lock")
    });
    assert!(said().contains("rq lock (pid "), "{}", said());
    assert!(said().contains("on h9)"), "{}", said());
    // The submit knows no lease of its own: it reads the feeders' (2 s) from their
    // heartbeat files, so it says 8 s, not the default lease's 90 s.
    assert!(
        said().contains("rq takes it back once nobody has heard of its holder for 8s"),
        "{}",
        said()
    );
    // Someone (the submit or the feeder) takes the lock back, and the cluster goes on.
    assert!(
        wait_exit(&mut submit, 90, "the submit").success(),
        "{}",
        said()
    );
    q.wait_for("the second job", 30, |q| q.ledger_lines().len() == 2);
    let log = q.feeder_log("h1");
    let told = said() + &log;
    assert!(told.contains("took the queue's lock back"), "{told}");
    // Nobody waiting (the feeder's reads wait too) vouched for the stopped holder.
    assert!(!told.contains("did not take the lock back"), "{told}");
    assert_ne!(db_inode(&q), before, "the database is on a new inode");
    let status = q.rq(&["status"]).ok().value();
    let recovered = &status["lock_recovered"];
    assert!(
        recovered["holder"].as_str().unwrap().contains("on h9)"),
        "{status}"
    );
    // The stopped holder comes back: what it did under the lock was on a file that is no
    // longer the queue's, and it says so.
    std::fs::remove_file(&release).unwrap();
    signal_tree(holder.id(), libc::SIGCONT);
    let status = wait_exit(&mut holder, 30, "the old holder");
    let words = std::fs::read_to_string(q.home().join("lock-h9.err")).unwrap();
    assert!(!status.success(), "{words}");
    assert!(words.contains("taken back from this process"), "{words}");
    // Nothing was lost, nothing ran twice, and the queue's file is sound.
    assert_eq!(q.count("finished"), 2);
    let mut lines = q.ledger_lines();
    lines.sort();
    assert_eq!(lines, ["one", "two"]);
    q.integrity_ok();
    feeder.signal(libc::SIGTERM);
    assert_eq!(
        feeder.wait_exit(std::time::Duration::from_secs(20)),
        Some(0)
    );
}

#[test]
fn a_feeder_stopped_inside_its_claim_does_not_run_what_it_claimed_in_the_old_file() {
    let q = TestQueue::new();
    fast_lease(&q);
    let ledger = q.ledger();
    for n in 1..=3 {
        q.rq(&[
            "submit",
            "-q",
            &format!("echo job{n} $RQ_HOST >> {}", ledger.display()),
        ])
        .ok();
    }
    // h1 stops itself inside the transaction that claims (holding the write lock).
    let mut frozen = q.feeder_env(
        "h1",
        &["--max_feed", "1"],
        &[RECOVERY, ("RQ_FAULT", "stop_in_claim")],
    );
    q.wait_for("h1 to stop inside its claim", 20, |_| {
        is_stopped(frozen.pid())
    });
    let mut other = q.feeder_env("h2", &[], &[RECOVERY]);
    // h2 takes the lock back from the silent h1 and runs every job.
    q.wait_for("h2 to run every job", 90, |q| q.ledger_lines().len() == 3);
    assert!(
        q.feeder_log("h2").contains("took the queue's lock back"),
        "{}",
        q.feeder_log("h2")
    );
    // h1 comes back: its claim was made in the old file; it must notice and run nothing
    // of it.
    frozen.signal(libc::SIGCONT);
    q.wait_for("h1 to notice the new file", 30, |q| {
        q.feeder_log("h1").contains("was put on a new file")
            || q.feeder_log("h1").contains("replaced")
    });
    q.wait_for("every job to end", 30, |q| q.count("finished") == 3);
    frozen.signal(libc::SIGTERM);
    other.signal(libc::SIGTERM);
    assert_eq!(
        frozen.wait_exit(std::time::Duration::from_secs(20)),
        Some(0)
    );
    assert_eq!(other.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    let mut lines = q.ledger_lines();
    lines.sort();
    assert_eq!(
        lines,
        ["job1 h2", "job2 h2", "job3 h2"],
        "each job once, none by h1"
    );
    q.integrity_ok();
}

#[test]
fn a_live_holder_is_waited_for_and_never_loses_the_lock() {
    let q = TestQueue::new();
    fast_lease(&q);
    let before = db_inode(&q);
    let release = q.home().join("release");
    let (mut holder, holding) = hold_lock(&q, "h9", &release);
    q.wait_for("the lock to be held", 20, |_| holding.exists());
    let mut submit = submit_waiting(&q, "true", 1);
    // Twice as long as a silent holder gets: this one keeps saying it is alive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(16);
    while std::time::Instant::now() < deadline {
        assert_eq!(submit.try_wait().unwrap(), None, "the submit waits");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(db_inode(&q), before);
    std::fs::remove_file(&release).unwrap();
    assert!(wait_exit(&mut holder, 30, "the holder").success());
    assert!(wait_exit(&mut submit, 30, "the submit").success());
    let status = q.rq(&["status"]).ok().value();
    assert!(status.get("lock_recovered").is_none(), "{status}");
    assert_eq!(db_inode(&q), before, "never taken back");
    assert_eq!(q.count("pending"), 1);
}

/// A process that is not rq holding a read lock on the database's PENDING byte, as the
/// NFSv3 server keeps one for a process that is gone (its lock call was cut short when it
/// was killed and answered after the unlock that cleaned up): a writer takes the write
/// lock and then waits at commit for ever. The process is `sleep`, the lock taken in the
/// child before it execs (a POSIX lock stays with the process across exec).
fn stray_pending_lock(q: &TestQueue) -> Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let db = std::fs::OpenOptions::new()
        .read(true)
        .open(q.files().join("db"))
        .unwrap();
    let fd = db.as_raw_fd();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("3600");
    unsafe {
        cmd.pre_exec(move || {
            // Kept open across exec: closing it would drop the lock.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_RDLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = 0x4000_0000; // SQLite's PENDING byte
            fl.l_len = 1;
            if libc::fcntl(fd, libc::F_SETLK, &fl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    drop(db);
    child
}

/// Ends the stray lock's process however the test ends.
struct StrayLock(Child);

impl Drop for StrayLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_nobody_holds_any_more_is_taken_back_by_the_writer_it_holds_up_at_commit() {
    let q = TestQueue::new();
    fast_lease(&q);
    let before = db_inode(&q);
    // A feeder on h1 (it publishes the lease; it cannot write either).
    let mut feeder = q.feeder_env("h1", &[], &[RECOVERY]);
    q.wait_for("the feeder's heartbeat", 20, |q| {
        q.files().join("hosts").join("h1.hb").exists()
    });
    let mut stray = StrayLock(stray_pending_lock(&q));
    // A submit on h1 takes the write lock and waits at commit. The note names it, a live
    // process on a live host, so the feeder never takes the lock from it: the submit
    // must judge the silence itself (the holder the note names is itself, not what holds
    // it up). Before, it gave up each attempt, took the lock again and wrote its note
    // anew, for ever.
    let mut submit = submit_waiting_on(&q, "h1", "true", 1);
    let said = || std::fs::read_to_string(q.home().join("submit-1.err")).unwrap();
    let status = wait_exit(&mut submit, 60, "the submit");
    stray.0.kill().unwrap();
    feeder.signal(libc::SIGTERM);
    assert_eq!(
        feeder.wait_exit(std::time::Duration::from_secs(20)),
        Some(0)
    );
    assert!(status.success(), "{}", said());
    assert!(said().contains("took the queue's lock back"), "{}", said());
    assert!(
        said().contains("this process waits behind a lock nobody has said for"),
        "the words say what held it up: {}",
        said()
    );
    assert_ne!(db_inode(&q), before, "the database is on a new inode");
    // The submit is in the queue's file (the feeder, stopped above, may have run it).
    assert_eq!(q.count("pending") + q.count("finished"), 1);
    let status = q.rq(&["status"]).ok().value();
    assert!(status["lock_recovered"]["holder"].is_string(), "{status}");
    q.integrity_ok();
}

#[test]
fn ctrl_c_while_waiting_for_the_lock_ends_the_wait_and_changes_nothing() {
    let q = TestQueue::new();
    let release = q.home().join("release");
    let (mut holder, holding) = hold_lock(&q, "h9", &release);
    q.wait_for("the lock to be held", 20, |_| holding.exists());
    let mut submit = submit_waiting(&q, "true", 1);
    let said = || std::fs::read_to_string(q.home().join("submit-1.err")).unwrap();
    q.wait_for("the submit to wait", 30, |_| {
        said().contains("waiting for the queue's lock")
    });
    // Not killed inside a lock call (on NFSv3 such a call can leave a lock the server
    // keeps for nobody): the wait ends, the transaction is rolled back, and it says so.
    unsafe { libc::kill(submit.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut submit, 20, "the interrupted submit");
    assert_eq!(status.code(), Some(1), "exits, not killed: {}", said());
    assert!(
        said().contains("interrupted while waiting for the queue's lock"),
        "{}",
        said()
    );
    std::fs::remove_file(&release).unwrap();
    assert!(wait_exit(&mut holder, 30, "the holder").success());
    assert_eq!(q.count("pending"), 0, "nothing was submitted");
    // Outside a wait the signal acts as always: a second, waiting-free command is
    // killed by it (here: one blocked reading its job list from a pipe).
    let mut reader = rq_command();
    reader
        .env("HOME", q.home())
        .args([q.q(), "submit"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut reader = reader.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(reader.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut reader, 20, "the submit reading its input");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT));
}
