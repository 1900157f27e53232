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
//!
//! This file is the loop and the claim/record transaction; `record` keeps what that
//! transaction records and how long each part may wait; `polling` decides when to ask for
//! work and how far to claim ahead; `claimed` holds the jobs claimed ahead and not
//! started; `slots` the running jobs and what they hold of the host; `running` starts,
//! reaps, times out and kills jobs; `db_files` keeps a database-only queue's job files
//! on this host; `rescuer` settles, by the start journals, claims no live feeder follows
//! (this host's crashed feeders', dead hosts', ones the queue says are ours that this
//! feeder does not know); `heartbeat` keeps the host alive to others and runs the
//! periodic tick; `wake` is what wakes an idle feeder (signals, the doorbell).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::claims::{self, End};
use crate::error::{Error, IoContext, Result};
use crate::job::Row;
use crate::journal::StartJournal;
use crate::liveness::{Heartbeat, Settings};
use crate::log::{Level, Logger};
use crate::queue::{self, Queue};
use crate::store::Tx;
use crate::store::in_database::StoredFiles;
use crate::watchdog::{Lease, Limits, Watchdog};
use crate::{process, runner, time};

mod claimed;
mod db_files;
mod heartbeat;
mod polling;
mod record;
mod rescuer;
mod running;
mod slots;
mod wake;

use heartbeat::*;
use polling::Polling;
use record::{Recorder, Start};
use rescuer::Rescuer;
use slots::{Needs, RunningJob};
use wake::*;

/// How a feeder runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub max_feed: usize,
    /// The shell prefix `--shell` gave (the job's command is appended as one argument;
    /// empty, `--shell none`: plain commands run without a shell). `None`: the queue's
    /// `shell` setting, else [`Config::default_shell`].
    pub shell: Option<Vec<String>>,
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
    /// For a queue that keeps its job files in its database: the local directory (laid
    /// out like a queue's) where this host's jobs find their stdin and data and write
    /// their output, moved to and from the database by the feeder.
    pub local_files: Option<PathBuf>,
}

impl Config {
    pub fn default_shell() -> Vec<String> {
        vec!["bash".into(), "--login".into(), "-c".into()]
    }
}

/// A shell prefix as the log shows it (`none`: commands run without a shell).
fn shown_shell(shell: &[String]) -> Vec<String> {
    if shell.is_empty() {
        vec!["none".to_string()]
    } else {
        shell.to_vec()
    }
}

/// What one turn's transaction is for (`Feeder::due`).
struct Due {
    /// Jobs to claim.
    want: usize,
    /// Recorded ends are due.
    ends: bool,
    /// Starts, failed starts or releases are due.
    flush: bool,
}

impl Due {
    fn any(&self) -> bool {
        self.want > 0 || self.ends || self.flush
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

/// Test-only fault injection (`RQ_FAULT`): the feeder kills itself at a chosen point, as a
/// crash would.
fn fault(point: &str) {
    if std::env::var("RQ_FAULT").is_ok_and(|f| f == point) {
        // SAFETY: raise(2) on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// Test-only (`RQ_FAULT=stop_in_claim`, `stop_before_journal`): the feeder stops itself
/// (SIGSTOP) once, inside the transaction that claimed jobs or just before journaling
/// their starts, as a host that froze or lost the file server there would; the test sends
/// SIGCONT.
fn stop_once(point: &str) {
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("RQ_FAULT").is_ok_and(|f| f == point)
        && !STOPPED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        // SAFETY: raise(2) on ourselves.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// The queue's settings, as (key, value) rows.
fn read_attributes(tx: &Tx<'_>) -> Result<Vec<(String, String)>> {
    let rows = tx
        .op(crate::store::ops::attributes::EVERY)
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })?
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(rows)
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
    /// The shell prefix jobs run under now (see `choose_shell`), and what it was chosen
    /// from (`None` before the settings were first read).
    shell: Vec<String>,
    shell_wanted: Option<Vec<String>>,
    log: Logger,
    id: String,
    settings: Settings,
    /// The jobs running here and what they hold of the host.
    slots: slots::Slots,
    doorbell: Doorbell,
    next_tick: Instant,
    /// When to ask the queue for work, and how much ahead to claim.
    polling: Polling,
    /// Claiming is suspended: heartbeats have failed for half the lease.
    fenced: bool,
    /// Claiming is suspended: the queue's filesystem is (nearly) full, so jobs could not
    /// write their output and would fail one after another.
    disk_full: bool,
    /// Why the queue holds this feeder back (paused, or this host drained), as last read.
    held_back: Option<String>,
    /// What the next transaction records.
    recorder: Recorder,
    /// Claimed ahead, not started yet.
    claimed: claimed::Claimed,
    /// When jobs were last found safe to start (`may_start`), on the boot clock: a start
    /// journaled much later (the host was frozen in between) is checked again first.
    safe_at: f64,
    /// Opened at the first start.
    journal: Option<StartJournal>,
    /// The journal could not be written: no look-ahead for a while.
    journal_failed: Option<Instant>,
    /// Our lease, as the heartbeat thread sees it; the watchdog kills our jobs by it.
    lease: Arc<Lease>,
    /// Jobs the watchdog killed (jid, claim, signal): settled as crashed, not as ended.
    lease_kills: Vec<(i64, String, Option<String>)>,
    /// Of a queue keeping job files in its database: this host's copies of them.
    files: Option<db_files::LocalFiles>,
    /// Settles claims no live feeder follows (crashed feeders', dead hosts').
    rescuer: Rescuer,
}

/// At most this many buffered jobs are prepared ahead (each holds its output files open).
const PREPARE_AHEAD: usize = 8;
/// After the start journal could not be written, claim nothing for this long.
const JOURNAL_RETRY: Duration = Duration::from_secs(10);
/// A feeder ends on a damaged database only after this many fresh connections agree.
const MAX_DAMAGE_CHECKS: u32 = 3;

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
        crate::lock::set_role(&format!("feeder {id}"));
        let mut doorbell = Doorbell::new(queue.dir(), config.min_sleep);
        doorbell.listener = queue.listener();
        let kill_grace = config.kill_grace;
        let files = config.local_files.clone().map(db_files::LocalFiles::new);
        let rescuer = Rescuer::new(&queue, &config.host, &id);
        Feeder {
            queue,
            polling: Polling::new(config.max_sleep),
            config,
            shell: Config::default_shell(),
            shell_wanted: None,
            log,
            id,
            settings: Settings::default(),
            slots: slots::Slots::new(),
            doorbell,
            next_tick: Instant::now(),
            fenced: false,
            disk_full: false,
            held_back: None,
            recorder: Recorder::default(),
            claimed: claimed::Claimed::new(),
            files,
            safe_at: 0.0,
            journal: None,
            journal_failed: None,
            lease: Lease::new(Limits::for_lease(Settings::default().lease, kill_grace)),
            lease_kills: Vec::new(),
            rescuer,
        }
    }

    /// Slots no job runs in.
    fn free_slots(&self) -> usize {
        self.config
            .max_feed
            .saturating_sub(self.slots.running.len())
    }

    /// The jobs this feeder follows: running, buffered, or with something to record.
    fn known_jids(&self) -> HashSet<i64> {
        self.slots
            .running
            .iter()
            .map(|j| j.jid)
            .chain(self.claimed.jids())
            .chain(self.recorder.next.settled_jids())
            .collect()
    }

    /// Settle every job the queue says this feeder holds that it does not follow (see
    /// `Rescuer::settle_unfollowed`; an end it saw is recorded), then check the jobs it
    /// does follow: copies taken over are killed.
    fn reconcile(&mut self) -> Result<()> {
        let followed = self.known_jids();
        let recorder = &self.recorder;
        self.rescuer.settle_unfollowed(
            &mut self.queue,
            &mut self.log,
            &followed,
            |jid, claim| recorder.recorded_end(jid, claim).cloned(),
            self.settings.max_attempts,
        )?;
        self.check_claims_and_kills()
    }

    /// How many jobs to claim beyond the free slots (`Polling::lookahead`).
    fn lookahead(&self) -> usize {
        self.polling
            .lookahead(self.config.max_feed, self.recorder.txn_share())
    }

    /// What a claim of `want` jobs may take: the host's capacity less what the jobs this
    /// feeder runs or holds take; one-CPU jobs may be claimed ahead by the look-ahead.
    fn claim_room(&self, want: usize) -> claims::Room {
        let total = self.config.capacity.clone();
        let mut free = total.clone();
        let held = self
            .slots
            .running
            .iter()
            .map(|j| j.needs.clone())
            .chain(self.claimed.iter().map(Needs::of));
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
        self.choose_shell();
        crate::store::lock_recovery::set_known_lease(self.settings.lease);
        self.lease.set_limits(Limits::for_lease(
            self.settings.lease,
            self.config.kill_grace,
        ));
        // Should we freeze mid-transaction, others can reclaim our jobs after the lease.
        let lease = Duration::from_secs_f64(self.settings.lease);
        if let Err(e) = self.queue.store().end_stalled_transactions_after(lease) {
            // Set anyway for the next connection, which the failing one will need.
            self.log.log(Level::Warn, &e.to_string());
        }
    }

    /// The shell jobs run under: `--shell`, else the queue's `shell` setting (read again
    /// with the other settings), else `bash --login -c`; its program found on PATH once
    /// for every change (a job's PATH may differ).
    fn choose_shell(&mut self) {
        let wanted = self
            .config
            .shell
            .clone()
            .or_else(|| self.settings.shell.clone())
            .unwrap_or_else(Config::default_shell);
        if self.shell_wanted.as_ref() == Some(&wanted) {
            return;
        }
        let mut shell = wanted.clone();
        if let Some(program) = shell.first() {
            match runner::resolve_program(program) {
                Some(found) => shell[0] = found.to_string_lossy().into_owned(),
                None => self.log.log(
                    Level::Error,
                    &format!(
                        "shell {program:?} is not on PATH: jobs will fail with exit status 127 (see --shell, or configure shell=)"
                    ),
                ),
            }
        }
        if self.shell_wanted.is_some() {
            self.info(&format!(
                "jobs now run under the shell {:?}",
                shown_shell(&shell)
            ));
        }
        self.shell = shell;
        self.shell_wanted = Some(wanted);
    }

    /// Run until drained, stopped or (with `exit_when_empty`) out of work.
    pub fn run(&mut self) -> Result<Exit> {
        runner::reset_inherited_signals();
        let mut signals = Signals::install()?;
        if let Some(listener) = &self.doorbell.listener {
            let waker = signals
                .waker
                .try_clone()
                .context(|| "cannot set up the wake-up pipe".into())?;
            listener.wake_with(waker);
        }
        self.read_settings()?;
        // Before the first claim, so that an empty journal proves nothing was started.
        self.journal = Some(self.rescuer.journals().open(self.queue.store(), &self.id)?);
        let heartbeat = Heartbeat::start(
            self.queue.beat_place(),
            &self.config.host,
            &self.id,
            self.config.max_feed,
            &self.config.capacity,
            self.settings.lease,
        )?;
        let beater = Beater::start(heartbeat, self.settings.heartbeat, self.lease.clone());
        // Before any job is started: the feeder may have to move into a leaf group.
        match crate::cgroup::Cgroups::set_up() {
            Ok(cgroups) => {
                self.info(&format!(
                    "jobs with --mem run in a cgroup of their own under {}, held to it by the kernel",
                    cgroups.parent().display()
                ));
                self.slots.cgroups = Some(cgroups);
            }
            Err(why) => self.info(&format!(
                "--mem is watched in /proc, not a kernel limit: {why}"
            )),
        }
        self.info(&format!(
            "** STARTED ** rq {} feeder {} queue {} max_feed {} shell {:?} heartbeat {}s lease {}s",
            env!("CARGO_PKG_VERSION"),
            self.id,
            self.queue.name(),
            self.config.max_feed,
            shown_shell(&self.shell),
            self.settings.heartbeat,
            self.settings.lease
        ));
        let outcome = self
            .rescuer
            .recover_crashed(
                &mut self.queue,
                &mut self.log,
                self.config.kill_grace,
                self.settings.max_attempts,
            )
            .and_then(|()| {
                if let Some(files) = &self.files {
                    files.prepare()?;
                }
                self.rescuer.reap_leftovers(&mut self.queue, &mut self.log);
                self.feed_through_faults(&mut signals, &beater)
            });
        if outcome.is_ok() && self.claimed.is_empty() && self.slots.running.is_empty() {
            // Nothing claimed is left: the journal proves nothing any more.
            if let Some(journal) = self.journal.take() {
                journal.remove(self.queue.store());
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
                    // What a read found unexpected (were `Error::Sql` before the store
                    // had its own value types): read back and go on, as before.
                    | Error::NoRows
                    | Error::Column { .. }
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

    /// One turn after another until the feeder stops, drains or runs out of work: note
    /// what ended, start what was claimed, record and claim in one transaction when due,
    /// then nap until something happens.
    fn main_loop(&mut self, signals: &mut Signals, beater: &Beater) -> Result<Exit> {
        loop {
            self.report_fenced();
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
            self.collect_ends()?;
            let rang = self.doorbell.rang();
            if rang && !(self.slots.running.is_empty() && self.claimed.is_empty()) {
                self.check_claims_and_kills()?;
            }
            if draining {
                let unstarted: Vec<Row> = self.claimed.take_all();
                self.give_back(unstarted.iter().map(claim_of));
            }
            // Claimed jobs start without a transaction, while our lease is safe: a host
            // whose heartbeat fails may have its claims given to others.
            if self.may_start(draining, beater) {
                self.revalidate_buffer()?;
                self.start_buffered()?;
            }
            let due = self.due(rang, draining);
            if due.any() {
                let napped = self.record_and_claim_due(&due, rang, draining, signals, beater)?;
                if napped {
                    continue;
                }
            }
            if let Some(exit) = self.done(draining, due.want, signals) {
                return Ok(exit);
            }
            // An idle slot and maybe more work: claim again at once (only if we may claim
            // now: otherwise this would spin until we may).
            let free = self.free_slots();
            if self.polling.more_waiting
                && free > 0
                && self.claimed.is_empty()
                && !draining
                && !self.claiming_suspended()
            {
                continue;
            }
            // Under the same condition as a start, asked again (a transaction may have
            // waited long for the lock): files are created only while our claims are safe.
            if self.may_start(draining, beater) {
                self.prepare_next();
            }
            self.nap(signals, false);
        }
    }

    /// Jobs the watchdog killed because our heartbeats stopped reaching the queue: said.
    fn report_fenced(&mut self) {
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
    }

    /// Jobs may start (and their files be made) while we are not draining and our claims
    /// are safe: not fenced, heartbeats within half a lease. When they may, the moment is
    /// noted (`safe_at`).
    fn may_start(&mut self, draining: bool, beater: &Beater) -> bool {
        let safe = !draining && !self.fenced && beater.missed() < self.settings.lease / 2.0;
        if safe {
            self.safe_at = crate::liveness::boot_clock();
        }
        safe
    }

    /// What ended since the last turn: timeouts enforced, children reaped, their last
    /// output read (a queue keeping files in its database), lease kills settled, the ends
    /// journaled and kept for the next transaction.
    fn collect_ends(&mut self) -> Result<()> {
        self.enforce_timeouts();
        for warning in self.slots.watch() {
            self.warn(&warning);
        }
        let ends = self.reap_children();
        let cap = self.settings.output_cap;
        if let Some(files) = &mut self.files {
            // Their last output is stored in the transaction that records their ends.
            let ended: Vec<(i64, String)> = ends.iter().map(|e| (e.jid, e.claim.clone())).collect();
            let outputs = files.read_outputs(&ended, true, cap);
            self.recorder.next.outputs.extend(outputs);
            self.upload_running();
        }
        if !self.lease_kills.is_empty() {
            self.settle_lease_kills()?;
        }
        if !ends.is_empty() {
            // A slot came free: new work should not wait for a backed-off doorbell.
            self.doorbell.hurry();
            fault("before_record");
            self.journal_ends(&ends);
            fault("after_journaling_end");
            self.recorder.add_ends(ends);
        }
        Ok(())
    }

    /// What a transaction would do now: how many jobs to claim, and whether recorded ends
    /// or starts, failed starts and releases are due.
    fn due(&mut self, rang: bool, draining: bool) -> Due {
        let free = self.free_slots();
        let lookahead = self.lookahead();
        let room = if draining || self.claiming_suspended() {
            0
        } else {
            (self.config.max_feed + lookahead)
                .saturating_sub(self.slots.running.len() + self.claimed.len())
        };
        let worth_asking = self.polling.worth_asking(rang);
        let slot_idle = free > 0 && self.claimed.is_empty();
        let refill = lookahead > 0 && self.claimed.len() * 2 <= lookahead;
        // A slot freed by an end or by a start that failed asks for work at once.
        let slot_freed =
            !self.recorder.next.ends.is_empty() || !self.recorder.next.failed_starts.is_empty();
        let want = if room > 0
            && ((slot_idle && (worth_asking || slot_freed)) || (refill && worth_asking))
        {
            room
        } else {
            0
        };
        Due {
            want,
            ends: self.recorder.ends_due(!self.claimed.is_empty(), draining),
            flush: self.recorder.flush_due(draining),
        }
    }

    /// The transaction `due` asks for: record what is due and claim `due.want` jobs, then
    /// start what was claimed. True when the queue was busy and we napped instead.
    fn record_and_claim_due(
        &mut self,
        due: &Due,
        rang: bool,
        draining: bool,
        signals: &mut Signals,
        beater: &Beater,
    ) -> Result<bool> {
        // With jobs buffered, the slots stay busy without us: no need to wait for the
        // lock, unless something has waited too long.
        let urgent = self.claimed.is_empty() || draining || self.recorder.overdue();
        // A poll nothing announced looks before it takes the write lock.
        let peek_first = !rang && !self.polling.more_waiting;
        let Some(claimed) = self.record_and_claim(due.want, urgent, peek_first)? else {
            self.nap(signals, true);
            return Ok(true);
        };
        if due.want > 0 {
            self.polling.asked(claimed.len() == due.want);
        }
        if !claimed.is_empty() {
            self.doorbell.hurry();
            fault("after_claim");
            self.claimed.add(claimed);
            let ours: HashSet<i64> = (self.claimed.jids())
                .chain(self.slots.running.iter().map(|j| j.jid))
                .collect();
            if let Some(files) = &mut self.files {
                files.keep_claimed(&ours);
            }
            // Asked again: the transaction may have waited long for the lock.
            if self.may_start(draining, beater) {
                self.revalidate_buffer()?;
                self.start_buffered()?;
            }
        }
        Ok(false)
    }

    /// How the loop ends, once nothing is left to record (a start that failed just after
    /// the claim, or a claim given back, goes with the next transaction): drained, told to
    /// restart, or out of work with `--exit_when_empty`.
    fn done(&mut self, draining: bool, wanted: usize, signals: &Signals) -> Option<Exit> {
        let next = &self.recorder.next;
        let idle = self.slots.running.is_empty()
            && self.claimed.is_empty()
            && next.ends.is_empty()
            && next.failed_starts.is_empty()
            && next.releases.is_empty();
        if !idle {
            return None;
        }
        if draining {
            let restart = signals.restart.load(Ordering::SeqCst);
            self.info(if restart {
                "** RESTARTING **"
            } else {
                "** STOPPING ** drained"
            });
            return Some(if restart { Exit::Restart } else { Exit::Done });
        }
        if self.config.exit_when_empty && wanted > 0 && !self.polling.more_waiting {
            self.info("** STOPPING ** no jobs left");
            return Some(Exit::Done);
        }
        None
    }

    /// Claiming is suspended for now: our heartbeats fail, the queue's filesystem is full,
    /// or the start journal could not be written a moment ago.
    fn claiming_suspended(&self) -> bool {
        self.fenced
            || self.disk_full
            || self
                .journal_failed
                .is_some_and(|at| at.elapsed() < JOURNAL_RETRY)
    }

    /// Sleep until a signal (a job ended), the next doorbell check, or something to record
    /// is due; after finding the lock busy, only briefly (a job ending wakes us anyway).
    fn nap(&self, signals: &mut Signals, lock_was_busy: bool) {
        let mut nap = jittered(self.config.min_sleep)
            .min(self.next_tick.saturating_duration_since(Instant::now()));
        if lock_was_busy {
            nap = nap.min(jittered(0.002));
        } else if let Some(due) = self.recorder.due_in() {
            nap = nap.min(due);
        }
        signals.sleep(nap);
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
        if peek_first && self.recorder.next.is_empty() {
            let now = time::now();
            let found = self
                .queue
                .store()
                .read(|tx| claims::claimable(tx, &host, &now, max_attempts, &total))?;
            if !found {
                return Ok(Some(Vec::new()));
            }
        }
        let batch = self.recorder.take();
        let files_in_database = self.files.is_some();
        let body = |tx: &Tx<'_>| {
            let recorded = record::record(tx, &batch)?;
            let claimed = if want > 0 {
                // Stamped now, not when the transaction began: on PostgreSQL other
                // feeders' ends commit meanwhile, and a job they released must not
                // look started before they finished.
                let now = time::now();
                let claimed = claims::claim(tx, &host, &feeder, &now, &room, max_attempts)?;
                if !claimed.is_empty() {
                    stop_once("stop_in_claim");
                }
                claimed
            } else {
                Vec::new()
            };
            let stored = if files_in_database {
                let jids: Vec<i64> = claimed.iter().map(Row::jid).collect();
                crate::store::in_database::stored_files(tx, &jids)?
            } else {
                HashMap::new()
            };
            Ok((recorded, claimed, stored))
        };
        let began = Instant::now();
        let done = if urgent {
            Some(self.queue.store().write_shared(body)?)
        } else {
            self.queue.store().try_write_shared(body)?
        };
        let Some((recorded, claimed, stored)) = done else {
            self.recorder.put_back(batch);
            return Ok(None);
        };
        self.recorder
            .recorded(&batch.ends, began.elapsed(), self.settings.lease);
        if let Some(files) = &mut self.files {
            files.claimed(stored);
        }
        self.after_recording(batch, recorded);
        Ok(Some(claimed))
    }

    /// What follows a recorded batch: outputs stored are forgotten, the journal
    /// compacted (everything in it is in the queue now), the ends logged, and jobs taken
    /// over before they started here killed.
    fn after_recording(&mut self, batch: record::Batch, recorded: record::Recorded) {
        // Every recorded end's output is stored by now (with this batch, or earlier when
        // nothing was left to read at its end): its local files go now, not with the next
        // upload tick two seconds later.
        if let Some(files) = &mut self.files {
            files.note_stored(&batch.outputs, &recorded.stored);
            files.forget_runs(batch.ends.iter().map(|e| e.jid));
        }
        let store = self.queue.store();
        if let Some(Err(e)) = self.journal.as_mut().map(|j| j.compact(store)) {
            self.log.log(Level::Warn, &e.to_string());
        }
        for end in &batch.ends {
            let (level, line) = record::log_line(end);
            self.log.log(level, &line);
        }
        for (jid, _) in batch.releases {
            self.info(&format!("job {jid} given back unstarted"));
        }
        for jid in recorded.lost {
            self.warn(&format!(
                "job {jid} was taken over by another host; its result here was discarded"
            ));
        }
        for jid in recorded.lost_starts {
            if let Some(job) = self.slots.running.iter_mut().find(|j| j.jid == jid) {
                job.fenced = true;
                process::signal_group(job.pid, libc::SIGKILL);
            }
            self.warn(&format!(
                "job {jid} was taken over before it started here; killed it"
            ));
        }
    }

    /// Buffered claims not known to be ours for a quarter of the lease are read back
    /// before any of them starts: after a freeze or a long wait another host may have
    /// taken them, and our heartbeat must not have looked stale since they were checked.
    fn revalidate_buffer(&mut self) -> Result<()> {
        let limit = Duration::from_secs_f64(self.settings.lease / 4.0);
        if !self.claimed.is_empty() && self.claimed.unchecked_for() > limit {
            self.check_claims_and_kills()?;
        }
        Ok(())
    }
}
