//! What jobs use: every run records its CPU time and peak memory, from real processes,
//! on both stores; listings, the job's page data and /metrics show them.

mod common;
use common::*;

fn every_run_records_its_cpu_time_and_peak_memory(store: StoreKind) {
    let q = TestQueue::on(store);
    // 300 MiB, every page written; and a loop that burns 1.5 s of CPU.
    let alloc = q
        .rq(&[
            "submit",
            "--parsable",
            "python3 -c \"x = b'1' * (300 << 20)\"",
        ])
        .ok()
        .stdout;
    let busy = q
        .rq(&[
            "submit",
            "--parsable",
            "python3 -c \"import time\nwhile time.process_time() < 1.5: pass\"",
        ])
        .ok()
        .stdout;
    // 5,000,000 bytes written by one child of the job's shell, read back by another.
    let io = q
        .rq(&[
            "submit",
            "--parsable",
            "head -c 5000000 /dev/zero > \"$RQ_DATA/out\" && cat \"$RQ_DATA/out\" > /dev/null",
        ])
        .ok()
        .stdout;
    let _h1 = q.feeder("h1", &["--exit_when_empty"]);
    q.wait_for("the jobs to finish", 60, |q| q.count("finished") == 3);
    let jobs: std::collections::HashMap<String, _> = q
        .jobs()
        .into_iter()
        .map(|j| (int(&j, "jid").to_string(), j))
        .collect();
    let alloc = &jobs[alloc.trim()];
    let busy = &jobs[busy.trim()];
    let io = &jobs[io.trim()];
    assert_eq!(int(io, "exit_status"), 0, "{io:?}");
    // Written: the file (and cat's 5 MB into /dev/null); read: /dev/zero and the file,
    // and what the shell read of its start-up files.
    let (read, written) = (int(io, "read_bytes"), int(io, "write_bytes"));
    assert!((10_000_000..11_000_000).contains(&written), "{written}");
    assert!((10_000_000..12_000_000).contains(&read), "{read}");
    assert_eq!(int(alloc, "exit_status"), 0, "{alloc:?}");
    assert_eq!(int(busy, "exit_status"), 0, "{busy:?}");
    let mib = |j: &serde_json::Map<String, serde_json::Value>| {
        int(j, "max_rss") as f64 / (1 << 20) as f64
    };
    // The allocation, and the interpreter around it: within 5 %.
    assert!(
        (300.0..=315.0).contains(&mib(alloc)),
        "300 MiB recorded as {} MiB",
        mib(alloc)
    );
    assert!(mib(busy) < 100.0, "{}", mib(busy));
    let cpu = |j: &serde_json::Map<String, serde_json::Value>| {
        field(j, "cpu_user").as_f64().unwrap() + field(j, "cpu_system").as_f64().unwrap()
    };
    assert!(
        (1.45..=2.0).contains(&cpu(busy)),
        "1.5 s of CPU recorded as {}",
        cpu(busy)
    );
    assert!(cpu(alloc) < 1.5, "{}", cpu(alloc));
    // Summarized in /metrics: the recently ended jobs' CPU and memory.
    let metrics = q.rq(&["metrics"]).ok().stdout;
    assert!(metrics.contains("rq_job_cpu_seconds_count 3"), "{metrics}");
    assert!(
        metrics.contains("rq_job_max_rss_bytes_count 3"),
        "{metrics}"
    );
    // The I/O job's 10 MB written fall in the 16 MB bucket; the others write nothing.
    assert!(
        metrics.contains("rq_job_write_bytes_bucket{le=\"16000000.0\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("rq_job_read_bytes_count 3"), "{metrics}");
    // A run's figures go with a new run: resubmitted, they are those of the new run.
    let jid = int(busy, "jid").to_string();
    q.rq(&["resubmit", &jid, "-q"]).ok();
    let _h2 = q.feeder("h2", &["--exit_when_empty"]);
    q.wait_for("the rerun to finish", 60, |q| q.count("finished") == 3);
    let again = q.rq(&["list", &jid]).ok().records();
    assert!(cpu(&again[0]) >= 1.45, "{again:?}");
}

/// The script of a `--cpus 1` job that starts two busy processes, waits until they are
/// pinned (at most 20 s), then measures their CPU time over 1.5 s: prints each one's
/// allowed CPUs and the CPUs' worth of time they got together.
const TWO_BUSY: &str = r#"
import os, subprocess, sys, tempfile, time
# The busy processes run until the flag file goes (at the end), not for a set time.
flag = tempfile.NamedTemporaryFile(delete=False).name
busy = f"import os\nwhile os.path.exists({flag!r}): pass"
kids = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(2)]
def allowed(pid):
    with open(f"/proc/{pid}/status") as f:
        return [l.split()[1] for l in f if l.startswith("Cpus_allowed_list")][0]
def cpu():
    total = 0
    for k in kids:
        with open(f"/proc/{k.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
start = time.time()
while any(c in allowed(k.pid) for k in kids for c in "-,") and time.time() - start < 20:
    time.sleep(0.05)
c0, t0 = cpu(), time.time()
time.sleep(1.5)
c1, t1 = cpu(), time.time()
print(allowed(kids[0].pid), allowed(kids[1].pid), round((c1 - c0) / (t1 - t0), 2))
os.remove(flag)
for k in kids:
    k.wait()
"#;

/// `--cpus 1` is kept: the processes of a one-CPU job run on one CPU, and two such jobs on
/// different ones, however many CPUs the host has.
fn a_job_runs_on_the_cpus_it_asked_for(store: StoreKind) {
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if host_cpus < 2 {
        eprintln!("one CPU: nothing to keep apart");
        return;
    }
    let q = TestQueue::on(store);
    let script = q.tmp.path().join("two_busy.py");
    std::fs::write(&script, TWO_BUSY).unwrap();
    let command = format!("python3 {}", script.display());
    let a = q
        .rq(&["submit", "--parsable", "--cpus", "1", &command])
        .ok()
        .stdout;
    let b = q
        .rq(&["submit", "--parsable", "--cpus", "1", &command])
        .ok()
        .stdout;
    let _h1 = q.feeder(
        "h1",
        &["--exit_when_empty", "--max_feed", "2", "--cpus", "2"],
    );
    q.wait_for("the jobs to finish", 90, |q| q.count("finished") == 2);
    let said = |jid: &str| -> (String, String, f64) {
        let out = q.rq(&["stdout", jid.trim()]).ok().stdout;
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{out}");
        (words[0].into(), words[1].into(), words[2].parse().unwrap())
    };
    let (a0, a1, a_share) = said(&a);
    let (b0, b1, b_share) = said(&b);
    for list in [&a0, &a1, &b0, &b1] {
        assert!(
            list.parse::<usize>().is_ok(),
            "not pinned to one CPU: {list}"
        );
    }
    assert_eq!(a0, a1, "one job's processes on different CPUs");
    assert_eq!(b0, b1, "one job's processes on different CPUs");
    assert_ne!(a0, b0, "two one-CPU jobs were given the same CPU");
    // Two busy processes on one CPU share it: one CPU's worth of time, not two.
    for share in [a_share, b_share] {
        assert!(
            share <= 1.15,
            "a --cpus 1 job got {share} CPUs' worth of time"
        );
    }
}

/// A file that jobs wait on while it exists; removed when the test ends, however it ends.
struct Gate(std::path::PathBuf);

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--mem` is a limit: a job whose processes hold more is killed and ends failed, with a
/// reason that names memory, in `list` and in `wait`'s failure lines.
fn a_job_over_its_memory_is_stopped_with_the_reason(store: StoreKind) {
    let q = TestQueue::on(store);
    let gate = Gate(q.tmp.path().join("gate"));
    std::fs::write(&gate.0, "").unwrap();
    // 300 MiB held until the gate goes (it never goes while the job lives: it is killed).
    let hog = format!(
        "python3 -c \"import os, time\nx = b'1' * (300 << 20)\nwhile os.path.exists('{}'): time.sleep(0.05)\"",
        gate.0.display()
    );
    let jid = q
        .rq(&[
            "submit",
            "--parsable",
            "--mem",
            "100M",
            "--retries",
            "2",
            &hog,
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let small = q
        .rq(&[
            "submit",
            "--parsable",
            "--mem",
            "100M",
            "python3 -c \"x = b'1' * (20 << 20)\"",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let _h1 = q.feeder("h1", &[]);
    let run = q.rq(&["wait", &jid, &small, "--timeout", "60s"]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "job {jid} was killed by KILL on h1: memory: peak "
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("above --mem 100M"), "{}", run.stderr);
    let job = &q.rq(&["list", &jid]).ok().records()[0];
    assert_eq!(text(job, "state"), "finished", "not retried: {job:?}");
    assert_eq!(text(job, "signal"), "KILL");
    assert!(text(job, "reason").starts_with("memory: peak "), "{job:?}");
    assert!(int(job, "max_rss") > 100 << 20, "{job:?}");
    // One within its limit is left alone.
    let ok = &q.rq(&["list", &small]).ok().records()[0];
    assert_eq!(int(ok, "exit_status"), 0, "{ok:?}");
}

/// `usage` sums what the jobs' runs recorded: per tag, per array, in total.
fn usage_sums_what_the_jobs_used(store: StoreKind) {
    let q = TestQueue::on(store);
    let burn = "python3 -c \"import time\nwhile time.process_time() < 0.3: pass\"";
    for _ in 0..3 {
        q.rq(&["submit", "-q", "-t", "a", "--cpus", "2", burn]).ok();
    }
    q.rq(&[
        "submit",
        "-q",
        "-t",
        "b",
        "--mem",
        "200M",
        "--array",
        "1-2",
        "python3 -c \"x = b'1' * (20 << 20)\"",
    ])
    .ok();
    let _h1 = q.feeder("h1", &["--exit_when_empty", "--cpus", "2"]);
    q.wait_for("the jobs to finish", 60, |q| q.count("finished") == 5);
    let jobs = q.jobs();
    let of = |tag: &'static str| jobs.iter().filter(move |j| text(j, "tag") == tag);
    let num =
        |j: &serde_json::Map<String, serde_json::Value>, f: &str| field(j, f).as_f64().unwrap();
    let cpu = |j| num(j, "cpu_user") + num(j, "cpu_system");
    let report = q.rq(&["usage", "--format", "json"]).ok();
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let tag = |name: &str| {
        report["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == name)
            .unwrap()
            .clone()
    };
    // Listings show seconds to the millisecond; the report sums them unrounded.
    let close = |a: f64, b: f64| (a - b).abs() <= 2e-3 * b.abs() + 1e-6;
    // Tag a: CPU over elapsed x 2 CPUs.
    let a = tag("a");
    assert_eq!(a["jobs"], 3);
    let a_cpu: f64 = of("a").map(cpu).sum();
    let a_wall: f64 = of("a").map(|j| num(j, "elapsed")).sum();
    assert!(
        close(a["cpu_hours"].as_f64().unwrap(), a_cpu / 3600.0),
        "{a}"
    );
    assert!(
        close(a["wall_hours"].as_f64().unwrap(), a_wall / 3600.0),
        "{a}"
    );
    assert!(
        close(
            a["cpu_efficiency"].as_f64().unwrap(),
            a_cpu / (2.0 * a_wall)
        ),
        "{a}"
    );
    assert!(
        a["memory_efficiency"].is_null(),
        "none asked for memory: {a}"
    );
    // Tag b, and its array: peak over --mem.
    let b = tag("b");
    let peaks: f64 = of("b").map(|j| num(j, "max_rss")).sum();
    let expected = peaks / (2.0 * 200.0 * (1 << 20) as f64);
    assert!(
        close(b["memory_efficiency"].as_f64().unwrap(), expected),
        "{b}"
    );
    let array = &report["arrays"][0];
    assert_eq!(array["jobs"], 2);
    assert_eq!(array["memory_efficiency"], b["memory_efficiency"]);
    let total = &report["total"];
    assert_eq!(total["jobs"], 5);
    let all_cpu: f64 = jobs.iter().map(cpu).sum();
    assert!(
        close(total["cpu_hours"].as_f64().unwrap(), all_cpu / 3600.0),
        "{total}"
    );
    // A selection narrows it; the table names the groups.
    let only_a: serde_json::Value =
        serde_json::from_str(&q.rq(&["usage", "tag:a", "--format", "json"]).ok().stdout).unwrap();
    assert_eq!(only_a["total"]["jobs"], 3);
    let table = q.rq(&["usage", "--format", "table"]).ok().stdout;
    assert!(
        table.contains("tag:a") && table.contains("tag:b"),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains("cpu eff"), "{table}");
}

on_both_stores!(
    usage_sums_what_the_jobs_used,
    every_run_records_its_cpu_time_and_peak_memory,
    a_job_runs_on_the_cpus_it_asked_for,
    a_job_over_its_memory_is_stopped_with_the_reason,
);
