//! The recorder: what the feeder's next transaction records (pids of started jobs, ends,
//! starts that failed, claims given back, ended runs' last output), how long each may
//! wait to share a transaction, and the ends recorded lately.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::db_files::{Output, store_outputs};
use crate::claims::{self, End};
use crate::error::Result;
use crate::log::Level;
use crate::store::Tx;

/// Ends wait at most this long for a transaction while claimed jobs are buffered (or
/// `TXN_SHARE` transactions' time, where transactions are slower: see `batch_window`).
pub(super) const END_BATCH: Duration = Duration::from_millis(100);
/// Pids wait at most this long (or `TXN_SHARE` transactions' time).
const START_BATCH: Duration = Duration::from_millis(500);
/// Where transactions are slow (NFS), short jobs are claimed ahead and their ends and pids
/// recorded in batches, so that transactions take about 1/TXN_SHARE of a slot's time.
const TXN_SHARE: f64 = 10.0;
/// Write transactions taking longer than this were mostly waiting for the lock; the
/// moving average of their cost counts them as this long.
const TXN_COST_CAP: f64 = 0.5;

/// A started job whose pid is not recorded yet.
pub(super) struct Start {
    pub jid: i64,
    pub claim: String,
    pub pid: u32,
    pub identity: Option<String>,
    pub at: Instant,
}

/// What one transaction records.
#[derive(Default)]
pub(super) struct Batch {
    /// Started jobs whose pid is not recorded yet: written with the next transaction
    /// (at most half a second later), so a job costs one transaction, not two.
    pub starts: Vec<Start>,
    /// Claimed jobs whose shell could not be started.
    pub failed_starts: Vec<(i64, String)>,
    /// Claimed jobs to give back (never started).
    pub releases: Vec<(i64, String)>,
    /// Ends not recorded yet.
    pub ends: Vec<End>,
    /// Ended runs' last output (a queue keeping job files in its database), stored with
    /// their ends.
    pub outputs: Vec<Output>,
}

impl Batch {
    /// Nothing a transaction must write (outputs go with their ends).
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
            && self.failed_starts.is_empty()
            && self.releases.is_empty()
            && self.ends.is_empty()
    }

    /// The jobs it speaks of, but for those only started (those are running).
    pub fn settled_jids(&self) -> impl Iterator<Item = i64> + '_ {
        self.ends
            .iter()
            .map(|e| e.jid)
            .chain(self.releases.iter().map(|(jid, _)| *jid))
            .chain(self.failed_starts.iter().map(|(jid, _)| *jid))
    }
}

/// What waits for the next transaction, and the pace of transactions.
#[derive(Default)]
pub(super) struct Recorder {
    pub next: Batch,
    /// When the oldest end waiting in `next` happened.
    ends_since: Option<Instant>,
    /// Ends recorded in the last two leases, kept to record them again should the queue
    /// lose them (a safety net: the journal fence keeps a cut-off host's late writes out,
    /// but a database restored from a copy, say, also forgets recent writes).
    recorded_ends: VecDeque<(Instant, End)>,
    /// Seconds our write transactions take (moving average): on NFS often more than a
    /// short job runs.
    avg_txn: Option<f64>,
}

impl Recorder {
    pub fn add_ends(&mut self, ends: impl IntoIterator<Item = End>) {
        let before = self.next.ends.len();
        self.next.ends.extend(ends);
        if self.next.ends.len() > before {
            self.ends_since.get_or_insert_with(Instant::now);
        }
    }

    /// Everything waiting, for a transaction to record (`put_back` if it could not).
    pub fn take(&mut self) -> Batch {
        std::mem::take(&mut self.next)
    }

    /// A batch the transaction did not record (the lock was busy): it waits again.
    pub fn put_back(&mut self, batch: Batch) {
        self.next = batch;
    }

    /// A transaction that took `took` recorded `ends`: they are remembered for two
    /// leases, and the transaction's cost enters the average.
    pub fn recorded(&mut self, ends: &[End], took: Duration, lease: f64) {
        self.ends_since = None;
        // Waiting for another host's lock is not what a transaction costs: clamp it.
        let took = took.as_secs_f64().min(TXN_COST_CAP);
        self.avg_txn = Some(self.avg_txn.map_or(took, |avg| 0.8 * avg + 0.2 * took));
        let now = Instant::now();
        let keep = Duration::from_secs_f64(2.0 * lease);
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

    /// Ends waiting were dropped with the batch that held them (a stop records them
    /// itself).
    pub fn forget_waiting_ends(&mut self) {
        self.ends_since = None;
    }

    /// The end recorded lately for this run, if any.
    pub fn recorded_end(&self, jid: i64, claim: &str) -> Option<&End> {
        self.recorded_ends
            .iter()
            .map(|(_, e)| e)
            .find(|e| e.jid == jid && e.claim == claim)
    }

    /// `TXN_SHARE` of our write transactions, by their moving average.
    pub fn txn_share(&self) -> Duration {
        Duration::from_secs_f64(TXN_SHARE * self.avg_txn.unwrap_or(0.0))
    }

    /// How long ends and pids may wait to share a transaction: `base`, or `TXN_SHARE` of
    /// our transactions where those are slower (on NFS), so that batching keeps pace with
    /// look-ahead instead of paying one transaction per job. Both are journaled first.
    fn batch_window(&self, base: Duration) -> Duration {
        base.max(self.txn_share())
    }

    /// Waiting ends are due: nothing buffered keeps the slots busy, we drain, or they
    /// have waited their window.
    pub fn ends_due(&self, buffered: bool, draining: bool) -> bool {
        self.ends_since
            .is_some_and(|at| !buffered || draining || at.elapsed() >= self.batch_window(END_BATCH))
    }

    /// Starts that failed, releases, or pids that waited their window (all pids when
    /// draining) are due.
    pub fn flush_due(&self, draining: bool) -> bool {
        !self.next.failed_starts.is_empty()
            || !self.next.releases.is_empty()
            || self
                .next
                .starts
                .first()
                .is_some_and(|s| s.at.elapsed() >= self.batch_window(START_BATCH))
            || (draining && !self.next.starts.is_empty())
    }

    /// Something has waited too long to wait for a free lock any more.
    pub fn overdue(&self) -> bool {
        self.ends_since
            .is_some_and(|at| at.elapsed() >= (10 * END_BATCH).max(2 * self.txn_share()))
            || self
                .next
                .starts
                .first()
                .is_some_and(|s| s.at.elapsed() >= 2 * self.batch_window(START_BATCH))
            || !self.next.failed_starts.is_empty()
            || !self.next.releases.is_empty()
    }

    /// How long a nap may last before waiting ends or pids are due.
    pub fn due_in(&self) -> Option<Duration> {
        let ends = self
            .ends_since
            .map(|at| self.batch_window(END_BATCH).saturating_sub(at.elapsed()));
        let starts = self.next.starts.first().map(|s| {
            self.batch_window(START_BATCH)
                .saturating_sub(s.at.elapsed())
        });
        ends.into_iter().chain(starts).min()
    }
}

/// What a recorded batch came to.
pub(super) struct Recorded {
    /// Ends not recorded: their claim was lost (the job was taken over).
    pub lost: Vec<i64>,
    /// Starts not recorded likewise: the job runs here for nothing.
    pub lost_starts: Vec<i64>,
    /// Which of the batch's outputs were stored (under claims still held).
    pub stored: Vec<bool>,
}

/// Record `batch` in the transaction `tx`: outputs first (stored only under claims still
/// held), then pids, starts that failed, releases and ends. A run that began and ended
/// since the last transaction has its start recorded with its end.
pub(super) fn record(tx: &Tx<'_>, batch: &Batch) -> Result<Recorded> {
    let now = crate::time::now();
    let stored = store_outputs(tx, &batch.outputs)?;
    let start_of = |end: &End| {
        batch
            .starts
            .iter()
            .find(|s| s.jid == end.jid && s.claim == end.claim)
            .map(|s| (s.pid, s.identity.as_deref()))
    };
    let started: Vec<claims::StartRecord<'_>> = batch
        .starts
        .iter()
        .filter(|s| {
            !batch
                .ends
                .iter()
                .any(|e| e.jid == s.jid && e.claim == s.claim)
        })
        .map(|s| (s.jid, s.claim.as_str(), s.pid, s.identity.as_deref()))
        .collect();
    let lost_starts = claims::record_starts(tx, &started)?;
    for (jid, claim) in &batch.failed_starts {
        claims::failed_to_start(tx, *jid, claim, &now)?;
    }
    for (jid, claim) in &batch.releases {
        claims::release(tx, *jid, claim, None)?;
    }
    let ended: Vec<(&End, claims::Started<'_>)> = batch
        .ends
        .iter()
        .filter(|end| !lost_starts.contains(&end.jid))
        .map(|end| (end, start_of(end)))
        .collect();
    let lost = claims::finish_all(tx, &ended)?;
    Ok(Recorded {
        lost,
        lost_starts,
        stored,
    })
}

/// The feeder log's line for a recorded end.
pub(super) fn log_line(end: &End) -> (Level, String) {
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
    let line = format!(
        "finished - jid {} {how} elapsed {:.3}s{extra}",
        end.jid, end.elapsed
    );
    (level, line)
}
