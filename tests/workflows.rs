//! Workflows: dependencies, job arrays, delayed start, environment at submit, owners —
//! through the real binary, with feeders posing as separate hosts.

mod common;
use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn by_jid(q: &TestQueue) -> HashMap<i64, serde_json::Map<String, serde_json::Value>> {
    q.jobs().into_iter().map(|j| (int(&j, "jid"), j)).collect()
}

fn stamp(job: &serde_json::Map<String, serde_json::Value>, field: &str) -> String {
    text(job, field)
}

/// A job's output, trimmed.
fn stdout_of(q: &TestQueue, jid: i64) -> String {
    q.rq(&["stdout", &jid.to_string()])
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn a_three_stage_pipeline_from_one_yaml_file_runs_in_order(store: StoreKind) {
    let q = TestQueue::on(store);
    let pipeline = "\
- name: prepare
  command: sleep 0.3; echo prepared
- {name: sim1, command: 'echo sim 1', after: prepare}
- {name: sim2, command: 'echo sim 2', after: [prepare]}
- {name: sim3, command: 'echo sim 3', after: prepare}
- name: merge
  command: echo merged
  after: [sim1, sim2, sim3]
";
    let submitted = q.rq_stdin(&["submit", "-"], pipeline).ok().records();
    assert_eq!(submitted.len(), 5);
    let states: Vec<String> = submitted.iter().map(|j| text(j, "state")).collect();
    assert_eq!(
        states,
        ["pending", "waiting", "waiting", "waiting", "waiting"]
    );
    let prepare = int(&submitted[0], "jid");
    assert_eq!(
        submitted[4]["after"],
        serde_json::json!([prepare + 1, prepare + 2, prepare + 3])
    );
    assert_eq!(int(&submitted[4], "waiting_on"), 3);
    let _h1 = q.feeder("h1", &["--max_feed", "2"]);
    let _h2 = q.feeder("h2", &["--max_feed", "2"]);
    q.wait_for("the pipeline to finish", 60, |q| q.count("finished") == 5);
    let jobs = by_jid(&q);
    let prep = &jobs[&prepare];
    for sim in 1..=3 {
        let job = &jobs[&(prepare + sim)];
        assert!(
            stamp(job, "started") >= stamp(prep, "finished"),
            "sim {sim} started before prepare finished: {job:?}"
        );
        assert!(stamp(&jobs[&(prepare + 4)], "started") >= stamp(job, "finished"));
    }
    assert_eq!(stdout_of(&q, prepare + 4), "merged");
    // Nothing waits any more.
    assert!(jobs.values().all(|j| int(j, "waiting_on") == 0));
}

fn a_failed_dependency_cancels_its_dependents_and_resubmitting_rearms_them(store: StoreKind) {
    let q = TestQueue::on(store);
    let list = "\
- {name: a, command: 'exit 3'}
- {name: b, command: 'echo b', after: a}
- {name: c, command: 'echo c', after: b}
- {name: d, command: 'echo d', after_any: a}
";
    let jobs = q.rq_stdin(&["submit", "-"], list).ok().records();
    let a = int(&jobs[0], "jid");
    let (b, c, d) = (a + 1, a + 2, a + 3);
    {
        let _h1 = q.feeder("h1", &[]);
        q.wait_for("a and d to end, b and c to be cancelled", 30, |q| {
            q.count("cancelled") == 2 && q.count("finished") == 2
        });
    }
    let jobs = by_jid(&q);
    for jid in [b, c] {
        assert_eq!(text(&jobs[&jid], "state"), "cancelled");
        assert_eq!(
            text(&jobs[&jid], "reason"),
            format!("dependency {a} exited 3")
        );
        assert!(jobs[&jid]["started"].is_null(), "a cancelled job never ran");
    }
    // after_any: it ran although a failed.
    assert_eq!(text(&jobs[&d], "state"), "finished");
    assert_eq!(stdout_of(&q, d), "d");
    // wait says the outcome: not all succeeded.
    assert_eq!(q.rq(&["wait", &a.to_string(), &b.to_string()]).status, 1);

    // Fix the cause, resubmit: the cancelled chain waits again, then runs.
    q.rq(&["resubmit", &a.to_string(), "-q"]).ok();
    q.rq(&["update", &a.to_string(), "command=echo fixed", "-q"])
        .ok();
    let jobs = by_jid(&q);
    assert_eq!(text(&jobs[&b], "state"), "waiting");
    assert_eq!(text(&jobs[&c], "state"), "waiting");
    assert_eq!(
        text(&jobs[&b], "reason"),
        format!("waits for {a} (pending)")
    );
    assert_eq!(
        text(&jobs[&c], "reason"),
        format!("waits for {b} (waiting)")
    );
    // d already ran after a's first end; it is not run again.
    assert_eq!(text(&jobs[&d], "state"), "finished");
    let _h2 = q.feeder("h2", &[]);
    q.wait_for("the re-armed chain to run", 30, |q| {
        q.count("finished") == 4
    });
    assert_eq!(stdout_of(&q, c), "c");
    assert_eq!(
        q.rq(&["wait", &a.to_string(), &b.to_string(), &c.to_string()])
            .status,
        0
    );
}

fn waits_on_jobs_already_in_the_queue(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo first"]).ok();
    q.rq(&["submit", "-q", "exit 7"]).ok();
    {
        let _h1 = q.feeder("h1", &["--exit_when_empty"]);
        q.wait_for("both to end", 30, |q| q.count("finished") == 2);
    }
    // After a success: pending at once. After a failure: cancelled at once (afterok), or
    // pending (afterany).
    let ok = q.rq(&["submit", "--after", "1", "echo ok"]).ok().records();
    assert_eq!(text(&ok[0], "state"), "pending");
    let never = q
        .rq(&["submit", "--after", "1,2", "echo never"])
        .ok()
        .records();
    assert_eq!(text(&never[0], "state"), "cancelled");
    assert_eq!(text(&never[0], "reason"), "dependency 2 exited 7");
    let any = q
        .rq(&["submit", "--after-any", "2", "echo any"])
        .ok()
        .records();
    assert_eq!(text(&any[0], "state"), "pending");
    // A job that does not exist is refused, and nothing is submitted.
    let before = q.jobs().len();
    let run = q.rq(&["submit", "--after", "99", "echo x"]).fails();
    assert!(run.stderr.contains("job 99"), "{}", run.stderr);
    assert!(
        q.rq(&["submit", "--after", "prepare", "echo x"])
            .fails()
            .stderr
            .contains("not a jid")
    );
    assert_eq!(q.jobs().len(), before);
}

fn cycles_unknown_names_and_duplicate_names_are_refused_and_nothing_is_submitted(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo keep"]).ok();
    let cases = [
        (
            "- {name: a, command: echo a, after: c}\n- {name: b, command: echo b, after: a}\n- {name: c, command: echo c, after: b}\n",
            "circle",
        ),
        ("- {name: a, command: echo a, after: a}\n", "itself"),
        (
            "- {name: a, command: echo a}\n- {command: echo b, after: [a, nope]}\n",
            "'nope'",
        ),
        (
            "- {name: a, command: echo a}\n- {name: a, command: echo b}\n",
            "already",
        ),
    ];
    for (list, says) in cases {
        let run = q.rq_stdin(&["submit", "-"], list).fails();
        assert!(run.stderr.contains(says), "{says}: {}", run.stderr);
        assert!(
            run.stderr.contains("nothing was submitted"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(q.jobs().len(), 1);
    q.integrity_ok();
}

fn deleting_a_job_others_wait_for_is_refused_unless_forced(store: StoreKind) {
    let q = TestQueue::on(store);
    let list = "- {name: a, command: echo a}\n- {command: echo b, after: a}\n- {command: echo c, after_any: a}\n";
    q.rq_stdin(&["submit", "-q", "-"], list).ok();
    let run = q.rq(&["delete", "1"]);
    assert_ne!(run.status, 0);
    // One line for the job, with the true reason (it is pending, not running).
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("wait for it"), "{}", run.stderr);
    assert!(!run.stderr.contains("running"), "{}", run.stderr);
    assert_eq!(q.jobs().len(), 3);
    // Deleting it with its dependents is fine.
    q.rq(&["delete", "1", "2", "3", "-q"]).ok();
    assert_eq!(q.jobs().len(), 0);

    q.rq_stdin(&["submit", "-q", "-"], list).ok();
    q.rq(&["delete", "4", "--force", "-q"]).ok();
    let jobs = by_jid(&q);
    assert_eq!(text(&jobs[&5], "state"), "cancelled");
    assert_eq!(text(&jobs[&5], "reason"), "dependency 4 was deleted");
    // An after_any dependent only waited for an end: it runs.
    assert_eq!(text(&jobs[&6], "state"), "pending");
}

fn an_array_with_a_limit_never_runs_more_than_the_limit_at_once(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let command = format!(
        "echo \"start $(date +%s.%N) $RQ_ARRAY_INDEX\" >> {l}; sleep 0.02; echo \"end $(date +%s.%N) $RQ_ARRAY_INDEX\" >> {l}; echo {{}}",
        l = ledger.display()
    );
    let run = q
        .rq(&["submit", "-q", "--array", "1-1000%5", "--subst", &command])
        .ok();
    assert!(run.stdout.is_empty());
    assert_eq!(q.count("pending"), 5);
    assert_eq!(q.count("waiting"), 995);
    let feeders: Vec<FeederProc> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "4"]))
        .collect();
    q.wait_for("the array to finish", 240, |q| q.count("finished") == 1000);
    drop(feeders);
    // Replay the ledger: never more than 5 between a start and its end.
    let mut events: Vec<(f64, i32)> = q
        .ledger_lines()
        .iter()
        .map(|line| {
            let mut words = line.split(' ');
            let kind = words.next().unwrap();
            let at: f64 = words.next().unwrap().parse().unwrap();
            (at, if kind == "start" { 1 } else { -1 })
        })
        .collect();
    assert_eq!(events.len(), 2000);
    // Ends before starts at the same instant.
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut running, mut most) = (0, 0);
    for (_, change) in events {
        running += change;
        most = most.max(running);
    }
    assert!(most <= 5, "{most} jobs of the array ran at once");
    assert!(most >= 2, "the array never ran in parallel ({most})");
    // Every index ran once, with {} replaced and the variables set.
    let jobs = q.jobs();
    let first = int(&jobs[0], "jid");
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(int(job, "array_id"), first);
        assert_eq!(int(job, "array_index"), i as i64 + 1);
    }
    assert_eq!(stdout_of(&q, first + 41), "42");
}

fn an_array_is_addressed_as_a_unit(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo other"]).ok();
    let arr = q
        .rq(&["submit", "--array", "3,5,8-10", "echo $RQ_ARRAY_INDEX"])
        .ok()
        .records();
    let id = int(&arr[0], "jid");
    let indices: Vec<i64> = arr.iter().map(|j| int(j, "array_index")).collect();
    assert_eq!(indices, [3, 5, 8, 9, 10]);
    let name = format!("array:{id}");
    assert_eq!(q.rq(&["list", &name]).ok().records().len(), 5);
    let status = q.rq(&["status", &name]).ok().value();
    assert_eq!(status["jobs"]["pending"], 5);
    assert_eq!(status["jobs"]["total"], 5);
    q.rq(&["update", &name, "priority=7", "-q"]).ok();
    assert!(
        q.rq(&["list", &name])
            .ok()
            .records()
            .iter()
            .all(|j| int(j, "priority") == 7)
    );
    {
        let _h1 = q.feeder("h1", &["--exit_when_empty"]);
        assert_eq!(q.rq(&["wait", &name]).status, 0);
    }
    assert_eq!(stdout_of(&q, id + 1), "5");
    q.rq(&["resubmit", &name, "-q"]).ok();
    assert_eq!(q.rq(&["status", &name]).ok().value()["jobs"]["pending"], 5);
    q.rq(&["delete", &name, "-q"]).ok();
    assert_eq!(q.jobs().len(), 1);
}

fn kill_takes_an_array(store: StoreKind) {
    let q = TestQueue::on(store);
    let arr = q
        .rq(&["submit", "--array", "1-2", &q.held()])
        .ok()
        .records();
    let id = int(&arr[0], "jid");
    // A job after the whole array.
    let after = q
        .rq(&["submit", "--after", &format!("array:{id}"), "echo merge"])
        .ok()
        .records();
    assert_eq!(after[0]["after"], serde_json::json!([id, id + 1]));
    let _h1 = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("both to run", 30, |q| {
        q.rq(&["query", "state=running", "pid!=null"])
            .ok()
            .records()
            .len()
            == 2
    });
    q.rq(&["kill", &format!("array:{id}"), "-q"]).ok();
    q.wait_for("both to end", 30, |q| q.count("finished") == 2);
    let jobs = by_jid(&q);
    assert_eq!(text(&jobs[&id], "signal"), "TERM");
    assert_eq!(text(&jobs[&(id + 1)], "signal"), "TERM");
    let merge = &jobs[&int(&after[0], "jid")];
    assert_eq!(text(merge, "state"), "cancelled");
    // Whichever of the two ended first is named.
    let reason = text(merge, "reason");
    assert!(
        reason == format!("dependency {id} was killed by TERM")
            || reason == format!("dependency {} was killed by TERM", id + 1),
        "{reason}"
    );
}

fn each_line_makes_a_job_per_line_with_the_line_in_rq_item(store: StoreKind) {
    let q = TestQueue::on(store);
    let items = q.home().join("items.txt");
    std::fs::write(&items, "alpha\n\nhas space\nit's\n").unwrap();
    let jobs = q
        .rq(&[
            "submit",
            "--each-line",
            items.to_str().unwrap(),
            "--subst",
            "printf '%s|%s' {} \"$RQ_ITEM\"",
        ])
        .ok()
        .records();
    assert_eq!(jobs.len(), 3);
    let indices: Vec<i64> = jobs.iter().map(|j| int(j, "array_index")).collect();
    assert_eq!(indices, [1, 3, 4]);
    let _h1 = q.feeder("h1", &[]);
    q.wait_for("the items", 30, |q| q.count("finished") == 3);
    let first = int(&jobs[0], "jid");
    assert_eq!(stdout_of(&q, first), "alpha|alpha");
    assert_eq!(stdout_of(&q, first + 1), "has space|has space");
    assert_eq!(stdout_of(&q, first + 2), "it's|it's");
}

fn a_delayed_job_starts_on_time_not_before(store: StoreKind) {
    let q = TestQueue::on(store);
    let job = q.rq(&["submit", "--in", "3s", "echo late"]).ok().records();
    let not_before = text(&job[0], "not_before");
    assert_eq!(text(&job[0], "reason"), format!("starts at {not_before}"));
    let _h1 = q.feeder("h1", &["--max_sleep", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(q.count("pending"), 1, "it must not start early");
    q.wait_for("it to run", 20, |q| q.count("finished") == 1);
    let started = text(&q.jobs()[0], "started");
    assert!(started >= not_before, "{started} < {not_before}");
    let late = seconds(&started) - seconds(&not_before);
    assert!(late < 3.0, "started {late:.1}s late");
    // --at a local clock time, a few seconds ahead.
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3))
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%H:%M:%S")
        .to_string();
    let job = q.rq(&["submit", "--at", &at, "echo at"]).ok().records();
    let not_before = text(&job[0], "not_before");
    let ahead = seconds(&not_before) - seconds(&text(&job[0], "submitted"));
    assert!((1.0..=4.0).contains(&ahead), "--at {at}: {ahead}s ahead");
    q.wait_for("the --at job to run", 20, |q| q.count("finished") == 2);
    let started = text(&by_jid(&q)[&int(&job[0], "jid")], "started");
    assert!(started >= not_before, "{started} < {not_before}");
    // --at in the past today means tomorrow; a time with a zone is taken as is.
    let tomorrow = q.rq(&["submit", "--at", "00:00:00", "-q", "--stage", "echo"]);
    tomorrow.ok();
    let bad = q.rq(&["submit", "--at", "soon", "echo"]).fails();
    assert!(bad.stderr.contains("not a time"), "{}", bad.stderr);
}

/// A timestamp as seconds since the epoch.
fn seconds(text: &str) -> f64 {
    text.parse::<jiff::Timestamp>().unwrap().as_microsecond() as f64 / 1e6
}

fn the_submitters_environment_reaches_the_job(store: StoreKind) {
    let q = TestQueue::on(store);
    let env = [
        ("RQ_TEST_EXPORTED", "from the submitter"),
        ("TERM", "xterm-submitter"),
        ("API_TOKEN", "s3cret"),
    ];
    let job = q
        .rq_as_env(
            "h0",
            &[
                "submit",
                "--export",
                "--env",
                "EXTRA=1 2",
                "echo \"$RQ_TEST_EXPORTED|$API_TOKEN|$EXTRA|$TERM\"",
            ],
            &env,
        )
        .ok()
        .records();
    // rq's own RQ_* variables and terminal variables are not exported.
    let shown = &job[0]["env"];
    assert!(shown.get("RQ_TEST_EXPORTED").is_none());
    assert!(shown.get("TERM").is_none());
    assert_eq!(shown["EXTRA"], "1 2");
    // Secret-looking values are not shown.
    assert_eq!(shown["API_TOKEN"], "<hidden>");
    // Nor those of other secret-looking names, nor values that hold a password; the job
    // gets them all, and an ordinary variable is shown.
    let secrets = [
        ("PGPASS", "pw1"),
        ("DB_PASS", "pw2"),
        ("GOOGLE_CREDENTIALS", "pw3"),
        ("X_AUTH_HEADER", "pw4"),
        ("DATABASE_URL", "postgres://me:pw5@db/x"),
        ("DSN", "host=db password=pw6"),
    ];
    let mut args = vec!["submit".to_string()];
    for (name, value) in secrets {
        args.push("--env".into());
        args.push(format!("{name}={value}"));
    }
    args.extend(["--env".into(), "PLAIN=visible".into()]);
    args.push(
        "echo \"$PGPASS $DB_PASS $GOOGLE_CREDENTIALS $X_AUTH_HEADER $DATABASE_URL $DSN\"".into(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hidden = q.rq(&args).ok().records();
    for (name, _) in secrets {
        assert_eq!(hidden[0]["env"][name], "<hidden>", "{name}");
    }
    assert_eq!(hidden[0]["env"]["PLAIN"], "visible");
    let listed = q.rq(&["list", "--format", "json"]).ok().stdout
        + &q.rq(&["list", "--format", "table"]).ok().stdout;
    for pw in ["pw1", "pw2", "pw3", "pw4", "pw5", "pw6"] {
        assert!(!listed.contains(pw), "{pw} shown: {listed}");
    }
    assert!(
        !q.rq(&["list", "--format", "json"])
            .ok()
            .stdout
            .contains("s3cret")
    );
    let exported = q
        .rq_as_env(
            "h0",
            &["submit", "--export", "echo \"$MY_SETTING\""],
            &[("MY_SETTING", "blue")],
        )
        .ok()
        .records();
    assert_eq!(exported[0]["env"]["MY_SETTING"], "blue");
    // The feeder runs without those variables (and with its own TERM).
    let _h1 = q.feeder_env("h1", &[], &[("TERM", "dumb")]);
    q.wait_for("the jobs", 30, |q| q.count("finished") == 3);
    assert_eq!(stdout_of(&q, int(&job[0], "jid")), "|s3cret|1 2|dumb");
    assert_eq!(
        stdout_of(&q, int(&hidden[0], "jid")),
        "pw1 pw2 pw3 pw4 postgres://me:pw5@db/x host=db password=pw6",
        "the job gets what listings hide"
    );
    assert_eq!(stdout_of(&q, int(&exported[0], "jid")), "blue");
    // Bad names are refused.
    assert!(
        q.rq(&["submit", "--env", "1X=2", "echo"])
            .fails()
            .stderr
            .contains("not an environment variable name")
    );
}

fn owners_are_recorded_and_listed(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo mine"]).ok();
    // Another user's job, as it would be recorded on their host.
    q.sql("INSERT INTO jobs (state, submitted, submitter, command, \"user\") VALUES ('pending', '2026-01-01T00:00:00.000000Z', 'h9', 'echo theirs', 'alice')")
        .ok();
    let me = text(&q.jobs()[0], "user");
    assert!(!me.is_empty());
    let mine = q.rq(&["list", "--mine"]).ok().records();
    assert_eq!(mine.len(), 1);
    assert_eq!(text(&mine[0], "command"), "echo mine");
    let alice = q.rq(&["query", "user=alice"]).ok().records();
    assert_eq!(alice.len(), 1);
    assert_eq!(text(&alice[0], "submitter"), "h9");
    assert_eq!(q.rq(&["query", "submit_host=h9"]).ok().records().len(), 1);
    assert_eq!(q.rq(&["status", "--mine"]).ok().value()["jobs"]["total"], 1);
}

fn rq_own_listing_of_a_pipeline_pipes_into_another_queue_with_its_waits(store: StoreKind) {
    let q = TestQueue::on(store);
    let list = "- {name: a, command: echo a}\n- {name: b, command: echo b, after: a}\n- {command: echo c, after: [a, b]}\n";
    q.rq_stdin(&["submit", "-q", "-"], list).ok();
    // Jobs in the second queue get other jids; their waits follow them.
    let other = TestQueue::new();
    other.rq(&["submit", "-q", "echo x"]).ok();
    other.rq(&["submit", "-q", "echo y"]).ok();
    let listing = q.rq(&["list"]).ok().stdout;
    let copied = other.rq_stdin(&["submit", "-"], &listing).ok().records();
    let jids: Vec<i64> = copied.iter().map(|j| int(j, "jid")).collect();
    assert_eq!(jids, [3, 4, 5]);
    assert_eq!(copied[1]["after"], serde_json::json!([3]));
    assert_eq!(copied[2]["after"], serde_json::json!([3, 4]));
    assert_eq!(text(&copied[2], "state"), "waiting");
}

fn a_dead_dependency_cancels_but_a_restartable_one_that_runs_again_does_not(store: StoreKind) {
    let q = TestQueue::on(store);
    let list = "\
- {name: fragile, command: 'sleep 30'}
- {name: sturdy, command: 'sleep 30', restartable: true}
- {command: 'echo after fragile', after: fragile}
- {command: 'echo after sturdy', after: sturdy}
";
    let jobs = q.rq_stdin(&["submit", "-"], list).ok().records();
    let fragile = int(&jobs[0], "jid");
    let mut f = q.feeder("h1", &["--max_feed", "2"]);
    q.wait_for("both to run", 30, |q| {
        q.rq(&["query", "state=running", "pid!=null"])
            .ok()
            .records()
            .len()
            == 2
    });
    // The host stops: its jobs are killed; the restartable one is queued again.
    q.rq_as("h1", &["stop"]).ok();
    assert_eq!(f.wait_exit(Duration::from_secs(15)), Some(0));
    let jobs = by_jid(&q);
    assert_eq!(text(&jobs[&fragile], "state"), "dead");
    assert_eq!(text(&jobs[&(fragile + 1)], "state"), "pending");
    let cancelled = &jobs[&(fragile + 2)];
    assert_eq!(text(cancelled, "state"), "cancelled");
    assert!(
        text(cancelled, "reason").starts_with(&format!("dependency {fragile} ")),
        "{cancelled:?}"
    );
    assert_eq!(text(&jobs[&(fragile + 3)], "state"), "waiting");
}

/// SQL run behind rq's back (no rq connection, so none of rq's own dependency work is
/// done with it): sqlite3 on a directory queue, psql on a PostgreSQL one.
fn behind_rqs_back(q: &TestQueue, sql: &str) {
    match q.store {
        StoreKind::Sqlite => {
            let out = std::process::Command::new("sqlite3")
                .arg(q.path.join("db"))
                .arg(sql)
                .output()
                .expect("sqlite3");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        StoreKind::Postgres => {
            let schema = format!("rq_{}", q.q().rsplit("queue=").next().unwrap());
            common::pg::server().psql(&format!("SET search_path TO {schema}; {sql}"));
        }
    }
}

/// A long chain whose head fails is cancelled a batch of jobs per transaction (batches of
/// 7 here, so 300 jobs take many), each with the head's reason; resubmitting the head
/// re-arms it the same way, except where a job also needs another job that failed. Work
/// that a writer left on the work list (it stopped between batches) is carried on by the
/// next one: here an idle feeder.
fn a_long_chain_is_cancelled_and_rearmed_a_batch_at_a_time(store: StoreKind) {
    let q = TestQueue::on(store);
    let small = [("RQ_TEST_DEP_BATCH", "7")];
    let n = 300;
    let mut list = String::from(
        "- {name: j1, command: 'exit 3'}\n- {name: other, command: 'sleep 0.5; exit 4'}\n",
    );
    for i in 2..=n {
        list += &format!("- {{name: j{i}, command: 'echo {i}', after: j{}}}\n", i - 1);
    }
    list += "- {name: both, command: 'echo both', after: [j150, other]}\n\
             - {name: below, command: 'echo below', after: both}\n\
             - {name: any, command: 'echo any', after_any: j200}\n";
    let jobs = q.rq_stdin(&["submit", "-"], &list).ok().records();
    let jid = |name: &str| {
        int(
            jobs.iter().find(|j| text(j, "name") == name).unwrap(),
            "jid",
        )
    };
    let (head, other) = (jid("j1"), jid("other"));
    let chain: Vec<i64> = (2..=n).map(|i| jid(&format!("j{i}"))).collect();
    let work_left = |q: &TestQueue| {
        let out = q.sql("SELECT count(*) AS work FROM dep_work").stdout;
        assert!(out.contains("work: "), "{out}");
        !out.contains("work: 0")
    };
    {
        let _h1 = q.feeder_env("h1", &[], &small);
        q.wait_for("the chain to be cancelled, 'any' to run", 60, |q| {
            q.count("cancelled") == (n - 1) + 2 && q.count("finished") == 3
        });
    }
    let all = by_jid(&q);
    for jid in &chain {
        assert_eq!(text(&all[jid], "state"), "cancelled", "{:?}", all[jid]);
        assert_eq!(
            text(&all[jid], "reason"),
            format!("dependency {head} exited 3")
        );
    }
    assert_eq!(text(&all[&jid("any")], "state"), "finished");
    assert!(!work_left(&q), "the work list is empty once done");

    // The head runs again: the chain waits again, `both` (and `below`) stay cancelled
    // because `other` failed.
    q.rq_as_env("h0", &["resubmit", &head.to_string(), "-q"], &small)
        .ok();
    let all = by_jid(&q);
    for (i, jid) in chain.iter().enumerate() {
        assert_eq!(text(&all[jid], "state"), "waiting", "{:?}", all[jid]);
        assert_eq!(int(&all[jid], "waiting_on"), 1);
        let before = if i == 0 { head } else { chain[i - 1] };
        assert!(
            text(&all[jid], "reason").starts_with(&format!("waits for {before} ")),
            "{:?}",
            all[jid]
        );
    }
    assert_eq!(text(&all[&jid("both")], "state"), "cancelled");
    assert_eq!(
        text(&all[&jid("both")], "reason"),
        format!("dependency {other} exited 4")
    );
    assert_eq!(text(&all[&jid("below")], "state"), "cancelled");
    assert!(!work_left(&q));

    // A writer that recorded a failure and stopped before the cascade: only the work
    // list knows. Nothing is cancelled until someone writes; an idle feeder does.
    behind_rqs_back(
        &q,
        &format!(
            "UPDATE jobs SET state = 'finished', exit_status = 5 WHERE jid = {head}; \
             INSERT INTO dep_work (jid, kind, reason) VALUES ({head}, 'cancel', 'dependency {head} exited 5');"
        ),
    );
    assert_eq!(q.count("waiting"), n - 1);
    let _h2 = q.feeder_env("h2", &[], &small);
    q.wait_for("an idle feeder to carry the cascade on", 60, |q| {
        q.count("cancelled") == (n - 1) + 2
    });
    let all = by_jid(&q);
    for jid in &chain {
        assert_eq!(
            text(&all[jid], "reason"),
            format!("dependency {head} exited 5")
        );
    }
    q.wait_for("the work list to empty", 30, |q| !work_left(q));
    q.integrity_ok();
}

/// A submit's waits go to the store many per statement: more of them than one statement
/// carries (10,000) are all recorded, each job waiting for the right one.
fn a_submit_with_more_waits_than_one_statement_carries_records_them_all(store: StoreKind) {
    let q = TestQueue::on(store);
    let n = 10_050;
    let mut list = String::from("- {name: head, command: 'true'}\n");
    for i in 1..=n {
        list += &format!("- {{command: 'echo {i}', after: head}}\n");
    }
    list += "- {name: last, command: 'true', after_any: head}\n";
    q.rq_stdin(&["submit", "-q", "-"], &list).ok();
    assert_eq!(q.count("waiting"), n + 1);
    let out = q
        .sql("SELECT count(*) AS waits, count(DISTINCT job) AS jobs, min(dep) AS dep, max(dep) AS top FROM deps")
        .stdout;
    let expected = format!("waits: {}\n jobs: {}\n dep: 1\n top: 1", n + 1, n + 1);
    assert!(out.contains(&expected), "{out}");
    let kinds = q
        .sql("SELECT kind, count(*) AS waits FROM deps GROUP BY kind ORDER BY kind")
        .stdout;
    assert!(
        kinds.contains("kind: any\n waits: 1") && kinds.contains(&format!("kind: ok\n waits: {n}")),
        "{kinds}"
    );
}

crate::on_both_stores!(
    a_long_chain_is_cancelled_and_rearmed_a_batch_at_a_time,
    a_submit_with_more_waits_than_one_statement_carries_records_them_all,
    a_three_stage_pipeline_from_one_yaml_file_runs_in_order,
    a_failed_dependency_cancels_its_dependents_and_resubmitting_rearms_them,
    waits_on_jobs_already_in_the_queue,
    cycles_unknown_names_and_duplicate_names_are_refused_and_nothing_is_submitted,
    deleting_a_job_others_wait_for_is_refused_unless_forced,
    an_array_with_a_limit_never_runs_more_than_the_limit_at_once,
    an_array_is_addressed_as_a_unit,
    kill_takes_an_array,
    each_line_makes_a_job_per_line_with_the_line_in_rq_item,
    a_delayed_job_starts_on_time_not_before,
    the_submitters_environment_reaches_the_job,
    owners_are_recorded_and_listed,
    rq_own_listing_of_a_pipeline_pipes_into_another_queue_with_its_waits,
    a_dead_dependency_cancels_but_a_restartable_one_that_runs_again_does_not,
);
