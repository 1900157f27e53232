//! When the feeder asks the queue for work, and how much ahead it claims: polls that
//! nothing announced back off to `max_sleep`, jobs queued for a retry wake it when they
//! become eligible, and short jobs are claimed ahead so that they share transactions.

use std::time::{Duration, Instant};

use super::jittered;

/// Look-ahead bounds: per slot, and in all. Larger buffers mean fewer transactions, so
/// feeders contend less for the lock and share the work more evenly (4 feeders x 1 slot:
/// shares 18-33 % with 4 per slot, 24-25 % with 16); the 0.2 s rule in `lookahead`
/// still keeps a buffered job's wait short.
const LOOKAHEAD_PER_SLOT: usize = 16;
const LOOKAHEAD_MAX: usize = 64;

pub(super) struct Polling {
    /// The last claim filled every free slot, so more work may be waiting.
    pub more_waiting: bool,
    /// When the queue was last asked for work, and when it is asked again unprompted.
    last_full: Instant,
    next_full: Duration,
    max_sleep: f64,
    /// When jobs this feeder queued for a retry become eligible.
    retry_wakes: Vec<Instant>,
    /// Running time of recent jobs (moving average, seconds): sets the look-ahead.
    avg_run: Option<f64>,
}

impl Polling {
    pub fn new(max_sleep: f64) -> Polling {
        Polling {
            more_waiting: true,
            last_full: Instant::now(),
            next_full: jittered(max_sleep),
            max_sleep,
            retry_wakes: Vec::new(),
            avg_run: None,
        }
    }

    /// Whether asking the queue for work is worth a transaction now: the doorbell
    /// `rang`, the last claim left more, a retry became eligible, or the unprompted poll
    /// is due.
    pub fn worth_asking(&mut self, rang: bool) -> bool {
        let now = Instant::now();
        let retry_due = self.retry_wakes.iter().any(|at| *at <= now);
        self.retry_wakes.retain(|at| *at > now);
        rang || retry_due || self.more_waiting || self.last_full.elapsed() >= self.next_full
    }

    /// The queue was asked for work; `more` when it may hold more than it gave.
    pub fn asked(&mut self, more: bool) {
        self.more_waiting = more;
        self.last_full = Instant::now();
        self.next_full = jittered(self.max_sleep);
    }

    /// An idle feeder's tick looked: work may be waiting if `claimable`.
    pub fn looked(&mut self, claimable: bool) {
        let more = self.more_waiting || claimable;
        self.asked(more);
    }

    /// A job this feeder ended is queued again, eligible `after` from now.
    pub fn retry_after(&mut self, after: Duration) {
        self.retry_wakes.push(Instant::now() + after);
    }

    /// A job ran `seconds`.
    pub fn job_ran(&mut self, seconds: f64) {
        self.avg_run = Some(match self.avg_run {
            Some(avg) => 0.8 * avg + 0.2 * seconds,
            None => seconds,
        });
    }

    /// How many jobs to claim beyond `slots` free ones. Only for short jobs — shorter than
    /// 50 ms, or than `txn_share` (`TXN_SHARE` of our write transactions: on NFS one costs
    /// tens of round trips) — so that they share transactions: a buffered job waits about
    /// `lookahead / slots` runs, kept under 0.2 s or `txn_share`, so long jobs are never
    /// held back from idle hosts.
    pub fn lookahead(&self, slots: usize, txn_share: Duration) -> usize {
        let txns = txn_share.as_secs_f64();
        match self.avg_run {
            Some(avg) if avg < txns.max(0.05) => {
                let fits = (txns.max(0.2) * slots as f64 / avg.max(1e-4)) as usize;
                fits.min(LOOKAHEAD_PER_SLOT * slots).min(LOOKAHEAD_MAX)
            }
            _ => 0,
        }
    }
}
