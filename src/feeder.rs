//! The feeder: claims jobs for this host and runs them.
//!
//! Protocol (see ARCHITECTURE.md):
//! 1. claim: one short write transaction marks the best eligible jobs `running` for this
//!    host with a fresh claim token, and commits, *before* anything is spawned;
//! 2. spawn outside any transaction; then record pid and process identity, checking the
//!    claim token (a job taken over meanwhile is killed, not recorded);
//! 3. on exit, record the end, again only `WHERE claim = token`. Several completions and
//!    the next claim share one transaction.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::types::Value as SqlValue;

use crate::error::{Error, IoContext, Result};
use crate::job::{Cell, Row};
use crate::log::{Level, Logger};
use crate::queue::{self, Queue};
use crate::{process, time};

/// How a feeder runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub max_feed: usize,
    /// The shell prefix; the job's command is appended as one argument.
    pub shell: Vec<String>,
    /// Seconds between cheap doorbell checks while idle.
    pub min_sleep: f64,
    /// Seconds between full database polls while idle.
    pub max_sleep: f64,
    /// Exit once nothing is running and nothing is left to claim.
    pub exit_when_empty: bool,
    /// Seconds a job gets between TERM and KILL when it must be stopped.
    pub kill_grace: f64,
}

impl Config {
    pub fn default_shell() -> Vec<String> {
        vec!["bash".into(), "--login".into(), "-c".into()]
    }
}

/// Why the feeder loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained after TERM/INT, or ran out of work with `exit_when_empty`.
    Done,
    /// Drained after HUP: the caller re-executes the feeder.
    Restart,
    /// Stopped at once (QUIT): running jobs were killed and handled as crashed.
    Stopped,
}

struct RunningJob {
    jid: i64,
    claim: String,
    child: Child,
    pid: u32,
    started: Instant,
}

struct Completion {
    jid: i64,
    claim: String,
    exit_status: Option<i32>,
    signal: Option<String>,
    elapsed: f64,
    pid: u32,
}

/// Signals the feeder reacts to, and a pipe that wakes its sleep when one arrives.
struct Signals {
    wake: UnixStream,
    drain: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals> {
        let (read, write) = UnixStream::pair().context(|| "cannot make a wake-up pipe".into())?;
        read.set_nonblocking(true)
            .context(|| "cannot set up the wake-up pipe".into())?;
        let drain = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let io = |e: std::io::Error| Error::Io {
            context: "cannot install signal handlers".into(),
            source: e,
        };
        use signal_hook::consts::*;
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, drain.clone()).map_err(io)?;
        }
        signal_hook::flag::register(SIGHUP, restart.clone()).map_err(io)?;
        signal_hook::flag::register(SIGQUIT, stop.clone()).map_err(io)?;
        for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD] {
            let w = write.try_clone().map_err(io)?;
            signal_hook::low_level::pipe::register(sig, w).map_err(io)?;
        }
        Ok(Signals {
            wake: read,
            drain,
            restart,
            stop,
        })
    }

    /// Sleep until a signal arrives or the timeout passes.
    fn sleep(&mut self, timeout: Duration) {
        let mut fds = [libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one valid fd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Cheap change detection on the doorbell file, without the queue lock. statx with
/// FORCE_SYNC makes an NFS client ask the server instead of its attribute cache.
struct Doorbell {
    path: PathBuf,
    last: Option<(i64, u32, i64, u32, u64)>,
}

impl Doorbell {
    fn new(dir: &Path) -> Doorbell {
        Doorbell {
            path: dir.join("doorbell"),
            last: None,
        }
    }

    fn rang(&mut self) -> bool {
        use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
        let now = statx(
            CWD,
            &self.path,
            AtFlags::STATX_FORCE_SYNC,
            StatxFlags::MTIME | StatxFlags::CTIME | StatxFlags::INO,
        )
        .ok()
        .map(|s| {
            (
                s.stx_mtime.tv_sec,
                s.stx_mtime.tv_nsec,
                s.stx_ctime.tv_sec,
                s.stx_ctime.tv_nsec,
                s.stx_ino,
            )
        });
        let changed = now != self.last;
        self.last = now;
        changed
    }
}

fn jittered(seconds: f64) -> Duration {
    Duration::from_secs_f64((seconds * rand::random_range(0.8..1.2)).max(0.001))
}

pub struct Feeder {
    queue: Queue,
    config: Config,
    log: Logger,
    id: String,
    running: Vec<RunningJob>,
    doorbell: Doorbell,
    last_full_poll: Instant,
    next_full_poll: Duration,
    /// The last claim filled every free slot, so more work may be waiting.
    more_waiting: bool,
}

impl Feeder {
    pub fn new(queue: Queue, config: Config, log: Logger) -> Feeder {
        let id = format!(
            "{}:{}:{:08x}",
            config.host,
            std::process::id(),
            rand::random::<u32>()
        );
        let doorbell = Doorbell::new(queue.dir());
        Feeder {
            queue,
            next_full_poll: jittered(config.max_sleep),
            config,
            log,
            id,
            running: Vec::new(),
            doorbell,
            last_full_poll: Instant::now(),
            more_waiting: true,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn info(&mut self, message: &str) {
        self.log.log(Level::Info, message);
    }

    /// Run until drained, stopped or (with `exit_when_empty`) out of work.
    pub fn run(&mut self) -> Result<Exit> {
        let mut signals = Signals::install()?;
        self.info(&format!(
            "** STARTED ** rq {} feeder {} queue {} max_feed {} shell {:?}",
            env!("CARGO_PKG_VERSION"),
            self.id,
            self.queue.dir().display(),
            self.config.max_feed,
            self.config.shell
        ));
        self.recover_crashed()?;
        self.reap_orphan_files();
        loop {
            if signals.stop.load(Ordering::SeqCst) {
                self.stop_now()?;
                self.info("** STOPPED ** running jobs were killed");
                return Ok(Exit::Stopped);
            }
            let draining =
                signals.drain.load(Ordering::SeqCst) || signals.restart.load(Ordering::SeqCst);
            let completions = self.reap_children();
            let free = if draining {
                0
            } else {
                self.config.max_feed.saturating_sub(self.running.len())
            };
            let full_poll_due = self.last_full_poll.elapsed() >= self.next_full_poll;
            let doorbell = free > 0 && self.doorbell.rang();
            let want = if free > 0
                && (doorbell || full_poll_due || self.more_waiting || !completions.is_empty())
            {
                free
            } else {
                0
            };
            let mut claimed = Vec::new();
            if want > 0 || !completions.is_empty() {
                claimed = self.record_and_claim(&completions, want)?;
                if want > 0 {
                    self.more_waiting = claimed.len() == want;
                    self.last_full_poll = Instant::now();
                    self.next_full_poll = jittered(self.config.max_sleep);
                }
            }
            for c in &completions {
                self.log_completion(c);
            }
            if !claimed.is_empty() {
                self.start_jobs(claimed)?;
            }
            if self.running.is_empty() {
                if draining {
                    let restart = signals.restart.load(Ordering::SeqCst);
                    self.info(if restart {
                        "** RESTARTING **"
                    } else {
                        "** STOPPING ** drained"
                    });
                    return Ok(if restart { Exit::Restart } else { Exit::Done });
                }
                if self.config.exit_when_empty && want > 0 && !self.more_waiting {
                    self.info("** STOPPING ** no jobs left");
                    return Ok(Exit::Done);
                }
            }
            if self.more_waiting && free > 0 && !draining {
                continue;
            }
            let timeout = if self.running.len() < self.config.max_feed && !draining {
                jittered(self.config.min_sleep)
            } else {
                jittered(self.config.max_sleep)
            };
            signals.sleep(timeout);
        }
    }

    /// Collect every child that has exited.
    fn reap_children(&mut self) -> Vec<Completion> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let job = self.running.swap_remove(i);
                    done.push(Completion {
                        jid: job.jid,
                        claim: job.claim,
                        exit_status: status.code(),
                        signal: status.signal().map(process::signal_name),
                        elapsed: job.started.elapsed().as_secs_f64(),
                        pid: job.pid,
                    });
                }
                _ => i += 1,
            }
        }
        done
    }

    /// One transaction: record finished jobs (only where our claim still holds), then
    /// claim up to `want` new ones.
    fn record_and_claim(&mut self, completions: &[Completion], want: usize) -> Result<Vec<Row>> {
        let host = self.config.host.clone();
        let feeder = self.id.clone();
        let (claimed, fenced) = self.queue.store().write(|tx| {
            let now = time::now();
            let mut fenced = Vec::new();
            let mut finish = tx.prepare_cached(
                "UPDATE jobs SET state = 'finished', finished = ?, elapsed = ?, exit_status = ?, \
                 signal = ?, claim = NULL WHERE jid = ? AND claim = ?",
            )?;
            for c in completions {
                let n = finish.execute(rusqlite::params![
                    now,
                    c.elapsed,
                    c.exit_status,
                    c.signal,
                    c.jid,
                    c.claim
                ])?;
                if n == 0 {
                    fenced.push(c.jid);
                }
            }
            let claimed = if want > 0 {
                claim(tx, &host, &feeder, &now, want)?
            } else {
                Vec::new()
            };
            Ok((claimed, fenced))
        })?;
        for jid in fenced {
            self.log.log(
                Level::Warn,
                &format!("job {jid} was taken over by another host; its result here was discarded"),
            );
        }
        Ok(claimed)
    }

    fn log_completion(&mut self, c: &Completion) {
        let (level, how) = match (&c.exit_status, &c.signal) {
            (Some(0), _) => (Level::Info, "exit_status 0".to_string()),
            (Some(code), _) => (Level::Warn, format!("exit_status {code}")),
            (None, Some(sig)) => (Level::Warn, format!("killed by signal {sig}")),
            (None, None) => (Level::Warn, "ended".to_string()),
        };
        self.log.log(
            level,
            &format!(
                "finished - jid {} pid {} {how} elapsed {:.3}s",
                c.jid, c.pid, c.elapsed
            ),
        );
    }

    /// Spawn claimed jobs (outside any transaction), then record their pids.
    fn start_jobs(&mut self, claimed: Vec<Row>) -> Result<()> {
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for job in &claimed {
            let jid = job.jid();
            let claim = job.get("claim").as_text().unwrap_or_default().to_string();
            match self.spawn(job) {
                Ok(child) => {
                    let pid = child.id();
                    let identity = process::identity(pid);
                    self.log.log(
                        Level::Info,
                        &format!(
                            "started - jid {jid} pid {pid} command {}",
                            job.get("command").to_plain()
                        ),
                    );
                    started.push((jid, claim.clone(), pid, identity));
                    self.running.push(RunningJob {
                        jid,
                        claim,
                        child,
                        pid,
                        started: Instant::now(),
                    });
                }
                Err(e) => {
                    self.log
                        .log(Level::Error, &format!("not started - jid {jid}: {e}"));
                    let stderr = self.queue.dir().join("stderr").join(jid.to_string());
                    let _ = std::fs::write(&stderr, format!("rq: could not start the job: {e}\n"));
                    failed.push((jid, claim));
                }
            }
        }
        let fenced = self.queue.store().write(|tx| {
            let mut fenced = Vec::new();
            let mut record = tx.prepare_cached(
                "UPDATE jobs SET pid = ?, process = ? WHERE jid = ? AND claim = ?",
            )?;
            for (jid, claim, pid, identity) in &started {
                if record.execute(rusqlite::params![pid, identity, jid, claim])? == 0 {
                    fenced.push(*jid);
                }
            }
            // A shell that cannot start counts as "command not found".
            let mut fail = tx.prepare_cached(
                "UPDATE jobs SET state = 'finished', finished = ?, elapsed = 0, exit_status = 127, \
                 claim = NULL WHERE jid = ? AND claim = ?",
            )?;
            let now = time::now();
            for (jid, claim) in &failed {
                fail.execute(rusqlite::params![now, jid, claim])?;
            }
            Ok(fenced)
        })?;
        for jid in fenced {
            self.log.log(
                Level::Warn,
                &format!("job {jid} was taken over before it started here; killing it"),
            );
            if let Some(job) = self.running.iter().find(|j| j.jid == jid) {
                process::signal_group(job.pid, libc::SIGKILL);
            }
        }
        Ok(())
    }

    fn spawn(&self, job: &Row) -> Result<Child> {
        let dir = self.queue.dir();
        let jid = job.jid();
        let path_of = |field: &str| job.get(field).as_text().map(|rel| dir.join(rel));
        let stdout_path =
            path_of("stdout").unwrap_or_else(|| dir.join("stdout").join(jid.to_string()));
        let stderr_path =
            path_of("stderr").unwrap_or_else(|| dir.join("stderr").join(jid.to_string()));
        let data_path = path_of("data").unwrap_or_else(|| dir.join("data").join(jid.to_string()));
        let stdin_path = path_of("stdin");
        if !data_path.exists() {
            std::fs::create_dir_all(&data_path)
                .context(|| format!("cannot create {}", data_path.display()))?;
        }
        let stdout = std::fs::File::create(&stdout_path)
            .context(|| format!("cannot create {}", stdout_path.display()))?;
        let stderr = std::fs::File::create(&stderr_path)
            .context(|| format!("cannot create {}", stderr_path.display()))?;
        let stdin = match &stdin_path {
            Some(p) if p.is_file() => Stdio::from(
                std::fs::File::open(p).context(|| format!("cannot open {}", p.display()))?,
            ),
            _ => Stdio::null(),
        };
        let cwd = job
            .get("cwd")
            .as_text()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_dir())
            })
            .unwrap_or_else(|| PathBuf::from("/"));
        let command = job.get("command").to_plain();
        let program = &self.config.shell[0];
        let shell_name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A login shell's profile may reset PATH: put the queue's bin/ first again.
        let text = if matches!(shell_name.as_str(), "bash" | "sh" | "dash" | "zsh" | "ksh") {
            format!("PATH=\"$RQ/bin:$PATH\"; export PATH\n{command}")
        } else {
            command.clone()
        };
        let mut cmd = Command::new(program);
        cmd.args(&self.config.shell[1..])
            .arg(text)
            .arg0(format!("__rq_job__{jid}__{shell_name}__"))
            .current_dir(&cwd)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut new_path = dir.join("bin").into_os_string();
        new_path.push(":");
        new_path.push(path);
        cmd.env("PATH", new_path);
        cmd.env("RQ", dir);
        for (name, cell) in &job.columns {
            let value = match (name.as_str(), cell) {
                ("stdin" | "stdout" | "stderr" | "data", Cell::Text(rel)) => {
                    dir.join(rel).to_string_lossy().into_owned()
                }
                _ => cell.to_plain(),
            };
            cmd.env(format!("RQ_{}", name.to_ascii_uppercase()), value);
        }
        cmd.env("RQ_DATA", &data_path);
        cmd.env("RQ_STDOUT", &stdout_path);
        cmd.env("RQ_STDERR", &stderr_path);
        cmd.env(
            "RQ_STDIN",
            stdin_path.as_deref().unwrap_or(Path::new("/dev/null")),
        );
        let record: serde_json::Map<String, serde_json::Value> = job
            .columns
            .iter()
            .map(|(name, cell)| (name.clone(), crate::output::cell_json(cell)))
            .collect();
        cmd.env("RQ_JOB", serde_json::Value::Object(record).to_string());
        // SAFETY: only async-signal-safe calls (signal, sigprocmask) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Jobs never inherit ignored or blocked signals from the feeder.
                for sig in 1..32 {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::signal(sig, libc::SIG_DFL);
                    }
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        cmd.spawn().context(|| format!("cannot run {program}"))
    }

    /// QUIT: kill every running job now (TERM, then KILL after the grace period) and
    /// handle them as crashed, recording the signal that ended each.
    fn stop_now(&mut self) -> Result<()> {
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        for job in &self.running {
            process::signal_group(job.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut ended: Vec<(i64, String, Option<String>)> = Vec::new();
        while !self.running.is_empty() {
            let mut i = 0;
            while i < self.running.len() {
                if let Ok(Some(status)) = self.running[i].child.try_wait() {
                    let job = self.running.swap_remove(i);
                    ended.push((
                        job.jid,
                        job.claim,
                        status.signal().map(process::signal_name),
                    ));
                } else {
                    i += 1;
                }
            }
            if Instant::now() >= deadline {
                for job in &self.running {
                    process::signal_group(job.pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let outcomes = self.queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for (jid, claim, signal) in &ended {
                outcomes.push((*jid, mark_crashed(tx, *jid, claim, signal.as_deref())?));
            }
            Ok(outcomes)
        })?;
        for (jid, outcome) in outcomes {
            self.log
                .log(Level::Warn, &format!("job {jid} stopped: {outcome}"));
        }
        Ok(())
    }

    /// Jobs this host was running under an earlier feeder are not running any more as far
    /// as rq can follow them: a still-live process (same boot, same start time) is killed,
    /// since no one could record its end; then each is handled as crashed.
    fn recover_crashed(&mut self) -> Result<()> {
        let host = self.config.host.clone();
        let mine = self.id.clone();
        let orphans = self.queue.store().read(|tx| {
            queue::select_rows(
                tx,
                "state = 'running' AND runner = ? AND (feeder IS NULL OR feeder != ?) ORDER BY jid",
                &[SqlValue::Text(host.clone()), SqlValue::Text(mine.clone())],
            )
        })?;
        if orphans.is_empty() {
            return Ok(());
        }
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        let mut live = Vec::new();
        for job in &orphans {
            let (Some(pid), Some(identity)) =
                (job.get("pid").as_int(), job.get("process").as_text())
            else {
                continue;
            };
            if process::same_process(pid as u32, identity) {
                self.log.log(
                    Level::Warn,
                    &format!(
                        "job {} (pid {pid}) of an earlier feeder is still running: killing it",
                        job.jid()
                    ),
                );
                process::signal_group(pid as u32, libc::SIGTERM);
                live.push((pid as u32, identity.to_string()));
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && live.iter().any(|(pid, id)| process::same_process(*pid, id))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (pid, id) in &live {
            if process::same_process(*pid, id) {
                process::signal_group(*pid, libc::SIGKILL);
            }
        }
        let outcomes = self.queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for job in &orphans {
                let claim = job.get("claim").as_text().unwrap_or_default().to_string();
                outcomes.push((job.jid(), mark_crashed(tx, job.jid(), &claim, None)?));
            }
            Ok(outcomes)
        })?;
        for (jid, outcome) in outcomes {
            self.log.log(
                Level::Warn,
                &format!("job {jid} of an earlier feeder on this host: {outcome}"),
            );
        }
        Ok(())
    }

    /// Remove files in stdin/ stdout/ stderr/ data/ that belong to no job. Only files older
    /// than ten minutes: a submit copies files before it inserts the rows naming them.
    fn reap_orphan_files(&mut self) {
        let referenced: Result<HashMap<i64, Vec<String>>> = self.queue.store().read(|tx| {
            let mut stmt = tx.prepare("SELECT jid, stdin, stdout, stderr, data FROM jobs")?;
            let mut rows = stmt.query([])?;
            let mut map = HashMap::new();
            while let Some(r) = rows.next()? {
                let files: Vec<String> = (1..=4)
                    .filter_map(|i| r.get::<_, Option<String>>(i).ok().flatten())
                    .collect();
                map.insert(r.get(0)?, files);
            }
            Ok(map)
        });
        let Ok(referenced) = referenced else { return };
        let dir = self.queue.dir().to_path_buf();
        let mut removed = 0;
        for sub in queue::JOB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".nfs") {
                    continue;
                }
                let Some(jid) = name.split('.').next().and_then(|n| n.parse::<i64>().ok()) else {
                    continue;
                };
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600))
                    .unwrap_or(false);
                let rel = format!("{sub}/{name}");
                let in_use = match referenced.get(&jid) {
                    Some(files) => files.contains(&rel) || name == jid.to_string(),
                    None => false,
                };
                if old && !in_use {
                    queue::remove_path(&entry.path());
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.info(&format!(
                "removed {removed} files of jobs that no longer exist"
            ));
        }
    }
}

/// Claim up to `want` of the best eligible jobs this host may run: pending jobs, and
/// dead jobs marked restartable. Each branch walks the claim-order index, so picking
/// stays O(log n) however many jobs the queue holds.
fn claim(
    tx: &rusqlite::Transaction<'_>,
    host: &str,
    feeder: &str,
    now: &str,
    want: usize,
) -> Result<Vec<Row>> {
    let token = format!("{:016x}", rand::random::<u64>());
    let sql = format!(
        "UPDATE jobs SET state = 'running', runner = ?1, started = ?2, claim = ?3 || '-' || jid, \
         feeder = ?4, attempts = attempts + 1, stdout = 'stdout/' || jid, stderr = 'stderr/' || jid, \
         data = coalesce(data, 'data/' || jid), pid = NULL, process = NULL, finished = NULL, \
         elapsed = NULL, exit_status = NULL, signal = NULL \
         WHERE jid IN (SELECT jid FROM ( \
             SELECT jid, priority, submitted FROM (SELECT jid, priority, submitted FROM jobs \
                 WHERE state = 'pending' AND rq_host_ok(hosts, ?1) \
                 ORDER BY priority DESC, submitted, jid LIMIT ?5) \
             UNION ALL \
             SELECT jid, priority, submitted FROM (SELECT jid, priority, submitted FROM jobs \
                 WHERE state = 'dead' AND restartable = 1 AND rq_host_ok(hosts, ?1) \
                 ORDER BY priority DESC, submitted, jid LIMIT ?5)) \
           ORDER BY priority DESC, submitted, jid LIMIT ?5) \
         RETURNING {}",
        queue::columns()
    );
    let names: Vec<String> = crate::job::FIELDS.iter().map(|s| s.to_string()).collect();
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt
        .query_map(
            rusqlite::params![host, now, token, feeder, want as i64],
            |r| Row::from_sql(r, &names),
        )?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    // Start them in claim order.
    rows.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.get("priority").as_int().unwrap_or(0)),
            r.get("submitted").to_plain(),
            r.jid(),
        )
    });
    Ok(rows)
}

/// A job whose run ended without a recorded exit (its feeder or host died, or it was
/// stopped): a restartable job goes back to pending, any other becomes dead. Only while
/// `claim` still holds. Returns what happened, for the log.
pub fn mark_crashed(
    tx: &rusqlite::Transaction<'_>,
    jid: i64,
    claim: &str,
    signal: Option<&str>,
) -> Result<String> {
    let now = time::now();
    let requeued = tx.execute(
        "UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL, process = NULL, \
         claim = NULL, signal = ? WHERE jid = ? AND claim IS ? AND state = 'running' AND restartable = 1",
        rusqlite::params![signal, jid, claim_or_null(claim)],
    )?;
    if requeued > 0 {
        return Ok("restartable: back to pending".into());
    }
    let dead = tx.execute(
        "UPDATE jobs SET state = 'dead', finished = ?, claim = NULL, signal = ? \
         WHERE jid = ? AND claim IS ? AND state = 'running'",
        rusqlite::params![now, signal, jid, claim_or_null(claim)],
    )?;
    Ok(if dead > 0 {
        "marked dead".into()
    } else {
        "already taken over; left alone".into()
    })
}

fn claim_or_null(claim: &str) -> Option<&str> {
    (!claim.is_empty()).then_some(claim)
}
