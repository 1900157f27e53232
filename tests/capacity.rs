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

fn a_paused_queue_runs_nothing_new_until_resumed(store: StoreKind) {
    let q = TestQueue::on(store);
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

fn a_drained_host_takes_nothing_new_even_after_a_restart(store: StoreKind) {
    let q = TestQueue::on(store);
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

fn a_tag_limit_holds_across_hosts(store: StoreKind) {
    let q = TestQueue::on(store);
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

/// Replay start/end lines `start|end <time> <amount> <rest...>` as the most held at once.
fn most_at_once(lines: &[String]) -> i64 {
    let mut events: Vec<(f64, i64)> = lines
        .iter()
        .map(|line| {
            let w: Vec<&str> = line.split(' ').collect();
            let amount: i64 = w[2].parse().unwrap();
            (
                w[1].parse().unwrap(),
                if w[0] == "start" { amount } else { -amount },
            )
        })
        .collect();
    // Ends before starts at the same instant.
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut most) = (0, 0);
    for (_, change) in events {
        now += change;
        most = most.max(now);
    }
    most
}

fn a_feeder_never_runs_more_cpus_than_it_offers(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let mut list = String::new();
    for i in 0..18 {
        let cpus = 1 + i % 3;
        list.push_str(&format!(
            "- {{cpus: {cpus}, command: 'echo \"start $(date +%s.%N) $RQ_CPUS $OMP_NUM_THREADS\" >> {l}; sleep 0.15; echo \"end $(date +%s.%N) $RQ_CPUS\" >> {l}'}}\n",
            l = ledger.display()
        ));
    }
    q.rq_stdin(&["submit", "-q", "-"], &list).ok();
    {
        let _h1 = q.feeder("h1", &["--cpus", "4", "--max_feed", "8"]);
        q.wait_for("every job", 60, |q| q.count("finished") == 18);
    }
    let lines = q.ledger_lines();
    for line in lines.iter().filter(|l| l.starts_with("start")) {
        let w: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            w[2], w[3],
            "OMP_NUM_THREADS follows the CPUs asked for: {line}"
        );
    }
    let most = most_at_once(&lines);
    assert!(
        most <= 4,
        "{most} CPUs of jobs ran at once on a 4-CPU feeder"
    );
    assert!(most >= 3, "the feeder never used its CPUs ({most})");
    // What the feeder offers is shown.
    let feeders = q.rq(&["feeders"]).ok().records();
    assert_eq!(int(&feeders[0], "cpus"), 4);
}

fn gpus_are_never_shared_and_jobs_see_exactly_theirs(store: StoreKind) {
    let q = TestQueue::on(store);
    let ledger = q.ledger();
    let job = |gpus: u32| {
        format!(
            "- {{gpus: {gpus}, command: 'echo \"start $(date +%s.%N) {gpus} $CUDA_VISIBLE_DEVICES $ROCR_VISIBLE_DEVICES $RQ_GPUS\" >> {l}; sleep 0.3; echo \"end $(date +%s.%N) {gpus} $CUDA_VISIBLE_DEVICES\" >> {l}'}}\n",
            l = ledger.display()
        )
    };
    let mut list = String::new();
    for _ in 0..3 {
        list.push_str(&job(1));
        list.push_str(&job(1));
        list.push_str(&job(2));
    }
    list.push_str(&format!(
        "- {{command: 'echo \"cpu [$CUDA_VISIBLE_DEVICES]\" >> {}'}}\n",
        ledger.display()
    ));
    q.rq_stdin(&["submit", "-q", "-"], &list).ok();
    {
        let _h1 = q.feeder("h1", &["--gpus", "0,1", "--max_feed", "4"]);
        q.wait_for("every job", 60, |q| q.count("finished") == 10);
    }
    let lines = q.ledger_lines();
    assert!(
        lines.contains(&"cpu []".to_string()),
        "a CPU job sees no GPU: {lines:?}"
    );
    let gpu_lines: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with("cpu"))
        .cloned()
        .collect();
    // Each job saw as many devices as it asked for, the same in every variable.
    for line in gpu_lines.iter().filter(|l| l.starts_with("start")) {
        let w: Vec<&str> = line.split(' ').collect();
        let devices: Vec<&str> = w[3].split(',').collect();
        assert_eq!(devices.len().to_string(), w[2], "{line}");
        assert!(devices.iter().all(|d| *d == "0" || *d == "1"), "{line}");
        assert_eq!(w[3], w[4]);
        assert_eq!(w[3], w[5]);
    }
    // Per device: never two jobs at once.
    for device in ["0", "1"] {
        let on_device: Vec<String> = gpu_lines
            .iter()
            .filter(|l| l.split(' ').nth(3).unwrap().split(',').any(|d| d == device))
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                format!("{} {} 1", w[0], w[1])
            })
            .collect();
        assert_eq!(most_at_once(&on_device), 1, "device {device} was shared");
    }
    // Recorded in the queue too.
    let jobs = q.jobs();
    assert!(
        jobs.iter()
            .filter(|j| int(j, "gpus") == 2)
            .all(|j| text(j, "gpu_ids") == "0,1")
    );
}

fn a_big_job_is_not_starved_by_a_stream_of_small_ones(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "reserve_after=1s", "-q"]).ok();
    let small = "sleep 0.4";
    for _ in 0..30 {
        q.rq(&["submit", "-q", small]).ok();
    }
    let _h1 = q.feeder("h1", &["--cpus", "2", "--max_feed", "2"]);
    q.wait_for("two small jobs to run", 30, |q| q.count("running") == 2);
    let big = q
        .rq(&["submit", "-p", "5", "--cpus", "2", "echo big"])
        .ok()
        .records();
    let big = int(&big[0], "jid");
    q.wait_for("the big job to run", 30, |q| {
        q.jobs()
            .iter()
            .any(|j| int(j, "jid") == big && text(j, "state") == "finished")
    });
    // It ran long before the stream of small jobs was through.
    assert!(
        q.count("pending") >= 10,
        "the big job waited for the stream: {}",
        q.count("pending")
    );
}

fn a_job_no_live_feeder_can_run_is_flagged(store: StoreKind) {
    let q = TestQueue::on(store);
    let big = q.rq(&["submit", "--gpus", "8", "echo big"]).ok().records();
    let big = int(&big[0], "jid");
    q.rq(&["submit", "-q", "--cpus", "2", "echo fits"]).ok();
    // No feeder yet: nothing to compare with, nothing said.
    assert!(q.rq(&["status"]).ok().value().get("unfit").is_none());
    let _h1 = q.feeder("h1", &["--gpus", "0,1,2,3", "--cpus", "4"]);
    q.wait_for("the job that fits", 30, |q| q.count("finished") == 1);
    let status = q.rq(&["status"]).ok().value();
    assert_eq!(status["unfit"]["jobs"], 1, "{status}");
    let why = "needs 8 GPUs; the largest feeder has 4";
    assert_eq!(status["unfit"]["for_example"][big.to_string()], why);
    let listed = q.rq(&["list", &big.to_string()]).ok().records();
    assert_eq!(text(&listed[0], "reason"), why);
    let mut cmd = rq_command();
    cmd.arg(q.q())
        .args(["wait", &big.to_string()])
        .env("HOME", q.home());
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(why), "wait says why: {said}");
}

fn jobs_waiting_for_a_gpu_do_not_idle_the_cpus(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "reserve_after=1h", "-q"]).ok();
    // More GPU jobs at the top than a claim looks at, all for the one card.
    let mut list = String::new();
    for _ in 0..30 {
        list.push_str("- {gpus: 1, priority: 5, command: 'sleep 0.3'}\n");
    }
    for _ in 0..3 {
        list.push_str("- {command: 'echo cpu'}\n");
    }
    q.rq_stdin(&["submit", "-q", "-"], &list).ok();
    let _h1 = q.feeder("h1", &["--gpus", "0", "--cpus", "4", "--max_feed", "4"]);
    q.wait_for("the CPU jobs", 30, |q| {
        q.rq(&["query", "command='echo cpu'", "state=finished"])
            .ok()
            .records()
            .len()
            == 3
    });
    let gpu_done = q
        .rq(&["query", "gpus=1", "state=finished"])
        .ok()
        .records()
        .len();
    assert!(
        gpu_done < 5,
        "the CPU jobs waited for the GPU queue ({gpu_done} GPU jobs done)"
    );
}

/// Short jobs are claimed ahead of free slots (to start as one ends); jobs with `--mem`
/// too, holding their memory from the claim: a feeder never holds, running or claimed,
/// more jobs' memory than it offers.
fn jobs_claimed_ahead_never_promise_more_memory_than_offered(store: StoreKind) {
    let q = TestQueue::on(store);
    let list = "true\n".repeat(1500);
    q.rq_stdin(&["submit", "-q", "--mem", "100M", "-"], &list)
        .ok();
    let _h1 = q.feeder("h1", &["--cpus", "2", "--mem", "300M", "--max_feed", "8"]);
    let (mut most, mut looks) = (0, 0);
    loop {
        let jobs = q.rq(&["status"]).ok().value()["jobs"].clone();
        if jobs["finished"].as_i64() == Some(1500) {
            break;
        }
        most = most.max(jobs["running"].as_i64().unwrap());
        looks += 1;
        assert!(looks < 20_000, "the jobs did not finish: {jobs}");
    }
    assert!(
        most <= 3,
        "{most} jobs of 100M held at once by a feeder offering 300M"
    );
    assert!(most >= 1 && looks > 3, "never seen at work ({looks} looks)");
}

crate::on_both_stores!(
    jobs_claimed_ahead_never_promise_more_memory_than_offered,
    a_paused_queue_runs_nothing_new_until_resumed,
    a_drained_host_takes_nothing_new_even_after_a_restart,
    a_tag_limit_holds_across_hosts,
    a_feeder_never_runs_more_cpus_than_it_offers,
    gpus_are_never_shared_and_jobs_see_exactly_theirs,
    a_big_job_is_not_starved_by_a_stream_of_small_ones,
    a_job_no_live_feeder_can_run_is_flagged,
    jobs_waiting_for_a_gpu_do_not_idle_the_cpus,
);
