//! Faults of the PostgreSQL store, on real servers: a server crash and restart while
//! feeders run, connections killed under the feeders, and many feeders and submitters
//! at once. Each job must run exactly once (a ledger every job appends to says so).

mod common;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Jobs that append "jid host attempt" to the ledger, after `pause`.
fn ledger_jobs(q: &TestQueue, n: usize, pause: &str) -> String {
    let line = format!(
        "sleep {pause}; echo \"$RQ_JID $RQ_RUNNER $RQ_ATTEMPTS\" >> {}\n",
        q.ledger().display()
    );
    let path = q.tmp.path().join(format!("jobs-{n}-{pause}"));
    std::fs::write(&path, line.repeat(n)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Every one of `total` jobs finished with exit 0 and ran exactly once.
fn each_ran_once(q: &TestQueue, total: usize) -> HashMap<String, usize> {
    let mut runs: HashMap<i64, usize> = HashMap::new();
    let mut hosts: HashMap<String, usize> = HashMap::new();
    for l in q.ledger_lines() {
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 3, "{l}");
        *runs.entry(parts[0].parse().unwrap()).or_default() += 1;
        *hosts.entry(parts[1].to_string()).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs ran more than once: {twice:?}");
    assert_eq!(runs.len(), total, "every job ran");
    let finished = q.rq(&[
        "list",
        "finished",
        "-f",
        "jid,exit_status",
        "--format",
        "json",
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&finished.ok().stdout).unwrap();
    assert_eq!(rows.len(), total);
    assert!(rows.iter().all(|r| r["exit_status"] == 0), "all exited 0");
    q.integrity_ok();
    hosts
}

/// Every feeder is still running (it rode the fault out) and stops when asked.
fn all_alive_and_stopped(q: &TestQueue, feeders: &[FeederProc]) {
    for f in feeders {
        assert_eq!(
            q.rq_as(&f.host, &["shutdown"]).status,
            0,
            "{} is alive",
            f.host
        );
    }
}

#[test]
fn a_server_crash_mid_run_loses_no_job_and_runs_none_twice() {
    let server = pg::Server::private();
    let q = TestQueue::on_server(&server);
    let total = 300;
    let jobs = ledger_jobs(&q, total, "0.05");
    q.rq(&["submit", "-q", "-i", &jobs]).ok();
    let feeders: Vec<FeederProc> = ["h1", "h2"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "3"]))
        .collect();
    q.wait_for("a third of the jobs", 60, |q| {
        q.ledger_lines().len() >= total / 3
    });
    // Killed as in a crash (no checkpoint, WAL recovery), down for two seconds.
    server.crash_and_restart(Duration::from_secs(2));
    q.wait_for("every job to finish after the restart", 120, |q| {
        q.count("finished") == total as i64
    });
    let hosts = each_ran_once(&q, total);
    assert_eq!(hosts.len(), 2, "both feeders came back: {hosts:?}");
    all_alive_and_stopped(&q, &feeders);
}

#[test]
fn connections_killed_under_the_feeders_are_replaced() {
    let server = pg::Server::private();
    let q = TestQueue::on_server(&server);
    let total = 300;
    let jobs = ledger_jobs(&q, total, "0.02");
    q.rq(&["submit", "-q", "-i", &jobs]).ok();
    let feeders: Vec<FeederProc> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "2"]))
        .collect();
    // Terminate every rq connection a few times while the jobs run.
    let started = Instant::now();
    let mut killed = 0;
    while q.count("finished") < total as i64 && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(300));
        let n: usize = server
            .psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name LIKE 'rq %' AND pid <> pg_backend_pid()",
            )
            .trim()
            .parse()
            .unwrap();
        killed += n;
    }
    assert!(killed >= 3, "connections were killed ({killed})");
    q.wait_for("every job to finish", 60, |q| {
        q.count("finished") == total as i64
    });
    each_ran_once(&q, total);
    all_alive_and_stopped(&q, &feeders);
}

#[test]
fn eight_feeders_and_two_submitters_run_ten_thousand_jobs_once_each() {
    let q = TestQueue::on(StoreKind::Postgres);
    let feeders: Vec<FeederProc> = (1..=8)
        .map(|i| q.feeder(&format!("n{i}"), &["--max_feed", "4"]))
        .collect();
    let n = 5000;
    let mut submitters = Vec::new();
    for _ in 0..2 {
        let jobs = ledger_jobs(&q, n, "0");
        std::fs::rename(&jobs, format!("{jobs}-{}", submitters.len())).unwrap();
        let mut cmd = rq_command();
        cmd.args([
            q.q(),
            "submit",
            "-q",
            "-i",
            &format!("{jobs}-{}", submitters.len()),
        ]);
        submitters.push(cmd.spawn().unwrap());
    }
    for mut s in submitters {
        assert!(s.wait().unwrap().success());
    }
    q.wait_for("every job to finish", 400, |q| {
        q.count("finished") == 2 * n as i64
    });
    let hosts = each_ran_once(&q, 2 * n);
    assert_eq!(hosts.len(), 8, "every feeder ran jobs: {hosts:?}");
    drop(feeders);
}

#[test]
fn backup_and_snapshot_copy_the_queue_into_a_directory_and_recover_is_refused() {
    let q = TestQueue::on(StoreKind::Postgres);
    q.rq(&["submit", "-q", "echo saved"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    // A job running while the copies are made: copied as it is, left running.
    q.rq(&["submit", "-q", &q.held()]).ok();
    let _running = q.feeder("h1", &[]);
    q.wait_for("job 2 to run with its pid recorded", 20, |q| {
        q.jobs()
            .iter()
            .any(|j| int(j, "jid") == 2 && !field(j, "pid").is_null())
    });
    let before = q.dump();
    let at = |dir: &std::path::Path, args: &[&str]| {
        let mut all = vec![dir.to_str().unwrap()];
        all.extend_from_slice(args);
        rq_in(q.tmp.path(), &all, None)
    };

    let backup = q.tmp.path().join("saved.bak");
    let report = q.rq(&["backup", backup.to_str().unwrap()]).ok().value();
    assert_eq!(report["jobs"], 2, "{report}");
    assert_eq!(
        at(&backup, &["list", "all", "--format", "json"])
            .ok()
            .stdout,
        before
    );
    assert_eq!(at(&backup, &["stdout", "1"]).ok().stdout, "saved\n");
    q.rq(&["backup", backup.to_str().unwrap()]).fails();

    let snapshot = q.tmp.path().join("saved.snapshot");
    q.rq(&["snapshot", snapshot.to_str().unwrap()]).ok();
    assert_eq!(
        at(&snapshot, &["list", "all", "--format", "json"])
            .ok()
            .stdout,
        before
    );
    assert!(
        !snapshot.join("stdout/1").exists(),
        "a snapshot holds rows only"
    );
    // By default in the current directory, named after the queue's schema.
    let schema = format!("rq_{}", q.q().rsplit("queue=").next().unwrap());
    q.rq(&["snapshot"]).ok();
    assert!(q.tmp.path().join(format!("{schema}.snapshot/db")).is_file());
    // --snapshot: a read-only mode on a temporary one.
    assert_eq!(
        q.rq(&["list", "all", "-s", "--format", "json"]).ok().stdout,
        before
    );

    // The queue itself as it was: not paused, the job still running.
    assert_eq!(q.dump(), before);
    assert!(q.rq(&["configure"]).ok().value().get("paused").is_none());
    assert_eq!(q.count("running"), 1);

    // rotate's archive is named after the queue too.
    let rotated = q.rq(&["rotate"]).ok().value();
    let archive = rotated["rotation"].as_str().unwrap().to_string();
    assert!(
        archive.starts_with(&format!("{}/{schema}.", q.tmp.path().display()))
            && archive.ends_with(".tgz"),
        "{archive}"
    );
    assert_eq!(rotated["jobs"], 1);

    // recover works on a database file: refused clearly, nothing made.
    let out = q.rq(&["recover"]).fails();
    assert_eq!(out.status, 2);
    assert!(out.stderr.contains("backup"), "{}", out.stderr);
    // A queue name is checked, and a queue that does not exist is named as such.
    let bad = format!("{}?queue=Bad-Name", pg::server().url());
    rq_in(q.tmp.path(), &[&bad, "status"], None).fails();
    let missing = format!("{}?queue=nothing_here", pg::server().url());
    let out = rq_in(q.tmp.path(), &[&missing, "status"], None).fails();
    assert!(out.stderr.contains("no such queue"), "{}", out.stderr);
}

/// A feeder that polls (full polls and its heartbeat's look) only every minute and naps
/// half a minute between looks: only a NOTIFY, ending its nap, brings it work sooner.
fn sleepy_feeder(q: &TestQueue) -> FeederProc {
    q.rq(&["configure", "heartbeat=60s", "lease=3m"]).ok();
    let f = q.feeder("h1", &["--max_sleep", "60", "--min_sleep", "30"]);
    q.wait_for("the feeder to start", 10, |q| {
        q.rq(&["feeders"]).ok().stdout.contains("h1")
    });
    std::thread::sleep(Duration::from_secs(2));
    f
}

/// The `nth` job, put there with SQL, which rings no doorbell file, and a NOTIFY: it must
/// run well before the feeder's nap or poll would have found it.
fn a_notified_job_runs_at_once(q: &TestQueue, nth: i64) {
    let schema = q.q().rsplit("queue=").next().unwrap().to_string();
    q.sql(&format!(
        "INSERT INTO jobs (state, submitted, submitter, command) \
         VALUES ('pending', to_char(clock_timestamp() AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'sql', 'echo heard'); \
         NOTIFY rq_{schema}"
    ));
    q.wait_for(
        "the job to run (a NOTIFY missed waits for the next poll, in a minute; one heard \
         only after the nap, up to 36 s)",
        20,
        |q| q.count("finished") == nth,
    );
    // (Its jid: after a crash the server's sequence may have skipped ahead.)
    let jid = int(q.jobs().last().unwrap(), "jid");
    assert_eq!(q.rq(&["stdout", &jid.to_string()]).ok().stdout, "heard\n");
}

#[test]
fn an_idle_feeder_hears_a_notify_at_once() {
    let q = TestQueue::on(StoreKind::Postgres);
    let mut f = sleepy_feeder(&q);
    a_notified_job_runs_at_once(&q, 1);
    f.signal(libc::SIGTERM);
    assert_eq!(f.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn the_feeder_listens_again_after_a_server_restart() {
    let server = pg::Server::private();
    let q = TestQueue::on_server(&server);
    let mut f = sleepy_feeder(&q);
    a_notified_job_runs_at_once(&q, 1);
    server.crash_and_restart(Duration::from_secs(1));
    // The listener tries again every few seconds.
    std::thread::sleep(Duration::from_secs(8));
    a_notified_job_runs_at_once(&q, 2);
    f.signal(libc::SIGTERM);
    assert_eq!(f.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_queue_without_a_file_directory_writes_nothing_where_it_is_asked_from() {
    let url = pg::new_queue_url();
    let cwd = tempfile::tempdir().unwrap();
    rq_in(cwd.path(), &[&url, "create"], None).ok();
    rq_in(cwd.path(), &[&url, "submit", "-q", "true"], None).ok();
    for mode in ["status", "feeders", "list", "metrics"] {
        rq_in(cwd.path(), &[&url, mode], None).ok();
    }
    // Its feeder keeps everything in the database too (and its own state under HOME).
    let home = tempfile::tempdir().unwrap();
    let mut cmd = rq_command();
    cmd.env("HOME", home.path()).current_dir(cwd.path()).args([
        &url,
        "feed",
        "--exit_when_empty",
        "--shell",
        "sh -c",
    ]);
    assert_eq!(run_cmd(cmd, None).status, 0);
    assert_eq!(
        rq_in(cwd.path(), &[&url, "status"], None).ok().value()["jobs"]["finished"],
        1
    );
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_multi_host_url_reaches_the_server_that_answers() {
    // As with a replicated server: the first host is down (here: no socket there), the
    // driver tries the next, and only a read-write server is taken.
    let url = pg::server().url().replacen(
        "postgres://rq@",
        "postgres://rq@%2Fnonexistent%2Frq-down,",
        1,
    );
    let url = format!(
        "{url}?target_session_attrs=read-write&queue=multi{}",
        std::process::id()
    );
    let cwd = tempfile::tempdir().unwrap();
    let files = cwd.path().join("files");
    rq_in(cwd.path(), &[&url, "create"], None).ok();
    rq_in(
        cwd.path(),
        &[&url, "configure", &format!("files={}", files.display())],
        None,
    )
    .ok();
    rq_in(
        cwd.path(),
        &[&url, "submit", "-q", "echo via the second host"],
        None,
    )
    .ok();
    let mut cmd = rq_command();
    cmd.current_dir(cwd.path())
        .env("RQ_HOST", "m1")
        .env("HOME", cwd.path())
        .args([&url, "feed", "--exit_when_empty", "--shell", "sh -c"]);
    assert_eq!(run_cmd(cmd, None).status, 0);
    let out = rq_in(cwd.path(), &[&url, "stdout", "1"], None).ok();
    assert_eq!(out.stdout, "via the second host\n");
}

/// What psql prints for `sql` run in a PostgreSQL test queue's schema (past the "SET" of
/// its search path), behind rq's back.
fn psql_in(q: &TestQueue, sql: &str) -> String {
    let schema = format!("rq_{}", q.q().rsplit("queue=").next().unwrap());
    let out = pg::server().psql(&format!("SET search_path TO {schema}; {sql}"));
    let lines: Vec<&str> = out.trim().lines().skip(1).collect();
    lines.join("\n")
}

#[test]
fn an_older_queue_is_migrated_by_the_first_writer_and_a_newer_one_refused() {
    let q = TestQueue::on(StoreKind::Postgres);
    q.rq(&["submit", "-q", "true"]).ok();
    q.rq(&["submit", "-q", "--after", "1", "true"]).ok();
    // Behind rq's back (rq's own execute would migrate first: it writes).
    let psql = |sql: &str| psql_in(&q, sql).lines().last().unwrap_or("").to_string();
    // Put the queue back as the first PostgreSQL schema (version 5) made it.
    psql(
        "ALTER TABLE jobs ALTER COLUMN jid DROP DEFAULT; \
         DROP TRIGGER jid_assign ON jobs; \
         CREATE TRIGGER jid_assign BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION jid_assign(); \
         DROP TABLE hosts, starts, job_files, dep_work, journals; DROP FUNCTION job_files_deleted() CASCADE; \
         DROP TRIGGER deps_met ON jobs; DROP TRIGGER dep_note ON jobs; \
         CREATE TRIGGER deps_met AFTER UPDATE OF state ON jobs FOR EACH ROW EXECUTE FUNCTION deps_met(); \
         CREATE TRIGGER dep_note AFTER UPDATE OF state ON jobs FOR EACH ROW EXECUTE FUNCTION dep_note(); \
         DROP FUNCTION deps_inserted() CASCADE; \
         ALTER TABLE jobs DROP COLUMN cpu_user, DROP COLUMN cpu_system, DROP COLUMN max_rss, \
         DROP COLUMN read_bytes, DROP COLUMN write_bytes, DROP COLUMN has_dependents; \
         UPDATE meta SET value = '5' WHERE key = 'schema_version'",
    );
    let settled_triggers = || {
        psql(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('jobs') \
             AND tgname IN ('deps_met', 'dep_note') AND pg_get_triggerdef(oid) LIKE '%rq.settling%'",
        )
    };
    assert_eq!(settled_triggers().trim(), "0");
    let version = || psql("SELECT value FROM meta WHERE key = 'schema_version'");
    let jid_default = || {
        psql(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'jobs' \
             AND column_name = 'jid' AND column_default LIKE 'nextval%'",
        )
    };
    assert_eq!(version().trim(), "5");
    assert_eq!(jid_default().trim(), "0");
    // A reader works with it as it is.
    assert_eq!(q.count("pending"), 1);
    assert_eq!(version().trim(), "5");
    // The first writer brings it up to date, then writes.
    q.rq(&["submit", "-q", "true"]).ok();
    assert_eq!(version().trim(), "13");
    let usage_columns = psql(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() \
         AND table_name = 'jobs' AND column_name IN ('cpu_user', 'cpu_system', 'max_rss', \
         'read_bytes', 'write_bytes')",
    );
    assert_eq!(usage_columns.trim(), "5", "version 10's and 11's columns");
    assert_eq!(jid_default().trim(), "1");
    assert_eq!(settled_triggers().trim(), "2", "version 9's triggers");
    let narrowed = psql(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('jobs') \
         AND tgname IN ('deps_met', 'dep_note') AND pg_get_triggerdef(oid) LIKE '%has_dependents%'",
    );
    assert_eq!(narrowed.trim(), "2", "version 12's triggers");
    let flagged = psql("SELECT string_agg(CAST(jid AS text), ',') FROM jobs WHERE has_dependents");
    assert_eq!(flagged.trim(), "1", "the job another waits on");
    let tables = psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_name IN ('hosts', 'starts', 'job_files', 'dep_work')",
    );
    assert_eq!(tables.trim(), "4", "version 7's and 8's tables");
    let unlogged = psql(
        "SELECT string_agg(relname || ':' || CAST(relpersistence AS text), ',' ORDER BY relname) \
         FROM pg_class WHERE relnamespace = to_regnamespace(current_schema()) \
         AND relname IN ('starts', 'journals')",
    );
    assert_eq!(
        unlogged.trim(),
        "journals:u,starts:u",
        "version 13's start journals"
    );
    let jids: Vec<i64> = q.jobs().iter().map(|j| int(j, "jid")).collect();
    assert_eq!(jids, [1, 2, 3]);
    // The wait made before the migration is met by its job's end after it.
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(q.count("finished"), 3);
    // A queue made by a newer rq is refused, with what to do.
    psql("UPDATE meta SET value = '99' WHERE key = 'schema_version'");
    let refused = q.rq(&["status"]).fails();
    assert!(refused.stderr.contains("99"), "{}", refused.stderr);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
}

#[test]
fn a_queue_without_a_job_file_directory_keeps_everything_in_its_database() {
    // Hosts that share no filesystem: the queue's only shared place is the database.
    let q = TestQueue::in_database();
    q.rq(&["configure", "output_cap=4K"]).ok();
    let input = q.tmp.path().join("input");
    std::fs::write(&input, "line one\nline two\n").unwrap();
    let data = q.tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from data\n").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    q.rq(&["submit", "-q", "--stdin", &path(&input), "sort -r"])
        .ok();
    q.rq(&[
        "submit",
        "-q",
        "--data",
        &path(&data),
        "cat $RQ_DATA/in.txt; echo oops >&2; exit 2",
    ])
    .ok();
    q.rq(&["submit", "-q", "head -c 10000 /dev/zero | tr '\\0' x"])
        .ok();
    q.rq(&["submit", "-q", "echo first; sleep 6; echo second"])
        .ok();
    q.rq(&["submit", "-q", "--stage", "--stdin", &path(&input), "cat"])
        .ok();
    let changed = q.tmp.path().join("changed");
    std::fs::write(&changed, "changed stdin\n").unwrap();
    q.rq(&["update", "5", &format!("stdin={}", path(&changed))])
        .ok();
    // Staged without the queue's lock, swapped in by the update's transaction: nothing
    // staged is left, and the job has the new stdin only.
    let staged = q.sql("SELECT count(*) AS n FROM job_files WHERE claim <> ''");
    assert!(staged.stdout.contains("\"n\": 0"), "{}", staged.stdout);
    assert_eq!(q.rq(&["stdin", "5"]).ok().stdout, "changed stdin\n");
    q.rq(&["update", "5", "state=pending"]).ok();
    // The inputs are in the database: the hosts never see these files.
    std::fs::remove_file(&input).unwrap();
    std::fs::remove_file(&changed).unwrap();
    std::fs::remove_dir_all(&data).unwrap();

    let feeder = q.feeder("h1", &["--max_feed", "4"]);
    // A running job's output is uploaded as it comes (for `tail`, from any host).
    q.wait_for("job 4's first line while it runs", 30, |q| {
        let running = q.rq(&["list", "4"]).ok().records()[0]["state"] == "running";
        running && q.rq(&["stdout", "4"]).ok().stdout == "first\n"
    });
    let tail = q.rq(&["tail", "4"]).ok();
    assert_eq!(tail.stdout, "first\nsecond\n");
    q.wait_for("every job to end", 30, |q| q.count("finished") == 5);

    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "line two\nline one\n");
    assert_eq!(q.rq(&["stdout", "2"]).ok().stdout, "from data\n");
    assert_eq!(q.rq(&["stderr", "2"]).ok().stdout, "oops\n");
    assert_eq!(q.rq(&["stdout", "5"]).ok().stdout, "changed stdin\n");
    // Output past the cap is cut, with a line that says so.
    let cut = q.rq(&["stdout", "3"]).ok().stdout;
    assert!(cut.starts_with(&"x".repeat(4096)), "{}", &cut[..100]);
    assert!(!cut.starts_with(&"x".repeat(4097)));
    assert!(
        cut.ends_with(
            "x\nrq: output cut here: the job wrote 10000 bytes to stdout; the queue keeps 4096 (rq QUEUE configure output_cap=SIZE)\n"
        ),
        "{}",
        &cut[4000..]
    );
    // `rq Q wait`'s failure report and ioview read the database too.
    let ioview = q
        .rq_as_env("h1", &["ioview", "2"], &[("RQ_EDITOR", "cat")])
        .ok();
    assert_eq!(ioview.stdout, "from data\noops\n");
    assert_eq!(q.rq(&["stdin", "5"]).ok().stdout, "changed stdin\n");
    let paths = q.rq(&["stdout4", "1"]).fails();
    assert!(paths.stderr.contains("in its database"), "{}", paths.stderr);
    assert_eq!(paths.stderr.lines().count(), 1);
    // The feeder's heartbeat is a row, judged on the server's clock.
    let feeders = q.rq(&["feeders"]).ok().records();
    assert_eq!(feeders.len(), 1);
    assert_eq!(text(&feeders[0], "state"), "alive");
    // Deleting a job deletes its stored files.
    let stored = |jid: i64| {
        let out = q.sql(&format!(
            "SELECT count(*) AS n FROM job_files WHERE jid = {jid}"
        ));
        out.stdout.contains("\"n\": 0")
    };
    assert!(!stored(1));
    q.rq(&["delete", "-q", "1"]).ok();
    assert!(stored(1), "job 1's files outlived it");
    drop(feeder);
    // Nothing of the queue's was written where rq ran (no hosts/, starts/, doorbell), and
    // the host's local copies of job files are gone.
    let mut here: Vec<String> = std::fs::read_dir(q.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    here.sort();
    assert_eq!(here, ["feeder-h1.err", "home"]);
    let mut local = Vec::new();
    for sub in ["stdin", "stdout", "stderr", "data"] {
        let found = walk(&q.home(), sub);
        local.extend(found);
    }
    assert!(local.is_empty(), "{local:?}");
    // A backup is a queue directory with the files as files.
    let backup = q.tmp.path().join("b");
    q.rq(&["backup", backup.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_to_string(backup.join("stdout/2")).unwrap(),
        "from data\n"
    );
    assert_eq!(
        std::fs::read_to_string(backup.join("stdin/5")).unwrap(),
        "changed stdin\n"
    );
}

/// Files under directories named `name` below `root`.
fn walk(root: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() == name {
                found.extend(
                    std::fs::read_dir(&path)
                        .unwrap()
                        .flatten()
                        .map(|e| e.path()),
                );
            } else {
                found.extend(walk(&path, name));
            }
        }
    }
    found
}

#[test]
fn a_frozen_hosts_late_output_never_mixes_with_the_new_runs() {
    // Everything in the database: h1 freezes mid-job, h2 takes the job over and runs it
    // again; h1 thaws and kills its copy (its watchdog, seeing the lease lost, or its
    // heartbeat's tick, seeing the claim taken over: two threads, whichever comes first),
    // and the output that copy wrote while frozen must not reach the queue (its upload
    // checks the claim it no longer holds).
    let q = TestQueue::in_database();
    q.rq(&["configure", "heartbeat=0.5s", "lease=3s"]).ok();
    let h1 = q.feeder("h1", &[]);
    q.rq(&[
        "submit",
        "-q",
        "--restartable",
        "echo \"run on $RQ_RUNNER\"; for i in 1 2 3 4 5 6 7 8; do sleep 0.5; echo \"tick $RQ_RUNNER\"; done",
    ])
    .ok();
    q.wait_for("h1's first line in the queue", 30, |q| {
        q.rq(&["stdout", "1"])
            .ok()
            .stdout
            .starts_with("run on h1\n")
    });
    h1.signal(libc::SIGSTOP);
    let _h2 = q.feeder("h2", &[]);
    q.wait_for("h2 to run the job again", 30, |q| {
        let job = &q.rq(&["list", "1"]).ok().records()[0];
        text(job, "runner") == "h2" && text(job, "state") == "running"
    });
    // h1 wrote ticks meanwhile (its job was not frozen); now it wakes up.
    std::thread::sleep(Duration::from_secs(2));
    h1.signal(libc::SIGCONT);
    q.wait_for("h2's run to end", 30, |q| q.count("finished") == 1);
    let out = q.rq(&["stdout", "1"]).ok().stdout;
    let expected = format!("run on h2\n{}", "tick h2\n".repeat(8));
    assert_eq!(out, expected);
    let job = &q.rq(&["list", "1"]).ok().records()[0];
    assert_eq!(int(job, "attempts"), 2, "{job:?}");
    q.wait_for("h1 to notice and kill its copy", 20, |q| {
        let log = q.feeder_log("h1");
        log.contains("watchdog") || log.contains("was taken over by another host: killed our copy")
    });
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, expected);
}

#[test]
fn an_upload_under_a_claim_no_longer_held_writes_nothing() {
    // The rule the feeder's uploads go by, checked on the store itself: output is written
    // only under the claim the job holds now (the feeder also stops uploading a copy it
    // knows was taken over; this covers the moment before it knows).
    let q = TestQueue::in_database();
    q.rq(&["submit", "-q", &format!("echo from the run; {}", q.held())])
        .ok();
    let _h1 = q.feeder("h1", &[]);
    q.wait_for("the job's first line", 30, |q| {
        q.rq(&["stdout", "1"]).ok().stdout == "from the run\n"
    });
    let claim = text(&q.rq(&["list", "1"]).ok().records()[0], "claim");
    assert!(!claim.is_empty());
    let mut queue =
        rq::queue::Queue::open(std::path::Path::new(q.q()), rq::store::Access::ReadWrite).unwrap();
    let mut upload = |claim: &str, seq: i64, bytes: &[u8]| {
        queue
            .store()
            .write_shared(|tx| {
                rq::store::in_database::upload_output(
                    tx,
                    &rq::store::in_database::RunOutput {
                        jid: 1,
                        claim,
                        earlier_output: true,
                        streams: vec![("stdout", seq, bytes)],
                    },
                )
            })
            .unwrap()
    };
    assert!(!upload("a-stale-claim-1", 0, b"stale\n"));
    assert!(!upload("a-stale-claim-1", 5, b"stale\n"));
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "from the run\n");
    assert!(upload(&claim, 7, b"more\n"));
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "from the run\nmore\n");
    let stale = q.sql("SELECT count(*) AS n FROM job_files WHERE claim = 'a-stale-claim-1'");
    assert!(stale.stdout.contains("\"n\": 0"), "{}", stale.stdout);
    q.rq(&["kill", "1", "--signal", "KILL"]).ok();
}

#[test]
fn outputs_of_several_runs_are_stored_together_only_under_their_claims() {
    // What a feeder's transaction stores of several runs' output at once
    // (`upload_outputs`: a statement per step for all of them): each run's output only
    // while its claim holds, an earlier run's output replaced, small and large parts.
    let q = TestQueue::in_database();
    for _ in 0..3 {
        q.rq(&["submit", "-q", "true"]).ok();
    }
    q.sql("UPDATE jobs SET state = 'running', claim = 'c' || jid");
    q.sql(
        "INSERT INTO job_files (jid, stream, claim, seq, bytes) \
         VALUES (1, 'stdout', 'an-earlier-run', 0, CAST('old' AS bytea))",
    );
    let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut queue =
        rq::queue::Queue::open(std::path::Path::new(q.q()), rq::store::Access::ReadWrite).unwrap();
    use rq::store::in_database::RunOutput;
    let ours = queue
        .store()
        .write_shared(|tx| {
            rq::store::in_database::upload_outputs(
                tx,
                &[
                    RunOutput {
                        jid: 1,
                        claim: "c1",
                        earlier_output: true,
                        streams: vec![("stdout", 0, b"one\n".as_slice()), ("stderr", 0, b"")],
                    },
                    RunOutput {
                        jid: 2,
                        claim: "c2",
                        earlier_output: false,
                        streams: vec![("stdout", 0, big.as_slice())],
                    },
                    RunOutput {
                        jid: 3,
                        claim: "a-stale-claim",
                        earlier_output: true,
                        streams: vec![("stdout", 0, b"stale\n".as_slice())],
                    },
                ],
            )
        })
        .unwrap();
    assert_eq!(ours, [true, true, false]);
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "one\n");
    assert_eq!(
        q.rq(&["stdout", "2"]).ok().stdout.as_bytes(),
        big.as_slice()
    );
    let rows = |sql: &str| q.sql(sql).stdout;
    assert!(
        rows(
            "SELECT count(*) AS n FROM job_files WHERE claim IN ('an-earlier-run', 'a-stale-claim')"
        )
        .contains("\"n\": 0"),
        "an earlier run's or a stale claim's output is stored"
    );
    assert!(
        rows("SELECT count(*) AS n FROM job_files WHERE jid = 1 AND stream = 'stderr' AND claim = 'c1'")
            .contains("\"n\": 1"),
        "an empty stream is one empty chunk"
    );
}

#[test]
fn a_claim_learns_which_jobs_have_inputs_or_an_earlier_runs_output_stored() {
    // What the claim's transaction asks of the jobs it claimed (`stored_files`): a feeder
    // fetches inputs only where some are stored, and clears an earlier run's output only
    // where there is some; then a run's output replaces an earlier run's, and stands
    // alone where there was none.
    let q = TestQueue::in_database();
    let input = q.tmp.path().join("input");
    std::fs::write(&input, "from stdin\n").unwrap();
    let input = input.to_str().unwrap();
    q.rq(&["submit", "-q", "--stdin", input, "cat"]).ok();
    q.rq(&["submit", "-q", "echo second run"]).ok();
    q.rq(&["submit", "-q", "echo only run"]).ok();
    q.sql(
        "INSERT INTO job_files (jid, stream, claim, seq, bytes) VALUES \
         (2, 'stdout', 'an-earlier-run', 0, CAST('first run' AS bytea)), \
         (2, 'stderr', 'an-earlier-run', 0, CAST('' AS bytea)), \
         (3, 'stdin', 'staged-by-an-update', 0, CAST('not yet' AS bytea))",
    );
    let mut queue =
        rq::queue::Queue::open(std::path::Path::new(q.q()), rq::store::Access::ReadWrite).unwrap();
    let stored = queue
        .store()
        .read(|tx| rq::store::in_database::stored_files(tx, &[1, 2, 3, 99]))
        .unwrap();
    use rq::store::in_database::StoredFiles;
    let files = |inputs, earlier_output| StoredFiles {
        inputs,
        earlier_output,
    };
    assert_eq!(stored[&1], files(true, false), "{stored:?}");
    assert_eq!(stored[&2], files(false, true), "{stored:?}");
    assert_eq!(
        stored[&3],
        files(false, false),
        "a staged input is not the job's yet"
    );
    assert_eq!(stored[&99], files(false, false));
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "from stdin\n");
    assert_eq!(q.rq(&["stdout", "2"]).ok().stdout, "second run\n");
    assert_eq!(q.rq(&["stdout", "3"]).ok().stdout, "only run\n");
    let earlier = q.sql("SELECT count(*) AS n FROM job_files WHERE claim = 'an-earlier-run'");
    assert!(earlier.stdout.contains("\"n\": 0"), "{}", earlier.stdout);
}

/// A password in a queue's URL (its user information, or a `password=` parameter) is
/// never printed: not in errors, `status`, listings' queue names or a feeder's log. A role
/// that may not use a queue's schema is told so, not that a table does not exist.
#[test]
fn passwords_in_urls_are_never_shown_and_missing_rights_are_named() {
    let q = TestQueue::on(StoreKind::Postgres);
    q.rq(&["submit", "-q", "echo hi"]).ok();
    let url = q.q().to_string();
    assert!(url.starts_with("postgres://rq@"), "{url}");
    // The test server trusts local connections: any password works, and none may show.
    let in_userinfo = url.replacen("postgres://rq@", "postgres://rq:Pw1secret@", 1);
    let in_param = format!("{url}&password=Pw2secret");
    let cwd = q.tmp.path();
    for shown in [
        rq_in(cwd, &[&in_userinfo, "status"], None).ok().stdout,
        rq_in(cwd, &[&in_param, "status"], None).ok().stdout,
        rq_in(
            cwd,
            &[&in_userinfo.replace("queue=", "queue=BAD"), "status"],
            None,
        )
        .fails()
        .stderr,
        rq_in(
            cwd,
            &[&format!("{in_param}&connect_timeout=soon"), "status"],
            None,
        )
        .fails()
        .stderr,
        rq_in(
            cwd,
            &[&in_param.replace("queue=", "queue=nosuch"), "status"],
            None,
        )
        .fails()
        .stderr,
    ] {
        assert!(
            !shown.contains("Pw1secret") && !shown.contains("Pw2secret"),
            "a password shown: {shown}"
        );
    }
    // `create` names the new queue: without the password.
    let created = rq_in(
        cwd,
        &[&in_param.replace("queue=", "queue=x"), "create"],
        None,
    )
    .ok()
    .value();
    let named = created["q"].as_str().unwrap();
    assert!(named.contains("password=<hidden>"), "{created}");
    assert!(!named.contains("Pw2secret"), "{created}");
    // A feeder's log.
    let log = q.tmp.path().join("feeder.log");
    let mut cmd = rq_command();
    cmd.env("RQ_HOST", "h1")
        .env("HOME", q.home())
        .current_dir(cwd)
        .args([
            &in_userinfo,
            "feed",
            "--exit_when_empty",
            "--min_sleep",
            "0.05",
        ])
        .arg("--log")
        .arg(&log)
        .args(["--shell", "sh -c"]);
    run_cmd(cmd, None).ok();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.is_empty());
    assert!(!logged.contains("Pw1secret"), "{logged}");
    assert_eq!(q.count("finished"), 1);
    // What `ps` shows of a running feeder (its arguments) holds no password either.
    let log2 = q.tmp.path().join("feeder2.log");
    let mut feeder = rq_command()
        .env("RQ_HOST", "h2")
        .env("HOME", q.home())
        .current_dir(cwd)
        .args([&in_userinfo, "feed", "--min_sleep", "0.05", "--log"])
        .arg(&log2)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log2)
        .unwrap_or_default()
        .contains("STARTED")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the feeder never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", feeder.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let _ = feeder.kill();
    let _ = feeder.wait();
    assert!(!cmdline.contains("Pw1secret"), "{cmdline}");
    assert!(cmdline.contains("rq:*********@"), "{cmdline}");

    // A role without rights on the queue's schema.
    pg::server().psql("DROP ROLE IF EXISTS rq_nobody; CREATE ROLE rq_nobody LOGIN");
    let nobody = url.replacen("postgres://rq@", "postgres://rq_nobody:Pw3secret@", 1);
    let refused = rq_in(cwd, &[&nobody, "status"], None).fails();
    assert!(
        refused.stderr.contains("permission denied") && refused.stderr.contains("GRANT USAGE"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("Pw3secret"), "{}", refused.stderr);
}

/// A trigger planted in a PostgreSQL queue's schema is refused by writers (named), and
/// readers still read the queue.
#[test]
fn writers_refuse_a_queue_schema_with_objects_rq_did_not_make() {
    let q = TestQueue::on(StoreKind::Postgres);
    q.rq(&["submit", "-q", "true"]).ok();
    let schema = format!("rq_{}", q.q().rsplit("queue=").next().unwrap());
    pg::server().psql(&format!(
        "SET search_path TO {schema}; \
         CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; \
         CREATE TRIGGER evil AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION evil();"
    ));
    let before = q.dump();
    let refused = q.rq(&["submit", "true"]).fails();
    assert!(
        refused.stderr.contains("trigger evil") && refused.stderr.contains("function evil"),
        "{}",
        refused.stderr
    );
    assert_eq!(q.dump(), before);
    assert_eq!(q.count("pending"), 1);
    pg::server().psql(&format!(
        "SET search_path TO {schema}; DROP TRIGGER evil ON jobs; DROP FUNCTION evil();"
    ));
    q.rq(&["submit", "-q", "true"]).ok();
    assert_eq!(q.count("pending"), 2);
}

#[test]
fn a_large_submit_brings_the_planners_counts_up_to_date_so_claims_walk_the_index() {
    let q = TestQueue::on(StoreKind::Postgres);
    q.rq(&["submit", "-q", "true"]).ok();
    let psql = |sql: &str| psql_in(&q, sql);
    // What the server knew before the large submit: one job, and none pending.
    psql("UPDATE jobs SET state = 'finished'; ANALYZE jobs");
    let jobs: String = (0..500).map(|_| "true\n").collect();
    q.rq_stdin(&["submit", "-q", "-"], &jobs).ok();
    let counted: f64 = psql("SELECT reltuples FROM pg_class WHERE oid = to_regclass('jobs')")
        .parse()
        .unwrap();
    assert!(counted >= 501.0, "the server counts {counted} jobs");
    // The pending branch of the claim, as a feeder asks it: the claim-order index is
    // walked for the first few jobs, not every pending job read and sorted.
    let plan = psql(
        "EXPLAIN SELECT jid FROM jobs WHERE state = 'pending' \
         AND (hosts IS NULL OR rq_host_ok(hosts, 'h1')) AND cpus <= 1 AND mem <= 0 \
         AND gpus <= 0 ORDER BY priority DESC, submitted, jid LIMIT 16 FOR UPDATE SKIP LOCKED",
    );
    assert!(
        plan.contains("Index Scan using jobs_claim_order") && !plan.contains("Sort"),
        "{plan}"
    );
}

#[test]
fn a_start_after_the_journal_was_lost_writes_it_again_whole() {
    // As a server crash would (unlogged rows), but behind the feeder's back and between
    // its heartbeats (10 s): the next start finds its journal unmarked and writes all of
    // it again, the ended job's start with the new one's.
    let q = TestQueue::in_database();
    let gate = q.tmp.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let ledger = q.ledger();
    let job = format!(
        "echo ran >> {}; while [ -e {} ]; do sleep 0.1; done",
        ledger.display(),
        gate.display()
    );
    q.rq(&["submit", "-q", &job]).ok();
    let mut f = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("the first job to start", 20, |q| {
        q.ledger_lines().len() == 1
    });
    psql_in(&q, "DELETE FROM journals; DELETE FROM starts");
    q.rq(&[
        "submit",
        "-q",
        &format!("echo second >> {}", ledger.display()),
    ])
    .ok();
    std::fs::remove_file(&gate).unwrap();
    q.wait_for("both jobs to finish", 30, |q| q.count("finished") == 2);
    // Start lines (claim tokens; an end's line may have gone with its record).
    let starts = psql_in(
        &q,
        "SELECT count(*) FROM starts s JOIN journals j USING (feeder) WHERE s.line NOT LIKE 'E %'",
    );
    assert_eq!(
        starts.lines().last().unwrap_or("").trim(),
        "2",
        "both starts, in a marked journal"
    );
    assert_eq!(q.ledger_lines(), ["ran", "second"]);
    assert_eq!(q.rq_as("h1", &["shutdown"]).status, 0);
    assert_eq!(f.wait_exit(Duration::from_secs(20)), Some(0));
}
