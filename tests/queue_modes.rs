//! The data modes, driven through the real binary.

mod common;
use common::*;
use serde_json::Value;

#[test]
fn create_makes_the_layout_and_refuses_existing_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q");
    let out = rq_in(tmp.path(), &[q.to_str().unwrap(), "create"], None).ok();
    let v = out.value();
    for key in [
        "q", "db", "schema", "bin", "stdin", "stdout", "stderr", "data",
    ] {
        let p = v[key].as_str().unwrap_or_else(|| panic!("no {key}"));
        assert!(std::path::Path::new(p).exists(), "{p}");
    }
    let schema = std::fs::read_to_string(q.join("db.schema")).unwrap();
    assert!(schema.contains("UTC") && schema.contains("CREATE TABLE jobs"));
    rq_in(tmp.path(), &[q.to_str().unwrap(), "create"], None).fails();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    rq_in(tmp.path(), &[file.to_str().unwrap(), "create"], None).fails();
}

fn submit_from_argv_infile_stdin_and_dash(store: StoreKind) {
    let q = TestQueue::on(store);
    let rows = q
        .rq(&["submit", "echo", "one", "-p", "5", "-t", "a"])
        .ok()
        .records();
    assert_eq!(rows.len(), 1);
    assert_eq!(text(&rows[0], "command"), "echo one");
    assert_eq!(int(&rows[0], "priority"), 5);
    assert_eq!(text(&rows[0], "tag"), "a");
    assert_eq!(text(&rows[0], "state"), "pending");
    assert_eq!(
        text(&rows[0], "cwd"),
        q.tmp.path().canonicalize().unwrap().to_str().unwrap()
    );

    let list = q.tmp.path().join("joblist");
    std::fs::write(&list, "echo two\n\n# comment\necho three\n").unwrap();
    let rows = q.rq(&["s", "-i", list.to_str().unwrap()]).ok().records();
    assert_eq!(rows.len(), 2);
    // stdin without '-' when it is not a terminal, and with '-'
    assert_eq!(
        q.rq_stdin(&["submit"], "echo four\n").ok().records().len(),
        1
    );
    assert_eq!(
        q.rq_stdin(&["submit", "-"], "echo five\necho six\n")
            .ok()
            .records()
            .len(),
        2
    );
    let commands: Vec<String> = q.jobs().iter().map(|r| text(r, "command")).collect();
    assert_eq!(
        commands,
        [
            "echo one",
            "echo two",
            "echo three",
            "echo four",
            "echo five",
            "echo six"
        ]
    );
    // --quiet prints nothing; -- protects dashes in commands
    let out = q.rq(&["submit", "-q", "--", "ls", "-l"]).ok();
    assert!(out.stdout.is_empty());
    assert_eq!(text(q.jobs().last().unwrap(), "command"), "ls -l");
}

fn submit_options_stage_runner_restartable_negative_priority(store: StoreKind) {
    let q = TestQueue::on(store);
    let rows = q
        .rq(&[
            "submit",
            "--stage",
            "--runner",
            "n1, n2",
            "--restartable",
            "-p",
            "-7",
            "true",
        ])
        .ok()
        .records();
    assert_eq!(text(&rows[0], "state"), "holding");
    assert_eq!(text(&rows[0], "hosts"), "n1,n2");
    assert_eq!(rows[0]["restartable"], Value::Bool(true));
    assert_eq!(int(&rows[0], "priority"), -7);
    let big = i64::MAX.to_string();
    let rows = q.rq(&["submit", "-p", &big, "true"]).ok().records();
    assert_eq!(int(&rows[0], "priority"), i64::MAX);
    q.rq(&["submit", "-p", "99999999999999999999", "true"])
        .fails();
}

fn submit_copies_stdin_and_data(store: StoreKind) {
    let q = TestQueue::on(store);
    let input = q.tmp.path().join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let data = q.tmp.path().join("d");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/f"), "x").unwrap();
    let rows = q
        .rq(&[
            "submit",
            "--stdin",
            input.to_str().unwrap(),
            "-d",
            data.to_str().unwrap(),
            "cat",
        ])
        .ok()
        .records();
    let jid = int(&rows[0], "jid");
    assert_eq!(text(&rows[0], "stdin"), format!("stdin/{jid}"));
    assert_eq!(
        std::fs::read_to_string(q.files().join(format!("stdin/{jid}"))).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(q.files().join(format!("data/{jid}/sub/f"))).unwrap(),
        "x"
    );
    assert_eq!(q.rq(&["stdin", &jid.to_string()]).ok().stdout, "hello\n");
    // --stdin - takes the process's standard input, shared by a batch
    let list = q.tmp.path().join("two");
    std::fs::write(&list, "cat\nwc -c\n").unwrap();
    let rows = q
        .rq_stdin(
            &["submit", "--stdin", "-", "-i", list.to_str().unwrap()],
            "piped\n",
        )
        .ok()
        .records();
    for row in &rows {
        let jid = int(row, "jid");
        assert_eq!(
            std::fs::read_to_string(q.files().join(format!("stdin/{jid}"))).unwrap(),
            "piped\n"
        );
    }
    // both from stdin is refused
    q.rq_stdin(&["submit", "--stdin", "-", "-"], "x\n").fails();
    // a missing stdin file changes nothing
    let before = q.dump();
    q.rq(&["submit", "--stdin", "/nonexistent/file", "cat"])
        .fails();
    assert_eq!(q.dump(), before);
}

fn yaml_and_json_input_and_round_trips(store: StoreKind) {
    let q = TestQueue::on(store);
    let yaml = "- command: \"echo 'a: b' # not a comment\"\n  priority: 3\n  tag: t1\n- command: \"42\"\n- command: |\n    echo line1\n    echo line2\n  runner: [n1, n2]\n  restartable: true\n";
    let rows = q.rq_stdin(&["submit", "-"], yaml).ok().records();
    assert_eq!(rows.len(), 3);
    assert_eq!(text(&rows[0], "command"), "echo 'a: b' # not a comment");
    assert_eq!(text(&rows[1], "command"), "42");
    assert_eq!(text(&rows[2], "command"), "echo line1\necho line2\n");
    assert_eq!(text(&rows[2], "hosts"), "n1,n2");
    // rq's YAML output goes back into submit unchanged
    let listed = q.rq(&["list"]).ok().stdout;
    let again = q.rq_stdin(&["submit", "-"], &listed).ok().records();
    assert_eq!(again.len(), 3);
    for (a, b) in rows.iter().zip(&again) {
        for f in ["command", "priority", "tag", "hosts", "restartable"] {
            assert_eq!(a[f], b[f], "{f}");
        }
        assert_ne!(a["jid"], b["jid"]);
    }
    // and JSON output too
    let json = q.rq(&["list", "1", "--format", "json"]).ok().stdout;
    let parsed: Vec<serde_json::Map<String, Value>> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.len(), 1);
    let again = q.rq_stdin(&["submit"], &json).ok().records();
    assert_eq!(text(&again[0], "command"), "echo 'a: b' # not a comment");
}

fn a_bad_batch_commits_nothing(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "true"]).ok();
    let before = q.dump();
    for bad in [
        "- command: ok\n- command: x\n  priority: high\n",
        "- command: ok\n- command: x\n  colour: red\n",
        "- command: ok\n- priority: 1\n",
        "- command: ok\n- command: \"\"\n",
        "---\n- command: [unclosed\n",
        "- command: x\n  priority: 1.5\n",
    ] {
        q.rq_stdin(&["submit", "-"], bad).fails();
        assert_eq!(q.dump(), before, "{bad}");
    }
}

fn list_by_state_prefix_jid_and_stdin(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(&["submit"], "a\nb\nc\n").ok();
    q.rq(&["submit", "--stage", "d"]).ok();
    q.sql("UPDATE jobs SET state='finished', exit_status=0 WHERE jid=2");
    let jids = |args: &[&str]| -> Vec<i64> {
        q.rq(args)
            .ok()
            .records()
            .iter()
            .map(|r| int(r, "jid"))
            .collect()
    };
    assert_eq!(jids(&["list"]), [1, 2, 3, 4]);
    assert_eq!(jids(&["list", "all"]), [1, 2, 3, 4]);
    assert_eq!(jids(&["list", "a"]), [1, 2, 3, 4]);
    assert_eq!(jids(&["list", "p"]), [1, 3]);
    assert_eq!(jids(&["ls", "hold"]), [4]);
    assert_eq!(jids(&["l", "f", "3"]), [2, 3]);
    let piped: Vec<i64> = q
        .rq_stdin(&["list", "-"], "3\njid: 1\n")
        .ok()
        .records()
        .iter()
        .map(|r| int(r, "jid"))
        .collect();
    assert_eq!(piped, [1, 3]);
    q.rq(&["list", "bogus"]).fails();
    let out = q.rq(&["list", "-f", "jid,comm"]).ok().records();
    assert_eq!(out[0].keys().collect::<Vec<_>>(), ["jid", "command"]);
    q.rq(&["list", "-f", "nosuch"]).fails();
    // A jid asked for that does not exist is said (exit 1), as delete does.
    let missing = q.rq(&["list", "99"]).fails();
    // An empty listing is an empty list (YAML's `[]`), not zero bytes.
    assert_eq!(missing.stdout, "[]\n");
    assert!(
        missing.stderr.contains("job 99: no such job"),
        "{}",
        missing.stderr
    );
    assert_eq!(
        q.rq(&["list", "99", "--format", "json"]).stdout.trim(),
        "[]"
    );
}

fn many_jobs_list_in_chunks_without_losing_any(store: StoreKind) {
    let q = TestQueue::on(store);
    let lines: String = (0..5000).map(|i| format!("echo {i}\n")).collect();
    q.rq_stdin(&["submit", "-q", "-"], &lines).ok();
    let rows = q.rq(&["list", "pending", "-f", "jid"]).ok().records();
    assert_eq!(rows.len(), 5000);
    let json = q.rq(&["list", "--format", "json", "-f", "jid"]).ok().stdout;
    let parsed: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.len(), 5000);
}

fn status_report(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(&["submit"], "a\nb\nc\nd\ne\n").ok();
    q.sql("UPDATE jobs SET state='finished', exit_status=0, elapsed=2.5, finished=submitted WHERE jid IN (1,2)");
    q.sql("UPDATE jobs SET state='finished', exit_status=75, elapsed=1.0, finished=submitted WHERE jid=3");
    q.sql("UPDATE jobs SET state='running', runner='n1', started=submitted WHERE jid=4");
    let v = q
        .rq(&["status", "--exit", "retry=75,76 ok = 0"])
        .ok()
        .value();
    assert_eq!(v["jobs"]["pending"], 1);
    assert_eq!(v["jobs"]["finished"], 3);
    assert_eq!(v["jobs"]["running"], 1);
    assert_eq!(v["jobs"]["total"], 5);
    assert_eq!(v["exit_status"]["successes"], 2);
    assert_eq!(v["exit_status"]["failures"], 1);
    assert_eq!(v["exit_status"]["retry"], 1);
    assert_eq!(v["exit_status"]["ok"], 2);
    assert_eq!(v["running_per_host"]["n1"], 1);
    assert_eq!(v["performance"]["n_jobs_in_last_hrs"]["1"], 3);
    // jobs 1 and 2 tie for the longest run: either may be named
    let max = v["temporal"]["finished"]["max"].as_object().unwrap();
    assert_eq!(max.len(), 1);
    let (jid, took) = max.iter().next().unwrap();
    assert!(jid == "1" || jid == "2", "{jid}");
    assert_eq!(took, "00h00m02.50s");
    assert_eq!(v["temporal"]["finished"]["min"]["3"], "00h00m01.00s");
    let json: Value =
        serde_json::from_str(&q.rq(&["status", "--format", "json"]).ok().stdout).unwrap();
    assert_eq!(json["jobs"]["total"], 5);
    q.rq(&["status", "--exit", "bad"]).fails();
}

fn query_simple_like_raw_and_injection(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-t", "x", "make all"]).ok();
    q.rq(&["submit", "-t", "it's", "echo 1"]).ok();
    q.rq(&["submit", "-t", "42", "-p", "9", "echo 2"]).ok();
    let jids = |args: &[&str]| -> Vec<i64> {
        q.rq(args)
            .ok()
            .records()
            .iter()
            .map(|r| int(r, "jid"))
            .collect()
    };
    assert_eq!(jids(&["query", "tag=x"]), [1]);
    assert_eq!(jids(&["q", "tag==it's"]), [2]);
    assert_eq!(jids(&["q", "tag=42"]), [3]);
    assert_eq!(jids(&["q", "priority=9"]), [3]);
    assert_eq!(jids(&["q", "priority!=9", "tag!=x"]), [2]);
    assert_eq!(jids(&["q", "command=~make%"]), [1]);
    assert_eq!(jids(&["q", "command!~make%"]), [2, 3]);
    assert_eq!(jids(&["q", "exit_status=null"]), [1, 2, 3]);
    assert_eq!(jids(&["q", "priority > 0 or tag = 'x'"]), [1, 3]);
    assert_eq!(jids(&["q", "tag='x';DROP"]), Vec::<i64>::new());
    // raw SQL cannot write, and a second statement is refused
    let before = q.dump();
    q.rq(&["q", "1; DELETE FROM jobs"]).fails();
    q.rq(&[
        "q",
        "jid IN (SELECT jid FROM jobs WHERE 0) OR 1) ; DROP TABLE jobs --",
    ])
    .fails();
    q.rq(&["q", "nosuchfield=1"]).fails();
    q.rq(&["q"]).fails();
    q.rq(&["q", "no such column here"]).fails();
    assert_eq!(q.dump(), before);
    // the clause from stdin
    assert_eq!(
        q.rq_stdin(&["q", "-"], "# comment\ntag = 'x'\n")
            .ok()
            .records()
            .len(),
        1
    );
}

/// A user's own where-clause runs as written, in the store's dialect: what both speak
/// works on both; what only one speaks is refused by the other (exit 2, its message).
fn a_raw_where_clause_runs_in_the_stores_own_dialect(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(&["submit", "-q", "-"], "make all\nexit 3\ntrue\n")
        .ok();
    q.sql("UPDATE jobs SET state = 'finished', exit_status = 3 WHERE jid = 2");
    q.sql("UPDATE jobs SET state = 'finished', exit_status = 0 WHERE jid = 3");
    let jids = |clause: &str| -> Vec<i64> {
        let out = q.rq(&["query", clause]).ok();
        out.records().iter().map(|r| int(r, "jid")).collect()
    };
    // Both stores.
    assert_eq!(jids("exit_status IS DISTINCT FROM 0"), [1, 2]);
    assert_eq!(jids("command LIKE 'make%'"), [1]);
    let refused = |clause: &str| {
        let out = q.rq(&["query", clause]).fails();
        assert_eq!(out.status, 2, "{clause}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("(in: {clause})")),
            "{}",
            out.stderr
        );
    };
    match store {
        StoreKind::Sqlite => {
            // SQLite's IS with a value, and LIKE ignoring ASCII case.
            assert_eq!(jids("exit_status IS NOT 0"), [1, 2]);
            assert_eq!(jids("command LIKE 'MAKE%'"), [1]);
            refused("command ~ '^make'");
        }
        StoreKind::Postgres => {
            // PostgreSQL's regular expressions; its LIKE minds case (ILIKE does not).
            assert_eq!(jids("command ~ '^make'"), [1]);
            assert_eq!(jids("command LIKE 'MAKE%'"), Vec::<i64>::new());
            assert_eq!(jids("command ILIKE 'MAKE%'"), [1]);
            refused("exit_status IS NOT 0");
        }
    }
    // The query language means the same on both: `=~` ignores ASCII case.
    assert_eq!(jids("command=~MAKE%"), [1]);
}

fn update_targets_values_and_skips(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(&["submit", "-t", "x"], "a\nb\nc\n").ok();
    let rows = q
        .rq(&["update", "1", "command=echo a b", "priority=4", "tag=null"])
        .ok()
        .records();
    assert_eq!(text(&rows[0], "command"), "echo a b");
    assert_eq!(int(&rows[0], "priority"), 4);
    assert_eq!(rows[0]["tag"], Value::Null);
    // pipeline from the original's docs
    let found = q.rq(&["query", "tag=x"]).ok().stdout;
    let rows = q
        .rq_stdin(&["update", "state=holding", "-"], &found)
        .ok()
        .records();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| text(r, "state") == "holding"));
    let rows = q
        .rq(&["u", "holding", "state=p", "runner=n3"])
        .ok()
        .records();
    assert_eq!(rows.len(), 2);
    assert_eq!(text(&rows[0], "hosts"), "n3");
    // running jobs are reported, not silently skipped
    q.sql("UPDATE jobs SET state='running' WHERE jid=2");
    let out = q.rq(&["update", "2", "3", "priority=1"]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("job 2 not updated: it is running"),
        "{}",
        out.stderr
    );
    assert_eq!(int(&q.rq(&["list", "3"]).ok().records()[0], "priority"), 1);
    // stdin= replaces the job's stdin file
    let f = q.tmp.path().join("new-in");
    std::fs::write(&f, "new\n").unwrap();
    let row = &q
        .rq(&["update", "3", &format!("stdin={}", f.display())])
        .ok()
        .records()[0];
    let rel = text(row, "stdin");
    assert_eq!(
        std::fs::read_to_string(q.files().join(rel)).unwrap(),
        "new\n"
    );
    assert_eq!(
        q.rq(&["stdin", "3"]).ok().stdout,
        "",
        "stdin dump reads stdin/<jid> convention only"
    );
    // errors change nothing
    let before = q.dump();
    q.rq(&["update", "1", "priority=x"]).fails();
    q.rq(&["update", "1", "state=running"]).fails();
    q.rq(&["update", "1", "jid=5x"]).fails();
    q.rq(&["update", "1", "colour=red"]).fails();
    q.rq(&["update", "priority=1"]).fails();
    q.rq(&["update", "1"]).fails();
    assert_eq!(q.dump(), before);
}

fn delete_by_jid_state_all_and_pipeline_never_running(store: StoreKind) {
    let q = TestQueue::on(store);
    let input = q.tmp.path().join("in");
    std::fs::write(&input, "x").unwrap();
    q.rq_stdin(
        &["submit", "--stdin", input.to_str().unwrap(), "-"],
        "a\nb\nc\nd\ne\n",
    )
    .ok();
    q.sql("UPDATE jobs SET state='finished', exit_status=0 WHERE jid IN (1,2)");
    q.sql("UPDATE jobs SET state='running' WHERE jid=5");
    std::fs::write(q.files().join("stdout/1"), "out").unwrap();
    let deleted = q
        .rq_stdin(
            &["delete", "-"],
            &q.rq(&["query", "exit_status=0"]).ok().stdout,
        )
        .ok()
        .records();
    assert_eq!(deleted.len(), 2);
    assert!(!q.files().join("stdout/1").exists());
    assert!(!q.files().join("stdin/1").exists());
    assert!(q.files().join("stdin/3").exists());
    let out = q.rq(&["rm", "5", "3"]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("job 5 not deleted"));
    // `all` deletes everything it can; the running job left is said (exit 1).
    let out = q.rq(&["delete", "all"]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("job 5 not deleted"), "{}", out.stderr);
    assert_eq!(out.records().len(), 1);
    let left: Vec<i64> = q.jobs().iter().map(|r| int(r, "jid")).collect();
    assert_eq!(left, [5]);
    q.rq(&["delete"]).fails();
    q.rq(&["delete", "junk"]).fails();
    // an empty pipe after '-' (a query that matched nothing) is not an error
    let out = q.rq_stdin(&["delete", "-"], "");
    assert_eq!(out.status, 0);
    assert!(out.stderr.contains("nothing deleted"), "{}", out.stderr);
    assert_eq!(q.rq_stdin(&["update", "priority=1", "-"], "").status, 0);
    // jids are never reused
    let row = &q.rq(&["submit", "x"]).ok().records()[0];
    assert_eq!(int(row, "jid"), 6);
}

fn resubmit_resets_in_place_without_pinning(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "--runner", "n1,n2", "-t", "t", "echo x"])
        .ok();
    q.rq(&["submit", "echo y"]).ok();
    q.sql("UPDATE jobs SET state='finished', exit_status=3, runner='n2', started='2026-01-01T00:00:00.000000Z', finished='2026-01-01T00:00:01.000000Z', elapsed=1, pid=77 WHERE jid=1");
    q.sql("UPDATE jobs SET state='running', runner='n1' WHERE jid=2");
    let out = q.rq(&["resubmit", "finished", "2", "-p", "3"]);
    assert_eq!(out.status, 1);
    let rows = out.records();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(int(r, "jid"), 1);
    assert_eq!(text(r, "state"), "pending");
    assert_eq!(int(r, "priority"), 3);
    assert_eq!(text(r, "hosts"), "n1,n2");
    for f in [
        "runner",
        "started",
        "finished",
        "elapsed",
        "pid",
        "exit_status",
    ] {
        assert_eq!(r[f], Value::Null, "{f}");
    }
}

fn touch_submits_or_updates_a_pending_twin(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["touch", "-t", "a", "echo x"]).ok();
    let rows = q.rq(&["to", "-t", "a", "-p", "5", "echo x"]).ok().records();
    assert_eq!(int(&rows[0], "jid"), 1);
    assert_eq!(int(&rows[0], "priority"), 5);
    q.rq(&["touch", "-t", "b", "echo x"]).ok();
    assert_eq!(q.jobs().len(), 2);
}

fn execute_and_configure(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "true"]).ok();
    let rows = q
        .rq(&["execute", "SELECT count(*) AS n FROM jobs"])
        .ok()
        .records();
    assert_eq!(rows[0]["n"], 1);
    q.rq(&["execute", "SELEKT"]).fails();
    let v = q.rq(&["configure", "heartbeat=5s"]).ok().value();
    assert_eq!(v["heartbeat"], "5s");
    q.rq(&["configure", "heartbeat=soon"]).fails();
    q.rq(&["configure", "novalue"]).fails();
}

fn configure_refuses_unknown_keys_and_values_out_of_range(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "heartbeat=5s", "lease=1m", "max_attempts=4"])
        .ok();
    let before = q.rq(&["configure"]).ok().stdout;
    for bad in [
        &["note=hello"][..],
        &["heartbeat=0.001s"],
        &["heartbeat=0"],
        &["heartbeat=2d"],
        &["lease=9s"],      // under two of the stored 5 s heartbeats
        &["heartbeat=40s"], // the stored 1 m lease is under two of these
        &["lease=1000d"],
        &["max_attempts=0"],
        &["max_attempts=-1"],
        &["max_attempts=many"],
        &["heartbeat=1s", "colour=red"], // one bad key: nothing changes
    ] {
        let mut args = vec!["configure"];
        args.extend_from_slice(bad);
        let out = q.rq(&args).fails();
        assert_eq!(out.stderr.lines().count(), 1, "{bad:?}: {}", out.stderr);
        assert_eq!(
            q.rq(&["configure"]).ok().stdout,
            before,
            "{bad:?} changed something"
        );
    }
    // Both together are judged together; removing a key returns it to its default.
    q.rq(&["configure", "heartbeat=40s", "lease=2m"]).ok();
    q.rq(&["configure", "lease="]).fails(); // default 60 s < two 40 s heartbeats
    q.rq(&["configure", "heartbeat=", "lease="]).ok();
    assert_eq!(q.rq(&["configure"]).ok().value()["max_attempts"], "4");
}

fn bad_invocations_get_one_line_errors_and_change_nothing(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "true"]).ok();
    let before = q.dump();
    q.rq(&["frobnicate"]).fails();
    q.rq(&["list", "--no-such-option"]).fails();
    q.rq(&["submit", "-p", "high", "x"]).fails();
    q.rq(&["submit", "-i", "/nonexistent"]).fails();
    q.rq(&["list", "--format", "xml"]).fails();
    q.rq(&["submit"]).fails();
    assert_eq!(q.dump(), before);
    rq_in(q.tmp.path(), &["/nonexistent/q", "status"], None).fails();
    rq_in(q.tmp.path(), &["/etc", "status"], None).fails();
    let out = rq_in(q.tmp.path(), &[q.q()], None).fails();
    assert!(out.stderr.contains("no mode"));
}

#[test]
fn help_version_rq_q_and_rq_opts() {
    let tmp = tempfile::tempdir().unwrap();
    let help = rq_in(tmp.path(), &["help"], None).ok().stdout;
    assert!(help.contains("submit (s)"));
    assert!(
        rq_in(tmp.path(), &["help", "submit"], None)
            .ok()
            .stdout
            .contains("--infile")
    );
    assert!(
        rq_in(tmp.path(), &["--help"], None)
            .ok()
            .stdout
            .contains("modes")
    );
    assert!(
        rq_in(tmp.path(), &["--version"], None)
            .ok()
            .stdout
            .starts_with("rq ")
    );
    let q = TestQueue::new();
    let mut cmd = rq_command();
    cmd.env("RQ_Q", q.q())
        .env("RQ_OPTS", "-p 7 --tag fromenv")
        .args(["submit", "-t", "cli", "true"]);
    let row = &run_cmd(cmd, None).ok().records()[0];
    assert_eq!(int(row, "priority"), 7);
    assert_eq!(text(row, "tag"), "cli");
    let mut cmd = rq_command();
    cmd.env("RQ_OPTS", "stray").args([q.q(), "list"]);
    run_cmd(cmd, None).fails();
}

fn closed_pipe_exits_quietly(store: StoreKind) {
    let q = TestQueue::on(store);
    let lines: String = (0..3000).map(|i| format!("echo {i}\n")).collect();
    q.rq_stdin(&["submit", "-q"], &lines).ok();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' '{}' list | head -1; echo \"status=${{PIPESTATUS:-0}}\"",
            rq_bin(),
            q.q()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("---"));
}

#[test]
fn damaged_foreign_and_newer_queues_are_refused_clearly() {
    let q = TestQueue::new();
    q.sql("PRAGMA user_version = 99");
    let out = q.rq(&["status"]).fails();
    assert!(out.stderr.contains("newer rq"), "{}", out.stderr);

    let q = TestQueue::new();
    std::fs::write(q.path.join("db"), vec![0x5au8; 8192]).unwrap();
    let out = q.rq(&["list"]).fails();
    assert!(out.stderr.contains("damaged"), "{}", out.stderr);

    let q = TestQueue::new();
    let db = q.path.join("db");
    let bytes = std::fs::read(&db).unwrap();
    std::fs::write(&db, &bytes[..bytes.len() / 2]).unwrap();
    let out = q.rq(&["list"]);
    assert_ne!(out.status, 0);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

fn concurrent_submitters_and_updaters_lose_nothing(store: StoreKind) {
    let q = TestQueue::on(store);
    let mut children = Vec::new();
    for w in 0..4 {
        let lines: String = (0..100).map(|i| format!("echo w{w} j{i}\n")).collect();
        let path = q.tmp.path().join(format!("list{w}"));
        std::fs::write(&path, lines).unwrap();
        for chunk in 0..3 {
            let mut cmd = rq_command();
            cmd.args([
                q.q(),
                "submit",
                "-q",
                "-t",
                &format!("w{w}c{chunk}"),
                "-i",
                path.to_str().unwrap(),
            ]);
            cmd.stdout(std::process::Stdio::null());
            children.push(cmd.spawn().unwrap());
        }
    }
    for _ in 0..4 {
        let mut cmd = rq_command();
        cmd.args([q.q(), "update", "pending", "priority=3", "-q"]);
        children.push(cmd.spawn().unwrap());
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let jobs = q.jobs();
    assert_eq!(jobs.len(), 1200);
    let mut jids: Vec<i64> = jobs.iter().map(|r| int(r, "jid")).collect();
    jids.dedup();
    assert_eq!(jids.len(), 1200);
    q.integrity_ok();
}

#[test]
fn every_mode_has_help() {
    let tmp = tempfile::tempdir().unwrap();
    for (mode, abbrevs) in rq::cli::MODES {
        for word in std::iter::once(mode).chain(abbrevs.iter()) {
            let out = rq_in(tmp.path(), &["help", word], None).ok();
            assert!(out.stdout.contains("rq "), "{word}: {}", out.stdout);
        }
    }
}

fn durations_are_compound_and_negative_ones_refused_by_name(store: StoreKind) {
    let q = TestQueue::on(store);
    let job = q
        .rq(&["submit", "--timeout", "1h30m", "--format", "json", "true"])
        .ok()
        .stdout;
    assert!(job.contains("\"timeout\": 5400.0"), "{job}");
    for (opt, value) in [
        ("--timeout", "-5s"),
        ("--retry-delay", "-1m"),
        ("--timeout", "1h30"),
    ] {
        let out = q.rq(&["submit", opt, value, "true"]).fails();
        assert!(out.stderr.contains(opt), "{opt} {value}: {}", out.stderr);
    }
    assert_eq!(q.jobs().len(), 1, "a refused submit added a job");
}

fn commands_that_could_never_run_are_refused(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let long = "x".repeat(130_000);
    for (how, out) in [
        ("NUL byte", q.rq_stdin(&["submit"], "echo a\0b\n")),
        ("blank", q.rq(&["submit", "   "])),
        ("too long", q.rq(&["submit", &long])),
        (
            "blank in a list",
            q.rq_stdin(&["submit"], "- command: 'true'\n- command: ' '\n"),
        ),
        ("update", q.rq(&["update", "1", "command= "])),
    ] {
        assert_ne!(out.status, 0, "{how}");
        assert!(
            out.stderr.lines().count() == 1 && out.stderr.contains("command"),
            "{how}: {}",
            out.stderr
        );
    }
    let jobs = q.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(text(&jobs[0], "command"), "true");
}

fn a_byte_order_mark_does_not_turn_a_yaml_list_into_shell_jobs(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(
        &["submit", "-q"],
        "\u{feff}- command: echo hi\n  priority: 3\n",
    )
    .ok();
    q.rq_stdin(&["submit", "-q"], "\u{feff}echo plain\n").ok();
    let jobs = q.jobs();
    assert_eq!(text(&jobs[0], "command"), "echo hi");
    assert_eq!(int(&jobs[0], "priority"), 3);
    assert_eq!(text(&jobs[1], "command"), "echo plain");
}

fn job_inputs_that_cannot_be_copied_are_refused_at_once(store: StoreKind) {
    let q = TestQueue::on(store);
    let dir = q.tmp.path();
    let fifo = dir.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), "x").unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(tree.join("p"))
            .status()
            .unwrap()
            .success()
    );
    q.rq(&["submit", "-q", "true"]).ok();
    let fifo_s = fifo.to_str().unwrap();
    let tree_s = tree.to_str().unwrap();
    let queue_data = format!("{}/data", q.q());
    let update_fifo = format!("data={fifo_s}");
    let cases: Vec<Vec<&str>> = vec![
        vec!["submit", "--data", fifo_s, "true"],
        vec!["submit", "--stdin", fifo_s, "true"],
        vec!["submit", "--data", tree_s, "true"],
        vec!["submit", "--data", "/", "true"],
        vec!["submit", "--data", q.q(), "true"],
        vec!["submit", "--data", &queue_data, "true"],
        vec!["submit", "--stdin", "/dev/zero", "true"],
        vec!["update", "1", &update_fifo],
    ];
    for args in cases {
        let started = std::time::Instant::now();
        let out = q.rq(&args).fails();
        assert!(started.elapsed().as_secs() < 10, "{args:?} took long");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
    }
    assert_eq!(q.jobs().len(), 1);
    assert_eq!(
        std::fs::read_dir(q.files().join("data")).unwrap().count(),
        0
    );
    // A plain tree is fine.
    std::fs::remove_file(tree.join("p")).unwrap();
    q.rq(&["submit", "-q", "--data", tree_s, "true"]).ok();
    assert_eq!(
        std::fs::read_to_string(q.files().join("data/2/f")).unwrap(),
        "x"
    );
}

#[test]
fn deleting_jobs_gives_their_space_back() {
    let q = TestQueue::new();
    let big = format!("echo {}\n", "y".repeat(100_000));
    q.rq_stdin(&["submit", "-q"], &big.repeat(200)).ok();
    let db = q.path.join("db");
    let full = std::fs::metadata(&db).unwrap().len();
    assert!(full > 20_000_000, "{full}");
    q.rq(&["delete", "all", "-q"]).ok();
    let after = std::fs::metadata(&db).unwrap().len();
    assert!(
        after < 1_000_000,
        "the database stayed {after} bytes after delete all"
    );
    q.integrity_ok();
    q.rq(&["submit", "-q", "true"]).ok();
}

/// The exit-status rule (README): 0 did what was asked, 1 something named could not be
/// acted on or a failure after the command line was understood, 2 a command line rq
/// cannot run as written. Each with one line on stderr saying why.
fn exit_statuses_follow_one_rule(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    q.rq(&["submit", "-q", &q.held()]).ok();
    q.sql("UPDATE jobs SET state='running', runner='elsewhere' WHERE jid=2");
    let table: &[(&[&str], i32, &str)] = &[
        (&["list", "pending"], 0, ""),
        (&["list", "dead"], 0, ""),
        (&["list", "99999"], 1, "no such job"),
        (&["delete", "99999"], 1, "no such job"),
        (&["delete", "running"], 1, "running"),
        (&["resubmit", "99999"], 1, "no such job"),
        (&["kill", "1"], 1, "not"),
        (&["update", "1", "jid=100"], 2, "jid"),
        (&["update", "1", "colour=red"], 2, "colour"),
        (&["status", "foo"], 2, "neither a jid"),
        (&["frobnicate"], 2, "unknown mode"),
        (&["list", "--bogus"], 2, "--bogus"),
        (&["submit", "--timeout", "-5s", "x"], 2, "--timeout"),
        (&["submit", "-p", "high", "x"], 2, ""),
        (&["wait", "abc"], 2, "abc"),
        (&["feeders", "--fields", "nope"], 2, "nope"),
    ];
    for (args, code, says) in table {
        let out = q.rq(args);
        assert_eq!(out.status, *code, "{args:?}: {}", out.stderr);
        if *code != 0 {
            assert_eq!(
                out.stderr.trim().lines().count(),
                1,
                "{args:?}: {}",
                out.stderr
            );
            assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        }
    }
    q.rq_as("h1", &["feed", "--exit_when_empty"]).ok();
    let hosts = q
        .rq(&["feeders", "--fields", "host", "--format", "json"])
        .ok()
        .stdout;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&hosts).unwrap();
    assert_eq!(rows.len(), 1, "{hosts}");
    assert_eq!(rows[0], serde_json::json!({"host": "h1"}));
    // Bad job input on stdin is not a command-line mistake: 1.
    assert_eq!(q.rq_stdin(&["submit"], "- command: [unclosed\n").status, 1);
}

fn rq_own_listing_of_thousands_of_jobs_pipes_back_in(store: StoreKind) {
    let q = TestQueue::on(store);
    let lines: String = (0..5000).map(|i| format!("echo {i}\n")).collect();
    q.rq_stdin(&["submit", "-q", "-t", "sweep", "-"], &lines)
        .ok();
    let other = TestQueue::new();
    for format in ["yaml", "json"] {
        let listing = q.rq(&["list", "--format", format]).ok().stdout;
        let echo = other
            .rq_stdin(
                &[
                    "submit",
                    "--format",
                    "json",
                    "-f",
                    "jid,state,command,tag",
                    "-",
                ],
                &listing,
            )
            .ok()
            .stdout;
        // Every submitted row is echoed, past the first chunk too, with consecutive jids.
        let echoed: Vec<Value> = serde_json::from_str(&echo).unwrap();
        assert_eq!(echoed.len(), 5000, "{format}");
        let first = echoed[0]["jid"].as_i64().unwrap();
        for (i, row) in echoed.iter().enumerate() {
            assert_eq!(row["jid"], first + i as i64);
            assert_eq!(row["command"], format!("echo {i}"));
            assert_eq!(row["tag"], "sweep");
            assert_eq!(row["state"], "pending");
        }
    }
    // Two listings one after the other are two YAML documents: both go in.
    let one = q.rq(&["list", "1", "2"]).ok().stdout;
    let two = q.rq(&["list", "4999"]).ok().stdout;
    let echo = other
        .rq_stdin(
            &["submit", "--format", "json", "-f", "command", "-"],
            &format!("{one}{two}"),
        )
        .ok()
        .stdout;
    let echoed: Vec<Value> = serde_json::from_str(&echo).unwrap();
    let commands: Vec<&str> = echoed
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(commands, ["echo 0", "echo 1", "echo 4998"]);
    assert_eq!(other.count("pending"), 10003);
    // And a listing of thousands of jobs names them to the modes that take jids.
    let listing = other.rq(&["list", "pending"]).ok().stdout;
    other.rq_stdin(&["delete", "-q", "-"], &listing).ok();
    assert_eq!(other.count("pending"), 0);
}

fn a_bad_job_deep_in_a_long_list_commits_nothing(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let before = q.dump();
    let mut yaml: String = (0..5000)
        .map(|i| format!("- command: echo {i}\n"))
        .collect();
    yaml.push_str("- command: x\n  colour: red\n");
    let out = q.rq_stdin(&["submit", "-"], &yaml).fails();
    assert!(
        out.stderr.contains("job 5001: unknown field 'colour'"),
        "{}",
        out.stderr
    );
    let mut lines: String = (0..5000).map(|i| format!("echo {i}\n")).collect();
    lines.push_str(&format!("echo {}\n", "x".repeat(200_000)));
    let out = q.rq_stdin(&["submit", "-"], &lines).fails();
    assert!(
        out.stderr.contains("job 5001: the command is too long"),
        "{}",
        out.stderr
    );
    assert_eq!(q.dump(), before);
}

/// The counts in `status` against a count of the rows themselves.
fn assert_status_matches_rows(q: &TestQueue, when: &str) {
    let status = q.rq(&["status", "--format", "json"]).ok().value();
    let truth = q
        .rq(&[
            "execute",
            "SELECT state, count(*) AS n, (SELECT count(*) FROM jobs WHERE state = 'finished' AND exit_status = 0) AS ok, \
             (SELECT round(CAST(avg(elapsed) AS numeric), 2) FROM jobs WHERE state = 'finished') AS avg FROM jobs GROUP BY state",
            "--format",
            "json",
        ])
        .ok()
        .value();
    let mut total = 0;
    let mut ok = 0;
    let mut avg = Value::Null;
    for state in ["pending", "holding", "running", "finished", "dead"] {
        let n = truth
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == state)
            .map_or(0, |r| {
                ok = r["ok"].as_i64().unwrap();
                avg = r["avg"].clone();
                r["n"].as_i64().unwrap()
            });
        total += n;
        assert_eq!(status["jobs"][state], n, "{state} {when}: {status}");
    }
    assert_eq!(status["jobs"]["total"], total, "{when}");
    assert_eq!(status["exit_status"]["successes"], ok, "{when}");
    if let Some(avg) = avg.as_f64() {
        let shown = status["performance"]["avg_time_per_job"].as_str().unwrap();
        let seconds: f64 = shown
            .trim_end_matches('s')
            .rsplit('m')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((seconds - avg).abs() < 0.011, "{when}: {shown} vs {avg}");
    }
}

fn status_counts_follow_every_kind_of_change(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq_stdin(&["submit", "-q", "-"], "true\nfalse\nexit 3\necho a\n")
        .ok();
    q.rq(&["submit", "-q", "--stage", "echo later"]).ok();
    assert_status_matches_rows(&q, "after submit");
    q.rq_as("h1", &["feed", "--exit_when_empty", "--shell", "sh -c"])
        .ok();
    assert_status_matches_rows(&q, "after feeding");
    q.rq(&["update", "5", "state=pending"]).ok();
    q.rq(&["resubmit", "2"]).ok();
    q.rq(&["delete", "1"]).ok();
    assert_status_matches_rows(&q, "after update, resubmit, delete");
    // Raw SQL keeps them too: the counts are kept by triggers in the database.
    q.sql("UPDATE jobs SET state = 'finished', exit_status = 0, elapsed = 4.25 WHERE state = 'pending'");
    q.sql("INSERT INTO jobs (state, submitted, submitter, command, elapsed, exit_status) VALUES ('dead', '2026-01-01T00:00:00.000000Z', 'x', 'y', 1.5, NULL)");
    assert_status_matches_rows(&q, "after raw SQL");
    q.rq(&["rotate"]).ok();
    assert_status_matches_rows(&q, "after rotate");
    q.rq_stdin(&["submit", "-q", "-"], "a\nb\n").ok();
    q.rq(&["delete", "all"]).ok();
    assert_status_matches_rows(&q, "after delete all");
}

#[test]
fn status_names_the_oldest_and_newest_waiting_jobs_across_priorities() {
    for priorities in [3, 70] {
        let q = TestQueue::new();
        let lines: String = (0..200).map(|i| format!("echo {i}\n")).collect();
        q.rq_stdin(&["submit", "-q", "-"], &lines).ok();
        // Scatter priorities and submit times so that neither order follows the jids.
        q.sql(&format!(
            "UPDATE jobs SET priority = (jid * 7) % {priorities}, \
             submitted = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ((jid * 37) % 200) || ' minutes')"
        ));
        let want = |order: &str| {
            let rows = q
                .rq(&[
                    "query",
                    &format!(
                        "jid = (SELECT jid FROM jobs WHERE state = 'pending' \
                         ORDER BY submitted {order}, jid {order} LIMIT 1)"
                    ),
                    "-f",
                    "jid",
                ])
                .ok()
                .records();
            rows[0]["jid"].to_string()
        };
        let status = q.rq(&["status", "--format", "json"]).ok().value();
        let pending = &status["temporal"]["pending"];
        let name = |end: &str| {
            pending[end]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone()
        };
        assert_eq!(name("max"), want("ASC"), "oldest, {priorities} priorities");
        assert_eq!(name("min"), want("DESC"), "newest, {priorities} priorities");
    }
}

fn a_job_list_from_a_pipe_is_read_once_and_spooled(store: StoreKind) {
    let q = TestQueue::on(store);
    // `-i /dev/stdin` and `-i <(generator)` name pipes: submit must not read them twice.
    q.rq_stdin(&["submit", "-q", "-i", "/dev/stdin"], "echo a\necho b\n")
        .ok();
    let fifo = q.tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            std::fs::write(&fifo, "echo c\n- not yaml, a command\n").unwrap()
        })
    };
    q.rq(&["submit", "-q", "-i", fifo.to_str().unwrap()]).ok();
    writer.join().unwrap();
    let commands: Vec<String> = q.jobs().iter().map(|j| text(j, "command")).collect();
    assert_eq!(
        commands,
        ["echo a", "echo b", "echo c", "- not yaml, a command"]
    );
}

/// Every input that takes a duration (options, the environment, configure, job lists)
/// refuses one too long to mean anything with a one-line error (never a panic) and
/// changes nothing; so does an absurd array range.
fn durations_and_ranges_too_large_are_refused_not_panicked_on(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let before = q.dump();
    let settings_before = q.rq(&["configure"]).ok().stdout;
    let huge = "99999999999999999999d";
    // (arguments, standard input, environment)
    type Case<'a> = (Vec<String>, Option<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            vec!["submit".into(), "--in".into(), huge.into(), "true".into()],
            None,
            vec![],
        ),
        (
            vec![
                "submit".into(),
                "--timeout".into(),
                huge.into(),
                "true".into(),
            ],
            None,
            vec![],
        ),
        (
            vec![
                "submit".into(),
                "--retry-delay".into(),
                huge.into(),
                "true".into(),
            ],
            None,
            vec![],
        ),
        (
            vec![
                "submit".into(),
                "--array".into(),
                "0-9223372036854775807".into(),
                "true".into(),
            ],
            None,
            vec![],
        ),
        (
            vec!["submit".into(), "-".into()],
            Some("- {command: 'true', timeout: 99999999999999999999d}\n"),
            vec![],
        ),
        (
            vec!["submit".into(), "-".into()],
            Some("[{\"command\": \"true\", \"retry_delay\": 1e300}]\n"),
            vec![],
        ),
        (
            vec!["wait".into(), "--timeout".into(), huge.into(), "1".into()],
            None,
            vec![],
        ),
        (
            vec!["feed".into(), "--min_sleep".into(), huge.into()],
            None,
            vec![],
        ),
        (
            vec!["feed".into(), "--max_sleep".into(), huge.into()],
            None,
            vec![],
        ),
        (vec!["status".into()], None, vec![("RQ_LOCK_TIMEOUT", huge)]),
        (
            vec!["submit".into(), "true".into()],
            None,
            vec![("RQ_LOCK_TIMEOUT", huge)],
        ),
        (
            vec!["configure".into(), format!("lease={huge}")],
            None,
            vec![],
        ),
        (
            vec!["configure".into(), format!("heartbeat={huge}")],
            None,
            vec![],
        ),
        (
            vec!["configure".into(), format!("reserve_after={huge}")],
            None,
            vec![],
        ),
    ];
    for (args, stdin, env) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = rq_command();
        cmd.env("HOME", q.home())
            .envs(env.iter().copied())
            .current_dir(q.tmp.path())
            .arg(q.q())
            .args(&args);
        let run = run_cmd(cmd, stdin);
        assert_ne!(run.status, 101, "{args:?} {env:?} panicked: {}", run.stderr);
        assert_ne!(run.status, 0, "{args:?} {env:?} was accepted");
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?} {env:?}: one line: {}",
            run.stderr
        );
        assert!(run.stderr.starts_with("rq: "), "{args:?}: {}", run.stderr);
        assert_eq!(q.dump(), before, "{args:?} {env:?} changed the queue");
    }
    assert_eq!(q.rq(&["configure"]).ok().stdout, settings_before);
}

/// Binary or newline-free input on every path that reads job lists, item lines or jid
/// lists is refused with a one-line error (it used to spin, or grow memory without end),
/// and changes nothing. `timeout` only keeps a regression from hanging the suite.
fn binary_and_newline_free_input_is_refused_at_once(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let before = q.dump();
    let no_newline = q.tmp.path().join("no-newline");
    std::fs::write(&no_newline, "y".repeat(3 << 20)).unwrap();
    let zeros = q.tmp.path().join("zeros");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (nl, z) = (no_newline.to_str().unwrap(), zeros.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["submit", "-"], "/dev/zero"),
        (vec!["submit", "-"], nl),
        (vec!["submit", "-i", "/dev/zero"], "/dev/null"),
        (vec!["submit", "-i", z], "/dev/null"),
        (vec!["submit", "-i", nl], "/dev/null"),
        (
            vec!["submit", "--each-line", "/dev/zero", "echo {}"],
            "/dev/null",
        ),
        (vec!["submit", "--each-line", nl, "echo {}"], "/dev/null"),
        (vec!["delete", "-"], "/dev/zero"),
        (vec!["kill", "-"], nl),
        (vec!["list", "-"], "/dev/zero"),
        (vec!["update", "-", "tag=x"], nl),
    ];
    for (args, stdin) in cases {
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["60", rq_bin(), q.q()])
            .args(&args)
            .current_dir(q.tmp.path())
            .env("HOME", q.home())
            .stdin(std::fs::File::open(stdin).unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} < {stdin}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("NUL byte") || stderr.contains("longer than"),
            "{args:?}: {stderr}"
        );
        assert_eq!(q.dump(), before, "{args:?} changed the queue");
    }
}

crate::on_both_stores!(
    a_raw_where_clause_runs_in_the_stores_own_dialect,
    binary_and_newline_free_input_is_refused_at_once,
    durations_and_ranges_too_large_are_refused_not_panicked_on,
    status_counts_follow_every_kind_of_change,
    exit_statuses_follow_one_rule,
    submit_from_argv_infile_stdin_and_dash,
    submit_options_stage_runner_restartable_negative_priority,
    submit_copies_stdin_and_data,
    yaml_and_json_input_and_round_trips,
    a_bad_batch_commits_nothing,
    list_by_state_prefix_jid_and_stdin,
    many_jobs_list_in_chunks_without_losing_any,
    status_report,
    query_simple_like_raw_and_injection,
    update_targets_values_and_skips,
    delete_by_jid_state_all_and_pipeline_never_running,
    resubmit_resets_in_place_without_pinning,
    touch_submits_or_updates_a_pending_twin,
    execute_and_configure,
    configure_refuses_unknown_keys_and_values_out_of_range,
    bad_invocations_get_one_line_errors_and_change_nothing,
    closed_pipe_exits_quietly,
    concurrent_submitters_and_updaters_lose_nothing,
    durations_are_compound_and_negative_ones_refused_by_name,
    commands_that_could_never_run_are_refused,
    a_byte_order_mark_does_not_turn_a_yaml_list_into_shell_jobs,
    job_inputs_that_cannot_be_copied_are_refused_at_once,
    rq_own_listing_of_thousands_of_jobs_pipes_back_in,
    a_bad_job_deep_in_a_long_list_commits_nothing,
    a_job_list_from_a_pipe_is_read_once_and_spooled,
);
