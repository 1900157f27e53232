//! The feeder: claims jobs for this host, runs them, records how they ended, keeps the
//! host's heartbeat, and reclaims the jobs of hosts whose heartbeat has stopped.
//!
//! Protocol (see ARCHITECTURE.md and `claims`):
//! 1. claim: one short write transaction marks the best eligible jobs `running` for this
//!    host with a fresh claim token, and commits *before* anything is spawned. With short
//!    jobs it claims ahead (up to `lookahead` more than the free slots) into a local
//!    buffer, so that one transaction serves many jobs;
//! 2. before a claimed job is spawned, its token is appended to the feeder's start journal
//!    and synced (see `journal`): recovery can then tell a job that never started from
//!    one that may have run;
//! 3. spawn outside any transaction; the pid and process identity are written with the
//!    next transaction (at most 0.5 s later), checking the claim token (a job taken over
//!    meanwhile is killed, not recorded);
//! 4. on exit, record the end, again only where the claim still holds. Ends wait for the
//!    next transaction while claimed jobs are buffered (at most 0.1 s); several endings
//!    and the next claim share one transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::Value as SqlValue;

use crate::claims::{self, End};
use crate::error::{Error, IoContext, Result};
use crate::job::Row;
use crate::journal::{self, StartJournal};
use crate::liveness::{self, Heartbeat, Settings};
use crate::log::{Level, Logger};
use crate::queue::{self, Queue};
use crate::store::Tx;
use crate::watchdog::{Lease, Limits, Watchdog};
use crate::{process, runner, time};

/// How a feeder runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub max_feed: usize,
    /// The shell prefix; the job's command is appended as one argument. Empty (`--shell
    /// none`): plain commands run without a shell.
    pub shell: Vec<String>,
    /// Seconds between cheap doorbell checks.
    pub min_sleep: f64,
    /// Seconds between full database polls while idle.
    pub max_sleep: f64,
    /// Exit once nothing is running and nothing is left to claim.
    pub exit_when_empty: bool,
    /// Seconds a job gets between TERM and KILL when it must be stopped.
    pub kill_grace: f64,
    /// What this host offers jobs (CPUs, memory, GPU devices).
    pub capacity: crate::claims::Capacity,
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
    timeout: Option<f64>,
    /// When the timeout's TERM was sent.
    term_sent: Option<Instant>,
    /// `rq kill` asked for this job to be signalled (it is then not retried).
    killed_on_request: bool,
    /// Someone else holds the job now: our copy was killed and its end is not recorded.
    fenced: bool,
    retries: i64,
    retried: i64,
    retry_delay: f64,
    /// What it takes of the host while it runs.
    needs: Needs,
}

/// What a claimed job takes of its host: CPUs, memory, the GPU devices it was given.
#[derive(Debug, Clone, Default)]
struct Needs {
    cpus: i64,
    mem: i64,
    devices: Vec<String>,
}

impl Needs {
    fn of(job: &Row) -> Needs {
        Needs {
            cpus: job.get("cpus").as_int().unwrap_or(1),
            mem: job.get("mem").as_int().unwrap_or(0),
            devices: job
                .get("gpu_ids")
                .as_text()
                .map(|ids| {
                    ids.split(',')
                        .filter(|d| !d.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Test-only fault injection (`RQ_FAULT`): the feeder kills itself at a chosen point, as a
/// crash would.
fn fault(point: &str) {
    if std::env::var("RQ_FAULT").is_ok_and(|f| f == point) {
        // SAFETY: raise(2) on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
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

/// The queue's settings, as (key, value) rows.
fn read_attributes(tx: &Tx<'_>) -> Result<Vec<(String, String)>> {
    let mut stmt = tx.prepare_cached("SELECT key, value FROM attributes")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Cheap change detection on the doorbell file, without the queue lock. statx with
/// FORCE_SYNC makes an NFS client ask the server instead of its attribute cache (one
/// GETATTR). Checked every `min_sleep` after something happened, backing off to
/// `DOORBELL_BACKOFF` times that while nothing does, so an idle feeder costs the file
/// server little.
struct Doorbell {
    path: PathBuf,
    /// The doorbell, kept open: statx on the descriptor asks the server about the file
    /// alone, where a path would also revalidate the directory (a second GETATTR).
    file: Option<std::fs::File>,
    last: Option<(i64, u32, i64, u32, u64)>,
    min: Duration,
    interval: Duration,
    next_check: Instant,
    /// A PostgreSQL queue's NOTIFY, heard at every nap (the file is still watched).
    listener: Option<crate::store::postgres::Listener>,
}

/// Open the doorbell to watch it: read-only, never through a link, only a regular file.
fn open_doorbell(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// How far an idle feeder's doorbell checks back off, in units of `min_sleep`.
const DOORBELL_BACKOFF: u32 = 15;

impl Doorbell {
    fn new(dir: &Path, min_sleep: f64) -> Doorbell {
        let min = Duration::from_secs_f64(min_sleep.max(0.001));
        Doorbell {
            path: dir.join("doorbell"),
            file: None,
            last: None,
            min,
            interval: min,
            next_check: Instant::now(),
            listener: None,
        }
    }

    /// Check again every `min_sleep` for a while: something happened.
    fn hurry(&mut self) {
        self.interval = self.min;
        self.next_check = self.next_check.min(Instant::now() + self.min);
    }

    fn rang(&mut self) -> bool {
        use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
        if self.listener.as_mut().is_some_and(|l| l.heard()) {
            self.hurry();
            return true;
        }
        if Instant::now() < self.next_check {
            return false;
        }
        let want = StatxFlags::MTIME | StatxFlags::CTIME | StatxFlags::INO | StatxFlags::NLINK;
        if self.file.is_none() {
            self.file = open_doorbell(&self.path);
        }
        // A doorbell replaced or removed since we opened it (no links left, or stale on
        // NFS) is opened again; meanwhile its path tells.
        let by_fd = self.file.as_ref().and_then(|f| {
            statx(f, "", AtFlags::EMPTY_PATH | AtFlags::STATX_FORCE_SYNC, want)
                .ok()
                .filter(|s| s.stx_nlink > 0)
        });
        if by_fd.is_none() {
            self.file = None;
        }
        let now = by_fd
            .or_else(|| statx(CWD, &self.path, AtFlags::STATX_FORCE_SYNC, want).ok())
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
        self.interval = if changed {
            self.min
        } else {
            (self.interval * 2).min(self.min * DOORBELL_BACKOFF)
        };
        self.next_check = Instant::now() + self.interval;
        changed
    }
}

/// The heartbeat runs in its own thread, so a main loop waiting a long time for the
/// queue lock still counts as alive; a stopped or frozen process does not. Each beat that
/// reaches the server is reported to the `Lease`, which the watchdog fences by.
struct Beater {
    lease: Arc<Lease>,
    /// A note for `feeders` (why this feeder is not claiming), published by the beat thread.
    note: Arc<std::sync::Mutex<Option<Option<String>>>>,
    interval_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Heartbeat>>,
    _watchdog: Watchdog,
}

impl Beater {
    fn start(heartbeat: Heartbeat, interval: f64, lease: Arc<Lease>) -> Beater {
        let interval_ms = Arc::new(AtomicU64::new((interval * 1000.0) as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let note: Arc<std::sync::Mutex<Option<Option<String>>>> = Arc::default();
        let (l, i, st, n) = (
            lease.clone(),
            interval_ms.clone(),
            stop.clone(),
            note.clone(),
        );
        let mut heartbeat = heartbeat;
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let changed = n.lock().ok().and_then(|mut pending| pending.take());
                if let Some(text) = changed {
                    heartbeat.set_note(text.as_deref());
                }
                let started = l.beat_starting();
                if let Ok(now) = heartbeat.beat() {
                    l.beat_ok(started, now);
                }
                let wait = jittered(i.load(Ordering::SeqCst) as f64 / 1000.0);
                let until = Instant::now() + wait;
                while Instant::now() < until && !st.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20).min(wait));
                }
            }
            heartbeat
        });
        Beater {
            _watchdog: Watchdog::start(lease.clone()),
            lease,
            note,
            interval_ms,
            stop,
            thread: Some(thread),
        }
    }

    /// Publish (or with None, clear) a note in the heartbeat file with the next beat.
    fn set_note(&self, text: Option<String>) {
        if let Ok(mut pending) = self.note.lock() {
            *pending = Some(text);
        }
    }

    /// Seconds since the start of the last successful beat.
    fn missed(&self) -> f64 {
        self.lease.missed()
    }

    fn server_now(&self) -> Option<jiff::Timestamp> {
        self.lease.server_now()
    }

    /// Stop beating; mark the heartbeat file as stopped, with the error that ended the
    /// feeder if there was one.
    fn finish(mut self, error: Option<&str>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(Ok(hb)) = self.thread.take().map(JoinHandle::join) {
            hb.stopped(error);
        }
    }
}

/// The free space below which a feeder claims nothing: 1 % of the filesystem, at least
/// 16 KiB and at most 1 GiB.
fn disk_reserve(total: u64) -> u64 {
    (total / 100).clamp(16 << 10, 1 << 30)
}

/// A claimed row's jid and claim token.
fn claim_of(row: &Row) -> (i64, String) {
    (
        row.jid(),
        row.get("claim").as_text().unwrap_or_default().to_string(),
    )
}

fn jittered(seconds: f64) -> Duration {
    Duration::from_secs_f64((seconds * rand::random_range(0.8..1.2)).max(0.001))
}

pub struct Feeder {
    queue: Queue,
    config: Config,
    log: Logger,
    id: String,
    settings: Settings,
    running: Vec<RunningJob>,
    doorbell: Doorbell,
    last_full_poll: Instant,
    next_full_poll: Duration,
    next_tick: Instant,
    /// The last claim filled every free slot, so more work may be waiting.
    more_waiting: bool,
    /// Claiming is suspended: heartbeats have failed for half the lease.
    fenced: bool,
    /// Claiming is suspended: the queue's filesystem is (nearly) full, so jobs could not
    /// write their output and would fail one after another.
    disk_full: bool,
    /// Why the queue holds this feeder back (paused, or this host drained), as last read.
    held_back: Option<String>,
    /// When jobs this feeder queued for a retry become eligible.
    retry_wakes: Vec<Instant>,
    /// Started jobs whose pid is not recorded yet: written with the next transaction
    /// (at most half a second later), so a job costs one transaction, not two.
    starts: Vec<Start>,
    /// Claimed jobs whose shell could not be started.
    failed_starts: Vec<(i64, String)>,
    /// Claimed ahead, not started yet, in claim order.
    buffer: VecDeque<Row>,
    /// When the buffered claims were last known to be ours (claimed, or read back).
    buffer_checked: Instant,
    /// Claimed jobs to give back (never started) with the next transaction.
    releases: Vec<(i64, String)>,
    /// Ends not recorded yet, and when the oldest of them happened.
    ends: Vec<End>,
    ends_since: Option<Instant>,
    /// Running time of recent jobs (moving average, seconds): sets the look-ahead.
    avg_run: Option<f64>,
    /// Opened at the first start.
    journal: Option<StartJournal>,
    /// The journal could not be written: no look-ahead for a while.
    journal_failed: Option<Instant>,
    /// Our lease, as the heartbeat thread sees it; the watchdog kills our jobs by it.
    lease: Arc<Lease>,
    /// Jobs the watchdog killed (jid, claim, signal): settled as crashed, not as ended.
    lease_kills: Vec<(i64, String, Option<String>)>,
    /// Ends recorded in the last two leases, kept to record them again should the queue
    /// lose them (a safety net: the journal fence keeps a cut-off host's late writes out,
    /// but a database restored from a copy, say, also forgets recent writes).
    recorded_ends: VecDeque<(Instant, End)>,
    /// Seconds our write transactions take (moving average): on NFS often more than a
    /// short job runs.
    avg_txn: Option<f64>,
}

/// Ends wait at most this long for a transaction while claimed jobs are buffered (or
/// `TXN_SHARE` transactions' time, where transactions are slower: see `batch_window`).
const END_BATCH: Duration = Duration::from_millis(100);
/// Look-ahead bounds: per slot, and in all. Larger buffers mean fewer transactions, so
/// feeders contend less for the lock and share the work more evenly (4 feeders x 1 slot:
/// shares 18-33 % with 4 per slot, 24-25 % with 16); the 0.2 s rule in `lookahead`
/// still keeps a buffered job's wait short.
const LOOKAHEAD_PER_SLOT: usize = 16;
const LOOKAHEAD_MAX: usize = 64;
/// Where transactions are slow (NFS), short jobs are claimed ahead and their ends and pids
/// recorded in batches, so that transactions take about 1/TXN_SHARE of a slot's time.
const TXN_SHARE: f64 = 10.0;
/// Write transactions taking longer than this were mostly waiting for the lock; the
/// moving average of their cost counts them as this long.
const TXN_COST_CAP: f64 = 0.5;
/// After the start journal could not be written, claim nothing for this long.
const JOURNAL_RETRY: Duration = Duration::from_secs(10);
/// A feeder ends on a damaged database only after this many fresh connections agree.
const MAX_DAMAGE_CHECKS: u32 = 3;
/// Pids wait at most this long (or `TXN_SHARE` transactions' time).
const START_BATCH: Duration = Duration::from_millis(500);

struct Start {
    jid: i64,
    claim: String,
    pid: u32,
    identity: Option<String>,
    at: Instant,
}

impl Feeder {
    pub fn new(mut queue: Queue, config: Config, log: Logger) -> Feeder {
        queue.store().wait_when_full();
        queue.store().keep_trying();
        let id = format!(
            "{}:{}:{:08x}",
            config.host,
            std::process::id(),
            rand::random::<u32>()
        );
        let mut doorbell = Doorbell::new(queue.dir(), config.min_sleep);
        doorbell.listener = queue.listener();
        let kill_grace = config.kill_grace;
        Feeder {
            queue,
            next_full_poll: jittered(config.max_sleep),
            config,
            log,
            id,
            settings: Settings::default(),
            running: Vec::new(),
            doorbell,
            last_full_poll: Instant::now(),
            next_tick: Instant::now(),
            more_waiting: true,
            fenced: false,
            disk_full: false,
            held_back: None,
            retry_wakes: Vec::new(),
            starts: Vec::new(),
            failed_starts: Vec::new(),
            buffer: VecDeque::new(),
            buffer_checked: Instant::now(),
            releases: Vec::new(),
            ends: Vec::new(),
            ends_since: None,
            avg_run: None,
            avg_txn: None,
            recorded_ends: VecDeque::new(),
            journal: None,
            journal_failed: None,
            lease: Lease::new(Limits::for_lease(Settings::default().lease, kill_grace)),
            lease_kills: Vec::new(),
        }
    }

    /// How many jobs to claim beyond the free slots. Only for short jobs — shorter than
    /// 50 ms, or than `TXN_SHARE` of our write transactions (on NFS one costs tens of round
    /// trips) — so that they share transactions: a buffered job waits about
    /// `lookahead / max_feed` runs, kept under 0.2 s or `TXN_SHARE` transactions, so long
    /// jobs are never held back from idle hosts.
    fn lookahead(&self) -> usize {
        let slots = self.config.max_feed;
        let txns = self.txn_share().as_secs_f64();
        match self.avg_run {
            Some(avg) if avg < txns.max(0.05) => {
                let fits = (txns.max(0.2) * slots as f64 / avg.max(1e-4)) as usize;
                fits.min(LOOKAHEAD_PER_SLOT * slots).min(LOOKAHEAD_MAX)
            }
            _ => 0,
        }
    }

    /// What a claim of `want` jobs may take: the host's capacity less what the jobs this
    /// feeder runs or holds take; one-CPU jobs may be claimed ahead by the look-ahead.
    fn claim_room(&self, want: usize) -> claims::Room {
        let total = self.config.capacity.clone();
        let mut free = total.clone();
        let held = self
            .running
            .iter()
            .map(|j| j.needs.clone())
            .chain(self.buffer.iter().map(Needs::of));
        for needs in held {
            free.cpus -= needs.cpus;
            free.mem -= needs.mem;
            free.devices.retain(|d| !needs.devices.contains(d));
        }
        claims::Room {
            jobs: want,
            ahead: self.lookahead().min(want),
            total,
            free,
            reserve_after: self.settings.reserve_after,
        }
    }

    fn remember_ends(&mut self, ends: &[End]) {
        let now = Instant::now();
        let keep = Duration::from_secs_f64(2.0 * self.settings.lease);
        self.recorded_ends
            .extend(ends.iter().map(|e| (now, e.clone())));
        while self
            .recorded_ends
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > keep)
            || self.recorded_ends.len() > 10_000
        {
            self.recorded_ends.pop_front();
        }
    }

    /// `TXN_SHARE` of our write transactions, by their moving average.
    fn txn_share(&self) -> Duration {
        Duration::from_secs_f64(TXN_SHARE * self.avg_txn.unwrap_or(0.0))
    }

    /// How long ends and pids may wait to share a transaction: `base`, or `TXN_SHARE` of
    /// our transactions where those are slower (on NFS), so that batching keeps pace with
    /// look-ahead instead of paying one transaction per job. Both are journaled first.
    fn batch_window(&self, base: Duration) -> Duration {
        base.max(self.txn_share())
    }

    fn info(&mut self, message: &str) {
        self.log.log(Level::Info, message);
    }

    fn warn(&mut self, message: &str) {
        self.log.log(Level::Warn, message);
    }

    fn read_settings(&mut self) -> Result<()> {
        let attrs = self.queue.store().read(read_attributes)?;
        self.apply_settings(attrs);
        Ok(())
    }

    fn apply_settings(&mut self, attrs: Vec<(String, String)>) {
        self.settings = Settings::from_attributes(|k| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        });
        self.lease.set_limits(Limits::for_lease(
            self.settings.lease,
            self.config.kill_grace,
        ));
    }

    /// Run until drained, stopped or (with `exit_when_empty`) out of work.
    pub fn run(&mut self) -> Result<Exit> {
        runner::reset_inherited_signals();
        if let Some(shell) = self.config.shell.first() {
            match runner::resolve_program(shell) {
                Some(program) => self.config.shell[0] = program.to_string_lossy().into_owned(),
                None => self.log.log(
                    Level::Error,
                    &format!(
                        "shell {shell:?} is not on PATH: jobs will fail with exit status 127 (see --shell)"
                    ),
                ),
            }
        }
        let mut signals = Signals::install()?;
        self.read_settings()?;
        // Before the first claim, so that an empty journal proves nothing was started.
        self.journal = Some(StartJournal::open(self.queue.dir(), &self.id)?);
        let heartbeat = Heartbeat::start(
            self.queue.dir(),
            &self.config.host,
            &self.id,
            self.config.max_feed,
            &self.config.capacity,
        )?;
        let beater = Beater::start(heartbeat, self.settings.heartbeat, self.lease.clone());
        self.info(&format!(
            "** STARTED ** rq {} feeder {} queue {} max_feed {} shell {:?} heartbeat {}s lease {}s",
            env!("CARGO_PKG_VERSION"),
            self.id,
            self.queue.dir().display(),
            self.config.max_feed,
            if self.config.shell.is_empty() {
                vec!["none".to_string()]
            } else {
                self.config.shell.clone()
            },
            self.settings.heartbeat,
            self.settings.lease
        ));
        let outcome = self.recover_crashed().and_then(|()| {
            self.reap_orphan_files();
            self.reap_old_journals();
            self.feed_through_faults(&mut signals, &beater)
        });
        if outcome.is_ok() && self.buffer.is_empty() && self.running.is_empty() {
            // Nothing claimed is left: the journal proves nothing any more.
            if let Some(journal) = self.journal.take() {
                journal.remove();
            }
        }
        let error = outcome.as_ref().err().map(ToString::to_string);
        if let Some(e) = &error {
            self.log.log(Level::Error, &format!("** EXITING ** {e}"));
        }
        beater.finish(error.as_deref());
        outcome
    }

    /// The main loop, carried on through faults of the shared filesystem: a commit whose
    /// outcome is unknown, an I/O error, a connection that went bad after the NFS client
    /// lost its locks. After each, this feeder's jobs are read back from a fresh
    /// connection and settled (`reconcile`). Only damage that fresh connections keep
    /// confirming ends the feeder.
    fn feed_through_faults(&mut self, signals: &mut Signals, beater: &Beater) -> Result<Exit> {
        let mut faults = 0u32;
        loop {
            let err = match self.main_loop(signals, beater) {
                Err(e @ Error::Corrupt { .. }) if faults < MAX_DAMAGE_CHECKS => e,
                Err(
                    e @ (Error::Io { .. }
                    | Error::Sql(_)
                    | Error::Postgres(_)
                    | Error::CommitUnknown { .. }
                    | Error::Conflict(_)),
                ) => e,
                // Damage confirmed, a queue replaced by a newer rq's or by something else.
                outcome => return outcome,
            };
            faults += 1;
            let pause = Duration::from_secs(faults.min(30) as u64);
            self.log.log(
                Level::Error,
                &format!(
                    "{err}; reading back this feeder's jobs in {}s",
                    pause.as_secs()
                ),
            );
            signals.sleep(pause);
            match self.reconcile() {
                Ok(()) => faults = faults.min(MAX_DAMAGE_CHECKS - 1),
                Err(e) if matches!(e, Error::Corrupt { .. }) && faults >= MAX_DAMAGE_CHECKS => {
                    return Err(e);
                }
                Err(e) => self.log.log(Level::Error, &e.to_string()),
            }
        }
    }

    /// Read back every job the queue says this feeder holds and settle the ones it does
    /// not know about (a claim whose commit it never saw, a run whose end it could not
    /// record): by the start journal, never started → pending, ended → recorded, else
    /// crashed. Then check the jobs it does know about: copies taken over are killed.
    fn reconcile(&mut self) -> Result<()> {
        let id = self.id.clone();
        let held = self.queue.store().read(|tx| {
            queue::select_rows(
                tx,
                "state = 'running' AND feeder = ? ORDER BY jid",
                &[SqlValue::Text(id.clone())],
            )
        })?;
        let known = self.known_jids();
        let unknown: Vec<&Row> = held.iter().filter(|r| !known.contains(&r.jid())).collect();
        if !unknown.is_empty() {
            let dir = self.queue.dir().to_path_buf();
            let mut journals = HashMap::new();
            let settle: Vec<(i64, String, journal::Fate)> = unknown
                .iter()
                .map(|job| {
                    let (jid, claim) = claim_of(job);
                    let remembered = self
                        .recorded_ends
                        .iter()
                        .find(|(_, e)| e.jid == jid && e.claim == claim)
                        .map(|(_, e)| journal::Fate::Ended(e.clone()));
                    let fate = remembered.unwrap_or_else(|| {
                        journal::fate_of(
                            &dir,
                            &mut journals,
                            Some(&id),
                            &claim,
                            job.get("pid").as_int().is_some(),
                        )
                    });
                    (jid, claim, fate)
                })
                .collect();
            let max_attempts = self.settings.max_attempts;
            let outcomes = self.queue.store().write(|tx| {
                let mut outcomes = Vec::new();
                for (jid, claim, fate) in &settle {
                    outcomes.push((*jid, claims::settle(tx, *jid, claim, fate, max_attempts)?));
                }
                Ok(outcomes)
            })?;
            for (jid, outcome) in outcomes {
                self.warn(&format!("job {jid}, held here but not followed: {outcome}"));
            }
        }
        self.check_claims_and_kills()
    }

    /// The jobs this feeder follows: running, buffered, or with something to record.
    fn known_jids(&self) -> HashSet<i64> {
        self.running
            .iter()
            .map(|j| j.jid)
            .chain(self.buffer.iter().map(Row::jid))
            .chain(self.ends.iter().map(|e| e.jid))
            .chain(self.releases.iter().map(|(jid, _)| *jid))
            .chain(self.failed_starts.iter().map(|(jid, _)| *jid))
            .collect()
    }

    fn main_loop(&mut self, signals: &mut Signals, beater: &Beater) -> Result<Exit> {
        loop {
            let fenced = self.lease.take_fenced();
            if !fenced.is_empty() {
                self.log.log(
                    Level::Error,
                    &format!(
                        "our heartbeats did not reach the queue in time (lease {}s; this host was cut off, frozen or paused): the watchdog killed {} running jobs before another host could take them over",
                        self.settings.lease,
                        fenced.len()
                    ),
                );
            }
            if signals.stop.load(Ordering::SeqCst) {
                self.stop_all(Some("stopped"))?;
                self.info("** STOPPED ** running jobs were killed");
                return Ok(Exit::Stopped);
            }
            if Instant::now() >= self.next_tick {
                self.tick(beater)?;
            }
            let draining =
                signals.drain.load(Ordering::SeqCst) || signals.restart.load(Ordering::SeqCst);
            self.enforce_timeouts();
            let ends = self.reap_children();
            if !self.lease_kills.is_empty() {
                self.settle_lease_kills()?;
            }
            if !ends.is_empty() {
                // A slot came free: new work should not wait for a backed-off doorbell.
                self.doorbell.hurry();
                fault("before_record");
                self.journal_ends(&ends);
                fault("after_journaling_end");
                self.ends_since.get_or_insert_with(Instant::now);
                self.ends.extend(ends);
            }
            let rang = self.doorbell.rang();
            if rang && !(self.running.is_empty() && self.buffer.is_empty()) {
                self.check_claims_and_kills()?;
            }
            if draining {
                let unstarted: Vec<Row> = self.buffer.drain(..).collect();
                self.releases.extend(unstarted.iter().map(claim_of));
            }
            // Claimed jobs start without a transaction, while our lease is safe: a host
            // whose heartbeat fails may have its claims given to others.
            let may_start =
                !draining && !self.fenced && beater.missed() < self.settings.lease / 2.0;
            if may_start {
                self.revalidate_buffer()?;
                self.start_buffered()?;
            }
            let free = self.config.max_feed.saturating_sub(self.running.len());
            let lookahead = self.lookahead();
            let journal_broken = self
                .journal_failed
                .is_some_and(|at| at.elapsed() < JOURNAL_RETRY);
            let room = if draining || self.fenced || journal_broken || self.disk_full {
                0
            } else {
                (self.config.max_feed + lookahead)
                    .saturating_sub(self.running.len() + self.buffer.len())
            };
            let now = Instant::now();
            let retry_due = self.retry_wakes.iter().any(|at| *at <= now);
            self.retry_wakes.retain(|at| *at > now);
            let full_poll_due = retry_due || self.last_full_poll.elapsed() >= self.next_full_poll;
            let worth_asking = rang || full_poll_due || self.more_waiting;
            let slot_idle = free > 0 && self.buffer.is_empty();
            let refill = lookahead > 0 && self.buffer.len() * 2 <= lookahead;
            let want = if room > 0
                && ((slot_idle && (worth_asking || !self.ends.is_empty()))
                    || (refill && worth_asking))
            {
                room
            } else {
                0
            };
            let ends_due = self.ends_since.is_some_and(|at| {
                self.buffer.is_empty() || draining || at.elapsed() >= self.batch_window(END_BATCH)
            });
            let flush_due = !self.failed_starts.is_empty()
                || !self.releases.is_empty()
                || self
                    .starts
                    .first()
                    .is_some_and(|s| s.at.elapsed() >= self.batch_window(START_BATCH))
                || (draining && !self.starts.is_empty());
            if want > 0 || ends_due || flush_due {
                // With jobs buffered, the slots stay busy without us: no need to wait for
                // the lock, unless something has waited too long.
                let urgent = self.buffer.is_empty()
                    || draining
                    || self.ends_since.is_some_and(|at| {
                        at.elapsed() >= (10 * END_BATCH).max(2 * self.txn_share())
                    })
                    || self
                        .starts
                        .first()
                        .is_some_and(|s| s.at.elapsed() >= 2 * self.batch_window(START_BATCH))
                    || !self.failed_starts.is_empty()
                    || !self.releases.is_empty();
                // A poll nothing announced looks before it takes the write lock.
                let peek_first = !rang && !self.more_waiting;
                let Some(claimed) = self.record_and_claim(want, urgent, peek_first)? else {
                    self.nap(signals, true);
                    continue;
                };
                if want > 0 {
                    self.more_waiting = claimed.len() == want;
                    self.last_full_poll = Instant::now();
                    self.next_full_poll = jittered(self.config.max_sleep);
                }
                if !claimed.is_empty() {
                    self.doorbell.hurry();
                    fault("after_claim");
                    if self.buffer.is_empty() {
                        self.buffer_checked = Instant::now();
                    }
                    self.buffer.extend(claimed);
                    // Asked again: the transaction may have waited long for the lock.
                    if !draining && !self.fenced && beater.missed() < self.settings.lease / 2.0 {
                        self.revalidate_buffer()?;
                        self.start_buffered()?;
                    }
                }
            }
            if self.running.is_empty() && self.buffer.is_empty() && self.ends.is_empty() {
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
            // An idle slot and maybe more work: claim again at once.
            let free = self.config.max_feed.saturating_sub(self.running.len());
            if self.more_waiting && free > 0 && self.buffer.is_empty() && !draining && !self.fenced
            {
                continue;
            }
            self.nap(signals, false);
        }
    }

    /// Sleep until a signal (a job ended), the next doorbell check, or something to record
    /// is due; after finding the lock busy, only briefly (a job ending wakes us anyway).
    fn nap(&self, signals: &mut Signals, lock_was_busy: bool) {
        let mut nap = jittered(self.config.min_sleep)
            .min(self.next_tick.saturating_duration_since(Instant::now()));
        if lock_was_busy {
            nap = nap.min(jittered(0.002));
        } else {
            if let Some(at) = self.ends_since {
                nap = nap.min(self.batch_window(END_BATCH).saturating_sub(at.elapsed()));
            }
            if let Some(s) = self.starts.first() {
                nap = nap.min(
                    self.batch_window(START_BATCH)
                        .saturating_sub(s.at.elapsed()),
                );
            }
        }
        signals.sleep(nap);
    }

    /// Every heartbeat: fence ourselves if our heartbeats have failed, check our claims
    /// and kill requests, reclaim the jobs of hosts whose heartbeat has stopped, and (idle)
    /// poll for work.
    /// Once a tick (one STATFS on NFS): stop claiming while the queue's filesystem has
    /// less than `disk_reserve` free, say so in the log and in `feeders`, and go on when
    /// there is twice that again (running jobs go on meanwhile).
    fn check_disk_space(&mut self, beater: &Beater) {
        let Ok(st) = rustix::fs::statvfs(self.queue.dir()) else {
            return;
        };
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = disk_reserve(total);
        let full = if self.disk_full {
            free < 2 * reserve
        } else {
            free < reserve
        };
        if full == self.disk_full {
            return;
        }
        self.disk_full = full;
        if full {
            let note = format!(
                "the queue's filesystem is full ({} KiB free): not claiming jobs until there is space",
                free / 1024
            );
            self.warn(&note);
            beater.set_note(Some(note));
        } else {
            self.info("the queue's filesystem has space again: claiming jobs");
            beater.set_note(None);
        }
    }

    fn tick(&mut self, beater: &Beater) -> Result<()> {
        self.queue.store().maintain()?;
        // One read transaction per heartbeat (each costs a handful of NFS round trips):
        // the settings, our claims, and the hosts that have running jobs.
        // An idle feeder also looks for claimable work there: its periodic poll.
        let jids = self.watched_jids();
        let idle = self.running.is_empty() && self.buffer.is_empty();
        let (host, now, max_attempts) =
            (&self.config.host, time::now(), self.settings.max_attempts);
        let id = &self.id;
        let total = &self.config.capacity;
        let (attrs, current, busy, claimable, held, held_back) = self.queue.store().read(|tx| {
            let current = if jids.is_empty() {
                Vec::new()
            } else {
                claims::current_claims(tx, &jids)?
            };
            let claimable = idle && claims::claimable(tx, host, &now, max_attempts, total)?;
            Ok((
                read_attributes(tx)?,
                current,
                claims::busy_hosts(tx)?,
                claimable,
                claims::held_by(tx, host, id)?,
                claims::held_back(tx, host)?,
            ))
        })?;
        // Paused or drained: the claim itself checks; the log says so once.
        if held_back != self.held_back {
            match &held_back {
                Some(why) => self.info(&format!("not claiming jobs: {why}")),
                None => self.info("claiming jobs again"),
            }
            self.held_back = held_back;
        }
        if idle {
            self.more_waiting |= claimable;
            self.last_full_poll = Instant::now();
            self.next_full_poll = jittered(self.config.max_sleep);
        }
        self.apply_settings(attrs);
        // Jobs the queue says we hold that we do not follow: the database lost some of our
        // writes (e.g. it was put back from a copy; before the journal fence, a cut-off
        // host's late journal writes did it). Settle them again rather than leave them
        // `running` forever.
        let known = self.known_jids();
        let ghosts: Vec<i64> = held.into_iter().filter(|j| !known.contains(j)).collect();
        if !ghosts.is_empty() {
            self.log.log(
                Level::Error,
                &format!(
                    "the queue says this feeder runs jobs {ghosts:?}, which it does not: some of its recorded writes were lost (was the database put back from a copy?); settling them again"
                ),
            );
            self.reconcile()?;
        }
        beater
            .interval_ms
            .store((self.settings.heartbeat * 1000.0) as u64, Ordering::SeqCst);
        // An idle feeder's read can wait a quarter of the lease: it still judges dead hosts
        // in time (their jobs are reclaimed within lease + lease/4) at less cost to the
        // file server; the heartbeat thread beats every heartbeat regardless.
        let every = if idle {
            self.settings.heartbeat.max(self.settings.lease / 4.0)
        } else {
            self.settings.heartbeat
        };
        self.next_tick = Instant::now() + jittered(every);
        self.check_disk_space(beater);
        // Jobs are killed by the watchdog before the lease runs out (see `watchdog`).
        let missed = beater.missed();
        let fence = missed > self.settings.lease / 2.0;
        if fence != self.fenced {
            self.fenced = fence;
            if fence {
                self.warn(&format!(
                    "no heartbeat for {missed:.1}s: not claiming jobs until heartbeats work again"
                ));
            } else {
                self.info("heartbeats work again: claiming jobs");
            }
        }
        if !jids.is_empty() {
            self.apply_claims(&current);
        }
        // Only a host whose own heartbeat is healthy judges others.
        if let Some(now) = beater
            .server_now()
            .filter(|_| missed < self.settings.heartbeat * 2.0 + 1.0)
        {
            self.reclaim_dead_hosts(now, busy)?;
        }
        Ok(())
    }

    /// Hosts whose heartbeat is older than the lease (server clock) lose their running jobs.
    /// `busy`: the hosts with running jobs.
    fn reclaim_dead_hosts(&mut self, server_now: jiff::Timestamp, busy: Vec<String>) -> Result<()> {
        let dir = self.queue.dir().to_path_buf();
        let lease = self.settings.lease;
        let stale = |host: &str, now: jiff::Timestamp| {
            liveness::heartbeat_age(&dir, host, now).is_none_or(|age| age > lease)
        };
        let candidates: Vec<String> = busy
            .into_iter()
            .filter(|h| *h != self.config.host && stale(h, server_now))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let me = self.config.host.clone();
        let max_attempts = self.settings.max_attempts;
        let hb_path = liveness::heartbeat_path(&dir, &me);
        let reclaimed = self.queue.store().write(|tx| {
            // Judged again under the lock: a host that beat meanwhile keeps its jobs.
            let now = liveness::touch(&hb_path)
                .ok()
                .and_then(|_| liveness::mtime(&hb_path))
                .unwrap_or(server_now);
            let stamp = time::now();
            let mut done = Vec::new();
            // Read inside the transaction, like the heartbeat: the journals are final once
            // the host is dead, and a host that beat meanwhile is skipped.
            let mut journals = HashMap::new();
            let mut fate = |job: &claims::Claimed| {
                journal::fate_of(
                    &dir,
                    &mut journals,
                    job.feeder.as_deref(),
                    &job.claim,
                    job.pid_recorded,
                )
            };
            for host in &candidates {
                if stale(host, now) {
                    let r = claims::reclaim_host(tx, host, &me, &stamp, max_attempts, &mut fate)?;
                    done.push((host.clone(), r));
                }
            }
            Ok(done)
        })?;
        for (host, r) in reclaimed {
            if r.released + r.ended + r.requeued + r.dead > 0 {
                self.warn(&format!(
                    "host {host} has no heartbeat for over {lease}s: reclaimed its jobs ({} never started and {} restartable back to pending, {} ended as journaled, {} dead)",
                    r.released, r.requeued, r.ended, r.dead
                ));
                queue::ring_doorbell(&dir);
            }
        }
        Ok(())
    }

    /// Kill our copies of jobs someone else took over, and send signals `rq kill` asked for.
    fn check_claims_and_kills(&mut self) -> Result<()> {
        let jids = self.watched_jids();
        if jids.is_empty() {
            return Ok(());
        }
        let current = self
            .queue
            .store()
            .read(|tx| claims::current_claims(tx, &jids))?;
        self.apply_claims(&current);
        Ok(())
    }

    /// The jobs whose claims we hold: running (not already fenced) and buffered.
    fn watched_jids(&self) -> Vec<i64> {
        self.running
            .iter()
            .filter(|j| !j.fenced)
            .map(|j| j.jid)
            .chain(self.buffer.iter().map(Row::jid))
            .collect()
    }

    /// Act on the current claims of our jobs (`current_claims` of `watched_jids`).
    fn apply_claims(&mut self, current: &[claims::ClaimState]) {
        let mut messages = Vec::new();
        // Buffered jobs taken over are dropped; those asked to be killed end unstarted.
        let claims_now: HashMap<i64, &claims::ClaimState> =
            current.iter().map(|c| (c.jid, c)).collect();
        let mut kept = VecDeque::new();
        for row in self.buffer.drain(..) {
            let (jid, claim) = claim_of(&row);
            match claims_now.get(&jid) {
                Some(c) if c.claim.as_deref() == Some(claim.as_str()) => {
                    match c.kill_signal.as_deref().and_then(process::parse_signal) {
                        Some(sig) => {
                            messages.push((
                                Level::Info,
                                format!("job {jid} killed on request before it started"),
                            ));
                            self.ends_since.get_or_insert_with(Instant::now);
                            self.ends.push(End {
                                jid,
                                claim,
                                exit_status: None,
                                signal: Some(process::signal_name(sig)),
                                elapsed: 0.0,
                                timed_out: false,
                                retry_at: None,
                                ended_at: time::now(),
                            });
                        }
                        None => kept.push_back(row),
                    }
                }
                _ => messages.push((
                    Level::Warn,
                    format!("job {jid} was taken over by another host before it started here"),
                )),
            }
        }
        self.buffer = kept;
        self.buffer_checked = Instant::now();
        for job in self.running.iter_mut().filter(|j| !j.fenced) {
            let now = current.iter().find(|c| c.jid == job.jid);
            match now {
                Some(c) if c.claim.as_deref() == Some(job.claim.as_str()) => {
                    let requested = c.kill_signal.as_deref().and_then(process::parse_signal);
                    if let Some(sig) = requested.filter(|_| !job.killed_on_request) {
                        job.killed_on_request = true;
                        process::signal_group(job.pid, sig);
                        messages.push((
                            Level::Info,
                            format!(
                                "job {} signalled {} on request",
                                job.jid,
                                process::signal_name(sig)
                            ),
                        ));
                    }
                }
                _ => {
                    job.fenced = true;
                    process::signal_group(job.pid, libc::SIGKILL);
                    messages.push((
                        Level::Warn,
                        format!(
                            "job {} was taken over by another host: killed our copy (pid {})",
                            job.jid, job.pid
                        ),
                    ));
                }
            }
        }
        for (level, m) in messages {
            self.log.log(level, &m);
        }
    }

    /// TERM jobs past their timeout; KILL them after the grace period.
    fn enforce_timeouts(&mut self) {
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        let mut messages = Vec::new();
        for job in &mut self.running {
            let Some(limit) = job.timeout else { continue };
            match job.term_sent {
                None if job.started.elapsed().as_secs_f64() > limit => {
                    process::signal_group(job.pid, libc::SIGTERM);
                    job.term_sent = Some(Instant::now());
                    messages.push(format!("job {} timed out after {limit}s: TERM", job.jid));
                }
                Some(at) if at.elapsed() > grace => {
                    process::signal_group(job.pid, libc::SIGKILL);
                    job.term_sent = Some(Instant::now() + Duration::from_secs(3600));
                    messages.push(format!(
                        "job {} still running {}s after TERM: KILL",
                        job.jid, self.config.kill_grace
                    ));
                }
                _ => {}
            }
        }
        for m in messages {
            self.warn(&m);
        }
    }

    /// Reap the job at `i` if it has exited, forgetting its process group in the same
    /// step (under the watchdog's lock, so the watchdog never signals a reused pid).
    /// Also says whether the watchdog signalled it (then it is settled as crashed).
    fn try_reap(&mut self, i: usize) -> Option<(std::process::ExitStatus, bool)> {
        let lease = self.lease.clone();
        let mut groups = lease.groups();
        let job = &mut self.running[i];
        match job.child.try_wait() {
            Ok(Some(status)) => {
                // Killed, or ended by the TERM that came first; a job that ignored the TERM
                // and ended by itself after heartbeats worked again ended as it says.
                let fenced = groups
                    .remove(&job.pid)
                    .is_some_and(|f| f.killed || (f.termed && status.signal().is_some()));
                Some((status, fenced))
            }
            _ => None,
        }
    }

    /// Collect every child that has exited.
    fn reap_children(&mut self) -> Vec<End> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            match self.try_reap(i) {
                Some((status, lease_lost)) => {
                    let job = self.running.swap_remove(i);
                    if job.fenced {
                        continue;
                    }
                    if lease_lost {
                        self.lease_kills.push((
                            job.jid,
                            job.claim,
                            status.signal().map(process::signal_name),
                        ));
                        continue;
                    }
                    let failed = status.code() != Some(0);
                    let retry_at = (failed && !job.killed_on_request && job.retried < job.retries)
                        .then(|| {
                            let delay = job.retry_delay * 2f64.powi(job.retried.min(30) as i32);
                            let wake =
                                Instant::now() + Duration::from_secs_f64(delay.min(1e9) + 0.01);
                            self.retry_wakes.push(wake);
                            time::format(
                                time::now_ts()
                                    .checked_add(jiff::SignedDuration::from_secs_f64(delay))
                                    .unwrap_or_else(|_| time::now_ts()),
                            )
                        });
                    let elapsed = job.started.elapsed().as_secs_f64();
                    self.avg_run = Some(match self.avg_run {
                        Some(avg) => 0.8 * avg + 0.2 * elapsed,
                        None => elapsed,
                    });
                    done.push(End {
                        jid: job.jid,
                        claim: job.claim,
                        exit_status: status.code(),
                        signal: status.signal().map(process::signal_name),
                        elapsed,
                        timed_out: job.term_sent.is_some(),
                        retry_at,
                        ended_at: time::now(),
                    });
                }
                None => i += 1,
            }
        }
        done
    }

    /// One transaction: record the pids of jobs started since the last one, the ends of
    /// finished jobs (only where our claim still holds), give back released jobs, then
    /// claim up to `want` new ones. Unless `urgent`, only if the lock is free now: `None`
    /// when it is not (everything is kept for the next try).
    fn record_and_claim(
        &mut self,
        want: usize,
        urgent: bool,
        peek_first: bool,
    ) -> Result<Option<Vec<Row>>> {
        let host = self.config.host.clone();
        let feeder = self.id.clone();
        let max_attempts = self.settings.max_attempts;
        let total = self.config.capacity.clone();
        let room = self.claim_room(want);
        let nothing_to_record = self.starts.is_empty()
            && self.failed_starts.is_empty()
            && self.releases.is_empty()
            && self.ends.is_empty();
        if peek_first && nothing_to_record {
            let now = time::now();
            let found = self
                .queue
                .store()
                .read(|tx| claims::claimable(tx, &host, &now, max_attempts, &total))?;
            if !found {
                return Ok(Some(Vec::new()));
            }
        }
        let starts = std::mem::take(&mut self.starts);
        let failed_starts = std::mem::take(&mut self.failed_starts);
        let releases = std::mem::take(&mut self.releases);
        let ends = std::mem::take(&mut self.ends);
        let body = |tx: &Tx<'_>| {
            let now = time::now();
            let mut lost_starts = Vec::new();
            for s in &starts {
                if !claims::record_start(tx, s.jid, &s.claim, s.pid, s.identity.as_deref())? {
                    lost_starts.push(s.jid);
                }
            }
            for (jid, claim) in &failed_starts {
                claims::failed_to_start(tx, *jid, claim, &now)?;
            }
            for (jid, claim) in &releases {
                claims::release(tx, *jid, claim, None)?;
            }
            let mut lost = Vec::new();
            for end in &ends {
                if !lost_starts.contains(&end.jid) && !claims::finish(tx, end)? {
                    lost.push(end.jid);
                }
            }
            let claimed = if want > 0 {
                claims::claim(tx, &host, &feeder, &now, &room, max_attempts)?
            } else {
                Vec::new()
            };
            Ok((claimed, lost, lost_starts))
        };
        let began = Instant::now();
        let done = if urgent {
            Some(self.queue.store().write_shared(body)?)
        } else {
            self.queue.store().try_write_shared(body)?
        };
        if done.is_some() {
            // Waiting for another host's lock is not what a transaction costs: clamp it.
            let took = began.elapsed().as_secs_f64().min(TXN_COST_CAP);
            self.avg_txn = Some(self.avg_txn.map_or(took, |avg| 0.8 * avg + 0.2 * took));
        }
        let Some((claimed, lost, lost_starts)) = done else {
            self.starts = starts;
            self.failed_starts = failed_starts;
            self.releases = releases;
            self.ends = ends;
            return Ok(None);
        };
        self.ends_since = None;
        // Every start and end in the journal is now recorded in the queue.
        if let Some(Err(e)) = self.journal.as_mut().map(StartJournal::compact) {
            self.log.log(Level::Warn, &e.to_string());
        }
        self.remember_ends(&ends);
        for end in &ends {
            let how = match (&end.exit_status, &end.signal) {
                (Some(code), _) => format!("exit_status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended".to_string(),
            };
            let level = if end.exit_status == Some(0) {
                Level::Info
            } else {
                Level::Warn
            };
            let extra = match (&end.retry_at, end.timed_out) {
                (Some(at), _) => format!(" (retry not before {at})"),
                (None, true) => " (timed out)".to_string(),
                _ => String::new(),
            };
            self.log.log(
                level,
                &format!(
                    "finished - jid {} {how} elapsed {:.3}s{extra}",
                    end.jid, end.elapsed
                ),
            );
        }
        for (jid, _) in releases {
            self.info(&format!("job {jid} given back unstarted"));
        }
        for jid in lost {
            self.warn(&format!(
                "job {jid} was taken over by another host; its result here was discarded"
            ));
        }
        for jid in lost_starts {
            if let Some(job) = self.running.iter_mut().find(|j| j.jid == jid) {
                job.fenced = true;
                process::signal_group(job.pid, libc::SIGKILL);
            }
            self.warn(&format!(
                "job {jid} was taken over before it started here; killed it"
            ));
        }
        Ok(Some(claimed))
    }

    /// Buffered claims not known to be ours for a quarter of the lease are read back
    /// before any of them starts: after a freeze or a long wait another host may have
    /// taken them, and our heartbeat must not have looked stale since they were checked.
    fn revalidate_buffer(&mut self) -> Result<()> {
        let limit = Duration::from_secs_f64(self.settings.lease / 4.0);
        if !self.buffer.is_empty() && self.buffer_checked.elapsed() > limit {
            self.check_claims_and_kills()?;
        }
        Ok(())
    }

    /// Note ends in the journal: should we die before the next transaction records them,
    /// whoever recovers our jobs records them from there.
    fn journal_ends(&mut self, ends: &[End]) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        if let Some(Err(e)) = ends
            .iter()
            .map(|end| journal.record_end(end))
            .find(Result::is_err)
        {
            self.log.log(Level::Warn, &e.to_string());
        }
    }

    /// Start buffered jobs in the free slots (outside any transaction): journal them, then
    /// spawn; their pids are recorded with the next transaction.
    fn start_buffered(&mut self) -> Result<()> {
        let free = self.config.max_feed.saturating_sub(self.running.len());
        // In claim order, while slots are free and each job fits what the running ones
        // leave (a job that does not fit yet holds back those behind it: no starvation).
        let mut n = 0;
        let (mut cpus, mut mem) = self
            .running
            .iter()
            .fold((0, 0), |(c, m), j| (c + j.needs.cpus, m + j.needs.mem));
        for job in self.buffer.iter().take(free) {
            let needs = Needs::of(job);
            let alone = self.running.is_empty() && n == 0;
            if !alone
                && (cpus + needs.cpus > self.config.capacity.cpus
                    || mem + needs.mem > self.config.capacity.mem)
            {
                break;
            }
            cpus += needs.cpus;
            mem += needs.mem;
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        let batch: Vec<Row> = self.buffer.drain(..n).collect();
        let claims: Vec<(i64, String)> = batch.iter().map(claim_of).collect();
        let tokens: Vec<&str> = claims.iter().map(|(_, c)| c.as_str()).collect();
        let journaled = match &mut self.journal {
            // Test hook: the journal cannot be written (a full or read-only filesystem).
            _ if std::env::var("RQ_FAULT").is_ok_and(|f| f == "journal_write") => Err(Error::Io {
                context: "cannot write the start journal".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
            Some(journal) => journal.record(&tokens),
            // Opened before the loop; only taken when the feeder ends.
            None => Err(Error::Conflict("the start journal is not open".into())),
        };
        if let Err(e) = journaled {
            // Unjournaled jobs must not start: recovery would think they never did.
            self.log.log(
                Level::Error,
                &format!(
                    "{e}: giving back {} claimed jobs unstarted; claiming again in {}s",
                    n + self.buffer.len(),
                    JOURNAL_RETRY.as_secs()
                ),
            );
            self.journal_failed = Some(Instant::now());
            self.releases.extend(claims);
            self.releases
                .extend(self.buffer.drain(..).map(|r| claim_of(&r)));
            return Ok(());
        }
        fault("after_journal");
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for job in &batch {
            let jid = job.jid();
            let claim = job.get("claim").as_text().unwrap_or_default().to_string();
            let gpu_host = !self.config.capacity.devices.is_empty();
            let queue = self.queue.name();
            match runner::spawn(self.queue.dir(), &queue, &self.config.shell, job, gpu_host) {
                Ok(child) => {
                    let pid = child.id();
                    self.lease.add(pid);
                    let identity = process::identity(pid);
                    self.log.log(
                        Level::Info,
                        &format!(
                            "started - jid {jid} pid {pid} command {}",
                            job.get("command").to_plain()
                        ),
                    );
                    started.push((jid, claim.clone(), pid, identity));
                    let real = |f: &str| match job.get(f) {
                        crate::job::Cell::Real(r) => Some(*r),
                        crate::job::Cell::Int(i) => Some(*i as f64),
                        _ => None,
                    };
                    self.running.push(RunningJob {
                        jid,
                        claim,
                        child,
                        pid,
                        started: Instant::now(),
                        timeout: real("timeout").filter(|t| *t > 0.0),
                        term_sent: None,
                        killed_on_request: false,
                        fenced: false,
                        retries: job.get("retries").as_int().unwrap_or(0),
                        retried: job.get("retried").as_int().unwrap_or(0),
                        retry_delay: real("retry_delay").unwrap_or(1.0),
                        needs: Needs::of(job),
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
        let at = Instant::now();
        self.starts.extend(
            started
                .into_iter()
                .map(|(jid, claim, pid, identity)| Start {
                    jid,
                    claim,
                    pid,
                    identity,
                    at,
                }),
        );
        self.failed_starts.extend(failed);
        Ok(())
    }

    /// Jobs the watchdog killed may have been taken over meanwhile: each is handled as
    /// crashed, only where our claim still holds (restartable → pending, else dead).
    fn settle_lease_kills(&mut self) -> Result<()> {
        let kills = std::mem::take(&mut self.lease_kills);
        let max_attempts = self.settings.max_attempts;
        let outcomes = self.queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for (jid, claim, signal) in &kills {
                outcomes.push((
                    *jid,
                    claims::mark_crashed(tx, *jid, claim, signal.as_deref(), max_attempts)?,
                ));
            }
            Ok(outcomes)
        })?;
        for (jid, outcome) in outcomes {
            self.warn(&format!(
                "job {jid} killed by the watchdog (this host lost its lease): {outcome}"
            ));
        }
        Ok(())
    }

    /// Kill every running job (TERM, then KILL after the grace period) and handle them as
    /// crashed, recording the signal that ended each.
    fn stop_all(&mut self, why: Option<&str>) -> Result<()> {
        self.starts.clear();
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        for job in &self.running {
            process::signal_group(job.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut ended: Vec<(i64, String, Option<String>)> = Vec::new();
        while !self.running.is_empty() {
            let mut i = 0;
            while i < self.running.len() {
                if let Some((status, _)) = self.try_reap(i) {
                    let job = self.running.swap_remove(i);
                    if !job.fenced {
                        ended.push((
                            job.jid,
                            job.claim,
                            status.signal().map(process::signal_name),
                        ));
                    }
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
        let max_attempts = self.settings.max_attempts;
        let failed_starts = std::mem::take(&mut self.failed_starts);
        let unstarted: Vec<Row> = self.buffer.drain(..).collect();
        let mut releases = std::mem::take(&mut self.releases);
        releases.extend(unstarted.iter().map(claim_of));
        let ends = std::mem::take(&mut self.ends);
        self.ends_since = None;
        let outcomes = self.queue.store().write(|tx| {
            let now = time::now();
            for (jid, claim) in &failed_starts {
                claims::failed_to_start(tx, *jid, claim, &now)?;
            }
            for (jid, claim) in &releases {
                claims::release(tx, *jid, claim, None)?;
            }
            for end in &ends {
                claims::finish(tx, end)?;
            }
            let mut outcomes = Vec::new();
            for (jid, claim, signal) in &ended {
                outcomes.push((
                    *jid,
                    claims::mark_crashed(tx, *jid, claim, signal.as_deref(), max_attempts)?,
                ));
            }
            Ok(outcomes)
        })?;
        for (jid, outcome) in outcomes {
            self.warn(&format!("job {jid} {}: {outcome}", why.unwrap_or("killed")));
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
        // A job's processes are found by the claim token in their environment (the pid
        // may not have been recorded yet), or by recorded pid and process identity.
        let tokens: Vec<String> = orphans
            .iter()
            .filter_map(|j| j.get("claim").as_text().map(|c| format!("RQ_CLAIM={c}")))
            .collect();
        let found = process::find_by_environment(&tokens);
        let seen: HashSet<String> = found.iter().map(|(_, _, e)| e.clone()).collect();
        let mut groups: Vec<u32> = found.iter().map(|(_, pgid, _)| *pgid).collect();
        for job in &orphans {
            let (Some(pid), Some(identity)) =
                (job.get("pid").as_int(), job.get("process").as_text())
            else {
                continue;
            };
            if process::same_process(pid as u32, identity) {
                groups.push(pid as u32);
            }
        }
        groups.sort_unstable();
        groups.dedup();
        if !groups.is_empty() {
            self.warn(&format!(
                "jobs of an earlier feeder on this host are still running (process groups {groups:?}): killing them"
            ));
        }
        for pgid in &groups {
            process::signal_group(*pgid, libc::SIGTERM);
        }
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        let deadline = Instant::now() + grace;
        let alive = |groups: &[u32]| groups.iter().any(|g| process::signal_group(*g, 0));
        while Instant::now() < deadline && alive(&groups) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pgid in &groups {
            process::signal_group(*pgid, libc::SIGKILL);
        }
        // A job with no recorded pid, no process and no line in its feeder's start journal
        // never started: it goes back to pending; a journaled end is recorded. The earlier
        // feeders are dead (we hold the host's feeder lock), so their journals go once
        // their jobs are settled.
        let dir = self.queue.dir().to_path_buf();
        let mut journals = HashMap::new();
        let fates: Vec<journal::Fate> = orphans
            .iter()
            .map(|job| {
                let claim = job.get("claim").as_text().unwrap_or_default();
                match journal::fate_of(
                    &dir,
                    &mut journals,
                    job.get("feeder").as_text(),
                    claim,
                    job.get("pid").as_int().is_some(),
                ) {
                    journal::Fate::NeverStarted if seen.contains(&format!("RQ_CLAIM={claim}")) => {
                        journal::Fate::MayHaveRun
                    }
                    fate => fate,
                }
            })
            .collect();
        let max_attempts = self.settings.max_attempts;
        let outcomes = self.queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for (job, fate) in orphans.iter().zip(&fates) {
                let claim = job.get("claim").as_text().unwrap_or_default();
                outcomes.push((
                    job.jid(),
                    claims::settle(tx, job.jid(), claim, fate, max_attempts)?,
                ));
            }
            Ok(outcomes)
        })?;
        for feeder in journals.keys() {
            let _ = std::fs::remove_file(journal::path(&dir, feeder));
        }
        for (jid, outcome) in outcomes {
            self.warn(&format!(
                "job {jid} of an earlier feeder on this host: {outcome}"
            ));
        }
        Ok(())
    }

    /// Remove files in stdin/ stdout/ stderr/ data/ that belong to no job. Only files older
    /// than ten minutes: a submit copies files before it inserts the rows naming them.
    /// The work is proportional to the files present, not to the jobs in the queue.
    fn reap_orphan_files(&mut self) {
        let dir = self.queue.dir().to_path_buf();
        let mut old_files: Vec<(i64, String, PathBuf)> = Vec::new();
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
                if old {
                    old_files.push((jid, format!("{sub}/{name}"), entry.path()));
                }
            }
        }
        if old_files.is_empty() {
            return;
        }
        let jids: Vec<i64> = old_files
            .iter()
            .map(|(j, _, _)| *j)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let referenced: Result<Vec<(i64, Vec<String>)>> = self.queue.store().read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT jid, stdin, stdout, stderr, data FROM jobs WHERE jid IN (SELECT value FROM json_each(?))",
            )?;
            let rows = stmt
                .query_map([serde_json::to_string(&jids).unwrap_or_default()], |r| {
                    let files = (1..=4).filter_map(|i| r.get::<_, Option<String>>(i).ok().flatten()).collect();
                    Ok((r.get(0)?, files))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        });
        let Ok(referenced) = referenced else { return };
        let mut removed = 0;
        for (jid, rel, path) in old_files {
            let in_use = referenced.iter().any(|(j, files)| {
                *j == jid
                    && (files.contains(&rel) || rel.rsplit('/').next() == Some(&jid.to_string()))
            });
            if !in_use {
                queue::remove_path(&path);
                removed += 1;
            }
        }
        if removed > 0 {
            self.info(&format!(
                "removed {removed} files of jobs that no longer exist"
            ));
        }
    }

    /// Start journals of feeders that died on hosts that never came back: once a day old
    /// and without running jobs, they prove nothing anyone needs.
    fn reap_old_journals(&mut self) {
        let Ok(entries) = std::fs::read_dir(journal::dir(self.queue.dir())) else {
            return;
        };
        let old: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(86400))
            })
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        if old.is_empty() {
            return;
        }
        let busy: Result<HashSet<String>> = self.queue.store().read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT feeder FROM jobs WHERE state = 'running' AND feeder IS NOT NULL",
            )?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<HashSet<_>>>()?;
            Ok(rows.into_iter().map(|f| f.replace('/', "_")).collect())
        });
        let Ok(busy) = busy else { return };
        for (name, path) in old {
            if !busy.contains(&name) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_doorbell_is_checked_less_and_less_often() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell");
        std::fs::write(&path, b"").unwrap();
        let mut bell = Doorbell::new(dir.path(), 0.01);
        assert!(bell.rang(), "the first look counts as news");
        for _ in 0..5 {
            std::thread::sleep(bell.interval);
            assert!(!bell.rang());
        }
        assert_eq!(
            bell.interval,
            bell.min * DOORBELL_BACKOFF,
            "backed off to the cap"
        );
        // Rung meanwhile: seen at the next due check, and checks are quick again.
        queue::ring_doorbell(dir.path());
        assert!(!bell.rang(), "not due yet: no look at the file");
        std::thread::sleep(bell.interval);
        assert!(bell.rang());
        assert_eq!(bell.interval, bell.min);
        // Something happened here (a job ended): the next check comes soon.
        for _ in 0..4 {
            std::thread::sleep(bell.interval);
            bell.rang();
        }
        bell.hurry();
        assert!(bell.next_check <= Instant::now() + bell.min);
        // Watched through an open descriptor; a doorbell replaced by another file (or
        // removed and made again) is still seen, and watched from then on.
        std::thread::sleep(bell.interval);
        assert!(!bell.rang());
        assert!(bell.file.is_some());
        let new = dir.path().join("new");
        std::fs::write(&new, b"").unwrap();
        std::fs::rename(&new, &path).unwrap();
        std::thread::sleep(bell.interval);
        assert!(bell.rang(), "a replaced doorbell rings");
        std::thread::sleep(bell.interval);
        assert!(!bell.rang());
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(bell.interval);
        assert!(bell.rang(), "a removed doorbell is news too");
        queue::ring_doorbell(dir.path());
        std::thread::sleep(bell.interval);
        assert!(bell.rang(), "made again");
        // A link planted as the doorbell is not opened.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"").unwrap();
        bell.file = None;
        std::thread::sleep(bell.interval);
        bell.rang();
        assert!(bell.file.is_none());
    }
}
