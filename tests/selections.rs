//! rq as a backend for scripts and workflow managers: one selection rule for every mode
//! that takes jobs, `state`, `cancel`, `submit --parsable`, `--each-line -`, empty
//! listings, `-f host`, and a queue's own shell — through the real binary, on both stores.

mod common;
use std::process::Stdio;

use common::*;

/// Submit `command` (more words: options) and return its jid, from `--parsable`.
fn submit(q: &TestQueue, args: &[&str]) -> i64 {
    let mut all = vec!["submit", "--parsable"];
    all.extend_from_slice(args);
    let out = q.rq(&all).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--parsable prints one jid per job: {out:?}");
    lines[0]
        .parse()
        .unwrap_or_else(|_| panic!("not a jid: {out:?}"))
}

fn jids(run: &Run) -> Vec<i64> {
    run.records().iter().map(|j| int(j, "jid")).collect()
}

fn every_mode_names_jobs_the_same_way(store: StoreKind) {
    let q = TestQueue::on(store);
    let first = submit(&q, &["-t", "alpha", "echo one"]);
    let array_out = q
        .rq(&[
            "submit",
            "--parsable",
            "--array",
            "1-3",
            "--subst",
            "-t",
            "beta",
            "echo item {}",
        ])
        .ok()
        .stdout;
    let array: Vec<i64> = array_out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(array.len(), 3, "{array_out}");
    assert_eq!(array, [first + 1, first + 2, first + 3]);
    let _h1 = q.feeder("h1", &["--exit_when_empty"]);
    q.wait_for("the jobs to finish", 60, |q| q.count("finished") == 4);

    // Arrays, tags, terms, and terms narrowing other words.
    let array_id = format!("array:{}", array[0]);
    assert_eq!(jids(&q.rq(&["list", &array_id]).ok()), array);
    assert_eq!(jids(&q.rq(&["list", "tag:alpha"]).ok()), [first]);
    assert_eq!(jids(&q.rq(&["list", "tag=beta"]).ok()), array);
    assert_eq!(
        jids(&q.rq(&["list", "tag:alpha", "tag:beta", "command=~%2"]).ok()),
        [array[1]]
    );
    // Output of a whole array, in jid order; of named jids, in the order named.
    assert_eq!(
        q.rq(&["stdout", &array_id]).ok().stdout,
        "item 1\nitem 2\nitem 3\n"
    );
    let (a, b) = (array[2].to_string(), first.to_string());
    assert_eq!(q.rq(&["stdout", &a, &b]).ok().stdout, "item 3\none\n");
    assert_eq!(q.rq(&["wait", "tag:beta"]).ok().status, 0);
    let counted = q.rq(&["status", "tag:beta"]).ok().value();
    assert_eq!(counted["jobs"]["total"], 3, "{counted:?}");
    assert_eq!(
        q.rq(&["state", &b, "tag:beta"]).ok().stdout,
        "success\nsuccess\nsuccess\nsuccess\n"
    );

    // What is not there is an error line each, and exit 1, after acting on the rest.
    let missing = q.rq(&["stdout", &b, "9999"]);
    assert_eq!(missing.status, 1);
    assert_eq!(missing.stdout, "one\n");
    assert_eq!(missing.stderr.trim(), "rq: job 9999: no such job");
    for args in [
        vec!["wait", "9999"],
        vec!["wait", "tag:typo"],
        vec!["wait", "tag=typo"],
        vec!["list", "array:9999"],
        vec!["status", "tag:typo"],
        vec!["stdout", "array:9999"],
        vec!["tail", "9999"],
        vec!["kill", "9999"],
        vec!["cancel", "tag:typo"],
        vec!["delete", "tag:typo"],
        vec!["resubmit", "array:9999"],
        vec!["update", "tag:typo", "priority=3"],
    ] {
        let run = q.rq(&args);
        assert_eq!(run.status, 1, "{args:?}: {} {}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("no such job")
                || run.stderr.contains("no such array")
                || run.stderr.contains("no job has this tag")
                || run.stderr.contains("no job meets the terms"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // The jobs named beside a missing one were acted on.
    let run = q.rq(&["update", "tag:typo", &array_id, "priority=7"]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    let run = q.rq(&["resubmit", "--stage", &array_id, "9999"]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert_eq!(jids(&run), array, "{}", run.stderr);
    assert!(run.stderr.contains("job 9999"), "{}", run.stderr);

    // An empty '-' names nothing: every mode does nothing, and succeeds.
    let before = q.jobs();
    for mode in [
        "list", "wait", "state", "stdout", "stderr", "tail", "kill", "cancel", "delete", "resubmit",
    ] {
        // (`wait` gets a time limit: were it to wait for every job, it would never end.)
        let args: &[&str] = match mode {
            "wait" => &["wait", "-", "--timeout", "60s"],
            _ => &[mode, "-"],
        };
        let run = q.rq_stdin(args, "");
        assert_eq!(run.status, 0, "{mode} -: {} {}", run.stdout, run.stderr);
        assert!(
            run.stdout.trim().is_empty() || run.stdout.trim() == "[]",
            "{mode} -: {}",
            run.stdout
        );
    }
    let run = q.rq_stdin(&["update", "priority=9", "-"], "");
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(q.jobs(), before, "an empty '-' changed the queue");
    // `wait -` with nothing returns at once though jobs are holding (they never end).
    assert_eq!(q.count("holding"), 3);
    // What a mode removes was there when it was named: no error for it afterwards.
    let run = q.rq(&["delete", &array_id]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(jids(&run), array);
    assert_eq!(jids(&q.rq(&["list"]).ok()), [first]);
}

fn state_answers_one_word_per_job_in_the_order_named(store: StoreKind) {
    let q = TestQueue::on(store);
    let ok = submit(&q, &["true"]);
    let failed = submit(&q, &["exit 3"]);
    let signalled = submit(&q, &["kill -9 $$"]);
    let _h1 = q.feeder("h1", &["--exit_when_empty"]);
    q.wait_for("the jobs to end", 60, |q| q.count("finished") == 3);
    let holding = submit(&q, &["--stage", "true"]);
    let words = |args: &[String]| -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all = vec!["state"];
        all.extend(args);
        let run = q.rq(&all).ok();
        run.stdout
    };
    let named: Vec<String> = [holding, ok, 999_999, signalled, failed, ok]
        .iter()
        .map(i64::to_string)
        .collect();
    assert_eq!(
        words(&named),
        "running\nsuccess\nfailed\nfailed\nfailed\nsuccess\n"
    );
    // The same from standard input, as a workflow manager's status round sends them.
    let run = q
        .rq_stdin(&["state", "-"], &format!("{ok}\n{failed}\n"))
        .ok();
    assert_eq!(run.stdout, "success\nfailed\n");
    // A state word names jobs too (by jid).
    assert_eq!(words(&["finished".into()]), "success\nfailed\nfailed\n");
}

fn cancel_removes_what_has_not_started_and_kills_what_runs(store: StoreKind) {
    let q = TestQueue::on(store);
    let gate = q.tmp.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let done = submit(&q, &["-t", "run1", "true"]);
    let _h1 = q.feeder("h1", &["--max_feed", "1"]);
    q.wait_for("the first job to finish", 60, |q| q.count("finished") == 1);
    // One slot: this one runs (until the gate goes, which it never does: it is killed),
    // the next ones wait behind it.
    let wait_for_gate = format!("while [ -e {} ]; do sleep 0.1; done", gate.display());
    let running = submit(&q, &["-t", "run1", &wait_for_gate]);
    q.wait_for("the job to start", 60, |q| q.count("running") == 1);
    // Pending for good: no feeder may run it (one that may could claim it ahead).
    let pending = submit(&q, &["-t", "run1", "--runner", "elsewhere", "true"]);
    let after = submit(
        &q,
        &["-t", "other", "--after", &pending.to_string(), "true"],
    );
    let other = submit(&q, &["-t", "other", "--stage", "true"]);
    let run = q.rq(&["cancel", "tag:run1"]);
    assert_eq!(run.status, 0, "{} {}", run.stdout, run.stderr);
    let mut acted = jids(&run);
    acted.sort();
    assert_eq!(acted, [running, pending], "{}", run.stdout);
    q.wait_for("the running job to be killed", 60, |q| {
        q.count("running") == 0
    });
    let jobs: std::collections::HashMap<i64, _> =
        q.jobs().into_iter().map(|j| (int(&j, "jid"), j)).collect();
    assert!(
        !jobs.contains_key(&pending),
        "a pending job was not removed"
    );
    assert_eq!(
        text(&jobs[&done], "state"),
        "finished",
        "an ended job was changed"
    );
    assert_eq!(int(&jobs[&done], "exit_status"), 0);
    assert_eq!(text(&jobs[&running], "state"), "finished");
    assert_eq!(text(&jobs[&running], "signal"), "TERM");
    // The job that needed the removed one to succeed is cancelled, with the reason.
    assert_eq!(text(&jobs[&after], "state"), "cancelled");
    assert!(!text(&jobs[&after], "reason").is_empty());
    assert_eq!(text(&jobs[&other], "state"), "holding");
    let all = [done, running, pending, after].map(|j| j.to_string());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut args = vec!["state"];
    args.extend(&all);
    assert_eq!(q.rq(&args).ok().stdout, "success\nfailed\nfailed\nfailed\n");
    // Cancelling again: nothing left to do, and that is no failure.
    let run = q.rq(&["cancel", "tag:run1"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "[]");
    std::fs::remove_file(&gate).unwrap();
}

fn scripts_get_jids_items_from_stdin_and_empty_lists(store: StoreKind) {
    let q = TestQueue::on(store);
    // --parsable: the jids only, one per line, whatever the format.
    let run = q
        .rq_stdin(&["submit", "--parsable", "-"], "echo a\necho b\n")
        .ok();
    let jids: Vec<i64> = run.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(jids.len(), 2, "{}", run.stdout);
    assert_eq!(jids[1], jids[0] + 1);
    // --each-line - reads the items from standard input.
    let run = q
        .rq_stdin(
            &[
                "submit",
                "--each-line",
                "-",
                "--subst",
                "--parsable",
                "echo {}",
            ],
            "x\ny\nz\n",
        )
        .ok();
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    let listed = q
        .rq(&[
            "list",
            &format!("array:{}", run.stdout.lines().next().unwrap()),
        ])
        .ok();
    let commands: Vec<String> = listed
        .records()
        .iter()
        .map(|j| text(j, "command"))
        .collect();
    assert_eq!(commands, ["echo x", "echo y", "echo z"]);
    // An empty listing is an empty list in YAML too (not zero bytes, which loads as null).
    assert_eq!(q.rq(&["list", "running"]).ok().stdout, "[]\n");
    assert_eq!(
        q.rq(&["list", "running", "--format", "json"]).ok().stdout,
        "[]\n"
    );
    // -f host is where the job ran (the table's host), not where it may run.
    let pinned = submit(&q, &["--runner", "h1,h2", "true"]);
    let _h1 = q.feeder("h1", &["--exit_when_empty"]);
    q.wait_for("the jobs to finish", 60, |q| q.count("finished") == 6);
    let shown = q
        .rq(&["list", &pinned.to_string(), "-f", "jid,host"])
        .ok()
        .records();
    assert_eq!(shown.len(), 1);
    assert_eq!(text(&shown[0], "runner"), "h1");
    assert!(!shown[0].contains_key("hosts"), "{shown:?}");
}

/// A feeder started without `--shell`: the queue's `shell` setting decides.
fn a_queue_sets_its_jobs_shell_once(store: StoreKind) {
    let q = TestQueue::on(store);
    let run = q.rq(&["configure", "shell=   "]);
    assert_eq!(run.status, 2, "an empty shell is refused: {}", run.stderr);
    q.rq(&["configure", "shell=sh -c"]).ok();
    // The program the job's shell runs (rq names the job's process after the job).
    // (Two commands: bash runs a lone one in its own place.)
    let probe = "readlink /proc/$$/exe; exit 0";
    let program = |name: &str| {
        let path = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
            .unwrap();
        std::fs::canonicalize(path).unwrap().display().to_string()
    };
    let jid = submit(&q, &[probe]);
    let err = std::fs::File::create(q.tmp.path().join("bare.err")).unwrap();
    let mut cmd = rq_command();
    cmd.env("RQ_HOST", "h1")
        .env("HOME", q.home())
        .current_dir(q.tmp.path())
        .args([q.q(), "feed", "--min_sleep", "0.05", "--exit_when_empty"])
        .stdout(Stdio::null())
        .stderr(err);
    let status = cmd.status().unwrap();
    assert!(status.success());
    let shell = q.rq(&["stdout", &jid.to_string()]).ok().stdout;
    assert_eq!(
        shell.trim(),
        program("sh"),
        "the job did not run under the queue's shell"
    );
    let log = std::fs::read_to_string(q.tmp.path().join("bare.err")).unwrap();
    assert!(log.contains("shell [\""), "{log}");
    assert!(!log.contains("--login"), "{log}");
    // A feeder's --shell still wins.
    let jid = submit(&q, &[probe]);
    let status = rq_command()
        .env("RQ_HOST", "h2")
        .env("HOME", q.home())
        .current_dir(q.tmp.path())
        .args([
            q.q(),
            "feed",
            "--min_sleep",
            "0.05",
            "--exit_when_empty",
            "--shell",
            "bash -c",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let shell = q.rq(&["stdout", &jid.to_string()]).ok().stdout;
    assert_eq!(shell.trim(), program("bash"));
}

on_both_stores!(
    every_mode_names_jobs_the_same_way,
    state_answers_one_word_per_job_in_the_order_named,
    cancel_removes_what_has_not_started_and_kills_what_runs,
    scripts_get_jids_items_from_stdin_and_empty_lists,
    a_queue_sets_its_jobs_shell_once,
);
