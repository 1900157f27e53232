//! Controlling jobs from anywhere: kill, timeouts, retries, wait, feeders, lock.

mod common;
use std::time::{Duration, Instant};

use common::*;

fn job(q: &TestQueue, jid: i64) -> serde_json::Map<String, serde_json::Value> {
    q.rq(&["list", &jid.to_string()]).ok().records().remove(0)
}

fn kill_signals_a_job_on_another_host(store: StoreKind) {
    let q = TestQueue::on(store);
    let marker = q.tmp.path().join("child-alive");
    // The job starts a background child: kill must reach the whole process group.
    q.rq(&[
        "submit",
        "-q",
        &format!(
            "(while true; do touch {}; sleep 0.1; done) & wait",
            marker.display()
        ),
    ])
    .ok();
    q.rq(&["submit", "-q", &q.held()]).ok();
    q.rq(&["submit", "-q", "--stage", "echo held"]).ok();
    let _remote = q.feeder("remote", &["--max_feed", "2"]);
    q.wait_for("jobs running", 10, |q| q.count("running") == 2);
    let started = Instant::now();
    let out = q.rq(&["kill", "1", "-f", "jid,kill_signal"]).ok().records();
    assert_eq!(text(&out[0], "kill_signal"), "TERM");
    q.wait_for("job 1 to end", 10, |q| {
        text(&job(q, 1), "state") == "finished"
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "kill took too long"
    );
    let j = job(&q, 1);
    assert_eq!(text(&j, "signal"), "TERM");
    std::fs::remove_file(&marker).ok();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!marker.exists(), "the job's background child survived");
    // --signal, and jobs that are not running
    q.rq(&["kill", "2", "--signal", "KILL"]).ok();
    q.wait_for("job 2 to end", 10, |q| {
        text(&job(q, 2), "state") == "finished"
    });
    assert_eq!(text(&job(&q, 2), "signal"), "KILL");
    let out = q.rq(&["kill", "3"]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("job 3 not signalled: it is holding"),
        "{}",
        out.stderr
    );
    q.rq(&["kill", "2", "--signal", "NOPE"]).fails();
    q.rq(&["kill"]).fails();
}

fn killing_a_job_claimed_ahead_ends_it_before_it_starts(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let line = format!("echo $RQ_JID >> {}\n", ledger.display());
    // Short jobs make the feeder claim ahead; while the long one runs in its only slot,
    // the jobs after it wait in its buffer: running in the queue, without a pid.
    let jobs = format!("{}sleep 4\n{}", line.repeat(30), line.repeat(10));
    q.rq_stdin(&["submit", "-q", "-"], &jobs).ok();
    let _f = q.feeder("ahead", &["--max_feed", "1"]);
    q.wait_for("the long job to run", 20, |q| {
        text(&job(q, 31), "state") == "running" && !job(q, 31)["pid"].is_null()
    });
    let buffered = q.rq(&["query", "state=running", "pid=null"]).ok().records();
    assert!(!buffered.is_empty(), "nothing claimed ahead");
    let victim = int(&buffered[0], "jid");
    q.rq(&["kill", &victim.to_string()]).ok();
    q.wait_for("the buffered job to end", 10, |q| {
        text(&job(q, victim), "state") == "finished"
    });
    assert_eq!(
        text(&job(&q, 31), "state"),
        "running",
        "ended while the long job still ran: it never waited in the buffer"
    );
    let j = job(&q, victim);
    assert_eq!(text(&j, "signal"), "TERM");
    assert!(j["exit_status"].is_null());
    q.wait_for("the rest to finish", 20, |q| q.count("finished") == 41);
    let lines = q.ledger_lines();
    assert_eq!(lines.len(), 39, "every job but the killed one ran, once");
    assert!(!lines.contains(&victim.to_string()), "the killed job ran");
}

fn timeouts_term_then_kill(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "--timeout", "1s", &q.held()]).ok();
    // ignores TERM: KILL follows the grace period
    q.rq(&[
        "submit",
        "-q",
        "--timeout",
        "0.5",
        &format!("trap '' TERM; {}", q.held()),
    ])
    .ok();
    q.rq(&["submit", "-q", "--timeout", "10s", "echo quick"])
        .ok();
    q.rq(&["submit", "--timeout", "soon", "x"]).fails();
    let mut f = q.feeder("h1", &["--max_feed", "3", "--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    let jobs = q.jobs();
    assert_eq!(text(&jobs[0], "signal"), "TERM");
    assert_eq!(jobs[0]["timed_out"], true);
    let elapsed = jobs[0]["elapsed"].as_f64().unwrap();
    assert!((1.0..4.0).contains(&elapsed), "{elapsed}");
    assert_eq!(text(&jobs[1], "signal"), "KILL");
    assert_eq!(jobs[1]["timed_out"], true);
    assert_eq!(jobs[2]["timed_out"], false);
    assert_eq!(int(&jobs[2], "exit_status"), 0);
    let v = q.rq(&["status"]).ok().value();
    assert_eq!(v["exit_status"]["failures"], 2);
}

fn retries_requeue_failed_jobs_with_growing_delays(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    // Fails twice, then succeeds.
    let cmd = format!(
        "date +%s.%N >> {l}; test $(wc -l < {l}) -ge 3",
        l = ledger.display()
    );
    q.rq(&[
        "submit",
        "-q",
        "--retries",
        "3",
        "--retry-delay",
        "0.3s",
        &cmd,
    ])
    .ok();
    q.rq(&[
        "submit",
        "-q",
        "--retries",
        "1",
        "--retry-delay",
        "0.1",
        "exit 9",
    ])
    .ok();
    q.rq(&["submit", "--retries", "-1", "x"]).fails();
    let _f = q.feeder("h1", &[]);
    q.wait_for("both to end", 30, |q| q.count("finished") == 2);
    let jobs = q.jobs();
    assert_eq!(int(&jobs[0], "exit_status"), 0);
    assert_eq!(int(&jobs[0], "retried"), 2);
    assert_eq!(int(&jobs[0], "attempts"), 3);
    let times: Vec<f64> = q
        .ledger_lines()
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    let (d1, d2) = (times[1] - times[0], times[2] - times[1]);
    assert!(
        d1 >= 0.3 && d2 >= 0.6,
        "delays {d1} {d2} should be >= 0.3 and >= 0.6"
    );
    assert_eq!(
        int(&jobs[1], "exit_status"),
        9,
        "the last exit status is kept"
    );
    assert_eq!(int(&jobs[1], "retried"), 1);
    assert_eq!(int(&jobs[1], "attempts"), 2);
}

fn wait_blocks_until_done_and_reports_success(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "-t", "good", "sleep 0.5"]).ok();
    q.rq(&["submit", "-q", "-t", "good", "true"]).ok();
    q.rq(&["submit", "-q", "-t", "bad", "sleep 0.3; exit 2"])
        .ok();
    let _f = q.feeder("h1", &["--max_feed", "3"]);
    let started = Instant::now();
    let out = q.rq(&["wait", "tag=good"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "nothing extra when piped"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(text(&job(&q, 1), "state"), "finished");
    assert_eq!(
        q.rq(&["wait", "3"]).status,
        1,
        "a failed job makes wait fail"
    );
    assert_eq!(q.rq(&["wait"]).status, 1);
    assert_eq!(q.rq(&["wait", "1", "2"]).status, 0);
}

fn feeders_lists_hosts_with_heartbeats(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "heartbeat=0.5s", "lease=2s"]).ok();
    q.rq(&["submit", "-q", &q.held()]).ok();
    let a = q.feeder("alpha", &["--max_feed", "3"]);
    q.wait_for("job running", 10, |q| q.count("running") == 1);
    let mut b = q.feeder("beta", &["--max_feed", "1"]);
    q.wait_for("beta's heartbeat", 10, |q| {
        q.rq(&["feeders"]).ok().records().len() == 2
    });
    let rows = q.rq(&["feeders"]).ok().records();
    let alpha = rows.iter().find(|r| text(r, "host") == "alpha").unwrap();
    assert_eq!(alpha["alive"], true);
    assert_eq!(int(alpha, "running"), 1);
    assert_eq!(int(alpha, "max_feed"), 3);
    assert_eq!(int(alpha, "pid"), a.pid() as i64);
    assert!(alpha["heartbeat_age"].as_f64().unwrap() < 2.0);
    // a cleanly stopped feeder is shown as stopped
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(0));
    let rows = q.rq(&["feeders", "--format", "json"]).ok().stdout;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&rows).unwrap();
    let beta = rows.iter().find(|r| r["host"] == "beta").unwrap();
    assert_eq!(beta["state"], "stopped");
    assert_eq!(beta["alive"], false);
    let table = q.rq(&["feeders", "--format", "table"]).ok().stdout;
    assert!(
        table.starts_with("host") && table.contains("alpha"),
        "{table}"
    );
    drop(a);
}

fn lock_runs_a_command_under_the_lock_and_returns_its_status(store: StoreKind) {
    let q = TestQueue::on(store);
    let out = q.rq(&["lock", "shared", "--", "echo inside; exit 3"]);
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, "inside\n");
    // Several arguments are a command and its arguments, quoting kept (they were once
    // joined into one shell line: `sh -c while ...` and a syntax error).
    let out = q.rq(&[
        "lock",
        "exclusive",
        "--",
        "sh",
        "-c",
        "for w in 'two words'; do echo \"$w\"; done; exit 4",
    ]);
    assert_eq!((out.status, out.stdout.as_str()), (4, "two words\n"));
    // While an exclusive lock is held, even readers wait.
    let mut holder = rq_command();
    holder.args([q.q(), "L", "exclusive", "--", "sleep 2"]);
    let mut holder = holder.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    q.rq(&["status"]).ok();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "status did not wait"
    );
    assert!(holder.wait().unwrap().success());
    q.rq(&["lock", "sideways", "--", "true"]).fails();
    q.rq(&["lock", "read"]).fails();
}

/// The lock another process holds on `path`, as F_GETLK sees it: (type, pid).
fn posix_lock_on(path: &std::path::Path) -> Option<(i16, i32)> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    // SAFETY: flock is a plain C struct; all-zero is valid. F_GETLK fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (fl.l_type != libc::F_UNLCK as i16).then_some((fl.l_type, fl.l_pid))
}

#[test]
fn a_write_transaction_holds_a_read_lock_on_the_journal() {
    // On NFS this makes the client send the journal's writes under a lock, so a host
    // that lost its locks in a partition cannot write a stale journal after it heals.
    let q = TestQueue::new();
    q.rq(&["submit", "-q", "true"]).ok();
    let journal = q.files().join("db-journal");
    assert_eq!(posix_lock_on(&journal), None);
    let mut holder = rq_command();
    holder.args([q.q(), "lock", "exclusive", "--", "sleep 2"]);
    let mut holder = holder.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        seen = posix_lock_on(&journal);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen, Some((libc::F_RDLCK as i16, holder.id() as i32)));
    assert!(holder.wait().unwrap().success());
    assert_eq!(
        posix_lock_on(&journal),
        None,
        "released with the transaction"
    );
    // A link planted as the journal is not followed, and nothing is written.
    std::fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &journal).unwrap();
    q.rq(&["submit", "-q", "true"]).fails();
    std::fs::remove_file(&journal).unwrap();
    let jobs = q.rq(&["list", "all", "--format", "json"]).ok().stdout;
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&jobs)
            .unwrap()
            .len(),
        1
    );
}

fn wait_shows_progress_on_a_terminal(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "sleep 0.5"]).ok();
    q.rq(&["submit", "-q", "exit 1"]).ok();
    let _f = q.feeder("h1", &["--max_feed", "2"]);
    // script(1) gives rq a terminal.
    let out = std::process::Command::new("script")
        .arg("-qec")
        .arg(format!("'{}' '{}' wait", rq_bin(), q.q()))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("] 2/2 done"), "{text}");
    assert!(text.contains("1 failed"), "{text}");
    assert_eq!(out.status.code(), Some(1), "one job failed");
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn broken_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors; we own both.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: closing the read end we just created.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is a fresh descriptor owned by nothing else.
    std::process::Stdio::from(unsafe { std::fs::File::from_raw_fd(fds[1]) })
}

fn no_mode_panics_when_stdout_or_stderr_is_a_broken_pipe(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let cases: &[&[&str]] = &[
        &["completions", "bash"],
        &["--version"],
        &["help"],
        &["man"],
        &[q.q(), "list", "all"],
        &[q.q(), "status"],
    ];
    for args in cases {
        let mut cmd = rq_command();
        cmd.args(*args)
            .stdout(broken_pipe())
            .stderr(std::process::Stdio::piped());
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() != Some(101) && !err.contains("panicked"),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    // Errors and notes on a broken stderr: the exit status still says what happened.
    for (args, code) in [
        (&["/nonexistent/queue", "status"][..], 1),
        (&[q.q(), "delete", "-"][..], 0),
    ] {
        let mut cmd = rq_command();
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(broken_pipe());
        let status = cmd.status().unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

fn jobs_get_exactly_stdio_and_no_rq_internals(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&[
        "submit",
        "-q",
        // No pipeline before the listing: the shell holds a pipe's ends while it starts
        // the commands on both sides, and `ls` could see them.
        "ls /proc/$$/fd > fds; tr '\\n' ' ' < fds; echo; env | grep -c '^RQ_TEST_' ; echo \"$PATH\"",
    ])
    .ok();
    // The shell that starts the feeder has descriptor 7 open (not close-on-exec), a
    // test hook set, and the queue's bin/ on PATH already.
    let bin = q.files().join("bin");
    let script = format!(
        "exec 7</etc/hostname; PATH='{}':\"$PATH\" RQ_TEST_CLOCK_OFFSET=+0s exec '{}' '{}' feed --exit_when_empty",
        bin.display(),
        rq_bin(),
        q.q()
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&script)
        .env("RQ_HOST", "h1")
        .env("HOME", q.home());
    assert!(run_cmd(cmd, None).status == 0);
    let out = std::fs::read_to_string(q.files().join("stdout/1")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "0 1 2", "{out}");
    assert_eq!(lines[1], "0", "{out}");
    let bins = std::env::split_paths(lines[2])
        .filter(|p| *p == bin)
        .count();
    assert_eq!(bins, 1, "{out}");
}

#[test]
fn links_planted_in_the_queue_are_never_written_through() {
    use std::os::unix::fs::MetadataExt;
    let q = TestQueue::new();
    let victim = q.tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // Whoever can write the queue plants links where rq writes: the doorbell, this
    // host's heartbeat, the next job's output files.
    std::fs::remove_file(q.files().join("doorbell")).unwrap();
    std::fs::create_dir_all(q.files().join("hosts")).unwrap();
    for name in ["doorbell", "hosts/h1.hb", "stdout/1", "stderr/1"] {
        std::os::unix::fs::symlink(&victim, q.files().join(name)).unwrap();
    }
    q.rq(&["submit", "-q", "echo out; echo err >&2"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().mtime(),
        1_000_000_000,
        "the victim was touched"
    );
    assert_eq!(
        std::fs::read_to_string(q.files().join("stdout/1")).unwrap(),
        "out\n"
    );
    assert_eq!(q.rq(&["list", "1"]).ok().records()[0]["exit_status"], 0);
}

fn submit_never_copies_job_inputs_through_planted_links(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let victim = q.tmp.path().join("victim");
    let victim_dir = q.tmp.path().join("victim-dir");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::create_dir(&victim_dir).unwrap();
    // The next jid is 2: links wait under its names.
    std::os::unix::fs::symlink(&victim, q.files().join("stdin/2")).unwrap();
    std::os::unix::fs::symlink(&victim_dir, q.files().join("data/2")).unwrap();
    let input = q.tmp.path().join("input");
    let data = q.tmp.path().join("data-in");
    std::fs::write(&input, "job input\n").unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "job data\n").unwrap();
    q.rq(&[
        "submit",
        "-q",
        "--stdin",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "cat",
    ])
    .ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(q.files().join("stdin/2")).unwrap(),
        "job input\n"
    );
    assert_eq!(
        std::fs::read_to_string(q.files().join("data/2/f")).unwrap(),
        "job data\n"
    );
}

/// A job's `$RQ_DATA` is `Q/data/<jid>`: a link planted there is never handed to the job
/// (it is not started, and says why); a job whose data directory is not there gets one
/// made. A stdin file replaced by a link is not read through it.
fn a_feeder_hands_jobs_no_planted_links(store: StoreKind) {
    let q = TestQueue::on(store);
    let victim_dir = q.tmp.path().join("victim-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    let secret = q.tmp.path().join("secret");
    std::fs::write(&secret, "the feeder user's secret\n").unwrap();
    std::fs::create_dir_all(q.files().join("data")).unwrap();
    std::os::unix::fs::symlink(&victim_dir, q.files().join("data/1")).unwrap();
    q.rq(&["submit", "-q", "echo planted > \"$RQ_DATA/out\""])
        .ok();
    q.rq(&["submit", "-q", "echo two > \"$RQ_DATA/out\""]).ok();
    // A job with stdin whose file is swapped for a link to the secret before it runs.
    let input = q.tmp.path().join("input");
    std::fs::write(&input, "job input\n").unwrap();
    q.rq(&["submit", "-q", "--stdin", input.to_str().unwrap(), "cat"])
        .ok();
    let stdin3 = q.files().join("stdin/3");
    std::fs::remove_file(&stdin3).unwrap();
    std::os::unix::fs::symlink(&secret, &stdin3).unwrap();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(
        std::fs::read_dir(&victim_dir).unwrap().count(),
        0,
        "written through the link"
    );
    let jobs = q.jobs();
    assert_eq!(jobs[0]["exit_status"], 127, "{:?}", jobs[0]);
    assert!(q.rq(&["stderr", "1"]).ok().stdout.contains("symbolic link"));
    assert_eq!(jobs[1]["exit_status"], 0);
    assert_eq!(
        std::fs::read_to_string(q.files().join("data/2/out")).unwrap(),
        "two\n"
    );
    assert!(
        !q.rq(&["stdout", "3"]).ok().stdout.contains("secret"),
        "stdin read through a planted link"
    );
    assert_ne!(jobs[2]["exit_status"], 0, "{:?}", jobs[2]);
}

crate::on_both_stores!(
    a_feeder_hands_jobs_no_planted_links,
    kill_signals_a_job_on_another_host,
    killing_a_job_claimed_ahead_ends_it_before_it_starts,
    timeouts_term_then_kill,
    retries_requeue_failed_jobs_with_growing_delays,
    wait_blocks_until_done_and_reports_success,
    feeders_lists_hosts_with_heartbeats,
    lock_runs_a_command_under_the_lock_and_returns_its_status,
    wait_shows_progress_on_a_terminal,
    no_mode_panics_when_stdout_or_stderr_is_a_broken_pipe,
    jobs_get_exactly_stdio_and_no_rq_internals,
    submit_never_copies_job_inputs_through_planted_links,
);
