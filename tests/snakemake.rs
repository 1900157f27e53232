//! The Snakemake executor plugin (`integrations/snakemake`) with real Snakemake from PyPI
//! (in a virtualenv the test makes once, under the target directory) against a real queue
//! and feeder: a workflow that succeeds, one whose rule fails, the rerun after the fix,
//! and Ctrl-C.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// The Snakemake release the plugin is tested with (the interface it implements is
/// snakemake-interface-executor-plugins 9).
const SNAKEMAKE: &str = "snakemake==9.27.1";

/// A virtualenv with Snakemake and the plugin as the repository has it now.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("snakemake-venv");
        let pip = venv.join("bin/pip");
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                out.status.success(),
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Made once (a marker says it is complete, for this Snakemake release).
        let ready = venv.join(format!(".ready-{SNAKEMAKE}"));
        if !ready.exists() {
            let _ = std::fs::remove_dir_all(&venv);
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
                "python3 -m venv",
            );
            run(
                Command::new(&pip).args([
                    "install",
                    "--quiet",
                    SNAKEMAKE,
                    "setuptools>=70",
                    "wheel",
                ]),
                "pip install snakemake",
            );
            std::fs::write(&ready, "").unwrap();
        }
        // The plugin as it is in this checkout (built with the virtualenv's setuptools, from
        // a copy: a build writes build/ and *.egg-info beside the sources).
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/snakemake");
        let plugin = venv.join("plugin-source");
        let _ = std::fs::remove_dir_all(&plugin);
        std::fs::create_dir_all(plugin.join("snakemake_executor_plugin_rq")).unwrap();
        for file in [
            "pyproject.toml",
            "README.md",
            "snakemake_executor_plugin_rq/__init__.py",
        ] {
            std::fs::copy(source.join(file), plugin.join(file)).unwrap();
        }
        run(
            Command::new(&pip)
                .args(["install", "--quiet", "--no-deps", "--no-build-isolation"])
                .args(["--force-reinstall"])
                .arg(&plugin),
            "pip install the plugin",
        );
        venv
    })
}

/// A workflow directory: its Snakefile, and Snakemake run there with the rq executor.
struct Workflow<'q> {
    q: &'q TestQueue,
    dir: PathBuf,
}

impl<'q> Workflow<'q> {
    fn new(q: &'q TestQueue, snakefile: &str) -> Workflow<'q> {
        let dir = q.tmp.path().join("workflow");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Snakefile"), snakefile).unwrap();
        Workflow { q, dir }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let bin = Path::new(rq_bin()).parent().unwrap().to_path_buf();
        let path = std::env::join_paths(
            [bin, venv().join("bin")]
                .into_iter()
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        let mut cmd = Command::new(venv().join("bin/snakemake"));
        cmd.current_dir(&self.dir)
            .env("PATH", path)
            .env("HOME", self.q.home())
            .env_remove("RQ_Q")
            .args(["--executor", "rq", "--rq-queue", self.q.q(), "--jobs", "4"])
            .args(["--seconds-between-status-checks", "1", "--nocolor"])
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    /// Run Snakemake to its end: (exit status, everything it printed).
    fn run(&self, extra: &[&str]) -> (i32, String) {
        let out = self.command(extra).output().expect("run snakemake");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

/// The tag Snakemake's run put on its jobs, as the plugin says at start.
fn run_tag(output: &str) -> String {
    let at = output
        .find("jobs tagged smk-")
        .unwrap_or_else(|| panic!("no run tag in the output:\n{output}"));
    output[at + "jobs tagged ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn jobs_tagged(q: &TestQueue, tag: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    q.jobs()
        .into_iter()
        .filter(|j| text(j, "tag") == tag)
        .collect()
}

#[test]
fn a_workflow_runs_its_jobs_on_the_queue_with_their_resources() {
    let q = TestQueue::new();
    let flow = Workflow::new(
        &q,
        r#"
rule all:
    input: "c.txt"

rule a:
    output: "a.txt"
    threads: 2
    resources: mem_mb=100, runtime=5
    shell: "echo a > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "cat {input} > {output}; echo b >> {output}"

rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "cat {input} > {output}; echo c >> {output}"
"#,
    );
    let _h1 = q.feeder("h1", &["--max_feed", "4", "--cpus", "4"]);
    let (status, output) = flow.run(&[]);
    assert_eq!(status, 0, "{output}");
    assert_eq!(flow.read("c.txt"), "a\nb\nc\n");
    let tag = run_tag(&output);
    let jobs = jobs_tagged(&q, &tag);
    assert_eq!(jobs.len(), 3, "one rq job per rule run: {jobs:?}");
    assert!(jobs.iter().all(|j| text(j, "state") == "finished"));
    // Rule a's resources, as rq's.
    let a = &jobs[0];
    assert_eq!(int(a, "cpus"), 2);
    assert_eq!(int(a, "mem"), 100 << 20);
    assert_eq!(field(a, "timeout").as_f64(), Some(300.0));
    assert_eq!(int(&jobs[1], "cpus"), 1);
}

#[test]
fn a_failed_rule_is_reported_with_its_stderr_and_the_rerun_finishes_the_rest() {
    let q = TestQueue::new();
    let flow = Workflow::new(
        &q,
        r#"
rule all:
    input: "good.txt", "bad.txt"

rule good:
    output: "good.txt"
    shell: "echo good > {output}"

rule bad:
    output: "bad.txt"
    params: fail=config.get("fail", "1")
    shell: "if [ {params.fail} = 1 ]; then echo 'boom from the bad rule' >&2; exit 3; fi; echo fixed > {output}"
"#,
    );
    let _h1 = q.feeder("h1", &["--max_feed", "2"]);
    let (status, output) = flow.run(&[]);
    assert_ne!(status, 0, "{output}");
    assert!(output.contains("Error in rule bad"), "{output}");
    assert!(output.contains("boom from the bad rule"), "{output}");
    // rq's reason (the job is Snakemake's own run of the rule, which exits 1).
    assert!(output.contains("failed (exit status 1 on h1)"), "{output}");
    // What succeeded stays.
    assert_eq!(flow.read("good.txt"), "good\n");
    assert!(!flow.dir.join("bad.txt").exists());
    let first = jobs_tagged(&q, &run_tag(&output));
    assert_eq!(first.len(), 2, "{first:?}");
    // Fixed: the rerun runs only what is missing.
    let (status, output) = flow.run(&["--config", "fail=0"]);
    assert_eq!(status, 0, "{output}");
    assert_eq!(flow.read("bad.txt"), "fixed\n");
    assert_eq!(flow.read("good.txt"), "good\n");
    let second = jobs_tagged(&q, &run_tag(&output));
    assert_eq!(
        second.len(),
        1,
        "only the failed rule runs again: {second:?}"
    );
}

#[test]
fn ctrl_c_leaves_none_of_the_runs_jobs_pending_or_running() {
    let q = TestQueue::new();
    let gate = q.tmp.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let flow = Workflow::new(
        &q,
        &format!(
            r#"
rule all:
    input: "merged.txt"

rule part:
    output: "part{{n}}.txt"
    shell: "while [ -e {gate} ]; do sleep 0.1; done; echo {{wildcards.n}} > {{output}}"

rule merge:
    input: expand("part{{n}}.txt", n=[1, 2, 3])
    output: "merged.txt"
    shell: "cat {{input}} > {{output}}"
"#,
            gate = gate.display()
        ),
    );
    // Two slots: two parts run (until the gate goes), the third waits in the queue.
    let _h1 = q.feeder("h1", &["--max_feed", "2"]);
    let log = std::fs::File::create(q.tmp.path().join("snakemake.out")).unwrap();
    let mut snakemake = flow
        .command(&[])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let jobs = q.jobs();
        let running = jobs
            .iter()
            .filter(|j| text(j, "state") == "running")
            .count();
        let pending = jobs
            .iter()
            .filter(|j| text(j, "state") == "pending")
            .count();
        if running == 2 && pending == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the parts did not start: {jobs:?}\n{}",
            std::fs::read_to_string(q.tmp.path().join("snakemake.out")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ctrl-C.
    unsafe { libc::kill(snakemake.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = snakemake.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = snakemake.kill();
            panic!("snakemake did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(q.tmp.path().join("snakemake.out")).unwrap();
    assert!(!status.success(), "{output}");
    let tag = run_tag(&output);
    q.wait_for("the killed parts to end", 60, |q| q.count("running") == 0);
    let jobs = jobs_tagged(&q, &tag);
    assert!(
        jobs.iter()
            .all(|j| !["pending", "running", "waiting", "holding"]
                .contains(&text(j, "state").as_str())),
        "jobs of the run still queued or running: {jobs:?}"
    );
    // The two that ran were killed; the one that waited was removed.
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.iter().all(|j| text(j, "signal") == "TERM"), "{jobs:?}");
    std::fs::remove_file(&gate).unwrap();
    assert!(!flow.dir.join("merged.txt").exists());
}
