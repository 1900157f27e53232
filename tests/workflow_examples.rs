//! The README's examples for scripts ("Using rq from workflow managers"), run as they are
//! written there, against a real queue and feeder.

mod common;
use std::path::Path;
use std::process::Command;

use common::*;

/// The fenced code blocks of `language` in the README's section `heading`.
fn readme_blocks(heading: &str, language: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section '{heading}'"));
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    let fence = format!("```{language}\n");
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("```").expect("an unclosed code block");
        blocks.push(body[..end].to_string());
        rest = &body[end..];
    }
    blocks
}

/// Run `program` on the example, written to a script file, with rq on PATH
/// and RQ_Q set: (status, stdout, stderr).
fn run_example(q: &TestQueue, program: &str, code: &str, suffix: &str) -> (i32, String, String) {
    let script = q.tmp.path().join(format!("example.{suffix}"));
    std::fs::write(&script, code).unwrap();
    let bin = Path::new(rq_bin()).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let out = Command::new(program)
        .arg(&script)
        .current_dir(q.tmp.path())
        .env("PATH", path)
        .env("RQ_Q", q.q())
        .env_remove("RQ_OPTS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_readmes_shell_example_runs_as_written() {
    let blocks = readme_blocks("Using rq from workflow managers", "sh");
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let q = TestQueue::new();
    let _h1 = q.feeder("h1", &[]);
    let (_, stdout, stderr) = run_example(&q, "bash", &blocks[0], "sh");
    assert_eq!(
        stdout.trim(),
        "success",
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("rq: tag:nothing-here: no job has this tag"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("rq: ")).count(),
        2,
        "{stderr}"
    );
    q.wait_for("step two to finish", 60, |q| q.count("finished") == 2);
}

#[test]
fn the_readmes_python_example_runs_as_written() {
    let blocks = readme_blocks("Using rq from workflow managers", "python");
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let q = TestQueue::new();
    let _h1 = q.feeder("h1", &["--max_feed", "3"]);
    let (status, stdout, stderr) = run_example(&q, "python3", &blocks[0], "py");
    assert_eq!(status, 0, "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "5 succeeded, failed: []", "{stderr}");
    let jobs = q.jobs();
    assert_eq!(jobs.len(), 5);
    assert!(jobs.iter().all(|j| text(j, "tag") == "sweep"));
}
