//! Administration and job I/O: snapshot, backup, rotate, recover, cron, ioview, tail,
//! completions, man page.

mod common;
use std::time::Duration;

use common::*;

fn jids(run: Run) -> Vec<i64> {
    run.ok().records().iter().map(|r| int(r, "jid")).collect()
}

#[test]
fn snapshot_while_a_feeder_writes_is_consistent() {
    let q = TestQueue::new();
    let lines: String = (0..3000).map(|i| format!("echo {i}\n")).collect();
    q.rq_stdin(&["submit", "-q"], &lines).ok();
    let _f = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("work under way", 20, |q| q.count("finished") > 50);
    let dest = q.tmp.path().join("snap");
    let out = q.rq(&["snapshot", dest.to_str().unwrap()]).ok().value();
    assert_eq!(out["q"], dest.to_str().unwrap());
    let snap_status = rq_in(q.tmp.path(), &[dest.to_str().unwrap(), "status"], None)
        .ok()
        .value();
    assert_eq!(snap_status["jobs"]["total"], 3000);
    let check = rq_in(
        q.tmp.path(),
        &[dest.to_str().unwrap(), "query", "1=1", "-f", "jid"],
        None,
    )
    .ok();
    assert_eq!(check.records().len(), 3000);
    // Checked by SQLite itself (rusqlite), so no sqlite3 program is needed.
    let conn = rusqlite::Connection::open(dest.join("db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    // refuses to overwrite; --snapshot on read-only modes, refused on write modes
    q.rq(&["snapshot", dest.to_str().unwrap()]).fails();
    assert_eq!(
        q.rq(&["list", "-s", "-f", "jid"]).ok().records().len(),
        3000
    );
    let out = q.rq(&["submit", "-s", "true"]).fails();
    assert!(out.stderr.contains("snapshot"), "{}", out.stderr);
    // the default destination is next to the queue
    q.rq(&["S"]).ok();
    assert!(q.tmp.path().join("q.snapshot/db").exists());
}

#[test]
fn backup_copies_the_whole_queue() {
    let q = TestQueue::new();
    let input = q.tmp.path().join("in");
    std::fs::write(&input, "data\n").unwrap();
    q.rq(&["submit", "-q", "--stdin", input.to_str().unwrap(), "cat"])
        .ok();
    let dest = q.tmp.path().join("bak");
    q.rq(&["backup", dest.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_to_string(dest.join("stdin/1")).unwrap(),
        "data\n"
    );
    let jobs = rq_in(q.tmp.path(), &[dest.to_str().unwrap(), "list"], None)
        .ok()
        .records();
    assert_eq!(text(&jobs[0], "command"), "cat");
    q.rq(&["backup", dest.to_str().unwrap()]).fails();
    let out = q.rq(&["B"]).ok().value();
    let default = out["backup"].as_str().unwrap();
    assert!(
        default.starts_with(q.tmp.path().join("q.").to_str().unwrap()) && default.ends_with(".bak"),
        "{default}"
    );
}

fn rotate_archives_ended_jobs_and_loses_nothing_under_concurrent_submits(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(&["submit", "-q"], &"true\n".repeat(200)).ok();
    q.rq(&["submit", "-q", "--stage", "echo held"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty", "--max_feed", "4"]);
    assert_eq!(f.wait_exit(Duration::from_secs(60)), Some(0));
    q.sql("UPDATE jobs SET state = 'dead' WHERE jid = 5");
    q.sql("UPDATE jobs SET state = 'running', runner = 'elsewhere' WHERE jid = 6");
    // Submitters keep going while the rotation runs.
    let mut submitters = Vec::new();
    for i in 0..2 {
        let path = q.tmp.path().join(format!("more{i}"));
        std::fs::write(&path, "echo new\n".repeat(300)).unwrap();
        let mut cmd = rq_command();
        cmd.args([q.q(), "submit", "-q", "-i", path.to_str().unwrap()]);
        submitters.push(cmd.spawn().unwrap());
    }
    let archives = q.tmp.path().join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    let out = q.rq(&["rotate", archives.to_str().unwrap()]).ok().value();
    for mut s in submitters {
        assert!(s.wait().unwrap().success());
    }
    let tgz = out["rotation"].as_str().unwrap().to_string();
    assert!(
        tgz.ends_with(".tgz") && tgz.starts_with(archives.to_str().unwrap()),
        "{tgz}"
    );
    assert_eq!(out["jobs"], 199);
    let archived = jids(rq_in(q.tmp.path(), &[&tgz, "list", "-f", "jid"], None));
    assert_eq!(archived.len(), 199);
    assert!(archived.contains(&5) && !archived.contains(&6) && !archived.contains(&201));
    let live = q.jobs();
    assert_eq!(
        live.len(),
        2 + 600,
        "running, holding and every new job stay"
    );
    assert!(live.iter().all(|j| text(j, "state") != "finished"));
    assert!(
        !q.files().join("stdout/1").exists(),
        "archived jobs' files leave the live queue"
    );
    // an archive is read-only; jids are never reused
    let out = rq_in(q.tmp.path(), &[&tgz, "delete", "1"], None).fails();
    assert!(out.stderr.contains("archive"));
    let new = q.rq(&["submit", "true"]).ok().records();
    assert_eq!(int(&new[0], "jid"), 802);
    // --no-compress keeps a directory; nothing to rotate is fine
    let dir = q.tmp.path().join("plain");
    let out = q
        .rq(&["rotate", dir.to_str().unwrap(), "--no-compress"])
        .ok()
        .value();
    assert_eq!(out["jobs"], 0);
    assert!(dir.join("db").exists());
    q.integrity_ok();
}

/// Submit `n` jobs with commands long enough to fill a few hundred pages.
fn submit_padded_jobs(q: &TestQueue, n: usize) {
    let lines: String = (0..n)
        .map(|i| format!("echo job number {i} with some padding to fill pages\n"))
        .collect();
    q.rq_stdin(&["submit", "-q"], &lines).ok();
}

#[test]
fn recover_rebuilds_a_damaged_database() {
    let q = TestQueue::new();
    submit_padded_jobs(&q, 4000);
    q.rq(&["configure", "max_attempts=7"]).ok();
    let healthy = q.rq(&["recover"]).ok().value();
    assert_eq!(healthy["integrity"], "ok");
    assert_eq!(healthy["damaged"], false);
    // Damage pages in the middle of the file.
    let db = q.path.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8192] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = q.rq(&["recover"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let report = out.value();
    assert_eq!(report["damaged"], true);
    assert_eq!(report["integrity"], "ok");
    let recovered = report["recovered_jobs"].as_u64().unwrap();
    assert!(recovered > 3000 && recovered < 4000, "{report}");
    assert!(std::path::Path::new(report["damaged_copy"].as_str().unwrap()).exists());
    assert_eq!(q.count("pending") as u64, recovered);
    assert_eq!(q.rq(&["configure"]).ok().value()["max_attempts"], "7");
    // jids continue above every jid the queue ever had
    let new = q.rq(&["submit", "true"]).ok().records();
    assert_eq!(int(&new[0], "jid"), 4001);
    q.integrity_ok();
}

/// A stand-in `crontab` (rq finds it by PATH) that keeps the table in a file: the test
/// needs no cron package and never touches the user's real crontab.
struct StandInCrontab {
    dir: std::path::PathBuf,
}

impl StandInCrontab {
    fn new(q: &TestQueue) -> StandInCrontab {
        use std::os::unix::fs::PermissionsExt;
        let dir = q.tmp.path().join("cron-bin");
        std::fs::create_dir_all(&dir).unwrap();
        let table = dir.join("table");
        let script = format!(
            "#!/bin/sh\nf='{}'\ncase \"$1\" in\n-l) [ -f \"$f\" ] || {{ echo \"no crontab for $(id -un)\" >&2; exit 1; }}; cat \"$f\";;\n-r) rm -f \"$f\";;\n-) cat > \"$f\";;\n*) echo \"crontab: usage\" >&2; exit 1;;\nesac\n",
            table.display()
        );
        let bin = dir.join("crontab");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        StandInCrontab { dir }
    }

    /// PATH with the stand-in first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn current(&self) -> String {
        std::fs::read_to_string(self.dir.join("table")).unwrap_or_default()
    }

    fn set(&self, text: &str) {
        std::fs::write(self.dir.join("table"), text).unwrap();
    }
}

fn cron_add_and_delete_leave_other_lines_alone(store: StoreKind) {
    let q = TestQueue::on(store);
    let cron = StandInCrontab::new(&q);
    let path = cron.path();
    let env = [("PATH", path.as_str())];
    let other = "# keep me\n0 5 * * * /bin/true other job\n";
    cron.set(other);
    let out = q
        .rq_as_env("h1", &["cron", "add", "rotate", "--max_feed", "3"], &env)
        .ok()
        .value();
    assert_eq!(out["changed"], true);
    let tab = cron.current();
    assert!(tab.starts_with(other), "{tab}");
    let ours: Vec<&str> = tab.lines().filter(|l| l.contains("###rq-cron:")).collect();
    assert_eq!(ours.len(), 2);
    assert!(
        ours[0].starts_with("*/15 * * * * ") && ours[0].contains(" start --max_feed=3 "),
        "{}",
        ours[0]
    );
    // The queue as cron must be told it: a URL's `%`s escaped (cron makes them newlines).
    assert!(ours[0].contains(&q.q().replace('%', "\\%")), "{}", ours[0]);
    assert!(ours[1].starts_with("0 0 * * * ") && ours[1].contains(" rotate "));
    // idempotent
    assert_eq!(
        q.rq_as_env("h1", &["cron", "add", "rotate", "--max_feed", "3"], &env)
            .ok()
            .value()["changed"],
        false
    );
    assert_eq!(cron.current(), tab);
    // crontab prints what would be installed
    let printed = q
        .rq_as_env("h1", &["crontab", "rotate", "--max_feed", "3"], &env)
        .ok()
        .stdout;
    assert_eq!(printed.lines().collect::<Vec<_>>(), ours);
    // the line itself works: it starts a feeder (run as cron runs it: `\%` is `%`)
    let start = ours[0]
        .trim_start_matches("*/15 * * * * ")
        .split(" ###")
        .next()
        .unwrap()
        .replace("\\%", "%");
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(&start)
        .env("RQ_HOST", "h1")
        .env("PATH", &path)
        .env("HOME", q.home());
    assert!(sh.output().unwrap().status.success());
    q.wait_for("the cron-started feeder", 10, |q| {
        q.rq_as_env("h1", &["pid"], &env).status == 0
    });
    // delete removes exactly our lines; stop also stops the feeder
    let removed = q.rq_as_env("h1", &["cron", "stop"], &env).ok();
    assert!(removed.stdout.contains("###rq-cron:"));
    assert_eq!(cron.current(), other);
    q.wait_for("the feeder to stop", 30, |q| {
        q.rq_as_env("h1", &["pid"], &env).status == 1
    });
    q.rq_as_env("h1", &["cron", "frobnicate"], &env).fails();
    // `cron start` (the default action) installs the line and starts a feeder at once.
    q.rq_as_env("h1", &["cron", "start", "nonsense"], &env)
        .fails();
    assert_eq!(
        cron.current(),
        other,
        "a refused cron start changed the crontab"
    );
    q.rq_as_env("h1", &["cron", "start", "--max_feed", "2"], &env)
        .ok();
    assert_eq!(
        cron.current()
            .lines()
            .filter(|l| l.contains("###rq-cron:"))
            .count(),
        1
    );
    q.wait_for("the feeder cron start started", 10, |q| {
        q.rq_as_env("h1", &["pid"], &env).status == 0
    });
    q.rq_as_env("h1", &["cron", "stop"], &env).ok();
    assert_eq!(cron.current(), other);
    q.wait_for("the feeder to stop", 30, |q| {
        q.rq_as_env("h1", &["pid"], &env).status == 1
    });
}

fn ioview_and_tail_show_job_output(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo out; echo err >&2"]).ok();
    q.rq(&[
        "submit",
        "-q",
        "for i in 1 2 3; do echo line$i; sleep 0.3; done; echo bye >&2",
    ])
    .ok();
    let mut f = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("job 1", 10, |q| q.count("finished") >= 1);
    let shown = q.rq(&["ioview", "1", "--editor", "cat"]).ok().stdout;
    assert_eq!(shown, "out\nerr\n");
    let mut cmd = rq_command();
    cmd.env("RQ_EDITOR", "wc -l").args([q.q(), "io", "1"]);
    assert!(run_cmd(cmd, None).ok().stdout.contains("2 total"));
    // tail follows job 2 from start to end
    q.wait_for("job 2 to run", 10, |q| q.count("running") == 1);
    let out = q.rq(&["tail", "2"]).ok();
    assert_eq!(out.stdout, "line1\nline2\nline3\n");
    assert_eq!(out.stderr, "bye\n");
    q.rq(&["tail", "99"]).fails();
    f.signal(libc::SIGTERM);
    f.wait_exit(Duration::from_secs(10));
}

#[test]
fn completions_and_man_page_come_from_the_modes() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = rq_in(tmp.path(), &["completions", shell], None).ok().stdout;
        assert!(
            out.contains("submit") && out.contains("max_feed"),
            "{shell}"
        );
    }
    rq_in(tmp.path(), &["completions", "tcsh"], None).fails();
    let man = rq_in(tmp.path(), &["man"], None).ok().stdout;
    assert!(man.starts_with(".ie") && man.contains(".TH rq 1") && man.contains("rotate"));
}

#[test]
fn damage_seen_by_a_reader_stops_writers_until_recover() {
    let q = TestQueue::new();
    submit_padded_jobs(&q, 4000);
    let db = q.path.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8192] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let read = q.rq(&["list", "all"]).fails();
    assert!(read.stderr.contains("recover"), "{}", read.stderr);
    // A submit would only touch the last pages, which are fine: it is refused all the same.
    let write = q.rq(&["submit", "true"]).fails();
    assert!(
        write.stderr.contains("damaged") && write.stderr.contains("recover"),
        "{}",
        write.stderr
    );
    assert!(q.path.join("damaged").exists());
    q.rq(&["recover"]).ok();
    assert!(!q.path.join("damaged").exists());
    q.rq(&["submit", "-q", "true"]).ok();
}

#[test]
fn recover_makes_an_empty_or_foreign_db_file_a_working_queue() {
    for content in [&b""[..], b"this is not a database at all\n"] {
        let q = TestQueue::new();
        q.rq(&["submit", "-q", "true"]).ok();
        std::fs::write(q.path.join("db"), content).unwrap();
        q.rq(&["status"]).fails();
        let report = q.rq(&["recover"]).ok().value();
        assert_eq!(report["damaged"], true, "{report}");
        q.rq(&["status"]).ok();
        q.rq(&["submit", "-q", "true"]).ok();
        let debris: Vec<String> = std::fs::read_dir(&q.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("recovering"))
            .collect();
        assert!(debris.is_empty(), "{debris:?}");
    }
}

#[test]
fn recover_salvages_a_truncated_database_from_its_pages() {
    let q = TestQueue::new();
    submit_padded_jobs(&q, 4000);
    q.rq(&["configure", "max_attempts=5"]).ok();
    let db = q.path.join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len * 9 / 10 / 4096 * 4096)
        .unwrap();
    q.rq(&["list", "all"]).fails();
    let report = q.rq(&["recover"]).ok().value();
    assert_eq!(report["damaged"], true);
    let saved = report["recovered_jobs"].as_u64().unwrap();
    assert!(saved > 3000, "{report}");
    let lost = report["lost_jobs_at_most"].as_u64().unwrap();
    assert_eq!(saved + lost, 4000, "{report}");
    let missing = report["missing_jids"].as_array().unwrap();
    assert!(!missing.is_empty(), "{report}");
    assert_eq!(q.count("pending") as u64, saved);
    assert_eq!(q.rq(&["configure"]).ok().value()["max_attempts"], "5");
    let new = q.rq(&["submit", "true"]).ok().records();
    assert_eq!(int(&new[0], "jid"), 4001);
    q.integrity_ok();
}

crate::on_both_stores!(
    rotate_archives_ended_jobs_and_loses_nothing_under_concurrent_submits,
    cron_add_and_delete_leave_other_lines_alone,
    ioview_and_tail_show_job_output,
);

/// A trigger planted in the database would run inside every rq writer: writers refuse
/// the queue (naming it, and the repair), readers still read it, and `recover` removes it,
/// says so, and keeps every job and wait.
#[test]
fn writers_refuse_objects_rq_did_not_make_and_recover_removes_them() {
    let q = TestQueue::new();
    let list = "- {name: a, command: 'true'}\n- {command: 'true', after: a}\n";
    q.rq_stdin(&["submit", "-q", "-"], list).ok();
    let planted = std::process::Command::new("sqlite3")
        .arg(q.path.join("db"))
        .arg(
            "CREATE TABLE evil_log (x); \
             CREATE TRIGGER evil AFTER UPDATE ON jobs BEGIN INSERT INTO evil_log VALUES (NEW.command); END;",
        )
        .status()
        .unwrap();
    assert!(planted.success());
    let before = q.dump();
    for args in [
        &["submit", "true"][..],
        &["update", "1", "tag=x"],
        &["execute", "DELETE FROM jobs"],
    ] {
        let refused = q.rq(args).fails();
        assert!(
            refused.stderr.contains("trigger evil") && refused.stderr.contains("recover"),
            "{args:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(q.dump(), before, "nothing changed");
    assert_eq!(q.count("pending"), 1, "readers still read it");
    let report = q.rq(&["recover"]).ok().value();
    let dropped: Vec<&str> = report["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(dropped, ["trigger evil", "table evil_log"], "{report}");
    assert_eq!(q.dump(), before, "every job kept");
    q.rq(&["update", "1", "tag=x"]).ok();
    assert_eq!(q.rq(&["list", "2"]).ok().records()[0]["waiting_on"], 1);
    q.integrity_ok();
}
