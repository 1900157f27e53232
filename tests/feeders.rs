//! Feeders as separate processes posing as separate hosts.

mod common;
use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn submit_ledger_jobs(q: &TestQueue, n: usize, extra: &[&str]) {
    let ledger = q.ledger();
    let lines: String = (0..n)
        .map(|_| {
            format!(
                "echo \"$RQ_JID $RQ_RUNNER\" >> {}; echo out-$RQ_JID\n",
                ledger.display()
            )
        })
        .collect();
    let mut args = vec!["submit", "-q", "-"];
    args.extend_from_slice(extra);
    q.rq_stdin(&args, &lines).ok();
}

fn several_hosts_run_every_job_exactly_once(store: StoreKind) {
    let q = TestQueue::on(store);
    let n = 1500;
    let feeders: Vec<FeederProc> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "3"]))
        .collect();
    // Submit while the feeders run, in two batches from two processes.
    submit_ledger_jobs(&q, n / 2, &[]);
    submit_ledger_jobs(&q, n / 2, &[]);
    q.wait_for("all jobs to finish", 180, |q| {
        q.count("finished") == n as i64
    });
    for f in &feeders {
        assert_eq!(q.rq_as(&f.host, &["shutdown"]).status, 0);
    }
    let mut seen: HashMap<i64, String> = HashMap::new();
    for line in q.ledger_lines() {
        let (jid, host) = line.split_once(' ').unwrap();
        let jid: i64 = jid.parse().unwrap();
        assert!(
            seen.insert(jid, host.to_string()).is_none(),
            "job {jid} ran twice"
        );
    }
    assert_eq!(seen.len(), n);
    let jobs = q.jobs();
    let mut per_host: HashMap<String, usize> = HashMap::new();
    for job in &jobs {
        let jid = int(job, "jid");
        assert_eq!(text(job, "state"), "finished");
        assert_eq!(int(job, "exit_status"), 0);
        assert_eq!(int(job, "attempts"), 1);
        assert_eq!(
            seen[&jid],
            text(job, "runner"),
            "ledger and queue disagree on job {jid}"
        );
        let out = std::fs::read_to_string(q.files().join(format!("stdout/{jid}"))).unwrap();
        assert_eq!(out, format!("out-{jid}\n"));
        *per_host.entry(text(job, "runner")).or_default() += 1;
    }
    assert_eq!(per_host.len(), 3, "every host ran jobs: {per_host:?}");
    q.integrity_ok();
    for mut f in feeders {
        assert_eq!(
            f.wait_exit(Duration::from_secs(10)),
            Some(0),
            "feeder drains and exits 0"
        );
    }
}

#[test]
fn hosts_faked_with_uts_namespaces() {
    if !unshare_works() {
        panic!("unshare --uts is needed for this test (run as root)");
    }
    let q = TestQueue::new();
    submit_ledger_jobs(&q, 40, &[]);
    q.rq(&["submit", "-q", "--runner", "uts2", "hostname"]).ok();
    let mut feeders = Vec::new();
    for host in ["uts1", "uts2"] {
        let mut cmd = rq_command();
        cmd.env("HOME", q.home())
            .current_dir(q.tmp.path())
            .args([
                "--uts",
                "sh",
                "-c",
                &format!("hostname {host}; exec \"$0\" \"$@\""),
            ])
            .arg(rq_bin())
            .args([
                q.q(),
                "feed",
                "--min_sleep",
                "0.05",
                "--shell",
                "sh -c",
                "--max_feed",
                "2",
            ]);
        let mut cmd2 = std::process::Command::new("unshare");
        cmd2.args(cmd.get_args());
        cmd2.env("HOME", q.home())
            .current_dir(q.tmp.path())
            .env_remove("RQ_HOST");
        cmd2.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        feeders.push(FeederProc {
            child: cmd2.spawn().unwrap(),
            host: host.into(),
        });
    }
    q.wait_for("jobs to finish", 60, |q| q.count("finished") == 41);
    let runners: std::collections::HashSet<String> =
        q.jobs().iter().map(|j| text(j, "runner")).collect();
    assert!(runners.contains("uts2"));
    assert!(
        runners.iter().all(|r| r == "uts1" || r == "uts2"),
        "{runners:?}"
    );
    assert_eq!(q.rq(&["stdout", "41"]).ok().stdout, "uts2\n");
}

fn priority_order_then_oldest_first(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let job = |p: &str, name: &str| {
        q.rq(&[
            "submit",
            "-q",
            "-p",
            p,
            &format!("echo {name} >> {}", ledger.display()),
        ])
        .ok();
    };
    job("0", "a");
    job("5", "b");
    job("-1", "c");
    job("5", "d");
    job("10", "e");
    let mut f = q.feeder("h1", &["--max_feed", "1", "--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(q.ledger_lines(), ["e", "b", "d", "a", "c"]);
}

fn runner_restrictions_holding_and_max_feed(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let running = q.tmp.path().join("running");
    std::fs::create_dir_all(&running).unwrap();
    // Concurrency probe: each job notes how many jobs run at once.
    let probe = format!(
        "touch {r}/$RQ_JID; ls {r} | wc -l >> {l}; sleep 0.3; rm {r}/$RQ_JID",
        r = running.display(),
        l = ledger.display()
    );
    for _ in 0..8 {
        q.rq(&["submit", "-q", "--runner", "node1", &probe]).ok();
    }
    q.rq(&["submit", "-q", "--runner", "node10", "echo wrong host"])
        .ok();
    q.rq(&["submit", "-q", "--stage", "echo held"]).ok();
    let mut f = q.feeder("node1.cluster.example", &["--max_feed", "2"]);
    let _other = q.feeder("node2", &["--max_feed", "2"]);
    q.wait_for("probes to finish", 60, |q| q.count("finished") == 8);
    std::thread::sleep(Duration::from_millis(500));
    let jobs = q.jobs();
    for job in &jobs[..8] {
        assert_eq!(text(job, "runner"), "node1.cluster.example");
    }
    assert_eq!(text(&jobs[8], "state"), "pending", "node10 is not node1");
    assert_eq!(text(&jobs[9], "state"), "holding");
    let widths: Vec<usize> = q
        .ledger_lines()
        .iter()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(widths.len(), 8);
    assert!(
        widths.iter().all(|w| *w <= 2),
        "max_feed 2 exceeded: {widths:?}"
    );
    assert!(
        widths.contains(&2),
        "slots were not used in parallel: {widths:?}"
    );
    // Released from holding, the job runs.
    q.rq(&["update", "10", "state=pending"]).ok();
    q.wait_for("held job to run", 20, |q| q.count("finished") == 9);
    assert_eq!(q.rq(&["stdout", "10"]).ok().stdout, "held\n");
    f.signal(libc::SIGTERM);
    assert_eq!(f.wait_exit(Duration::from_secs(10)), Some(0));
}

fn job_environment_directory_stdin_and_signals(store: StoreKind) {
    let q = TestQueue::on(store);
    let work = q.tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let input = q.tmp.path().join("input");
    std::fs::write(&input, "from stdin\n").unwrap();
    let mut cmd = rq_command();
    cmd.current_dir(&work).args([
        q.q(),
        "submit",
        "-q",
        "-t",
        "envtest",
        "--stdin",
        input.to_str().unwrap(),
        "--",
        "pwd; cat; echo $RQ_JID $RQ_TAG $RQ_RUNNER; echo $RQ; echo $RQ_STDOUT; test -d \"$RQ_DATA\" && echo data-ok; echo $(echo $PATH | tr : '\\n' | tail -n1) $(echo $PATH | tr : '\\n' | grep -cx \"$RQ_BIN\"); trap -p | wc -l; ls -l /proc/$$/fd | grep -c -E '/db|/pid|log|doorbell'; true",
    ]);
    run_cmd(cmd, None).ok();
    q.rq(&["submit", "-q", "kill -TERM $$"]).ok();
    q.rq(&["submit", "-q", "exit 7"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    let out = q.rq(&["stdout", "1"]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], work.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(lines[1], "from stdin");
    assert_eq!(lines[2], "1 envtest h1");
    assert_eq!(lines[3], q.path.to_str().unwrap());
    assert_eq!(lines[4], q.files().join("stdout/1").to_str().unwrap());
    assert_eq!(lines[5], "data-ok");
    // Q/bin once, and last: looking up local programs must not ask the file server.
    assert_eq!(
        lines[6],
        format!("{} 1", q.files().join("bin").to_str().unwrap())
    );
    assert_eq!(lines[7], "0", "jobs must not inherit ignored signals");
    assert_eq!(
        lines[8], "0",
        "no database, lock or log descriptor may leak into jobs"
    );
    let jobs = q.jobs();
    assert_eq!(jobs[1]["exit_status"], serde_json::Value::Null);
    assert_eq!(text(&jobs[1], "signal"), "TERM");
    assert_eq!(int(&jobs[2], "exit_status"), 7);
    let v = q.rq(&["status"]).ok().value();
    assert_eq!(v["exit_status"]["failures"], 2);
    assert_eq!(v["exit_status"]["successes"], 1);
}

fn one_feeder_per_host_per_queue(store: StoreKind) {
    let q = TestQueue::on(store);
    let _f = q.feeder("h1", &[]);
    q.wait_for("feeder to start", 10, |q| {
        q.rq_as("h1", &["pid"]).status == 0
    });
    let out = q.rq_as("h1", &["feed"]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("already feeding"), "{}", out.stderr);
    let quiet = q.rq_as("h1", &["feed", "--quiet"]);
    assert_eq!(quiet.status, 1);
    assert!(quiet.stderr.is_empty());
    // start is idempotent: nothing to do, success
    let start = q.rq_as("h1", &["start"]);
    assert_eq!(start.status, 0);
    assert!(start.stdout.is_empty());
    // another host may feed the same queue
    let other = q.feeder("h2", &[]);
    q.wait_for("second host's feeder", 10, |q| {
        q.rq_as("h2", &["feeder"]).status == 0
    });
    assert_eq!(q.rq_as("h2", &["feeder"]).value()["feeder"], true);
    assert_eq!(q.rq_as("h3", &["feeder"]).status, 1);
    drop(other);
}

fn shutdown_drains_running_jobs(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "sleep 1; echo drained"]).ok();
    // One slot: the second job could only start after the first ends, when the feeder
    // is already draining.
    let mut f = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("job to start", 10, |q| q.count("running") == 1);
    q.rq(&["submit", "-q", "echo never"]).ok();
    let out = q.rq_as("h1", &["shutdown"]).ok();
    assert!(out.stdout.contains("signaled to stop"));
    assert_eq!(f.wait_exit(Duration::from_secs(15)), Some(0));
    let jobs = q.jobs();
    assert_eq!(text(&jobs[0], "state"), "finished");
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "drained\n");
    assert_eq!(
        text(&jobs[1], "state"),
        "pending",
        "a draining feeder claims nothing"
    );
    assert_eq!(
        q.rq_as("h1", &["shutdown"]).status,
        1,
        "no feeder left to signal"
    );
}

fn stop_marks_dead_and_restartable_jobs_run_again(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    q.rq(&[
        "submit",
        "-q",
        "--restartable",
        &format!("echo run >> {}; {}", ledger.display(), q.held()),
    ])
    .ok();
    q.rq(&["submit", "-q", &q.held()]).ok();
    let mut f = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("jobs to start", 10, |q| q.count("running") == 2);
    let out = q.rq_as("h1", &["stop"]).ok();
    assert!(out.stdout.contains("stop now"));
    assert_eq!(f.wait_exit(Duration::from_secs(15)), Some(0));
    let jobs = q.jobs();
    assert_eq!(
        text(&jobs[0], "state"),
        "pending",
        "restartable: queued again"
    );
    assert_eq!(text(&jobs[1], "state"), "dead");
    assert_eq!(text(&jobs[1], "signal"), "TERM");
    // a new feeder runs the restartable job again
    let _f2 = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("restartable job to run again", 10, |q| {
        q.ledger_lines().len() == 2
    });
    let job = &q.rq(&["list", "1"]).ok().records()[0];
    assert_eq!(int(job, "attempts"), 2);
}

fn a_crashed_feeder_is_cleaned_up_by_the_next_one_on_its_host(store: StoreKind) {
    let q = TestQueue::on(store);
    let marker = q.tmp.path().join("alive");
    q.rq(&[
        "submit",
        "-q",
        &format!("while true; do touch {}; sleep 0.1; done", marker.display()),
    ])
    .ok();
    q.rq(&["submit", "-q", "--restartable", &q.held()]).ok();
    let mut f = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("jobs to start", 10, |q| {
        q.rq(&["query", "state=running", "pid!=null"])
            .ok()
            .records()
            .len()
            == 2
    });
    // kill -9 the feeder: its jobs keep running as orphans
    f.signal(libc::SIGKILL);
    f.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(marker.exists());
    let pids: Vec<i64> = q.jobs().iter().map(|j| int(j, "pid")).collect();
    let _f2 = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("the orphan to be marked dead", 20, |q| q.count("dead") == 1);
    // the orphaned job process is gone
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        unsafe { libc::kill(pids[0] as i32, 0) } != 0,
        "orphan job still running"
    );
    std::fs::remove_file(&marker).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!marker.exists(), "orphan job still writing");
    // the restartable one runs again under the new feeder
    q.wait_for("restartable job running again", 10, |q| {
        let j = &q.rq(&["list", "2"]).ok().records()[0];
        text(j, "state") == "running" && int(j, "attempts") == 2
    });
}

fn daemon_mode_with_log_rolling(store: StoreKind) {
    let q = TestQueue::on(store);
    let log = q.tmp.path().join("feeder.log");
    let out = q
        .rq_as(
            "h1",
            &[
                "feed",
                "-D",
                "--shell",
                "sh -c",
                "--min_sleep",
                "0.05",
                "--log",
                log.to_str().unwrap(),
                "--log_size",
                "2000",
            ],
        )
        .ok();
    let pid = started_pid(&out.stdout);
    let _guard = Daemon(pid);
    assert_eq!(q.rq_as("h1", &["pid"]).value()["pid"], pid as i64);
    let lines: String = (0..40).map(|i| format!("echo {i}\n")).collect();
    q.rq_stdin(&["submit", "-q"], &lines).ok();
    q.wait_for("jobs to finish", 30, |q| q.count("finished") == 40);
    assert!(q.rq_as("h1", &["shutdown"]).status == 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unsafe { libc::kill(pid, 0) } == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(unsafe { libc::kill(pid, 0) } != 0, "daemon did not exit");
    let rolled = q.tmp.path().join("feeder.log.1");
    assert!(rolled.exists(), "log was not rolled");
    assert!(std::fs::metadata(&log).unwrap().len() < 4000);
    let all = std::fs::read_to_string(&rolled).unwrap() + &std::fs::read_to_string(&log).unwrap();
    assert!(all.contains("finished - jid"));
}

fn seed_walkthrough_four_hosts(store: StoreKind) {
    let q = TestQueue::on(store);
    let feeders: Vec<FeederProc> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "2"]))
        .collect();
    let lines: String = (0..30)
        .map(|i| format!("echo {i} && sleep 0.2\n"))
        .collect();
    q.rq_stdin(&["submit", "-q"], &lines).ok();
    q.rq(&["submit", "-q", "false"]).ok();
    q.wait_for("some jobs running", 20, |q| q.count("running") > 0);
    let running = q.rq(&["list", "running"]).ok().records();
    assert!(!running.is_empty() && running.iter().all(|r| text(r, "state") == "running"));
    let status = q.rq(&["status"]).ok().value();
    assert!(!status["running_per_host"].as_object().unwrap().is_empty());
    q.wait_for("all jobs to finish", 60, |q| q.count("finished") == 31);
    assert_eq!(q.rq(&["list", "finished"]).ok().records().len(), 31);
    let ok = q.rq(&["query", "exit_status=0"]).ok().stdout;
    let deleted = q.rq_stdin(&["delete", "-"], &ok).ok().records();
    assert_eq!(deleted.len(), 30);
    let left = q.jobs();
    assert_eq!(left.len(), 1);
    assert_eq!(int(&left[0], "exit_status"), 1);
    drop(feeders);
}

fn orphan_files_are_removed_at_start(store: StoreKind) {
    let q = TestQueue::on(store);
    let old = q.files().join("stdout/9999");
    let fresh = q.files().join("stdout/9998");
    std::fs::write(&old, "x").unwrap();
    std::fs::write(&fresh, "x").unwrap();
    let t = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!old.exists());
    assert!(
        fresh.exists(),
        "files younger than ten minutes may belong to a submit in progress"
    );
}

fn dead_restartable_jobs_are_eligible(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "--restartable", "echo again"]).ok();
    q.rq(&["submit", "-q", "echo not again"]).ok();
    q.sql("UPDATE jobs SET state = 'dead'");
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
    let jobs = q.jobs();
    assert_eq!(text(&jobs[0], "state"), "finished");
    assert_eq!(text(&jobs[1], "state"), "dead");
}

fn restart_of_a_started_feeder_keeps_feeding(store: StoreKind) {
    let q = TestQueue::on(store);
    let out = q
        .rq_as("h1", &["start", "--shell", "sh -c", "--min_sleep", "0.05"])
        .ok();
    let pid = started_pid(&out.stdout) as i64;
    let _guard = Daemon(pid as i32);
    // start again: already running, says nothing, succeeds
    let again = q.rq_as("h1", &["start"]).ok();
    assert!(again.stdout.is_empty());
    q.rq(&["submit", "-q", "sleep 0.5; echo first"]).ok();
    q.wait_for("job to start", 10, |q| q.count("running") == 1);
    assert!(q.rq_as("h1", &["restart"]).ok().stdout.contains("restart"));
    q.wait_for("the first job to finish", 10, |q| q.count("finished") == 1);
    // the same process feeds on after re-executing itself (its log says so twice)
    let state = rq::control::state_dir(
        Some(&q.home().join(".rq")),
        "h1",
        &q.files().canonicalize().unwrap(),
    );
    let log = || std::fs::read_to_string(state.join("log")).unwrap_or_default();
    q.wait_for("the re-executed feeder", 10, |_| {
        log().matches("** STARTED **").count() == 2
    });
    assert!(log().contains("** RESTARTING **"), "{}", log());
    q.wait_for("feeder back", 10, |q| q.rq_as("h1", &["pid"]).status == 0);
    assert_eq!(q.rq_as("h1", &["pid"]).value()["pid"], pid);
    q.rq(&["submit", "-q", "echo second"]).ok();
    q.wait_for("a job after the restart", 10, |q| q.count("finished") == 2);
    assert_eq!(q.rq_as("h1", &["shutdown"]).status, 0);
}

fn sql_debug_traces_statements(store: StoreKind) {
    let q = TestQueue::on(store);
    let mut cmd = rq_command();
    cmd.env("RQ_SQL_DEBUG", "1").args([q.q(), "list"]);
    let out = run_cmd(cmd, None).ok();
    assert!(out.stderr.contains("rq sql: SELECT"), "{}", out.stderr);
}

fn long_jobs_are_not_claimed_ahead_so_idle_hosts_get_them(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    for _ in 0..4 {
        q.rq(&[
            "submit",
            "-q",
            &format!("sleep 1.5; echo $RQ_RUNNER >> {}", ledger.display()),
        ])
        .ok();
    }
    let _a = q.feeder("first", &["--max_feed", "1"]);
    q.wait_for("the first job to start", 10, |q| q.count("running") == 1);
    let _b = q.feeder("second", &["--max_feed", "1"]);
    q.wait_for("the second host to take a job", 10, |q| {
        q.rq(&["query", "state=running", "runner=second"])
            .ok()
            .records()
            .len()
            == 1
    });
    // Each host holds only what it runs: nothing claimed ahead of long jobs.
    q.wait_for("every job to finish", 20, |q| q.count("finished") == 4);
    let lines = q.ledger_lines();
    assert_eq!(
        lines.iter().filter(|l| *l == "first").count(),
        2,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "second").count(),
        2,
        "{lines:?}"
    );
}

fn a_daemon_without_log_option_logs_to_its_state_dir(store: StoreKind) {
    let q = TestQueue::on(store);
    let out = q
        .rq_as(
            "h1",
            &["feed", "-D", "--shell", "sh -c", "--min_sleep", "0.05"],
        )
        .ok();
    let pid = started_pid(&out.stdout);
    let _guard = Daemon(pid);
    let encoded = q
        .files()
        .to_str()
        .unwrap()
        .replace('%', "%25")
        .replace('/', "%2F");
    let log = std::path::Path::new(&q.home())
        .join(".rq")
        .join("h1")
        .join(encoded)
        .join("log");
    q.wait_for("the daemon's default log", 10, |_| {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("** STARTED **"))
    });
}

fn shell_none_runs_plain_commands_directly_and_the_rest_in_sh(store: StoreKind) {
    let q = TestQueue::on(store);
    let work = q.tmp.path().join("work dir");
    std::fs::create_dir_all(&work).unwrap();
    // A program of the queue's bin/ is found on the job's PATH without a shell.
    std::fs::write(
        q.files().join("bin/hello"),
        "#!/bin/sh\necho \"hello $1 from $RQ_JID\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        q.files().join("bin/hello"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = rq_command();
    cmd.current_dir(&work)
        .arg(q.q())
        .arg("submit")
        .arg("-q")
        .arg("-");
    let jobs = "hello world\n\
                printenv RQ_JID\n\
                pwd\n\
                false\n\
                echo a | tr a b\n\
                exit 7\n\
                no-such-program here\n\
                echo $RQ_JID\n";
    run_cmd(cmd, Some(jobs)).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty", "--shell", "none"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    let out = |jid: &str| q.rq(&["stdout", jid]).ok().stdout;
    assert_eq!(out("1"), "hello world from 1\n");
    assert_eq!(out("2"), "2\n");
    assert_eq!(
        out("3").trim_end(),
        work.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(out("5"), "b\n");
    assert_eq!(out("8"), "8\n");
    let jobs = q.jobs();
    let status = |i: usize| jobs[i]["exit_status"].as_i64();
    assert_eq!(status(0), Some(0));
    assert_eq!(status(3), Some(1));
    assert_eq!(status(5), Some(7));
    assert_eq!(
        status(6),
        Some(127),
        "an unknown program fails as in a shell"
    );
    assert!(q.rq(&["stderr", "7"]).ok().stdout.contains("not found"));
}

crate::on_both_stores!(
    several_hosts_run_every_job_exactly_once,
    priority_order_then_oldest_first,
    runner_restrictions_holding_and_max_feed,
    job_environment_directory_stdin_and_signals,
    one_feeder_per_host_per_queue,
    shutdown_drains_running_jobs,
    stop_marks_dead_and_restartable_jobs_run_again,
    a_crashed_feeder_is_cleaned_up_by_the_next_one_on_its_host,
    daemon_mode_with_log_rolling,
    seed_walkthrough_four_hosts,
    orphan_files_are_removed_at_start,
    dead_restartable_jobs_are_eligible,
    restart_of_a_started_feeder_keeps_feeding,
    sql_debug_traces_statements,
    long_jobs_are_not_claimed_ahead_so_idle_hosts_get_them,
    a_daemon_without_log_option_logs_to_its_state_dir,
    shell_none_runs_plain_commands_directly_and_the_rest_in_sh,
);
