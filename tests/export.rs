//! `rq Q export --to NEW`: a queue moved into the other store (a directory into
//! PostgreSQL, PostgreSQL into a directory), with jids, states, history, dependencies,
//! settings and job files; all or nothing; the source kept but paused.

mod common;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// A new queue of the other store than `store`: its name, and `--files DIR` when it is a
/// PostgreSQL queue.
fn other_store(q: &TestQueue) -> (String, Vec<String>) {
    match q.store {
        StoreKind::Sqlite => (
            pg::new_queue_url(),
            vec![
                "--files".into(),
                q.tmp.path().join("newfiles").display().to_string(),
            ],
        ),
        StoreKind::Postgres => (q.tmp.path().join("newq").display().to_string(), vec![]),
    }
}

/// `export --to DEST [--files DIR]` as arguments.
fn export_args<'a>(dest: &'a str, files: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["export", "--to", dest];
    args.extend(files.iter().map(String::as_str));
    args
}

/// `rq DEST args...` from the test's directory.
fn rq_at(q: &TestQueue, dest: &str, args: &[&str]) -> Run {
    let mut all = vec![dest];
    all.extend_from_slice(args);
    rq_in(q.tmp.path(), &all, None)
}

/// Feed the new queue as host h2 until nothing is left to run.
fn feed_until_empty(q: &TestQueue, dest: &str) {
    let mut cmd = rq_command();
    cmd.env("RQ_HOST", "h2")
        .env("HOME", q.home())
        .current_dir(q.tmp.path())
        .args([dest, "feed", "--exit_when_empty", "--min_sleep", "0.05"])
        .args(["--shell", "sh -c"]);
    assert_eq!(run_cmd(cmd, None).status, 0);
}

/// Where the new queue keeps job files.
fn files_of(q: &TestQueue, dest: &str) -> PathBuf {
    match q.store {
        StoreKind::Sqlite => q.tmp.path().join("newfiles"),
        StoreKind::Postgres => PathBuf::from(dest),
    }
}

/// A queue with history and work to do, with job files of every kind: its jobs as JSON.
fn make_history(q: &TestQueue) -> String {
    q.rq(&["configure", "lease=90s", "limit.gpu=2"]).ok();
    let input = q.tmp.path().join("input");
    std::fs::write(&input, "from stdin\n").unwrap();
    let data = q.tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from data\n").unwrap();
    // History: a finished job with output and stdin, a failed one, a deleted one (a gap
    // in the jids that must not be reused).
    q.rq(&[
        "submit",
        "-q",
        "--stdin",
        input.to_str().unwrap(),
        "cat; echo out-a",
    ])
    .ok();
    q.rq(&["submit", "-q", "exit 3"]).ok();
    q.rq(&["submit", "-q", "true"]).ok();
    let mut feeder = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(feeder.wait_exit(Duration::from_secs(60)), Some(0));
    q.rq(&["delete", "-q", "3"]).ok();
    // Work still to do: a held job, one waiting for it, one with data and a tag.
    q.rq(&["submit", "-q", "--stage", "echo held"]).ok();
    q.rq(&["submit", "-q", "--after", "4", "echo after-4 > after.txt"])
        .ok();
    q.rq(&[
        "submit",
        "-q",
        "--tag",
        "gpu",
        "--data",
        data.to_str().unwrap(),
        "cat $RQ_DATA/in.txt > data.txt",
    ])
    .ok();
    // The highest jid given is gone too: the new queue must still not give it again.
    q.rq(&["submit", "-q", "true"]).ok();
    q.rq(&["delete", "-q", "7"]).ok();
    // Paused by its user (as help export advises, to let running jobs end): the new
    // queue starts unpaused all the same.
    q.rq(&["pause"]).ok();
    q.dump()
}

fn export_keeps_every_job_dependency_setting_and_file(store: StoreKind) {
    let q = TestQueue::on(store);
    let before = make_history(&q);
    let (dest, files) = other_store(&q);
    let args = export_args(&dest, &files);
    let report = q.rq(&args).ok().value();
    assert_eq!(report["jobs"], 5, "{report}");
    assert_eq!(report["dependencies"], 1, "{report}");
    assert_eq!(report["next_jid"], 8, "{report}");
    // Job 1's stdin, stdout, stderr and data directory, job 2's three, job 6's data.
    assert_eq!(report["job_files"], 8, "{report}");

    // The same jobs, field by field; the source unchanged but paused.
    assert_eq!(
        rq_at(&q, &dest, &["list", "all", "--format", "json"])
            .ok()
            .stdout,
        before
    );
    assert_eq!(q.dump(), before);
    assert!(q.rq(&["configure"]).ok().value().get("paused").is_some());
    let settings = rq_at(&q, &dest, &["configure"]).ok().value();
    assert_eq!(settings["lease"], "90s");
    assert_eq!(settings["limit.gpu"], "2");
    assert!(settings.get("paused").is_none(), "{settings}");
    // Job files came along.
    assert_eq!(
        rq_at(&q, &dest, &["stdout", "1"]).ok().stdout,
        "from stdin\nout-a\n"
    );
    let new_files = files_of(&q, &dest);
    assert_eq!(
        std::fs::read_to_string(new_files.join("data/6/in.txt")).unwrap(),
        "from data\n"
    );

    // The new queue goes on: jids above every one given, dependencies and data work.
    let next = rq_at(&q, &dest, &["submit", "echo new"]).ok().records();
    assert_eq!(int(&next[0], "jid"), 8);
    rq_at(&q, &dest, &["update", "4", "state=pending"]).ok();
    feed_until_empty(&q, &dest);
    let status = rq_at(&q, &dest, &["status"]).ok().value();
    assert_eq!(status["jobs"]["finished"], 6, "{status}");
    assert_eq!(
        std::fs::read_to_string(q.tmp.path().join("after.txt")).unwrap(),
        "after-4\n"
    );
    assert_eq!(
        std::fs::read_to_string(q.tmp.path().join("data.txt")).unwrap(),
        "from data\n"
    );
    // The source ran nothing meanwhile: it is paused.
    assert_eq!(q.count("pending"), 1);
}

#[test]
fn export_into_and_out_of_a_postgresql_queue_that_keeps_job_files_in_its_database() {
    let q = TestQueue::new();
    let before = make_history(&q);
    let input = q.tmp.path().join("input");
    let data = q.tmp.path().join("data");
    // Without --files: stdin, data (a directory) and output go into the database.
    let url = pg::new_queue_url();
    let report = q.rq(&["export", "--to", &url]).ok().value();
    assert_eq!(report["job_files"], 8, "{report}");
    assert!(report.get("files").is_none(), "{report}");
    assert_eq!(
        rq_at(&q, &url, &["list", "all", "--format", "json"])
            .ok()
            .stdout,
        before
    );
    assert_eq!(
        rq_at(&q, &url, &["stdout", "1"]).ok().stdout,
        "from stdin\nout-a\n"
    );
    // Its feeders find the data directory and the stdin there (no shared directory).
    std::fs::remove_file(&input).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    rq_at(&q, &url, &["resubmit", "-q", "1"]).ok();
    feed_until_empty(&q, &url);
    assert_eq!(
        std::fs::read_to_string(q.tmp.path().join("data.txt")).unwrap(),
        "from data\n"
    );
    assert_eq!(
        rq_at(&q, &url, &["stdout", "1"]).ok().stdout,
        "from stdin\nout-a\n"
    );
    let status = rq_at(&q, &url, &["status"]).ok().value();
    assert_eq!(status["jobs"]["finished"], 3, "{status}");
    // And out again into a directory: the files are files again, the data a directory.
    let back = q.tmp.path().join("back");
    let back = back.to_str().unwrap();
    let report = rq_at(&q, &url, &["export", "--to", back]).ok().value();
    assert_eq!(report["jobs"], 5, "{report}");
    // The eight, and job 6's stdout and stderr now that it ran.
    assert_eq!(report["job_files"], 10, "{report}");
    let read = |rel: &str| std::fs::read_to_string(PathBuf::from(back).join(rel)).unwrap();
    assert_eq!(read("stdin/1"), "from stdin\n");
    assert_eq!(read("stdout/1"), "from stdin\nout-a\n");
    assert_eq!(read("data/6/in.txt"), "from data\n");
    assert_eq!(read("stdout/6"), "");
}

fn export_is_refused_while_a_job_runs_and_changes_nothing(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", &q.held()]).ok();
    let _feeder = q.feeder("h1", &[]);
    q.wait_for("the job to run", 30, |q| q.count("running") == 1);
    let (dest, files) = other_store(&q);
    let args = export_args(&dest, &files);
    let refused = q.rq(&args).fails();
    assert!(
        refused.stderr.contains("1 job is still running"),
        "{}",
        refused.stderr
    );
    // No new queue, no pause, no job-file directory.
    rq_at(&q, &dest, &["status"]).fails();
    assert!(q.rq(&["configure"]).ok().value().get("paused").is_none());
    assert!(!files_of(&q, &dest).exists());
    q.rq(&["kill", "1", "--signal", "KILL"]).ok();
}

fn a_failed_export_removes_the_new_queue_and_resumes_the_source(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo hi"]).ok();
    let mut feeder = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(feeder.wait_exit(Duration::from_secs(60)), Some(0));
    // An odd file planted among the job files: it cannot be copied, so nothing is made.
    let stdout = q.files().join("stdout/1");
    std::fs::remove_file(&stdout).unwrap();
    nix_mkfifo(&stdout);
    let (dest, files) = other_store(&q);
    let args = export_args(&dest, &files);
    let failed = q.rq(&args).fails();
    assert!(
        failed.stderr.contains("not a regular file"),
        "{}",
        failed.stderr
    );
    assert_eq!(failed.stderr.lines().count(), 1, "{}", failed.stderr);
    rq_at(&q, &dest, &["status"]).fails();
    assert!(!files_of(&q, &dest).exists());
    assert!(q.rq(&["configure"]).ok().value().get("paused").is_none());
    // So it can be done again once the file is mended.
    std::fs::remove_file(&stdout).unwrap();
    std::fs::write(&stdout, "hi\n").unwrap();
    q.rq(&args).ok();
    assert_eq!(rq_at(&q, &dest, &["stdout", "1"]).ok().stdout, "hi\n");
}

fn export_within_the_same_store(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo moved"]).ok();
    let mut feeder = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(feeder.wait_exit(Duration::from_secs(60)), Some(0));
    q.rq(&["submit", "-q", "--priority", "7", "true"]).ok();
    let before = q.dump();
    let (dest, files) = match store {
        // A queue directory to another path (say, another file server).
        StoreKind::Sqlite => (q.tmp.path().join("elsewhere").display().to_string(), vec![]),
        // A queue to another name in the same database, its files elsewhere.
        StoreKind::Postgres => (
            pg::new_queue_url(),
            vec![
                "--files".to_string(),
                q.tmp.path().join("files2").display().to_string(),
            ],
        ),
    };
    let args = export_args(&dest, &files);
    q.rq(&args).ok();
    assert_eq!(
        rq_at(&q, &dest, &["list", "all", "--format", "json"])
            .ok()
            .stdout,
        before
    );
    assert_eq!(rq_at(&q, &dest, &["stdout", "1"]).ok().stdout, "moved\n");
    let next = rq_at(&q, &dest, &["submit", "true"]).ok().records();
    assert_eq!(int(&next[0], "jid"), 3);
    // The source keeps its files and rows.
    assert_eq!(q.rq(&["stdout", "1"]).ok().stdout, "moved\n");
    assert_eq!(q.dump(), before);
}

fn nix_mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

crate::on_both_stores!(
    export_keeps_every_job_dependency_setting_and_file,
    export_is_refused_while_a_job_runs_and_changes_nothing,
    a_failed_export_removes_the_new_queue_and_resumes_the_source,
    export_within_the_same_store,
);

#[test]
fn export_refuses_bad_destinations_with_one_line_and_changes_nothing() {
    let q = TestQueue::new();
    q.rq(&["submit", "-q", "true"]).ok();
    let before = q.dump();
    let url = pg::new_queue_url();
    let taken = q.tmp.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("x"), "").unwrap();
    let full = q.tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), "").unwrap();
    let newdir = q.tmp.path().join("new").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["export"], "needs the new queue"),
        (
            vec!["export", "--to", &newdir, "--files", "/tmp/x"],
            "--files is for a PostgreSQL",
        ),
        (vec!["export", "--to", q.q()], "another queue"),
        (
            vec!["export", "--to", taken.to_str().unwrap()],
            "already exists",
        ),
        (
            vec!["export", "--to", &url, "--files", full.to_str().unwrap()],
            "is not empty",
        ),
        (vec!["export", &newdir, &newdir], "one destination"),
    ];
    for (args, says) in cases {
        let run = q.rq(&args).fails();
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
    }
    assert_eq!(q.dump(), before);
    assert!(q.rq(&["configure"]).ok().value().get("paused").is_none());
    assert!(!PathBuf::from(&newdir).exists());
    rq_in(q.tmp.path(), &[&url, "status"], None).fails();
}
