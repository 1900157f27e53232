//! Test helpers: run the real `rq` binary against queues in temp directories.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Map, Value};

pub fn rq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rq")
}

/// A command for the rq binary with a clean rq environment.
pub fn rq_command() -> Command {
    let mut cmd = Command::new(rq_bin());
    for var in [
        "RQ_Q",
        "RQ_QUEUE",
        "RQ_OPTS",
        "RQ_OPTIONS",
        "RQ_HOST",
        "RQ_SQL_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.status, 0,
            "rq failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn fails(self) -> Run {
        assert_ne!(
            self.status, 0,
            "rq should have failed: stdout={}",
            self.stdout
        );
        assert_eq!(
            self.stderr.trim().lines().count(),
            1,
            "error must be one line: {}",
            self.stderr
        );
        assert!(self.stderr.starts_with("rq: "), "{}", self.stderr);
        self
    }
    /// Parse the output as YAML (or JSON) into a list of records.
    pub fn records(&self) -> Vec<Map<String, Value>> {
        if self.stdout.trim().is_empty() {
            return Vec::new();
        }
        serde_saphyr::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad YAML ({e}): {}", self.stdout))
    }
    pub fn value(&self) -> Value {
        serde_saphyr::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad YAML ({e}): {}", self.stdout))
    }
}

fn finish(output: Output) -> Run {
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Run rq with arguments (and optional stdin text).
pub fn rq_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = rq_command();
    cmd.current_dir(dir).args(args);
    run_cmd(cmd, stdin)
}

pub fn run_cmd(mut cmd: Command, stdin: Option<&str>) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn rq");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    finish(child.wait_with_output().expect("wait rq"))
}

/// A queue in a fresh temp directory.
pub struct TestQueue {
    pub tmp: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestQueue {
    pub fn new() -> TestQueue {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("q");
        rq_in(tmp.path(), &[path.to_str().unwrap(), "create"], None).ok();
        TestQueue { tmp, path }
    }
    pub fn q(&self) -> &str {
        self.path.to_str().unwrap()
    }
    /// `rq Q args...`
    pub fn rq(&self, args: &[&str]) -> Run {
        let mut all = vec![self.q()];
        all.extend_from_slice(args);
        rq_in(self.tmp.path(), &all, None)
    }
    pub fn rq_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut all = vec![self.q()];
        all.extend_from_slice(args);
        rq_in(self.tmp.path(), &all, Some(stdin))
    }
    pub fn jobs(&self) -> Vec<Map<String, Value>> {
        self.rq(&["list", "all"]).ok().records()
    }
    pub fn sql(&self, sql: &str) -> Run {
        self.rq(&["execute", sql]).ok()
    }
    pub fn integrity_ok(&self) {
        let out = self.sql("PRAGMA integrity_check");
        assert!(out.stdout.contains("integrity_check: ok"), "{}", out.stdout);
    }
    /// Snapshot of every job (for "nothing changed" checks).
    pub fn dump(&self) -> String {
        self.rq(&["list", "all", "--format", "json"]).ok().stdout
    }
}

pub fn field<'a>(rec: &'a Map<String, Value>, name: &str) -> &'a Value {
    rec.get(name).unwrap_or(&Value::Null)
}

pub fn text(rec: &Map<String, Value>, name: &str) -> String {
    match field(rec, name) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn int(rec: &Map<String, Value>, name: &str) -> i64 {
    field(rec, name)
        .as_i64()
        .unwrap_or_else(|| panic!("{name} is not an integer in {rec:?}"))
}
