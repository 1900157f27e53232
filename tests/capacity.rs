//! Holding feeders back: pause/resume, drain/undrain, limits by tag — through the real
//! binary, with feeders posing as separate hosts.

mod common;
use std::time::Duration;

use common::*;

/// Feeder rows of `rq Q feeders`, by host.
fn feeder_state(q: &TestQueue, host: &str) -> (String, String) {
    let rows = q.rq(&["feeders"]).ok().records();
    let row = rows
        .iter()
        .find(|r| text(r, "host") == host)
        .unwrap_or_else(|| panic!("no feeder {host}: {rows:?}"));
    let error = row["error"].as_str().unwrap_or("").to_string();
    (text(row, "state"), error)
}

#[test]
fn a_paused_queue_runs_nothing_new_until_resumed() {
    let q = TestQueue::new();
    let _h1 = q.feeder("h1", &["--max_feed", "2"]);
    let _h2 = q.feeder("h2", &["--max_feed", "2"]);
    q.rq(&["submit", "-q", "sleep 1.5; echo long"]).ok();
    q.wait_for("the long job to run", 30, |q| q.count("running") == 1);
    // Paused from a third host: the running job goes on, nothing new starts.
    let said = q.rq_as("h3", &["pause"]).ok().value();
    assert!(
        said["queue"].as_str().unwrap().starts_with("paused: since"),
        "{said}"
    );
    let status = q.rq(&["status"]).ok().value();
    assert!(
        status["paused"].as_str().unwrap().contains("by "),
        "{status}"
    );
    for i in 0..4 {
        q.rq(&["submit", "-q", &format!("echo {i}")]).ok();
    }
    q.wait_for("the long job to end", 30, |q| q.count("finished") == 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(q.count("pending"), 4, "nothing may start while paused");
    assert_eq!(q.count("running"), 0);
    q.wait_for("feeders to say paused", 30, |q| {
        feeder_state(q, "h1").0 == "paused"
    });
    assert!(feeder_state(&q, "h2").1.contains("paused"));
    q.rq_as("h3", &["resume", "-q"]).ok();
    q.wait_for("the jobs after resume", 30, |q| q.count("finished") == 5);
    assert!(q.rq(&["status"]).ok().value().get("paused").is_none());
    // Resuming twice is harmless.
    assert!(q.rq(&["resume"]).ok().stdout.contains("was not paused"));
}

#[test]
fn a_drained_host_takes_nothing_new_even_after_a_restart() {
    let q = TestQueue::new();
    let mut h1 = q.feeder("h1", &["--max_feed", "1"]);
    q.rq(&["submit", "-q", "sleep 1; echo first"]).ok();
    q.wait_for("the first job to run on h1", 30, |q| {
        q.count("running") == 1
    });
    // Drained from another host while its job runs: draining, then drained.
    q.rq_as("h9", &["drain", "h1", "-q"]).ok();
    q.rq(&["submit", "-q", "echo second"]).ok();
    q.wait_for("h1 to report draining", 30, |q| {
        feeder_state(q, "h1").0 == "draining"
    });
    q.wait_for("the first job to end", 30, |q| q.count("finished") == 1);
    q.wait_for("h1 to report drained", 30, |q| {
        feeder_state(q, "h1").0 == "drained"
    });
    assert_eq!(q.count("pending"), 1, "a drained host claims nothing");
    // A restart of the feeder keeps the drain (it lives in the queue, not the process).
    h1.signal(libc::SIGTERM);
    assert!(h1.wait_exit(Duration::from_secs(20)).is_some());
    let _h1 = q.feeder("h1", &["--max_feed", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(q.count("pending"), 1);
    let status = q.rq(&["status"]).ok().value();
    assert!(
        status["draining"]["h1"].as_str().unwrap().contains("by "),
        "{status}"
    );
    // Another host is not drained.
    {
        let _h2 = q.feeder("h2", &["--max_feed", "1"]);
        q.wait_for("h2 to run the second job", 30, |q| q.count("finished") == 2);
    }
    q.rq(&["submit", "-q", "echo third"]).ok();
    q.rq_as("h9", &["undrain", "h1", "-q"]).ok();
    q.wait_for("h1 to run again after undrain", 30, |q| {
        q.count("finished") == 3
    });
    let jobs = q.jobs();
    assert_eq!(text(&jobs[2], "runner"), "h1");
}

#[test]
fn a_tag_limit_holds_across_hosts() {
    let q = TestQueue::new();
    q.rq(&["configure", "limit.db=2", "-q"]).ok();
    let ledger = q.ledger();
    let job = |tag: &str| {
        format!(
            "echo \"start $(date +%s.%N) {tag}\" >> {l}; sleep 0.2; echo \"end $(date +%s.%N) {tag}\" >> {l}",
            l = ledger.display()
        )
    };
    let mut list = String::new();
    for _ in 0..12 {
        list.push_str(&format!("- {{command: '{}', tag: db}}\n", job("db")));
        list.push_str(&format!("- {{command: '{}', tag: other}}\n", job("other")));
    }
    q.rq_stdin(&["submit", "-q", "-"], &list).ok();
    let feeders: Vec<FeederProc> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| q.feeder(h, &["--max_feed", "3"]))
        .collect();
    q.wait_for("every job", 60, |q| q.count("finished") == 24);
    drop(feeders);
    let mut events: Vec<(f64, i32, String)> = q
        .ledger_lines()
        .iter()
        .map(|line| {
            let w: Vec<&str> = line.split(' ').collect();
            (
                w[1].parse().unwrap(),
                if w[0] == "start" { 1 } else { -1 },
                w[2].to_string(),
            )
        })
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut db, mut most_db, mut all, mut most_all) = (0, 0, 0, 0);
    for (_, change, tag) in events {
        all += change;
        most_all = most_all.max(all);
        if tag == "db" {
            db += change;
            most_db = most_db.max(db);
        }
    }
    assert!(most_db <= 2, "{most_db} db jobs ran at once");
    assert_eq!(most_db, 2, "the limit is a limit, not a stop");
    assert!(most_all > 2, "other jobs are not held back ({most_all})");
    // A bad limit is refused, and removing it works.
    q.rq(&["configure", "limit.db=-1"]).fails();
    q.rq(&["configure", "limit.db=", "-q"]).ok();
    assert!(q.rq(&["configure"]).ok().value().get("limit.db").is_none());
}
