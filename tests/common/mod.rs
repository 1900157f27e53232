//! Test helpers: run the real `rq` binary against queues in temp directories.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Map, Value};

pub mod browser;
pub mod pg;
pub mod pty;

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
        // Listings of thousands of jobs exceed the parser's default node budget.
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_nodes: usize::MAX,
                max_events: usize::MAX,
                max_total_scalar_bytes: usize::MAX,
            },
        };
        serde_saphyr::from_str_with_options(&self.stdout, options)
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

/// Where a test keeps its queue: tests that hold for both stores run once on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// Define `#[test] fn NAME` (SQLite) and `#[test] fn NAME_on_postgres` running the same
/// body, a `fn NAME(store: StoreKind)`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test]
            fn $name() {
                super::$name($crate::common::StoreKind::Sqlite)
            })*
        }
        mod on_postgres {
            $(#[test]
            fn $name() {
                super::$name($crate::common::StoreKind::Postgres)
            })*
        }
    };
}

/// `on_both_stores!` for async bodies (`async fn NAME(store: StoreKind)`), each run on a
/// multi-threaded tokio runtime.
#[macro_export]
macro_rules! on_both_stores_async {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::StoreKind::Sqlite).await
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::StoreKind::Postgres).await
            })*
        }
    };
}

/// A queue in a fresh temp directory (or on the test PostgreSQL server, with the temp
/// directory as the working directory).
pub struct TestQueue {
    pub tmp: tempfile::TempDir,
    pub path: PathBuf,
    pub store: StoreKind,
    /// A PostgreSQL queue given no job-file directory: everything in its database.
    pub in_database: bool,
}

impl TestQueue {
    pub fn new() -> TestQueue {
        TestQueue::on(StoreKind::Sqlite)
    }

    pub fn on(store: StoreKind) -> TestQueue {
        let path = match store {
            StoreKind::Sqlite => None,
            StoreKind::Postgres => Some(PathBuf::from(pg::new_queue_url())),
        };
        TestQueue::at(store, path)
    }

    /// A queue on a server of the test's own.
    pub fn on_server(server: &pg::Server) -> TestQueue {
        TestQueue::at(StoreKind::Postgres, Some(server.queue_url("q").into()))
    }

    /// A PostgreSQL queue with no job-file directory: heartbeats, start journals and job
    /// files live in its database, as for hosts that share no filesystem.
    pub fn in_database() -> TestQueue {
        TestQueue::in_database_at(PathBuf::from(pg::new_queue_url()))
    }

    /// As `in_database`, on a server of the test's own (one it may crash).
    pub fn in_database_on(server: &pg::Server) -> TestQueue {
        TestQueue::in_database_at(PathBuf::from(server.queue_url("q")))
    }

    fn in_database_at(path: PathBuf) -> TestQueue {
        let tmp = tempfile::tempdir().unwrap();
        rq_in(tmp.path(), &[path.to_str().unwrap(), "create"], None).ok();
        TestQueue {
            tmp,
            path,
            store: StoreKind::Postgres,
            in_database: true,
        }
    }

    fn at(store: StoreKind, path: Option<PathBuf>) -> TestQueue {
        let tmp = tempfile::tempdir().unwrap();
        let path = path.unwrap_or_else(|| tmp.path().join("q"));
        rq_in(tmp.path(), &[path.to_str().unwrap(), "create"], None).ok();
        if store == StoreKind::Postgres {
            // The directory every host would see for job files (on NFS in a cluster).
            let files = tmp.path().join("files");
            let setting = format!("files={}", files.display());
            rq_in(
                tmp.path(),
                &[path.to_str().unwrap(), "configure", &setting],
                None,
            )
            .ok();
        }
        TestQueue {
            tmp,
            path,
            store,
            in_database: false,
        }
    }

    /// Where the queue keeps job files (`stdout/3` etc. are relative to it).
    pub fn files(&self) -> PathBuf {
        assert!(
            !self.in_database,
            "this queue keeps its job files in its database"
        );
        match self.store {
            StoreKind::Sqlite => self.path.clone(),
            StoreKind::Postgres => self.tmp.path().join("files"),
        }
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
    /// The store is sound: SQLite's integrity check; on PostgreSQL (whose server keeps
    /// its own pages sound), the kept counts agree with the jobs.
    pub fn integrity_ok(&self) {
        match self.store {
            StoreKind::Sqlite => {
                let out = self.sql("PRAGMA integrity_check");
                assert!(out.stdout.contains("integrity_check: ok"), "{}", out.stdout);
            }
            StoreKind::Postgres => {
                let out = self.sql(
                    "SELECT count(*) AS wrong FROM job_counts c FULL JOIN \
                     (SELECT state, count(*) AS n FROM jobs GROUP BY state) j USING (state) \
                     WHERE coalesce(c.n, 0) <> coalesce(j.n, 0)",
                );
                assert!(out.stdout.contains("wrong: 0"), "{}", out.stdout);
            }
        }
    }
    /// A job command that runs until the test removes `held` in its temp dir (or the
    /// temp dir goes at its end): for jobs that must still run later in the test, however
    /// slow the machine is (a `sleep N` would end on its own clock).
    pub fn held(&self) -> String {
        let path = self.tmp.path().join("held");
        if !path.exists() {
            std::fs::write(&path, "").unwrap();
        }
        format!("while [ -e {} ]; do sleep 0.1; done", path.display())
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

/// A feeder process posing as a host; stopped (jobs killed) when dropped.
pub struct FeederProc {
    pub child: std::process::Child,
    pub host: String,
}

impl FeederProc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }
    /// Wait for the feeder to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for FeederProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGQUIT);
            if self.wait_exit(std::time::Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

impl TestQueue {
    /// A home directory for per-host state, inside the test's temp dir.
    pub fn home(&self) -> PathBuf {
        let home = self.tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    /// Start `rq Q feed` as host `host` (RQ_HOST), fast polling, `sh -c` shell; its
    /// stderr (the log) goes to `feeder-<host>.err` in the temp dir.
    pub fn feeder(&self, host: &str, extra: &[&str]) -> FeederProc {
        self.feeder_env(host, extra, &[])
    }

    pub fn feeder_env(&self, host: &str, extra: &[&str], env: &[(&str, &str)]) -> FeederProc {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("feeder-{host}.err")))
            .unwrap();
        let mut cmd = rq_command();
        cmd.env("RQ_HOST", host)
            .env("HOME", self.home())
            .envs(env.iter().copied())
            .current_dir(self.tmp.path())
            .args([self.q(), "feed", "--min_sleep", "0.05", "--shell", "sh -c"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(err);
        FeederProc {
            child: cmd.spawn().expect("spawn feeder"),
            host: host.to_string(),
        }
    }

    /// Run an rq command as host `host` with this test's HOME.
    pub fn rq_as(&self, host: &str, args: &[&str]) -> Run {
        self.rq_as_env(host, args, &[])
    }

    /// `rq_as` with extra environment variables.
    pub fn rq_as_env(&self, host: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = rq_command();
        cmd.env("RQ_HOST", host)
            .env("HOME", self.home())
            .envs(env.iter().copied())
            .current_dir(self.tmp.path())
            .arg(self.q())
            .args(args);
        run_cmd(cmd, None)
    }

    pub fn count(&self, state: &str) -> i64 {
        let v = self.rq(&["status"]).ok().value();
        v["jobs"][state].as_i64().unwrap()
    }

    /// Poll until `cond` holds; panic with `what` after `secs` seconds.
    pub fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut(&TestQueue) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}: {}{}",
            self.rq(&["status"]).stdout,
            self.feeder_log_tails()
        );
    }

    /// The last lines of every feeder's log, for a failure message.
    pub fn feeder_log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.tmp.path()) else {
            return out;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("feeder-") && n.ends_with(".err"))
            })
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    pub fn feeder_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("feeder-{host}.err")))
            .unwrap_or_default()
    }

    pub fn ledger(&self) -> PathBuf {
        self.tmp.path().join("ledger")
    }

    pub fn ledger_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.ledger())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Can this machine fake hosts with UTS namespaces (root with unshare)?
pub fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--uts", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Pids of a process and all its descendants (from /proc).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let ppid = stat[close + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for (child, parent) in &parent_of {
            if *parent == p && !all.contains(child) {
                all.push(*child);
            }
        }
        i += 1;
    }
    all
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|c| stat[c + 2..].split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14, stime 15.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn alive(pid: i32) -> bool {
    // A zombie counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|c| stat[c + 2..].split_whitespace().next().map(|s| s != "Z"))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A whole host: a feeder in its own UTS and PID namespace. Killing the namespace's init
/// kills every process of the host at once, as a crash would.
pub struct Host {
    pub name: String,
    pub unshare: std::process::Child,
}

impl Host {
    /// The namespace's init (the `sh` that runs the feeder), as seen from outside.
    pub fn init_pid(&self) -> i32 {
        let root = self.unshare.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(pid) = descendants(root).get(1) {
                return *pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {} did not start",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    /// Every process of the host (init, feeder, jobs).
    pub fn processes(&self) -> Vec<i32> {
        descendants(self.init_pid())
    }
    pub fn crash(&mut self) {
        let init = self.init_pid();
        unsafe { libc::kill(init, libc::SIGKILL) };
        let _ = self.unshare.wait();
    }
    pub fn freeze(&self) {
        for pid in self.processes() {
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    }
    pub fn thaw(&self) {
        for pid in self.processes() {
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.unshare.try_wait() {
            self.thaw();
            let init = self.init_pid();
            unsafe { libc::kill(init, libc::SIGKILL) };
            let _ = self.unshare.wait();
        }
    }
}

impl TestQueue {
    /// Start a whole host `name` running `rq Q feed extra...` (output in `feeder-<name>.err`).
    pub fn host(&self, name: &str, extra: &[&str]) -> Host {
        assert!(unshare_works(), "these tests need root and unshare(1)");
        let err =
            std::fs::File::create(self.tmp.path().join(format!("feeder-{name}.err"))).unwrap();
        let mut script = format!(
            "hostname {name}; '{}' '{}' feed --min_sleep 0.05 --shell 'sh -c'",
            rq_bin(),
            self.q()
        );
        for arg in extra {
            script.push_str(&format!(" '{arg}'"));
        }
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .env("HOME", self.home())
        .env_remove("RQ_HOST")
        .current_dir(self.tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
        Host {
            name: name.to_string(),
            unshare: cmd.spawn().expect("unshare"),
        }
    }
}

/// The pid in a daemon's `pid N started` line.
pub fn started_pid(stdout: &str) -> i32 {
    stdout
        .trim()
        .strip_prefix("pid ")
        .and_then(|s| s.strip_suffix(" started"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a 'pid N started' line: {stdout}"))
}

/// A daemon feeder, stopped when dropped: QUIT (its jobs are killed), then KILL.
pub struct Daemon(pub i32);

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGQUIT) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(self.0) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The process is stopped (SIGSTOP): its state in /proc is `T`.
pub fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('T')
    })
}
